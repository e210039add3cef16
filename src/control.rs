//! The narrow interface a long computation (a backtest, a training run) uses
//! to talk to whoever runs it. Engines depend on this trait only, so they can
//! be tested and benchmarked without a daemon; the runtime's job context
//! implements it.

use serde::{Deserialize, Serialize};

/// One progress report. Every field is optional so an engine reports what it
/// knows; `None` leaves the previously reported value in place.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProgressUpdate {
    /// Completion in percent, 0-100.
    pub percentage: Option<f64>,
    /// Human readable, e.g. `Epoch 3/50 · Batch 120/640`.
    pub message: Option<String>,
    /// Name of the step in progress, e.g. `training`.
    pub current_step: Option<String>,
    /// Steps finished so far.
    pub steps_completed: Option<i64>,
    /// Steps in all.
    pub steps_total: Option<i64>,
    /// Items (bars, samples, batches) processed so far.
    pub items_processed: Option<i64>,
    /// Items in all.
    pub items_total: Option<i64>,
    /// Domain details (epoch, batch, symbol, ...), a JSON object.
    pub context: Option<serde_json::Value>,
}

/// What an engine may ask of its runner while it works.
pub trait RunControl {
    /// Report progress. Must be cheap: it is called from hot loops.
    fn progress(&mut self, update: ProgressUpdate);
    /// Append one metric point (a JSON object) to the operation's series.
    fn metric(&mut self, data: serde_json::Value);
    /// Persist a resumable state durably. Returns an error message when the
    /// state could not be saved (the engine should then fail).
    fn checkpoint(&mut self, state: serde_json::Value) -> Result<(), String>;
    /// True once the runner wants the engine to checkpoint and return early
    /// (cancel or daemon shutdown). Cheap: an atomic load.
    fn stop_requested(&self) -> bool;
}

/// A `RunControl` that records everything in memory: for tests, benchmarks
/// and running an engine directly.
#[derive(Debug, Default)]
pub struct RecordingControl {
    /// Every progress update received, in order.
    pub progress: Vec<ProgressUpdate>,
    /// Every metric point received, in order.
    pub metrics: Vec<serde_json::Value>,
    /// Every checkpoint state received, in order.
    pub checkpoints: Vec<serde_json::Value>,
    /// When set, `stop_requested` turns true after this many progress calls.
    pub stop_after_progress_calls: Option<usize>,
    /// When false, progress updates are counted but not stored (benchmarks).
    pub keep_progress: bool,
    /// Number of progress calls seen.
    pub progress_calls: usize,
}

impl RecordingControl {
    /// A recorder that keeps every progress update.
    pub fn new() -> Self {
        Self {
            keep_progress: true,
            ..Self::default()
        }
    }
}

impl RunControl for RecordingControl {
    fn progress(&mut self, update: ProgressUpdate) {
        self.progress_calls += 1;
        if self.keep_progress {
            self.progress.push(update);
        }
    }
    fn metric(&mut self, data: serde_json::Value) {
        self.metrics.push(data);
    }
    fn checkpoint(&mut self, state: serde_json::Value) -> Result<(), String> {
        self.checkpoints.push(state);
        Ok(())
    }
    fn stop_requested(&self) -> bool {
        matches!(self.stop_after_progress_calls, Some(n) if self.progress_calls >= n)
    }
}
