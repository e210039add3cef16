//! What the daemon knows in memory about an operation while it runs: its
//! live progress slot, unflushed metric points and its stop request.
//!
//! A job's progress call only takes this slot's uncontended mutex and sets
//! a flag: no syscall, no SQLite. The flusher writes dirty slots every
//! interval; socket reads of a running operation read the slot directly.

use crate::control::ProgressUpdate;
use crate::ids::OperationId;
use crate::model::{OperationType, StopReason};
use crate::store::records::Progress;
use serde_json::Value;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// Why the runtime asks a job to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopRequest {
    /// `opsd cancel` on this operation.
    User,
    /// Its parent was cancelled or failed.
    Parent,
    /// The daemon is shutting down: checkpoint and stop.
    Shutdown,
    /// A child submitted with `fail_parent` failed.
    ChildFailed,
}

impl StopRequest {
    fn to_u8(self) -> u8 {
        match self {
            StopRequest::User => 1,
            StopRequest::Parent => 2,
            StopRequest::Shutdown => 3,
            StopRequest::ChildFailed => 4,
        }
    }
    fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(StopRequest::User),
            2 => Some(StopRequest::Parent),
            3 => Some(StopRequest::Shutdown),
            4 => Some(StopRequest::ChildFailed),
            _ => None,
        }
    }
    /// The `stop_reason` recorded for an operation stopped by this request.
    pub fn stop_reason(self) -> StopReason {
        match self {
            StopRequest::User => StopReason::User,
            StopRequest::Parent => StopReason::Parent,
            StopRequest::Shutdown => StopReason::Shutdown,
            StopRequest::ChildFailed => StopReason::Error,
        }
    }
}

/// Most metric points queued in memory per running operation (a few MB).
/// A job reporting faster than the flusher writes is made to wait: see
/// [`RunningOp::push_metric`].
pub const METRIC_QUEUE_CAPACITY: usize = 20_000;

/// Progress and metrics not yet written to the database.
#[derive(Debug, Default)]
struct Slot {
    progress: Progress,
    metrics: Vec<(String, Value)>,
}

/// One running operation's shared state (runtime, job, socket readers).
#[derive(Debug)]
pub struct RunningOp {
    /// Its id.
    pub id: OperationId,
    /// Which start this is (1 for the first); writes of this run carry it,
    /// so a backend can refuse those of a run that is no longer current.
    pub attempt: i64,
    /// Its type.
    pub kind: OperationType,
    /// Its parent, whose aggregate progress follows this one.
    pub parent: Option<OperationId>,
    /// GPUs reserved for it.
    pub gpus: Vec<String>,
    /// When this attempt started, for the ETA.
    started: Instant,
    /// Percentage at start (a resumed run starts from its checkpoint's).
    start_percentage: Mutex<f64>,
    slot: Mutex<Slot>,
    dirty: AtomicBool,
    stop: AtomicU8,
    /// Message given with the stop request (cancel reason, failing child).
    stop_message: Mutex<Option<String>>,
    /// Set when its worker is done with it.
    done: tokio::sync::watch::Sender<bool>,
    /// Set once this run has saved a checkpoint (so its end must delete
    /// it; a run that never saved one and did not resume from one has
    /// none to delete).
    checkpointed: AtomicBool,
    /// Set once this run asked for its checkpoint directory (so its end
    /// must look for files to remove; an earlier attempt counts as asked).
    checkpoint_dir_used: AtomicBool,
    /// Set once its job has ended and its final row is queued: its slot
    /// can be claimed for again (the claim commits after the final row).
    finishing: AtomicBool,
    /// Set when a process of this run may outlive it: its checkpoint
    /// directory is not recycled for another run.
    dir_in_use: AtomicBool,
}

/// `*kept = new` when the report carries a value; otherwise keep it.
#[inline]
fn replace_if_some<T>(kept: &mut Option<T>, new: Option<T>) {
    if new.is_some() {
        *kept = new;
    }
}

