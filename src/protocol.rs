//! The socket protocol (SPEC §7): one JSON request object per line, one
//! JSON response object per line (`watch` and `metrics` with `follow`
//! stream several). Requests are tagged by `"cmd"`; every response has
//! `"ok"`, and failures carry `"error": {"code", "message"}`.
//!
//! Both directions are typed here and shared by the server and the one
//! client (`crate::client`): [`Request`] is what clients send, [`Reply`]
//! wraps each answer type, [`ErrorReply`] is every failure.

use crate::ids::OperationId;
use crate::model::{OperationType, Status, StopReason};
use crate::store::records::{self, Checkpoint, ListFilter, MetricPoint, OperationRecord, Progress};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

/// Largest request line accepted.
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;

/// A submit (also used inside `submit_batch`). It is also the options of
/// `opsd submit` (clap), so the command line and the wire declare them once.
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct Submit {
    /// Operation type: dummy, command, training, backtest or pipeline
    /// (on the command line: `submit TYPE`; `run` is always `command`).
    #[serde(rename = "type")]
    #[arg(skip)]
    pub kind: String,
    /// Parameters, validated by the job type (on the command line: --param, --params).
    #[serde(default)]
    #[arg(skip)]
    pub params: Value,
    /// Make this a child of another operation.
    #[serde(default)]
    #[arg(long)]
    pub parent: Option<OperationId>,
    /// Higher runs first.
    #[serde(default)]
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub priority: i64,
    /// GPUs to reserve; the operation waits until that many are free.
    #[serde(default)]
    #[arg(long, default_value_t = 0)]
    pub gpus: i64,
    /// Idempotency key: submitting the same key again returns the first operation.
    #[serde(default)]
    #[arg(long)]
    pub key: Option<String>,
    /// Starts allowed in all; failures retry with exponential backoff [1].
    #[serde(default)]
    #[arg(long)]
    pub max_attempts: Option<i64>,
    /// Do not start before this: a duration (10m, 2h) or an RFC 3339 time.
    #[serde(default)]
    #[arg(long)]
    pub run_after: Option<String>,
    /// Phase range in the parent, percent.
    #[serde(default)]
    #[arg(skip)]
    pub phase: Option<(f64, f64)>,
    /// Failing fails the parent.
    #[serde(default)]
    #[arg(skip)]
    pub fail_parent: bool,
    /// A label for people, shown by `list` (and `list --label`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[arg(long)]
    pub label: Option<String>,
    /// The named queue to wait in (see `opsd queue`) [default: default].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[arg(long)]
    pub queue: Option<String>,
    /// Create it held: it does not start until `opsd release ID`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    #[arg(long)]
    pub hold: bool,
    /// Start only after this operation completes; if it fails or is cancelled, this one is cancelled (repeatable).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[arg(long, value_name = "ID")]
    pub after: Vec<OperationId>,
    /// Start only after this operation ends, whatever the outcome (repeatable).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[arg(long, value_name = "ID")]
    pub after_any: Vec<OperationId>,
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
    /// Let a held operation start.
    Release {
        /// The operation.
        id: OperationId,
    },
    /// A new operation like another (type, parameters with edits, label,
    /// queue, priority, GPUs, attempts).
    Rerun {
        /// The operation to copy.
        id: OperationId,
        /// Parameters to change (an object of key to new value).
        #[serde(default)]
        params: Value,
    },
    /// Delete finished operations (never active ones).
    Clean {
        /// Only those that ended longer ago than this duration (`7d`).
        #[serde(default)]
        older_than: Option<String>,
        /// Only these statuses (completed, failed, cancelled).
        #[serde(default)]
        status: Vec<String>,
        /// Only say which would go.
        #[serde(default)]
        dry_run: bool,
    },
    /// Every named queue with its counts.
    Queues,
    /// Pause, start or cap a queue.
    QueueSet {
        /// The queue (created if new).
        name: String,
        /// Pause (`true`) or start (`false`).
        #[serde(default)]
        paused: Option<bool>,
        /// At most this many of its operations at once.
        #[serde(default)]
        parallel: Option<i64>,
    },
    /// Which operation an id means (full id, 8-hex tail, prefix, `last`).
    Resolve {
        /// What the user typed.
        id: OperationId,
    },
    /// The daemons sharing the store (SPEC §11).
    Hosts,
}

