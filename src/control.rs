//! The narrow interface a long computation (a backtest, a training run) uses
//! to talk to whoever runs it. Engines depend on this trait only, so they can
//! be tested and benchmarked without a daemon; the runtime's job context
//! implements it.

use serde::{Deserialize, Serialize};

/// The progress fields of SPEC §4, declared once for everything that
/// carries them. `P` is the percentage's type: `Option<f64>` in a report
/// ([`ProgressUpdate`], where every field is what the reporter knows), a
/// plain `f64` in the state the daemon keeps and stores
/// (`crate::store::records::Progress`). The store's row and the wire
/// spell them as columns (`progress_percent`, ...) and convert.
///
/// Unknown fields are refused: the progress file of a `command` job is
/// parsed into this, and its error then names the known fields.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    bound(deserialize = "P: Deserialize<'de> + Default")
)]
pub struct ProgressFields<P> {
    /// Completion in percent, 0-100.
    pub percentage: P,
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
    /// Estimated seconds left. The daemon computes it from the rate of
    /// progress; a report's value is ignored.
    pub eta_seconds: Option<f64>,
    /// Domain details (epoch, batch, symbol, ...), a JSON object.
    pub context: Option<serde_json::Value>,
}

/// One progress report. Every field is optional so an engine reports what it
/// knows; `None` leaves the previously reported value in place.
pub type ProgressUpdate = ProgressFields<Option<f64>>;

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

#[cfg(test)]
mod tests {
    use super::*;

    /// A report names only what it knows; an unknown field is refused with
    /// the known ones listed (what a `command` job's author sees).
    #[test]
    fn a_report_parses_partially_and_refuses_unknown_fields() {
        let u: ProgressUpdate =
            serde_json::from_value(serde_json::json!({ "message": "half", "steps_total": 4 }))
                .unwrap();
        assert_eq!(u.percentage, None);
        assert_eq!(u.message.as_deref(), Some("half"));
        assert_eq!(u.steps_total, Some(4));
        let e = serde_json::from_value::<ProgressUpdate>(serde_json::json!({ "percent": 5 }))
            .unwrap_err()
            .to_string();
        assert!(e.contains("percent") && e.contains("percentage"), "{e}");
        assert!(
            e.contains("items_processed") && e.contains("context"),
            "{e}"
        );
    }
}