impl RunningOp {
    /// State for an operation about to run.
    pub fn new(
        id: OperationId,
        attempt: i64,
        kind: OperationType,
        parent: Option<OperationId>,
        start_percentage: f64,
        gpus: Vec<String>,
    ) -> Self {
        RunningOp {
            id,
            attempt,
            kind,
            parent,
            gpus,
            started: Instant::now(),
            start_percentage: Mutex::new(start_percentage),
            slot: Mutex::new(Slot {
                progress: Progress {
                    percentage: start_percentage,
                    ..Progress::default()
                },
                metrics: Vec::new(),
            }),
            dirty: AtomicBool::new(false),
            stop: AtomicU8::new(0),
            stop_message: Mutex::new(None),
            done: tokio::sync::watch::channel(false).0,
            checkpointed: AtomicBool::new(attempt > 1),
            checkpoint_dir_used: AtomicBool::new(attempt > 1),
            finishing: AtomicBool::new(false),
            dir_in_use: AtomicBool::new(false),
        }
    }

    /// Restart the ETA baseline (after restoring a checkpoint's progress).
    pub fn reset_progress(&self, progress: Progress) {
        if let Ok(mut p) = self.start_percentage.lock() {
            *p = progress.percentage;
        }
        if let Ok(mut s) = self.slot.lock() {
            s.progress = progress;
        }
        self.dirty.store(true, Ordering::Release);
    }

    /// Merge a progress report into the slot. The hot path of every job.
    pub fn report(&self, u: ProgressUpdate) {
        if let Ok(mut s) = self.slot.lock() {
            // What the report carries replaces what was kept, field by
            // field in place (no moves of the rest: this is the hot path).
            let p = &mut s.progress;
            if let Some(v) = u.percentage {
                p.percentage = v.clamp(0.0, 100.0);
            }
            replace_if_some(&mut p.message, u.message);
            replace_if_some(&mut p.current_step, u.current_step);
            replace_if_some(&mut p.steps_completed, u.steps_completed);
            replace_if_some(&mut p.steps_total, u.steps_total);
            replace_if_some(&mut p.items_processed, u.items_processed);
            replace_if_some(&mut p.items_total, u.items_total);
            replace_if_some(&mut p.context, u.context);
        }
        self.dirty.store(true, Ordering::Release);
    }

    /// Queue a metric point for the next flush, unless
    /// [`METRIC_QUEUE_CAPACITY`] points are already waiting: then the
    /// point comes back, and the caller writes the queue
    /// ([`crate::runtime::Runtime::flush_ops`]) or stops reading its
    /// source. This is what bounds the daemon's memory whatever a job
    /// reports.
    pub fn push_metric(&self, at: String, data: Value) -> Result<(), (String, Value)> {
        let Ok(mut s) = self.slot.lock() else {
            return Err((at, data));
        };
        if s.metrics.len() >= METRIC_QUEUE_CAPACITY {
            return Err((at, data));
        }
        s.metrics.push((at, data));
        drop(s);
        self.dirty.store(true, Ordering::Release);
        Ok(())
    }

    /// Queue a metric point even past the capacity: only for a point that
    /// could not be written because the database refused, so it is not lost.
    pub fn push_metric_anyway(&self, at: String, data: Value) {
        if let Ok(mut s) = self.slot.lock() {
            s.metrics.push((at, data));
        }
        self.dirty.store(true, Ordering::Release);
    }

    /// How many more points the metric queue takes before it is full.
    pub fn metric_room(&self) -> usize {
        self.slot
            .lock()
            .map(|s| METRIC_QUEUE_CAPACITY.saturating_sub(s.metrics.len()))
            .unwrap_or(0)
    }

    /// The live progress, with the ETA computed from the rate so far.
    pub fn progress(&self) -> Progress {
        let mut p = self
            .slot
            .lock()
            .map(|s| s.progress.clone())
            .unwrap_or_default();
        let start = self.start_percentage.lock().map(|v| *v).unwrap_or(0.0);
        let done = p.percentage - start;
        let elapsed = self.started.elapsed().as_secs_f64();
        p.eta_seconds = if done > 0.0 && p.percentage < 100.0 && elapsed > 0.0 {
            Some((elapsed / done * (100.0 - p.percentage) * 10.0).round() / 10.0)
        } else {
            None
        };
        p
    }