impl Submit {
    /// A submit of `kind` with `params` and every option at its default:
    /// what a client starts from before setting the options it needs.
    pub fn new(kind: impl Into<String>, params: Value) -> Submit {
        Submit {
            kind: kind.into(),
            params,
            parent: None,
            priority: 0,
            gpus: 0,
            key: None,
            max_attempts: None,
            run_after: None,
            phase: None,
            fail_parent: false,
            label: None,
            queue: None,
            hold: false,
            after: Vec::new(),
            after_any: Vec::new(),
        }
    }

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

impl From<Submit> for Request {
    fn from(s: Submit) -> Request {
        Request::Submit(s)
    }
}

impl AsRef<str> for OperationId {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

fn id_of(id: impl AsRef<str>) -> OperationId {
    OperationId::from(id.as_ref())
}

impl Request {
    /// `get` of `id`.
    pub fn get(id: impl AsRef<str>) -> Request {
        Request::Get { id: id_of(id) }
    }

    /// `children` of `id`.
    pub fn children(id: impl AsRef<str>) -> Request {
        Request::Children { id: id_of(id) }
    }

    /// `cancel` of `id` with no reason and the default wait.
    pub fn cancel(id: impl AsRef<str>) -> Request {
        Request::Cancel {
            id: id_of(id),
            reason: None,
            wait_ms: None,
        }
    }

    /// `resume` of `id`.
    pub fn resume(id: impl AsRef<str>) -> Request {
        Request::Resume { id: id_of(id) }
    }

    /// `metrics` of `id` after `cursor`, one page, default limit.
    pub fn metrics(id: impl AsRef<str>, cursor: i64) -> Request {
        Request::Metrics {
            id: id_of(id),
            cursor,
            limit: None,
            follow: false,
        }
    }

    /// `watch` of `id` at the default interval.
    pub fn watch(id: impl AsRef<str>) -> Request {
        Request::Watch {
            id: id_of(id),
            interval_ms: None,
        }
    }

    /// `checkpoints`, of `id` or of every operation.
    pub fn checkpoints(id: Option<OperationId>) -> Request {
        Request::Checkpoints { id }
    }

    /// `logs` of `id`: the default tail, followed or not.
    pub fn logs(id: impl AsRef<str>, follow: bool) -> Request {
        Request::Logs {
            id: id_of(id),
            tail_bytes: None,
            follow,
        }
    }

    /// The request as one line, `\n` included, ready to write to the socket.
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).unwrap_or_default();
        line.push(b'\n');
        line
    }
}

impl fmt::Display for Request {
    /// The request as its JSON line (without the newline).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&serde_json::to_string(self).map_err(|_| fmt::Error)?)
    }
}

/// Every successful response: `"ok": true` followed by the fields of the
/// body (`T` is one of the response types below).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply<T> {
    /// Always true here; failures are [`ErrorReply`].
    pub ok: bool,
    /// The response's own fields, at the top level of the object.
    #[serde(flatten)]
    pub body: T,
}

impl<T> Reply<T> {
    /// `body` as a successful response.
    pub fn ok(body: T) -> Reply<T> {
        Reply { ok: true, body }
    }
}

/// Every failed response: `{"ok": false, "error": {"code", "message"}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// Always false.
    pub ok: bool,
    /// What went wrong.
    pub error: ErrorBody,
}

/// The `error` object of a failed response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Machine-readable code (`not_found`, `bad_request`, ...; SPEC §7).
    pub code: String,
    /// A sentence for people saying what to do next.
    pub message: String,
}

/// An error response line.
pub fn error_response(code: &str, message: &str) -> ErrorReply {
    ErrorReply {
        ok: false,
        error: ErrorBody {
            code: code.to_string(),
            message: message.to_string(),
        },
    }
}

