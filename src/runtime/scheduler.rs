//! The scheduler thread: claims runnable operations type by type, as many
//! as there are free slots (and GPUs), registers them as running and hands
//! them to the workers. It sleeps until nudged (a submit, a freed slot) or
//! for 200 ms, which picks up delayed (`run_after`) work.

use super::running::RunningOp;
use super::{Assignment, Runtime};
use crate::error::{Error, Result};
use crate::model::OperationType;
use crate::store::records::ClaimPlan;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

impl Runtime {
    pub(super) fn schedule_loop(self: Arc<Self>) {
        while self.accepting() {
            if let Err(e) = self.claim_round() {
                // While the database cannot be written, `health` says so;
                // one line per round would flood the log.
                if self.store.degraded().is_none() {
                    tracing::error!("claiming operations failed: {e}");
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            // Sleep until nudged; the timeout picks up delayed (run_after) work.
            let _ = self.wake_rx.recv_timeout(Duration::from_millis(200));
        }
    }

    /// Claim as much work as there are free slots for, type by type.
    fn claim_round(&self) -> Result<()> {
        let (free_total, per_kind) = {
            let running = self
                .running
                .lock()
                .map_err(|_| Error::Internal("lock".into()))?;
            let mut counts: HashMap<OperationType, usize> = HashMap::new();
            for op in running.values() {
                *counts.entry(op.kind).or_default() += 1;
            }
            let free_total = self.config.workers.saturating_sub(running.len());
            let per_kind: Vec<(OperationType, usize)> = OperationType::ALL
                .iter()
                .map(|k| {
                    (
                        *k,
                        self.config
                            .limit(*k)
                            .saturating_sub(counts.get(k).copied().unwrap_or(0)),
                    )
                })
                .filter(|(_, free)| *free > 0)
                .collect();
            (free_total, per_kind)
        };
        if free_total == 0 || per_kind.is_empty() {
            return Ok(());
        }
        let free_gpus = self.gpus.lock().map(|g| g.free_count()).unwrap_or(0) as i64;
        let claimed = self.store.claim(ClaimPlan {
            per_type: per_kind,
            total: free_total,
            free_gpus,
        })?;
        for op in claimed {
            let assigned = if op.gpus_requested > 0 {
                self.gpus
                    .lock()
                    .map(|mut g| g.take(&op.id, op.gpus_requested as usize))
                    .unwrap_or_default()
            } else {
                Vec::new()
            };
            if !assigned.is_empty() {
                self.store.record_gpus(&op.id, assigned.clone());
            }
            let running = Arc::new(RunningOp::new(
                op.id.clone(),
                op.kind,
                op.parent.clone(),
                op.progress_percent,
                assigned,
            ));
            if let Ok(mut m) = self.running.lock() {
                m.insert(op.id.clone(), running.clone());
                if let Some((attempt, why, msg)) = self
                    .early_stops
                    .lock()
                    .ok()
                    .and_then(|mut e| e.remove(&op.id))
                {
                    if attempt == op.attempt {
                        running.request_stop(why, msg);
                    }
                }
            }
            let sent = match self.job_tx.lock().ok().and_then(|t| t.clone()) {
                Some(tx) => tx.send(Assignment { op, running }).is_ok(),
                None => false,
            };
            if !sent {
                tracing::error!("no workers to run a claimed operation");
            }
        }
        Ok(())
    }
}
