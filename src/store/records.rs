//! Rows as Rust values: what is inserted, what is read back.

use crate::ids::OperationId;
use crate::model::{CheckpointType, OperationType, Status, StopReason};
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
    /// Label, queue, hold and dependencies (SPEC §12).
    pub options: SubmitOptions,
}

/// What SPEC §12 adds to a submit: a label, a named queue, hold, and
/// dependencies on other operations.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SubmitOptions {
    /// Shown by `list`.
    pub label: Option<String>,
    /// The named queue (`default` when `None`).
    pub queue: Option<String>,
    /// Created held: not started until released.
    pub hold: bool,
    /// Start only after these complete (a failure or cancel cancels this one).
    pub after: Vec<OperationId>,
    /// Start only after these end, whatever the outcome.
    pub after_any: Vec<OperationId>,
}

/// A named queue (SPEC §12), with what it holds now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueRow {
    /// Its name.
    pub name: String,
    /// Starts nothing new while paused.
    pub paused: bool,
    /// At most this many of its operations run at once (`None`: no cap).
    pub parallel: Option<i64>,
    /// Its operations waiting (pending or resuming).
    pub waiting: i64,
    /// Its operations running.
    pub running: i64,
}

/// A change to a queue; `None` fields are left as they are.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueChange {
    /// The queue (created if new).
    pub name: String,
    /// Pause (`true`) or start (`false`) it.
    pub paused: Option<bool>,
    /// Set the cap (`Some(None)` removes it).
    pub parallel: Option<Option<i64>>,
}

/// Which finished operations `clean` removes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CleanFilter {
    /// Only these final statuses (empty: completed, failed and cancelled).
    pub statuses: Vec<Status>,
    /// Only those that ended before this timestamp.
    pub ended_before: Option<String>,
    /// Only say which would go.
    pub dry_run: bool,
}

impl NewOperation {
    /// An operation of `kind` with validated `metadata`, a fresh id and
    /// every option at its default (no parent, priority 0, one attempt).
    pub fn new(kind: OperationType, metadata: Value) -> NewOperation {
        NewOperation {
            id: OperationId::generate(kind, chrono::Utc::now()),
            kind,
            metadata,
            parent: None,
            priority: 0,
            idempotency_key: None,
            phase: None,
            fail_parent: false,
            gpus: 0,
            max_attempts: 1,
            run_after: None,
            options: SubmitOptions::default(),
        }
    }
}

/// Progress as stored and shown (SPEC §4): the fields of
/// [`crate::control::ProgressFields`] with the percentage always known.
pub type Progress = crate::control::ProgressFields<f64>;

/// One operation, every column (SPEC §5), JSON columns parsed. The API
/// shows it as `crate::protocol::OperationView`, its own type.
#[derive(Debug, Clone)]
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
    /// The progress columns (`progress_percent`, `progress_message`,
    /// `current_step`, ..., `progress_context`), as one [`Progress`].
    pub progress: Progress,
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
    /// The host that runs it (or ran it last); NULL until first claimed.
    pub claimed_by: Option<String>,
    /// Until when the running host's claim holds (NULL when not running).
    pub lease_expires_at: Option<String>,
    /// Label given at submit.
    pub label: Option<String>,
    /// The named queue it runs in.
    pub queue: String,
    /// Held until `opsd release`.
    pub held: bool,
    /// Dependencies not met yet.
    pub waiting_for: i64,
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
    /// Only operations with this label.
    pub label: Option<String>,
    /// Only operations in this queue.
    pub queue: Option<String>,
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
    /// Parameters as stored (JSON text). The worker that runs the job
    /// parses them ([`crate::runtime::JobContext::params`]), not the single
    /// writer thread that claimed it.
    pub metadata_json: String,
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

/// A checkpoint row.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The operation.
    pub operation_id: OperationId,
    /// Why it was written.
    pub checkpoint_type: CheckpointType,
    /// When.
    pub created_at: String,
    /// The job's resumable state.
    pub state: Value,
    /// Directory or file with the state's files, if any.
    pub artifacts_path: Option<String>,
    /// Size of `state` as JSON text.
    pub state_size_bytes: i64,
    /// Size of the files.
    pub artifacts_size_bytes: i64,
    /// Progress when it was taken.
    pub progress_percent: Option<f64>,
    /// The metric `seq` reached when it was taken.
    pub metrics_seq: i64,
}

/// One stored metric point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricPoint {
    /// Per-operation sequence number, from 1.
    pub seq: i64,
    /// When it was recorded.
    pub recorded_at: String,
    /// The point.
    pub data: Value,
}

/// How a run ended, to record.
#[derive(Debug, Clone)]
pub struct Finish {
    /// `completed`, `failed` or `cancelled`.
    pub status: Status,
    /// Why it stopped (failed/cancelled).
    pub stop_reason: Option<StopReason>,
    /// The result summary (completed).
    pub result: Option<Value>,
    /// The error (failed).
    pub error: Option<String>,
    /// The last progress reported.
    pub progress: Option<Progress>,
}

