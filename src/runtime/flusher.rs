//! The flusher thread: writes dirty progress slots and queued metric
//! points every `flush_interval_ms` in one transaction, refreshes parents'
//! aggregate progress, and runs the hourly checkpoint retention sweep.

use super::live::Live;
use super::Stopping;
use crate::config::Config;
use crate::ids;
use crate::store::Store;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The flusher: what it reads from and writes to.
pub(super) struct Flusher {
    pub(super) store: Store,
    pub(super) live: Arc<Live>,
    pub(super) config: Arc<Config>,
    pub(super) stopping: Stopping,
}

impl Flusher {
    /// Flush every interval until the daemon stops taking work (the drain
    /// flushes once more itself).
    pub(super) fn run(self) {
        let interval = self.config.flush_interval();
        let mut last_sweep: Option<Instant> = None;
        while !self.stopping.is_set() {
            std::thread::sleep(interval);
            if let Err(e) = self.live.flush_all(&self.store) {
                tracing::error!("flushing progress failed: {e}");
            }
            if last_sweep.is_none_or(|t| t.elapsed() >= Duration::from_secs(3600)) {
                self.sweep_checkpoints();
                last_sweep = Some(Instant::now());
            }
        }
    }

    /// The retention sweep: drop checkpoints (rows and files) of stopped
    /// operations older than `checkpoint_retention_days`.
    fn sweep_checkpoints(&self) {
        let days = self.config.checkpoint_retention_days;
        if days == 0 {
            return;
        }
        let before = ids::timestamp(chrono::Utc::now() - chrono::Duration::days(days as i64));
        match self.store.sweep_checkpoints(before).wait() {
            Ok(gone) => {
                for id in &gone {
                    self.config.paths().remove_checkpoints(id);
                }
                if !gone.is_empty() {
                    tracing::info!(count = gone.len(), days, "deleted old checkpoints");
                }
            }
            Err(e) => tracing::warn!("checkpoint retention sweep failed: {e}"),
        }
    }
}