impl fmt::Display for ErrorReply {
    /// The response as its JSON line (without the newline).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&serde_json::to_string(self).map_err(|_| fmt::Error)?)
    }
}

/// Marks a stream's messages: `update` while it runs, `end` for the last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamEvent {
    /// Something changed (watch).
    Update,
    /// The operation is over; nothing follows.
    End,
}

/// The answer to `submit` (also each entry of `submit_batch`'s).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Submitted {
    /// The operation's id.
    pub operation_id: OperationId,
    /// Its status now.
    pub status: Status,
    /// False when an idempotency key returned the first operation.
    pub created: bool,
}

impl From<records::Submitted> for Submitted {
    fn from(s: records::Submitted) -> Submitted {
        Submitted {
            operation_id: s.id,
            status: s.status,
            created: s.created,
        }
    }
}

/// The answer to `submit_batch`, in the order submitted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubmittedBatch {
    /// One entry per submit.
    pub operations: Vec<Submitted>,
}

/// The answer to `get`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Got {
    /// The operation, live progress included.
    pub operation: OperationView,
}

/// The answer to `list` (and, without the counts, to `children`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Listed {
    /// The rows, newest first (`children`: oldest first).
    pub operations: Vec<OperationView>,
    /// Rows matching the filter in all (`list` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<i64>,
    /// Active operations overall (`list` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<i64>,
}

/// The answer to `cancel`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cancelled {
    /// The operation.
    pub operation_id: OperationId,
    /// Its status before the cancel.
    pub previous_status: Status,
    /// Its status now (`running` when it has not stopped within the wait).
    pub status: Status,
    /// Why it stopped, once it has.
    pub stop_reason: Option<StopReason>,
}

/// The answer to `resume`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resumed {
    /// The operation.
    pub operation_id: OperationId,
    /// `resuming`.
    pub status: Status,
}

/// One page of metric points (`metrics`; each message of a followed one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsPage {
    /// Points after the cursor asked for, in order.
    pub metrics: Vec<MetricPoint>,
    /// Pass this as `cursor` to get only newer points.
    pub cursor: i64,
    /// `end` on a followed stream's last message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<StreamEvent>,
}

/// One message of a `watch` stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WatchUpdate {
    /// `update`, or `end` for the last.
    pub event: StreamEvent,
    /// The watched operation.
    pub operation: OperationView,
    /// Its children.
    pub children: Vec<OperationView>,
}

/// The answer to `hosts`: the daemons sharing the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostList {
    /// One row per daemon, as in the `hosts` table.
    pub hosts: Vec<crate::store::records::HostRecord>,
}

/// The answer to `checkpoints`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointList {
    /// The checkpoints asked for.
    pub checkpoints: Vec<Checkpoint>,
}

/// The answer to `delete_checkpoint`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deleted {
    /// Whose checkpoint was deleted.
    pub deleted: OperationId,
}

/// One message of `logs`: text from the log and the offset after it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogChunk {
    /// The text (lossy UTF-8).
    pub text: String,
    /// Byte offset in the log after this text.
    pub offset: u64,
    /// `end` on a followed stream's last message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<StreamEvent>,
}

/// The answer to `health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// The daemon's version.
    pub version: String,
    /// Its process id.
    pub pid: u32,
    /// Seconds since it started.
    pub uptime_seconds: f64,
    /// False while it shuts down (submits are refused).
    pub accepting: bool,
    /// Its state directory.
    pub state_dir: PathBuf,
    /// Where its database is.
    pub db: String,
    /// The socket it listens on.
    pub socket: PathBuf,
    /// The web dashboard's address, when one is configured.
    #[serde(default)]
    pub http: Option<String>,
    /// Worker threads.
    pub workers: usize,
    /// Most operations of each type running at once.
    pub concurrency: BTreeMap<OperationType, usize>,
    /// Operations running now.
    pub running: Vec<OperationId>,
    /// Operations per status.
    pub counts: BTreeMap<String, i64>,
    /// GPUs and who holds them.
    pub gpus: Value,
    /// What start-up recovery did.
    pub recovery: Value,
    /// "ok", or why writes are not landing and since when.
    pub store: String,
}

