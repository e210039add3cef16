//! Rows as Rust values: what is inserted, what is read back.

use crate::ids::OperationId;
use crate::model::{OperationType, Status, StopReason};
use rusqlite::Row;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// An operation to insert.
#[derive(Debug, Clone)]
pub struct NewOperation {
    /// The id to give it.
    pub id: OperationId,
    /// Its type.
    pub kind: OperationType,
    /// The validated parameters.
    pub metadata: Value,
    /// The parent, if any.
    pub parent: Option<OperationId>,
    /// Higher runs first.
    pub priority: i64,
    /// Returns the first operation with this key instead of a second one.
    pub idempotency_key: Option<String>,
    /// Share of the parent's progress, percent range.
    pub phase: Option<(f64, f64)>,
    /// This child failing fails its parent.
    pub fail_parent: bool,
    /// GPUs to reserve while it runs.
    pub gpus: i64,
    /// Starts allowed in all (retries = max_attempts - 1).
    pub max_attempts: i64,
    /// Not before this time (stored timestamp).
    pub run_after: Option<String>,
}

/// Progress as stored and shown (SPEC §4).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// 0-100.
    pub percentage: f64,
    /// For people.
    pub message: Option<String>,
    /// Name of the current step.
    pub current_step: Option<String>,
    /// Steps done.
    pub steps_completed: Option<i64>,
    /// Steps in all.
    pub steps_total: Option<i64>,
    /// Items done.
    pub items_processed: Option<i64>,
    /// Items in all.
    pub items_total: Option<i64>,
    /// Estimated seconds left.
    pub eta_seconds: Option<f64>,
    /// Domain details (JSON object).
    pub context: Option<Value>,
}

/// One operation, every column (SPEC §5), JSON columns parsed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OperationRecord {
    /// Primary key.
    pub operation_id: OperationId,
    /// Parent, if a child.
    pub parent_operation_id: Option<OperationId>,
    /// Type.
    pub operation_type: OperationType,
    /// Status.
    pub status: Status,
    /// Why it stopped, for cancelled/failed.
    pub stop_reason: Option<StopReason>,
    /// Scheduling priority, higher first.
    pub priority: i64,
    /// Starts so far.
    pub attempt: i64,
    /// Starts allowed.
    pub max_attempts: i64,
    /// Not before.
    pub run_after: Option<String>,
    /// Timestamps.
    pub created_at: String,
    /// First start of the current attempt.
    pub started_at: Option<String>,
    /// When it reached completed/failed/cancelled.
    pub completed_at: Option<String>,
    /// Last change.
    pub updated_at: String,
    /// Percent done.
    pub progress_percent: f64,
    /// For people.
    pub progress_message: Option<String>,
    /// Step name.
    pub current_step: Option<String>,
    /// Steps done.
    pub steps_completed: Option<i64>,
    /// Steps in all.
    pub steps_total: Option<i64>,
    /// Items done.
    pub items_processed: Option<i64>,
    /// Items in all.
    pub items_total: Option<i64>,
    /// Estimated seconds left.
    pub eta_seconds: Option<f64>,
    /// Domain details.
    pub progress_context: Option<Value>,
    /// Submitted parameters.
    pub metadata: Value,
    /// Result, once completed.
    pub result_summary: Option<Value>,
    /// Why it failed.
    pub error_message: Option<String>,
    /// Warnings (array).
    pub warnings: Value,
    /// Errors (array).
    pub errors: Value,
    /// Idempotency key.
    pub idempotency_key: Option<String>,
    /// Phase range start in the parent.
    pub phase_start: Option<f64>,
    /// Phase range end in the parent.
    pub phase_end: Option<f64>,
    /// Fails the parent when it fails.
    pub fail_parent: bool,
    /// GPUs asked for.
    pub gpus_requested: i64,
    /// GPUs assigned (array of ids).
    pub gpus_assigned: Option<Value>,
}

/// The column list matching [`OperationRecord::from_row`].
pub const OPERATION_COLUMNS: &str = "operation_id, parent_operation_id, operation_type, status, \
    stop_reason, priority, attempt, max_attempts, run_after, created_at, started_at, \
    completed_at, updated_at, progress_percent, progress_message, current_step, \
    steps_completed, steps_total, items_processed, items_total, eta_seconds, \
    progress_context, metadata, result_summary, error_message, warnings, errors, \
    idempotency_key, phase_start, phase_end, fail_parent, gpus_requested, gpus_assigned";

