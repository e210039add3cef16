//! The shutdown drain (DESIGN-NOTES, "Shutdown, in order").

use super::running::{RunningOp, StopRequest};
use super::Runtime;
use crate::ids;
use crate::model::{Status, StopReason};
use crate::store::operations as ops;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

impl Runtime {
    /// The shutdown drain: stop taking work, ask every running job to
    /// checkpoint and stop, wait up to the grace (or until `hurry` turns
    /// true), record what is still running as cancelled/shutdown with its
    /// latest checkpoint, flush, and close the store.
    pub fn shutdown(&self, grace: Duration, hurry: &dyn Fn() -> bool) {
        self.accepting.store(false, Ordering::Release);
        self.wake();
        let live: Vec<Arc<RunningOp>> = self
            .running
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        if !live.is_empty() {
            tracing::info!(
                count = live.len(),
                "asking running operations to checkpoint and stop"
            );
        }
        for op in &live {
            op.request_stop(StopRequest::Shutdown, None);
        }
        let deadline = Instant::now() + grace;
        let mut last_log = Instant::now();
        loop {
            let left = self.running_ids();
            if left.is_empty() || Instant::now() >= deadline || hurry() {
                break;
            }
            if last_log.elapsed() >= Duration::from_secs(5) {
                tracing::info!(still_running = ?left, "waiting for operations to checkpoint");
                last_log = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // Whatever did not stop in time keeps its latest periodic
        // checkpoint and is recorded as stopped by the shutdown.
        self.flush();
        let stuck = self.running_ids();
        if !stuck.is_empty() {
            tracing::warn!(operations = ?stuck, "did not stop within the grace; recorded as cancelled (shutdown)");
            let now = ids::now();
            let _ = self.store.write(move |c| {
                for id in &stuck {
                    ops::finish(
                        c,
                        id,
                        &ops::Finish {
                            status: Status::Cancelled,
                            stop_reason: Some(StopReason::Shutdown),
                            result: None,
                            error: Some("the daemon stopped before this operation could checkpoint; it resumes from its latest checkpoint".into()),
                            progress: None,
                        },
                        &now,
                    )?;
                    crate::store::checkpoints::set_type(c, id, crate::model::CheckpointType::Shutdown)?;
                }
                Ok(())
            });
        }
        if let Ok(mut tx) = self.job_tx.lock() {
            tx.take();
        }
        self.store.close();
    }
}
