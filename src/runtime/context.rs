//! [`JobContext`]: everything a running job may use — its parameters, its
//! resume state, progress, metrics, durable checkpoints, the stop request,
//! and (for parents) child operations.

use super::running::{RunningOp, StopRequest};
use super::Runtime;
use crate::control::{ProgressUpdate, RunControl};
use crate::ids::{self, OperationId};
use crate::model::{CheckpointType, OperationType, Status};
use crate::store::records::{Checkpoint, ClaimedOperation};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// A job's handle on the daemon while it runs.
pub struct JobContext {
    op: ClaimedOperation,
    /// `op`'s parameters, parsed here on the worker's thread.
    params: Value,
    running: Arc<RunningOp>,
    runtime: Arc<Runtime>,
    resume: Option<Checkpoint>,
    /// When the last periodic checkpoint was written (for the rate limit).
    last_periodic: Option<std::time::Instant>,
}

impl JobContext {
    pub(crate) fn new(
        op: ClaimedOperation,
        running: Arc<RunningOp>,
        runtime: Arc<Runtime>,
        resume: Option<Checkpoint>,
    ) -> Self {
        // Stored by the daemon itself as validated JSON (and checked by the
        // table's CHECK constraint); a job given `null` fails its own
        // parameter parsing with a clear error.
        let params = serde_json::from_str(&op.metadata_json).unwrap_or(Value::Null);
        JobContext {
            params,
            op,
            running,
            runtime,
            resume,
            last_periodic: None,
        }
    }

    /// The operation's id.
    pub fn id(&self) -> &OperationId {
        &self.op.id
    }

    /// This start's number: 1 on the first run, more after resumes/retries.
    pub fn attempt(&self) -> i64 {
        self.op.attempt
    }

    /// The validated parameters.
    pub fn params(&self) -> &Value {
        &self.params
    }

    /// The checkpoint state to continue from, when resuming.
    pub fn resume_state(&self) -> Option<&Value> {
        self.resume.as_ref().map(|c| &c.state)
    }

    /// The checkpoint to continue from, when resuming.
    pub fn resume_checkpoint(&self) -> Option<&Checkpoint> {
        self.resume.as_ref()
    }

    /// GPUs reserved for this operation.
    pub fn gpus(&self) -> &[String] {
        &self.running.gpus
    }

    /// The daemon's settings.
    pub fn config(&self) -> &crate::config::Config {
        &self.runtime.config
    }

    /// A directory kept for this operation across attempts, for checkpoint
    /// files (created on first use).
    pub fn checkpoint_dir(&self) -> std::io::Result<PathBuf> {
        self.running.mark_checkpoint_dir_used();
        self.runtime.checkpoint_dir(&self.op.id)
    }

    /// Say that a process of this run may outlive it (one that did not die,
    /// or held its output open): its checkpoint directory is then removed
    /// at the end, never handed to a later run, where late files of this
    /// one would appear.
    pub fn checkpoint_dir_may_be_in_use(&self) {
        self.running.mark_dir_in_use();
    }