/// The answer to `release`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Released {
    /// The operation, now free to start.
    pub operation_id: OperationId,
}

/// The answer to `rerun`: the new operation, and the one it copies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rerun {
    /// The new operation.
    #[serde(flatten)]
    pub submitted: Submitted,
    /// The operation it was copied from.
    pub rerun_of: OperationId,
}

/// The answer to `clean`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cleaned {
    /// How many operations were deleted (would be, with `dry_run`).
    pub deleted: usize,
    /// Their ids.
    pub operations: Vec<OperationId>,
    /// Nothing was deleted: only listed.
    pub dry_run: bool,
}

/// The answer to `queues`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueList {
    /// Every named queue, by name.
    pub queues: Vec<records::QueueRow>,
}

/// The answer to `queue_set`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueChanged {
    /// The queue as it is now.
    pub queue: records::QueueRow,
}

/// The answer to `resolve`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resolved {
    /// The full id the text means.
    pub operation_id: OperationId,
}

fn default_queue() -> String {
    "default".into()
}

/// One operation as the socket shows it (SPEC §5 and §10: the field names
/// are the contract scripts read). Built from the store's row with the
/// live progress of a running operation laid over it, so the store's
/// columns can change without changing the API. Fields are in name
/// order, the order the daemon has always written them in (it used to
/// serialize the row through a sorted JSON map), so the bytes on the wire
/// stay the same.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperationView {
    /// Runs started so far.
    pub attempt: i64,
    /// The host running it, or that ran it last (shared stores, SPEC §11).
    pub claimed_by: Option<String>,
    /// When it became completed, failed or cancelled.
    pub completed_at: Option<String>,
    /// When it was submitted.
    pub created_at: String,
    /// The step it is in.
    pub current_step: Option<String>,
    /// Why it failed.
    pub error_message: Option<String>,
    /// Errors raised while it ran (array).
    pub errors: Value,
    /// Seconds left at the rate so far.
    pub eta_seconds: Option<f64>,
    /// Whether its failure fails the parent.
    pub fail_parent: bool,
    /// GPUs it holds or held (array of ids).
    pub gpus_assigned: Option<Value>,
    /// GPUs it asked for.
    pub gpus_requested: i64,
    /// Held until `release` (SPEC §12).
    #[serde(default)]
    pub held: bool,
    /// The key it was submitted with.
    pub idempotency_key: Option<String>,
    /// How many items are done.
    pub items_processed: Option<i64>,
    /// How many items there are.
    pub items_total: Option<i64>,
    /// The label it was submitted with.
    #[serde(default)]
    pub label: Option<String>,
    /// Until when its host's lease holds it (shared stores).
    pub lease_expires_at: Option<String>,
    /// Runs allowed in all.
    pub max_attempts: i64,
    /// The parameters it was submitted with, as validated.
    pub metadata: Value,
    /// The id.
    pub operation_id: OperationId,
    /// What kind of job.
    pub operation_type: OperationType,
    /// The parent's id, for a child.
    pub parent_operation_id: Option<OperationId>,
    /// Where that share ends, percent.
    pub phase_end: Option<f64>,
    /// Where its share of the parent's progress starts, percent.
    pub phase_start: Option<f64>,
    /// Higher is claimed first.
    pub priority: i64,
    /// The job's details of its progress (a JSON object).
    pub progress_context: Option<Value>,
    /// The latest progress message.
    pub progress_message: Option<String>,
    /// Percent done, 0-100 (a parent's: its children's aggregate).
    pub progress_percent: f64,
    /// The named queue it waits and runs in.
    #[serde(default = "default_queue")]
    pub queue: String,
    /// What it produced, once completed.
    pub result_summary: Option<Value>,
    /// Not started before this time.
    pub run_after: Option<String>,
    /// When its current run started.
    pub started_at: Option<String>,
    /// Where it is in its life.
    pub status: Status,
    /// How many steps are done.
    pub steps_completed: Option<i64>,
    /// How many steps there are.
    pub steps_total: Option<i64>,
    /// Why it stopped (cancelled or failed).
    pub stop_reason: Option<StopReason>,
    /// When anything about it last changed.
    pub updated_at: String,
    /// Its `--after`/`--after-any` dependencies not met yet.
    #[serde(default)]
    pub waiting_for: i64,
    /// The operations it still waits for (a pending one's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waiting_on: Vec<OperationId>,
    /// Warnings raised while it ran (array).
    pub warnings: Value,
}

