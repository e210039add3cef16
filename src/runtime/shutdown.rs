//! The shutdown drain (DESIGN-NOTES, "Shutdown, in order").

use super::running::StopRequest;
use super::Runtime;
use crate::model::StopReason;
use std::time::{Duration, Instant};

impl Runtime {
    /// The shutdown drain: stop taking work, ask every running job to
    /// checkpoint and stop, wait up to the grace (or until `hurry` turns
    /// true), record what is still running as cancelled/shutdown with its
    /// latest checkpoint, flush, and close the store.
    pub fn shutdown(&self, grace: Duration, hurry: &dyn Fn() -> bool) {
        self.stopping.set();
        self.wake();
        // Wait for the scheduler to finish its round: a claim committed
        // after the look below would run unasked, or never run at all.
        if let Some(s) = self.scheduler.lock().ok().and_then(|mut s| s.take()) {
            let _ = s.join();
        }
        // No submit carries a round any more (they refuse once stopping),
        // and every round in flight has landed: let go of the rounds, so
        // the workers' hand-off closes with their last holder.
        self.claims.lock().ok().and_then(|mut c| c.take());
        let asked = self.live.stop_all(StopRequest::Shutdown);
        if asked > 0 {
            tracing::info!(
                count = asked,
                "asking running operations to checkpoint and stop"
            );
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
        // checkpoint and is recorded as stopped by what asked it to stop:
        // the shutdown, or a cancel that came first (which must not turn
        // into an automatic resume).
        self.flush();
        let stuck: Vec<(crate::ids::OperationId, StopReason)> = self
            .live
            .all()
            .iter()
            // A job that has ended has its final row queued ahead of this
            // write: it is not stuck, and its checkpoint keeps its type.
            .filter(|op| !op.is_finishing())
            .map(|op| {
                let why = op
                    .stop_requested()
                    .map(|w| w.stop_reason())
                    .unwrap_or(StopReason::Shutdown);
                (op.id.clone(), why)
            })
            .collect();
        if !stuck.is_empty() {
            tracing::warn!(operations = ?stuck, "did not stop within the grace; recorded as cancelled (shutdown)");
            // Durable, but not waited for beyond the writer's own limit: a
            // database that stays unwritable leaves these rows `running`,
            // which the next start recovers as after a crash.
            self.store.stopped_at_shutdown(stuck);
        }
        self.stop_host_loop();
        self.store.close();
        // Every end is answered now: tidy what those answers queued.
        self.janitor.finish();
    }
}