    /// Where this operation's artifacts (models, ...) go (created on use).
    pub fn artifacts_dir(&self) -> std::io::Result<PathBuf> {
        let dir = self.runtime.config.paths().artifacts(&self.op.id);
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// The stop request, if any: the job should checkpoint and return
    /// [`crate::jobs::JobOutcome::Stopped`].
    pub fn stop_request(&self) -> Option<StopRequest> {
        self.running.stop_requested()
    }

    /// Sleep up to `d`, waking early (within 5 ms) when asked to stop.
    pub fn sleep_unless_stopped(&self, d: Duration) {
        let deadline = std::time::Instant::now() + d;
        loop {
            if self.running.stop_requested().is_some() {
                return;
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return;
            }
            std::thread::sleep((deadline - now).min(Duration::from_millis(5)));
        }
    }

    /// Save a checkpoint with optional files (`artifacts_path`, already
    /// written and fsynced by the job). Pending metric points are written in
    /// the same transaction, so the checkpoint's metric cursor is exact.
    pub fn checkpoint_with_files(
        &mut self,
        state: Value,
        artifacts_path: Option<PathBuf>,
    ) -> Result<(), String> {
        let kind = match self.running.stop_requested() {
            Some(StopRequest::Shutdown) => CheckpointType::Shutdown,
            Some(StopRequest::User) | Some(StopRequest::Parent) => CheckpointType::Cancellation,
            Some(StopRequest::ChildFailed) => CheckpointType::Failure,
            None => CheckpointType::Periodic,
        };
        if kind == CheckpointType::Periodic && artifacts_path.is_none() {
            // A self-contained state may be skipped when the last one is
            // recent: a resume from it replays a little more, identically.
            // With files we cannot skip: the job may overwrite the files
            // the previous row points at.
            let min = Duration::from_millis(self.runtime.config.checkpoint_min_interval_ms);
            if self.last_periodic.is_some_and(|t| t.elapsed() < min) {
                return Ok(());
            }
            self.last_periodic = Some(std::time::Instant::now());
        }
        self.save_checkpoint(kind, state, artifacts_path)
    }

    /// Save a checkpoint of an explicit type.
    pub fn save_checkpoint(
        &mut self,
        kind: CheckpointType,
        state: Value,
        artifacts_path: Option<PathBuf>,
    ) -> Result<(), String> {
        let artifacts_size = artifacts_path
            .as_deref()
            .map(super::files::size_on_disk)
            .unwrap_or(0);
        let cp = Checkpoint {
            operation_id: self.op.id.clone(),
            checkpoint_type: kind,
            created_at: ids::now(),
            state,
            artifacts_path: artifacts_path.map(|p| p.display().to_string()),
            state_size_bytes: 0,
            artifacts_size_bytes: artifacts_size as i64,
            progress_percent: None,
            metrics_seq: 0,
        };
        let pending = self
            .runtime
            .live
            .save_checkpoint(&self.runtime.store, &self.running, cp);
        pending
            .wait()
            .map_err(|e| format!("could not save the checkpoint: {e}"))
    }

    /// How many more metric points this operation's queue takes before it
    /// is full; a job reading points from elsewhere (a program's progress
    /// file) stops reading at 0 and calls [`Self::flush_metrics`].
    pub fn metric_room(&self) -> usize {
        self.running.metric_room()
    }

    /// Write this operation's queued metric points (and progress) now,
    /// waiting for the commit: the back-pressure for a full metric queue.
    pub fn flush_metrics(&self) -> Result<(), String> {
        let pending = self
            .runtime
            .live
            .write_progress(&self.runtime.store, std::slice::from_ref(&self.running));
        super::live::wait(pending).map_err(|e| format!("could not write the metric points: {e}"))
    }

    /// Submit a child operation of this one (parents such as `pipeline`).
    pub fn submit_child(
        &self,
        kind: OperationType,
        params: Value,
        phase: Option<(f64, f64)>,
        fail_parent: bool,
    ) -> Result<OperationId, String> {
        self.runtime
            .submit_child(&self.op.id, kind, params, phase, fail_parent)
            .map_err(|e| e.to_string())
    }

    /// Wait until a child reaches a final or stopped status and return it.
    /// Returns early with `None` when this operation is asked to stop.
    pub fn wait_for(&self, child: &OperationId) -> Result<Option<Status>, String> {
        loop {
            let status = self
                .runtime
                .store
                .status(child)
                .map_err(|e| e.to_string())?;
            if !status.is_active() {
                return Ok(Some(status));
            }
            if self.running.stop_requested().is_some() {
                return Ok(None);
            }
            self.runtime.wait_for_change(Duration::from_millis(50));
        }
    }

    /// Another operation's record (a child's status and result).
    pub fn operation(
        &self,
        id: &OperationId,
    ) -> Result<crate::store::records::OperationRecord, String> {
        self.runtime.store.get(id).map_err(|e| e.to_string())
    }

    /// try_resume a child left stopped by an earlier attempt.
    pub fn resume_child(&self, id: &OperationId) -> Result<(), String> {
        self.runtime.resume(id).map_err(|e| e.to_string())
    }

    /// Cancel a child (used when this operation is stopping).
    pub fn cancel_child(&self, child: &OperationId, why: StopRequest) {
        self.runtime.stop_tree_member(child, why);
    }

    /// Add a warning to the operation (shown by `show`).
    pub fn warn(&self, message: &str) {
        self.runtime
            .store
            .add_warning(&self.op.id, message.to_string());
    }
}

impl RunControl for JobContext {
    fn progress(&mut self, update: ProgressUpdate) {
        self.running.report(update);
    }
    fn metric(&mut self, data: Value) {
        let Err((at, data)) = self.running.push_metric(ids::now(), data) else {
            return;
        };
        // The queue is full: write it now (the job waits, memory does not
        // grow), then queue the point; a database that refuses the write
        // keeps the point in memory rather than lose it.
        if let Err(e) = self.flush_metrics() {
            tracing::error!(operation = %self.op.id, "{e}");
        }
        if let Err((at, data)) = self.running.push_metric(at, data) {
            self.running.push_metric_anyway(at, data);
        }
    }
    fn checkpoint(&mut self, state: Value) -> Result<(), String> {
        self.checkpoint_with_files(state, None)
    }
    fn stop_requested(&self) -> bool {
        self.running.stop_requested().is_some()
    }
}