impl OperationView {
    /// Lay `p` over the stored progress (a running operation's live value).
    pub fn set_progress(&mut self, p: Progress) {
        self.progress_percent = p.percentage;
        self.progress_message = p.message;
        self.current_step = p.current_step;
        self.steps_completed = p.steps_completed;
        self.steps_total = p.steps_total;
        self.items_processed = p.items_processed;
        self.items_total = p.items_total;
        self.eta_seconds = p.eta_seconds;
        self.progress_context = p.context;
    }

    /// Its phase range in the parent, when it has one.
    pub fn phase(&self) -> Option<(f64, f64)> {
        self.phase_start.zip(self.phase_end)
    }
}

impl From<OperationRecord> for OperationView {
    fn from(r: OperationRecord) -> OperationView {
        let progress = r.progress;
        let mut v = OperationView {
            attempt: r.attempt,
            claimed_by: r.claimed_by,
            completed_at: r.completed_at,
            created_at: r.created_at,
            current_step: None,
            error_message: r.error_message,
            errors: r.errors,
            eta_seconds: None,
            fail_parent: r.fail_parent,
            gpus_assigned: r.gpus_assigned,
            gpus_requested: r.gpus_requested,
            held: r.held,
            idempotency_key: r.idempotency_key,
            items_processed: None,
            items_total: None,
            label: r.label,
            lease_expires_at: r.lease_expires_at,
            max_attempts: r.max_attempts,
            metadata: r.metadata,
            operation_id: r.operation_id,
            operation_type: r.operation_type,
            parent_operation_id: r.parent_operation_id,
            phase_end: r.phase_end,
            phase_start: r.phase_start,
            priority: r.priority,
            progress_context: None,
            progress_message: None,
            progress_percent: 0.0,
            queue: r.queue,
            result_summary: r.result_summary,
            run_after: r.run_after,
            started_at: r.started_at,
            status: r.status,
            steps_completed: None,
            steps_total: None,
            stop_reason: r.stop_reason,
            updated_at: r.updated_at,
            waiting_for: r.waiting_for,
            waiting_on: Vec::new(),
            warnings: r.warnings,
        };
        v.set_progress(progress);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record() -> OperationRecord {
        OperationRecord {
            operation_id: OperationId::from("op_dummy_20260101_000000_deadbeef"),
            parent_operation_id: Some(OperationId::from("op_pipeline_x")),
            operation_type: OperationType::Dummy,
            status: Status::Running,
            stop_reason: Some(StopReason::User),
            priority: 3,
            attempt: 2,
            max_attempts: 4,
            run_after: Some("2026-01-01T00:00:00.000000Z".into()),
            created_at: "c".into(),
            started_at: Some("s".into()),
            completed_at: None,
            updated_at: "u".into(),
            progress: Progress {
                percentage: 42.5,
                message: Some("m".into()),
                current_step: Some("step".into()),
                steps_completed: Some(1),
                steps_total: Some(2),
                items_processed: Some(3),
                items_total: Some(4),
                eta_seconds: Some(5.5),
                context: Some(json!({ "epoch": 1 })),
            },
            metadata: json!({ "steps": 2 }),
            result_summary: Some(json!({ "r": 1 })),
            error_message: Some("e".into()),
            warnings: json!(["w"]),
            errors: json!([]),
            idempotency_key: Some("k".into()),
            phase_start: Some(5.0),
            phase_end: Some(80.0),
            fail_parent: true,
            gpus_requested: 1,
            gpus_assigned: Some(json!(["0"])),
            label: Some("l".into()),
            queue: "q".into(),
            held: true,
            waiting_for: 1,
            claimed_by: Some("gpu-box-1".into()),
            lease_expires_at: Some("l".into()),
        }
    }

    /// The wire view of a record spells every column by its name (SPEC
    /// §10: scripts read these names), progress columns included, and its
    /// text is the record as it has always been written: through a
    /// sorted map.
    #[test]
    fn the_view_of_a_record_is_the_records_json() {
        let as_row = json!({
            "attempt": 2, "claimed_by": "gpu-box-1", "completed_at": null, "created_at": "c",
            "current_step": "step", "error_message": "e", "errors": [], "eta_seconds": 5.5,
            "fail_parent": true, "gpus_assigned": ["0"], "gpus_requested": 1, "held": true,
            "idempotency_key": "k", "items_processed": 3, "items_total": 4, "label": "l",
            "lease_expires_at": "l", "max_attempts": 4, "metadata": { "steps": 2 },
            "operation_id": "op_dummy_20260101_000000_deadbeef", "operation_type": "dummy",
            "parent_operation_id": "op_pipeline_x", "phase_end": 80.0, "phase_start": 5.0,
            "priority": 3, "progress_context": { "epoch": 1 }, "progress_message": "m",
            "progress_percent": 42.5, "queue": "q", "result_summary": { "r": 1 },
            "run_after": "2026-01-01T00:00:00.000000Z", "started_at": "s", "status": "running",
            "steps_completed": 1, "steps_total": 2, "stop_reason": "user", "updated_at": "u",
            "waiting_for": 1, "warnings": ["w"],
        });
        let view = OperationView::from(record());
        assert_eq!(serde_json::to_value(&view).unwrap(), as_row);
        assert_eq!(serde_json::to_string(&view).unwrap(), as_row.to_string());
        let back: OperationView = serde_json::from_value(as_row).unwrap();
        assert_eq!(back, view);
    }

    /// Answers are `"ok": true` plus the body's fields; failures carry the
    /// error object; stream markers appear only where they belong.
    #[test]
    fn replies_frame_their_bodies() {
        let page = MetricsPage {
            metrics: vec![],
            cursor: 7,
            event: None,
        };
        assert_eq!(
            serde_json::to_value(Reply::ok(page)).unwrap(),
            json!({ "ok": true, "metrics": [], "cursor": 7 })
        );
        let end = LogChunk {
            text: String::new(),
            offset: 3,
            event: Some(StreamEvent::End),
        };
        assert_eq!(
            serde_json::to_value(Reply::ok(end)).unwrap(),
            json!({ "ok": true, "text": "", "offset": 3, "event": "end" })
        );
        assert_eq!(
            error_response("not_found", "no such operation").to_string(),
            r#"{"ok":false,"error":{"code":"not_found","message":"no such operation"}}"#
        );
        let kids = Listed {
            operations: vec![],
            total: None,
            active: None,
        };
        assert_eq!(
            serde_json::to_value(Reply::ok(kids)).unwrap(),
            json!({ "ok": true, "operations": [] })
        );
    }

    /// What the typed constructors send is what scripts send by hand.
    #[test]
    fn requests_serialize_as_the_protocol_says() {
        let v = |r: Request| serde_json::to_value(r).unwrap();
        assert_eq!(
            v(Request::get("op_a")),
            json!({ "cmd": "get", "id": "op_a" })
        );
        assert_eq!(v(Request::Health), json!({ "cmd": "health" }));
        let s = v(Submit::new("dummy", json!({ "steps": 1 })).into());
        assert_eq!(s["cmd"], "submit");
        assert_eq!(s["type"], "dummy");
        assert_eq!(s["params"], json!({ "steps": 1 }));
        let back: Request = serde_json::from_value(s).unwrap();
        assert!(matches!(back, Request::Submit(b) if b.kind == "dummy" && b.priority == 0));
        let line = Request::cancel("op_a").to_line();
        assert_eq!(line.last(), Some(&b'\n'));
    }
}
