//! A worker thread: takes claimed operations off the channel, restores
//! their checkpoint, runs the job with panics caught, and records how it
//! ended. Every path out of `running` ends here in a final or resumable
//! status.

use super::context::JobContext;
use super::handoff::Intake;
use super::running::{RunningOp, StopRequest};
use super::{Assignment, Runtime};
use crate::error::Result;
use crate::ids;
use crate::jobs::{job_for, JobOutcome};
use crate::model::{Status, StopReason};
use crate::store::records::{
    Checkpoint, ClaimedOperation, Finish, Progress, ProgressWrite, RunEnd, RunOutcome,
};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

/// A worker: runs the operations the scheduler hands it, one at a time.
pub(super) struct Worker {
    rt: Arc<Runtime>,
    jobs: Intake<Assignment>,
}

impl Worker {
    /// A worker taking work from `jobs`.
    pub(super) fn new(rt: Arc<Runtime>, jobs: Intake<Assignment>) -> Worker {
        Worker { rt, jobs }
    }

    /// Run operations until the scheduler has gone and the queue is empty.
    pub(super) fn run(self) {
        while let Some(Assignment { op, running }) = self.jobs.take() {
            run_one(&self.rt, op, running);
        }
    }
}

fn run_one(rt: &Arc<Runtime>, op: ClaimedOperation, running: Arc<RunningOp>) {
    let id = op.id.clone();
    let outcome = match restore(rt, &op, &running) {
        Ok(resume) => {
            let job = job_for(op.kind);
            let mut ctx = JobContext::new(op.clone(), running.clone(), rt.clone(), resume);
            match catch_unwind(AssertUnwindSafe(|| job.run(&mut ctx))) {
                Ok(o) => o,
                Err(panic) => {
                    let msg = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "unknown panic".into());
                    tracing::error!(operation = %id, "job panicked: {msg}");
                    JobOutcome::Failed(format!("the job panicked: {msg}"))
                }
            }
        }
        Err(e) => JobOutcome::Failed(format!("could not restore the checkpoint: {e}")),
    };
    // The worker moves on at once; the writer commits the final row and
    // only then releases the operation (see `release`).
    record(rt, op, running, outcome);
}

/// After the final row is committed: free the GPUs and the slot, wake
/// whoever waits. Runs on the writer's side (after the commit's flush),
/// so it stays cheap. The slot was already claimable while the run
/// finished (`record`), so only freed GPUs are new room for the scheduler.
fn release(rt: &Runtime, id: &crate::ids::OperationId, running: &RunningOp) {
    rt.live.release(id, running);
    rt.notify_change();
    if !running.gpus.is_empty() {
        rt.wake();
    }
}

/// On a second or later start, load the checkpoint, drop metric points
/// recorded after it (the job regenerates them) and restore its progress.
fn restore(rt: &Runtime, op: &ClaimedOperation, running: &RunningOp) -> Result<Option<Checkpoint>> {
    if op.attempt <= 1 {
        return Ok(None);
    }
    let cp = rt.store.begin_attempt(&op.id).wait()?;
    let pct = cp.as_ref().and_then(|c| c.progress_percent).unwrap_or(0.0);
    running.reset_progress(Progress {
        percentage: pct,
        message: Some(if cp.is_some() {
            "Resuming from checkpoint".into()
        } else {
            "Starting again (no checkpoint)".into()
        }),
        ..Progress::default()
    });
    Ok(cp)
}