/// What cancelling a tree did.
#[derive(Debug, Clone)]
pub struct TreeCancel {
    /// The root's status before.
    pub before: Status,
    /// Members that are running, with their attempt and whether each is
    /// the root: their jobs must be asked to stop. Each now carries a stop
    /// marker (`stop_reason` on the running row).
    pub running: Vec<(OperationId, i64, bool)>,
}

/// What a submit did: the operation's id and status, and whether it was
/// created now (false: an idempotency key returned the first one).
#[derive(Debug, Clone, PartialEq)]
pub struct Submitted {
    /// Its id.
    pub id: OperationId,
    /// Its status now.
    pub status: Status,
    /// Created by this submit.
    pub created: bool,
}

/// What one claim round may take: per type, how many, and how many GPUs
/// are free. The store claims GPU operations one at a time while GPUs
/// last, then GPU-free ones, most urgent first, within `total`.
#[derive(Debug, Clone)]
pub struct ClaimPlan {
    /// Free slots per type (types with none are left out).
    pub per_type: Vec<(OperationType, usize)>,
    /// Free workers in all.
    pub total: usize,
    /// GPUs free to hand out.
    pub free_gpus: i64,
}

/// A metric point on its way to the store: when it was reported, and the
/// point. Its `seq` is given by the store.
pub type NewMetric = (String, Value);

/// One running operation's live state to write: its progress and the
/// metric points queued since the last write, in the order reported.
#[derive(Debug, Clone)]
pub struct ProgressWrite {
    /// The operation.
    pub id: OperationId,
    /// The run (attempt) the write comes from: a backend shared by several
    /// hosts writes only while that run still holds the operation.
    pub attempt: i64,
    /// Its progress now.
    pub progress: Progress,
    /// Points reported since the last write.
    pub points: Vec<NewMetric>,
}

/// The end of a run, to record with its last progress and points.
#[derive(Debug, Clone)]
pub struct RunEnd {
    /// The operation.
    pub id: OperationId,
    /// Its parent, whose stored aggregate progress is refreshed.
    pub parent: Option<OperationId>,
    /// Progress and metric points not yet written.
    pub last: ProgressWrite,
    /// How it ended.
    pub outcome: RunOutcome,
    /// Delete its checkpoint row (completed, and configured so).
    pub delete_checkpoint: bool,
}

/// How a run ended, as recorded.
#[derive(Debug, Clone)]
pub enum RunOutcome {
    /// A final status.
    Final(Finish),
    /// Failed with attempts left: back to `pending`, not before `at`
    /// (unless a cancel reached the row first: then `cancelled`).
    Retry {
        /// The failure.
        error: String,
        /// Not before this timestamp.
        at: String,
    },
}

/// A checkpoint to save with the progress and points reported before it,
/// so the checkpoint's metric cursor is exact.
#[derive(Debug, Clone)]
pub struct CheckpointWrite {
    /// The checkpoint row (its `metrics_seq` is set by the store).
    pub checkpoint: Checkpoint,
    /// Progress and points up to the checkpoint.
    pub live: ProgressWrite,
    /// The operation's parent, whose stored percentage is recomputed in the
    /// same transaction (as the flusher does): the child's progress moves
    /// with the checkpoint, and a reader of the file must never see the
    /// parent behind it.
    pub parent: Option<OperationId>,
}

/// What start-up recovery did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Recovery {
    /// Operations found `running` after an unclean exit, now `failed`/`crash`.
    pub crashed: Vec<OperationId>,
    /// Operations put back to `resuming` (stopped by a shutdown, or crashed
    /// with a checkpoint when auto-resume is on).
    pub resumed: Vec<OperationId>,
}

/// A page of `list`: the rows, how many match in all, how many are active.
#[derive(Debug, Clone)]
pub struct Listing {
    /// The rows, newest first.
    pub rows: Vec<OperationRecord>,
    /// Rows matching the filter in all.
    pub total: i64,
    /// Active operations overall.
    pub active: i64,
}

/// One daemon registered in the `hosts` table (SPEC §11).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostRecord {
    /// Its name (config `host`, default the hostname).
    pub host: String,
    /// When this daemon started.
    pub started_at: String,
    /// Its last heartbeat.
    pub last_seen_at: String,
    /// The opsd version it runs.
    pub version: String,
    /// Its worker count.
    pub workers: i64,
    /// Its GPU ids (JSON array).
    pub gpus: Value,
    /// The operation types it runs (JSON array).
    pub types: Value,
}

/// What a shared store told the host loop while it waited: new work to
/// claim, or a stop request for an operation that may run here.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Signals {
    /// Something became runnable (submit, resume, rescue).
    pub work: bool,
    /// Some running operation was asked to stop.
    pub stop: bool,
}
