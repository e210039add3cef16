//! The flusher thread: writes dirty progress slots and queued metric
//! points every `flush_interval_ms` in one transaction, refreshes parents'
//! aggregate progress, and runs the hourly checkpoint retention sweep.

use super::running::RunningOp;
use super::Runtime;
use crate::ids;
use crate::store::records::ProgressWrite;
use std::sync::Arc;
use std::time::{Duration, Instant};

impl Runtime {
    pub(super) fn flush_loop(self: Arc<Self>) {
        let interval = self.config.flush_interval();
        let mut last_sweep: Option<Instant> = None;
        while self.accepting() {
            std::thread::sleep(interval);
            self.flush();
            if last_sweep.is_none_or(|t| t.elapsed() >= Duration::from_secs(3600)) {
                self.sweep_checkpoints();
                last_sweep = Some(Instant::now());
            }
        }
    }

    /// The retention sweep: drop checkpoints (rows and files) of stopped
    /// operations older than `checkpoint_retention_days`.
    pub fn sweep_checkpoints(&self) {
        let days = self.config.checkpoint_retention_days;
        if days == 0 {
            return;
        }
        let before = ids::timestamp(chrono::Utc::now() - chrono::Duration::days(days as i64));
        match self.store.sweep_checkpoints(before).wait() {
            Ok(gone) => {
                for id in &gone {
                    let _ = std::fs::remove_dir_all(
                        self.config.state_dir.join("checkpoints").join(id.as_str()),
                    );
                }
                if !gone.is_empty() {
                    tracing::info!(count = gone.len(), days, "deleted old checkpoints");
                }
            }
            Err(e) => tracing::warn!("checkpoint retention sweep failed: {e}"),
        }
    }

    /// Write every dirty progress slot and queued metric point, then
    /// refresh the aggregate progress of their parents. Waits for commit.
    pub fn flush(&self) {
        let live: Vec<Arc<RunningOp>> = self
            .running
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        if let Err(e) = self.flush_ops(&live) {
            tracing::error!("flushing progress failed: {e}");
        }
    }

    /// Write these operations' dirty progress and queued metric points now
    /// and wait for the commit. The flusher calls it for every running
    /// operation; a job whose metric queue is full calls it for its own, so
    /// the job waits for its writes instead of the daemon's memory growing.
    pub(crate) fn flush_ops(&self, live: &[Arc<RunningOp>]) -> crate::error::Result<()> {
        let mut batch = Vec::new();
        let mut parents = Vec::new();
        let order = self.metrics_order.lock();
        for op in live.iter() {
            if let Some((progress, points)) = op.take_dirty() {
                if let Some(p) = &op.parent {
                    parents.push(p.clone());
                }
                batch.push(ProgressWrite {
                    id: op.id.clone(),
                    progress,
                    points,
                });
            }
        }
        if batch.is_empty() {
            return Ok(());
        }
        parents.sort();
        parents.dedup();
        let pending = self.store.write_progress(batch, parents);
        drop(order);
        pending.wait()
    }
}