/// Map the job's outcome and the stop request to the final row, and hand
/// it to the writer; the operation is released once it is committed.
fn record(rt: &Arc<Runtime>, op: ClaimedOperation, running: Arc<RunningOp>, outcome: JobOutcome) {
    let stop = running.stop_requested();
    let stop_msg = running.stop_message();
    let mut retry_at = None;
    let progress = running.progress();
    let finish = match (outcome, stop) {
        (JobOutcome::Completed(result), _) => Finish {
            status: Status::Completed,
            stop_reason: None,
            result: Some(result),
            error: None,
            progress: Some(progress),
        },
        // A child with fail_parent failed: this parent fails with it.
        (JobOutcome::Stopped, Some(StopRequest::ChildFailed))
        | (JobOutcome::Failed(_), Some(StopRequest::ChildFailed)) => Finish {
            status: Status::Failed,
            stop_reason: Some(StopReason::Error),
            result: None,
            error: Some(stop_msg.unwrap_or_else(|| "a child operation failed".into())),
            progress: Some(progress),
        },
        // Asked to stop: cancelled, however the job ended (SPEC §8).
        (JobOutcome::Stopped, Some(why)) | (JobOutcome::Failed(_), Some(why)) => Finish {
            status: Status::Cancelled,
            stop_reason: Some(why.stop_reason()),
            result: None,
            error: stop_msg,
            progress: Some(progress),
        },
        (JobOutcome::Stopped, None) => Finish {
            status: Status::Failed,
            stop_reason: Some(StopReason::Error),
            result: None,
            error: Some("the job stopped without being asked to".into()),
            progress: Some(progress),
        },
        (JobOutcome::Failed(msg), None) => {
            if op.attempt < op.max_attempts && rt.accepting() {
                retry_at = Some(backoff(rt.config.retry_base_delay_ms, op.attempt));
            }
            Finish {
                status: Status::Failed,
                stop_reason: Some(StopReason::Error),
                result: None,
                error: Some(msg),
                progress: Some(progress),
            }
        }
    };
    let delete_cp =
        finish.status == Status::Completed && rt.config.delete_checkpoints_on_completion;
    let delete_files = delete_cp && running.may_have_checkpoint_files();
    // Only a run that saved a checkpoint (or resumed from one) has a row to
    // delete: most runs skip the statement. Its directory may exist anyway
    // (a command job creates it at start), so that goes in any case.
    let delete_row = delete_cp && running.may_have_checkpoint();
    let retry = retry_at.map(|d| ids::timestamp(chrono::Utc::now() + d));
    if let Some(d) = retry_at {
        tracing::info!(operation = %op.id, attempt = op.attempt, "failed; retrying in {:?}", d);
    }
    // A failing child submitted with fail_parent fails its parent.
    let fail_parent = (finish.status == Status::Failed && retry_at.is_none() && op.fail_parent)
        .then(|| op.parent.clone())
        .flatten()
        .map(|p| {
            (
                p,
                format!(
                    "child {} failed: {}",
                    op.id,
                    finish.error.clone().unwrap_or_default()
                ),
            )
        });
    let (id, parent) = (op.id.clone(), op.parent.clone());
    let end = move |last: ProgressWrite| RunEnd {
        id,
        parent,
        last,
        outcome: match retry {
            Some(at) => RunOutcome::Retry {
                error: finish.error.clone().unwrap_or_else(|| "failed".into()),
                at,
            },
            None => RunOutcome::Final(finish),
        },
        delete_checkpoint: delete_row,
    };
    let rt2 = rt.clone();
    let slot = running.clone();
    let after = Box::new(move |result: Result<()>| {
        let id = &op.id;
        match result {
            // The end is not recorded (a failed commit, or on a shared
            // store a run whose claim another host took over): its files
            // stay, for the run that will hold it.
            Err(e) => {
                tracing::error!(operation = %id, "recording the end of the operation failed: {e}")
            }
            Ok(()) if delete_files => rt2.remove_checkpoint_dir(id, slot.dir_reusable()),
            Ok(()) => {}
        }
        if let Some((parent, msg)) = fail_parent {
            if let Some(live) = rt2.live(&parent) {
                live.request_stop(StopRequest::ChildFailed, Some(msg));
            }
        }
        release(&rt2, id, &slot);
        super::hooks::on_finish(&rt2, id);
    });
    rt.live.finish(&rt.store, &running, end, after);
    // Its slot can be claimed for now: the round is queued behind the
    // final row in the writer's queue, usually in the same commit.
    rt.claim_or_wake();
}

/// Exponential backoff with jitter: base · 2^(attempt-1) · [0.5, 1.5).
fn backoff(base_ms: u64, attempt: i64) -> Duration {
    let exp = base_ms.saturating_mul(1u64 << (attempt - 1).clamp(0, 20) as u32);
    let jitter: f64 = 0.5 + rand::random::<f64>();
    Duration::from_millis(((exp as f64) * jitter).min(3_600_000.0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_bounded() {
        for _ in 0..20 {
            let d1 = backoff(1000, 1).as_millis();
            let d3 = backoff(1000, 3).as_millis();
            assert!((500..1500).contains(&d1), "{d1}");
            assert!((2000..6000).contains(&d3), "{d3}");
        }
        assert!(backoff(1000, 60).as_secs() <= 3600);
    }
}