    /// If anything changed since the last call, the progress and the
    /// metric points to write (the points are taken out of the slot).
    pub fn take_dirty(&self) -> Option<(Progress, Vec<(String, Value)>)> {
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return None;
        }
        let metrics = self
            .slot
            .lock()
            .map(|mut s| std::mem::take(&mut s.metrics))
            .unwrap_or_default();
        Some((self.progress(), metrics))
    }

    /// Ask the job to stop. The first request wins; a shutdown overrides a
    /// pending user request only if none was made.
    pub fn request_stop(&self, why: StopRequest, message: Option<String>) {
        if self
            .stop
            .compare_exchange(0, why.to_u8(), Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            if let Ok(mut m) = self.stop_message.lock() {
                *m = message;
            }
        }
    }

    /// The stop request, if any. An atomic load: cheap enough for hot loops.
    pub fn stop_requested(&self) -> Option<StopRequest> {
        StopRequest::from_u8(self.stop.load(Ordering::Acquire))
    }

    /// The message given with the stop request.
    pub fn stop_message(&self) -> Option<String> {
        self.stop_message.lock().ok().and_then(|m| m.clone())
    }

    /// Note that this run saved a checkpoint.
    pub fn mark_checkpointed(&self) {
        self.checkpointed.store(true, Ordering::Release);
    }

    /// Whether this run may have a checkpoint row (it saved one, or it
    /// resumed from one).
    pub fn may_have_checkpoint(&self) -> bool {
        self.checkpointed.load(Ordering::Acquire)
    }

    /// Note that this run was handed its checkpoint directory.
    pub fn mark_checkpoint_dir_used(&self) {
        self.checkpoint_dir_used.store(true, Ordering::Release);
    }

    /// Whether checkpoint files may exist for it: this run (or an earlier
    /// attempt) was handed the directory. A first run that never was has
    /// none, and its end skips looking (a `stat` per operation on the
    /// writer thread).
    pub fn may_have_checkpoint_files(&self) -> bool {
        self.checkpoint_dir_used.load(Ordering::Acquire) || self.may_have_checkpoint()
    }

    /// Note that a process of this run may outlive it.
    pub fn mark_dir_in_use(&self) {
        self.dir_in_use.store(true, Ordering::Release);
    }

    /// Whether its checkpoint directory may be handed to a later run: no
    /// process of this run is known to have outlived it.
    pub fn dir_reusable(&self) -> bool {
        !self.dir_in_use.load(Ordering::Acquire)
    }

    /// Note that its job has ended and its final row is queued.
    pub fn mark_finishing(&self) {
        self.finishing.store(true, Ordering::Release);
    }

    /// Whether its job has ended and only its final row's commit is left.
    pub fn is_finishing(&self) -> bool {
        self.finishing.load(Ordering::Acquire)
    }

    /// Mark the worker done with it; wakes anyone waiting in [`Self::wait_done`].
    pub fn mark_done(&self) {
        self.done.send_replace(true);
    }

    /// Wait until the worker is done with it, at most `timeout`. True if done.
    pub async fn wait_done(&self, timeout: std::time::Duration) -> bool {
        let mut rx = self.done.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|d| *d))
            .await
            .map(|r| r.is_ok())
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_metric_queue_refuses_points_past_its_capacity_and_keeps_order() {
        let op = RunningOp::new(
            OperationId::from("op_command_test"),
            1,
            OperationType::Command,
            None,
            0.0,
            Vec::new(),
        );
        for i in 0..METRIC_QUEUE_CAPACITY {
            assert_eq!(op.metric_room(), METRIC_QUEUE_CAPACITY - i);
            op.push_metric(format!("t{i}"), json!({ "i": i })).unwrap();
        }
        assert_eq!(op.metric_room(), 0);
        let back = op
            .push_metric("late".into(), json!({ "i": METRIC_QUEUE_CAPACITY }))
            .unwrap_err();
        assert_eq!(back.1, json!({ "i": METRIC_QUEUE_CAPACITY }));
        let (_, points) = op.take_dirty().unwrap();
        assert_eq!(points.len(), METRIC_QUEUE_CAPACITY);
        assert!(points
            .iter()
            .enumerate()
            .all(|(i, (_, d))| d["i"] == json!(i)));
        assert_eq!(op.metric_room(), METRIC_QUEUE_CAPACITY);
        op.push_metric(back.0, back.1).unwrap();
    }
}
