//! The socket protocol (SPEC §7): one JSON request object per line, one
//! JSON response object per line (`watch` and `metrics` with `follow`
//! stream several). Requests are tagged by `"cmd"`; every response has
//! `"ok"`, and failures carry `"error": {"code", "message"}`.

use crate::ids::OperationId;
use crate::model::OperationType;
use crate::store::records::ListFilter;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Largest request line accepted.
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;

/// A submit (also used inside `submit_batch`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Submit {
    /// The operation type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Parameters (validated by the job type).
    #[serde(default)]
    pub params: Value,
    /// Parent operation id.
    #[serde(default)]
    pub parent: Option<OperationId>,
    /// Higher runs first [0].
    #[serde(default)]
    pub priority: i64,
    /// GPUs to reserve [0].
    #[serde(default)]
    pub gpus: i64,
    /// Idempotency key.
    #[serde(default)]
    pub key: Option<String>,
    /// Starts allowed in all [1].
    #[serde(default)]
    pub max_attempts: Option<i64>,
    /// Not before: an RFC 3339 time or a duration such as `10m`.
    #[serde(default)]
    pub run_after: Option<String>,
    /// Phase range in the parent, percent.
    #[serde(default)]
    pub phase: Option<(f64, f64)>,
    /// Failing fails the parent.
    #[serde(default)]
    pub fail_parent: bool,
}

/// Every request the daemon understands.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Create an operation.
    Submit(Submit),
    /// Create several operations in one durable commit.
    SubmitBatch {
        /// The submits.
        operations: Vec<Submit>,
    },
    /// One operation, live progress included.
    Get {
        /// Its id.
        id: OperationId,
    },
    /// Operations matching filters.
    List(ListFilter),
    /// The children of an operation.
    Children {
        /// The parent.
        id: OperationId,
    },
    /// Cancel an operation and its descendants.
    Cancel {
        /// Its id.
        id: OperationId,
        /// Why (kept in `error_message`).
        #[serde(default)]
        reason: Option<String>,
        /// Wait up to this many milliseconds for a running one to stop [2000].
        #[serde(default)]
        wait_ms: Option<u64>,
    },
    /// try_resume a cancelled or failed operation.
    Resume {
        /// Its id.
        id: OperationId,
    },
    /// Metric points after a cursor.
    Metrics {
        /// The operation.
        id: OperationId,
        /// Points with `seq > cursor` [0].
        #[serde(default)]
        cursor: i64,
        /// At most this many per response [1000].
        #[serde(default)]
        limit: Option<i64>,
        /// Keep streaming new points until the operation ends.
        #[serde(default)]
        follow: bool,
    },
    /// Stream the operation (and its children) until it ends.
    Watch {
        /// The operation.
        id: OperationId,
        /// Milliseconds between updates [200].
        #[serde(default)]
        interval_ms: Option<u64>,
    },
    /// Checkpoints, of one operation or all.
    Checkpoints {
        /// Only this operation's.
        #[serde(default)]
        id: Option<OperationId>,
    },
    /// Delete an operation's checkpoint.
    DeleteCheckpoint {
        /// The operation.
        id: OperationId,
    },
    /// Lines of a command job's log.
    Logs {
        /// The operation.
        id: OperationId,
        /// Only the last this many bytes [65536].
        #[serde(default)]
        tail_bytes: Option<u64>,
        /// Keep streaming until the operation ends.
        #[serde(default)]
        follow: bool,
    },
    /// Version, uptime, paths, workers, counts.
    Health,
    /// The daemons sharing the store (SPEC §11).
    Hosts,
}

impl Submit {
    /// The type, or an error listing the known ones.
    pub fn kind(&self) -> Result<OperationType, String> {
        self.kind.parse::<OperationType>().map_err(|_| {
            format!(
                "unknown operation type {:?}; known types: {}",
                self.kind,
                OperationType::ALL
                    .iter()
                    .map(|t| t.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
    }
}

/// An error response line.
pub fn error_response(code: &str, message: &str) -> Value {
    json!({ "ok": false, "error": { "code": code, "message": message } })
}

/// A success response: `fields` (an object) with `"ok": true` added.
pub fn ok_response(mut fields: Value) -> Value {
    if let Value::Object(m) = &mut fields {
        m.insert("ok".into(), Value::Bool(true));
        fields
    } else {
        json!({ "ok": true, "value": fields })
    }
}
