//! The scheduler thread: claims runnable operations type by type, as many
//! as there are free slots (and GPUs), registers them as running and hands
//! them to the workers. It sleeps until nudged (a submit, a freed slot) or
//! for 200 ms, which picks up delayed (`run_after`) work.

use super::handoff::Handoff;
use super::live::Live;
use super::{Assignment, Stopping};
use crate::config::Config;
use crate::error::Result;
use crate::store::records::ClaimPlan;
use crate::store::Store;
use crossbeam_channel::Receiver;
use std::sync::Arc;
use std::time::Duration;

/// The scheduler: what it claims from, what it registers in, whom it
/// hands work to.
pub(super) struct Scheduler {
    pub(super) store: Store,
    pub(super) live: Arc<Live>,
    pub(super) config: Arc<Config>,
    /// Nudges: new work, a freed slot.
    pub(super) wake: Receiver<()>,
    /// To the workers. Dropped when the scheduler ends, which lets the
    /// workers end once they are idle.
    pub(super) jobs: Handoff<Assignment>,
    pub(super) stopping: Stopping,
}

impl Scheduler {
    /// Claim rounds until the daemon stops taking work.
    pub(super) fn run(self) {
        while !self.stopping.is_set() {
            if let Err(e) = self.claim_round() {
                // While the database cannot be written, `health` says so;
                // one line per round would flood the log.
                if self.store.degraded().is_none() {
                    tracing::error!("claiming operations failed: {e}");
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            // Sleep until nudged; the timeout picks up delayed (run_after) work.
            let _ = self.wake.recv_timeout(Duration::from_millis(200));
        }
    }

    /// Claim as much work as there are free slots for, type by type.
    fn claim_round(&self) -> Result<()> {
        let (free_total, per_type) = self
            .live
            .free_slots(self.config.workers, |k| self.config.limit(k));
        if free_total == 0 || per_type.is_empty() {
            return Ok(());
        }
        let claimed = self.store.claim(ClaimPlan {
            per_type,
            total: free_total,
            free_gpus: self.live.free_gpus(),
        })?;
        for op in claimed {
            let running = self.live.register(&op);
            if !running.gpus.is_empty() {
                self.store.record_gpus(&op.id, running.gpus.clone());
            }
            self.jobs.send(Assignment { op, running });
        }
        Ok(())
    }
}