fn parse_enum<T: std::str::FromStr<Err = String>>(idx: usize, s: String) -> rusqlite::Result<T> {
    s.parse().map_err(|e: String| {
        rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, e.into())
    })
}

fn parse_json(idx: usize, s: Option<String>) -> rusqlite::Result<Option<Value>> {
    s.map(|s| {
        serde_json::from_str(&s).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, e.into())
        })
    })
    .transpose()
}

impl OperationRecord {
    /// Read a row selected with [`OPERATION_COLUMNS`].
    pub fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(OperationRecord {
            operation_id: OperationId(r.get(0)?),
            parent_operation_id: r.get::<_, Option<String>>(1)?.map(OperationId),
            operation_type: parse_enum(2, r.get(2)?)?,
            status: parse_enum(3, r.get(3)?)?,
            stop_reason: r
                .get::<_, Option<String>>(4)?
                .map(|s| parse_enum(4, s))
                .transpose()?,
            priority: r.get(5)?,
            attempt: r.get(6)?,
            max_attempts: r.get(7)?,
            run_after: r.get(8)?,
            created_at: r.get(9)?,
            started_at: r.get(10)?,
            completed_at: r.get(11)?,
            updated_at: r.get(12)?,
            progress_percent: r.get(13)?,
            progress_message: r.get(14)?,
            current_step: r.get(15)?,
            steps_completed: r.get(16)?,
            steps_total: r.get(17)?,
            items_processed: r.get(18)?,
            items_total: r.get(19)?,
            eta_seconds: r.get(20)?,
            progress_context: parse_json(21, r.get(21)?)?,
            metadata: parse_json(22, r.get(22)?)?.unwrap_or(Value::Null),
            result_summary: parse_json(23, r.get(23)?)?,
            error_message: r.get(24)?,
            warnings: parse_json(25, r.get(25)?)?.unwrap_or(Value::Array(vec![])),
            errors: parse_json(26, r.get(26)?)?.unwrap_or(Value::Array(vec![])),
            idempotency_key: r.get(27)?,
            phase_start: r.get(28)?,
            phase_end: r.get(29)?,
            fail_parent: r.get::<_, i64>(30)? != 0,
            gpus_requested: r.get(31)?,
            gpus_assigned: parse_json(32, r.get(32)?)?,
        })
    }

    /// The progress columns as a [`Progress`].
    pub fn progress(&self) -> Progress {
        Progress {
            percentage: self.progress_percent,
            message: self.progress_message.clone(),
            current_step: self.current_step.clone(),
            steps_completed: self.steps_completed,
            steps_total: self.steps_total,
            items_processed: self.items_processed,
            items_total: self.items_total,
            eta_seconds: self.eta_seconds,
            context: self.progress_context.clone(),
        }
    }

    /// Overwrite the progress columns (used to show a live value).
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
}

/// Filters of `opsd list`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListFilter {
    /// Any of these statuses (empty: all).
    pub status: Vec<Status>,
    /// Only this type.
    #[serde(rename = "type")]
    pub kind: Option<OperationType>,
    /// Only pending, resuming or running.
    pub active: bool,
    /// Only children of this operation.
    pub parent: Option<OperationId>,
    /// At most this many rows (default 50).
    pub limit: Option<i64>,
    /// Skip this many rows.
    pub offset: Option<i64>,
}

/// A claimed operation, handed to a worker.
#[derive(Debug, Clone)]
pub struct ClaimedOperation {
    /// Id.
    pub id: OperationId,
    /// Type.
    pub kind: OperationType,
    /// Parameters.
    pub metadata: Value,
    /// This start's number (1 for the first).
    pub attempt: i64,
    /// Parent, if a child.
    pub parent: Option<OperationId>,
    /// Progress at claim time (non-zero when resuming from a checkpoint).
    pub progress_percent: f64,
    /// GPUs to reserve.
    pub gpus_requested: i64,
    /// Starts allowed.
    pub max_attempts: i64,
    /// Failing fails the parent.
    pub fail_parent: bool,
}
