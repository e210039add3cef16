//! The job types (SPEC §8) behind one trait, and their registry.
//!
//! A job validates its parameters at submit time (so a bad request never
//! becomes a queued operation) and runs on a worker thread with a
//! [`JobContext`]. Jobs never touch the socket or SQL directly.

pub mod backtest;
pub mod command;
pub mod dummy;
pub mod params;
pub mod pipeline;
pub mod training;

use crate::model::OperationType;
pub use crate::runtime::context::JobContext;
use serde_json::Value;

/// How a run ended, as the job sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum JobOutcome {
    /// Done; the result summary.
    Completed(Value),
    /// The job failed; the message says why.
    Failed(String),
    /// The job saw a stop request, checkpointed what it needed, and returned.
    Stopped,
}

/// A kind of work opsd can run.
pub trait Job: Send + Sync {
    /// Check and complete the submitted parameters (defaults filled in).
    /// The error names the offending key.
    fn validate(&self, params: &Value) -> Result<Value, String>;
    /// [`Job::validate`] when it can be done without touching the file
    /// system (so on an async thread); `None` when it cannot.
    fn validate_without_io(&self, _params: &Value) -> Option<Result<Value, String>> {
        None
    }
    /// Do the work. Report through `ctx`; return when done or asked to stop.
    fn run(&self, ctx: &mut JobContext) -> JobOutcome;
}

/// The job that runs operations of `kind`.
pub fn job_for(kind: OperationType) -> &'static dyn Job {
    match kind {
        OperationType::Dummy => &dummy::DummyJob,
        OperationType::Training => &training::TrainingJob,
        OperationType::Backtest => &backtest::BacktestJob,
        OperationType::Pipeline => &pipeline::PipelineJob,
        OperationType::Command => &command::CommandJob,
    }
}

/// The checkpoint state to resume from, as `T`; a failure naming `what`
/// when it does not fit (a checkpoint from another version or run).
pub(crate) fn resume_as<T: serde::de::DeserializeOwned>(
    ctx: &JobContext,
    what: &str,
) -> Result<Option<T>, JobOutcome> {
    ctx.resume_state()
        .map(|s| {
            serde_json::from_value(s.clone()).map_err(|e| {
                JobOutcome::Failed(format!("the checkpoint does not fit this {what}: {e}"))
            })
        })
        .transpose()
}

/// A result summary as a completed outcome.
pub(crate) fn completed<T: serde::Serialize>(result: &T) -> JobOutcome {
    match serde_json::to_value(result) {
        Ok(v) => JobOutcome::Completed(v),
        Err(e) => JobOutcome::Failed(format!("cannot encode the result: {e}")),
    }
}

/// Load the bars of a market job, or the failure naming the file and line.
pub(crate) fn load_bars(path: &std::path::Path) -> Result<crate::market::ohlcv::Bars, JobOutcome> {
    crate::market::ohlcv::load_csv(std::path::Path::new(path))
        .map_err(|e| JobOutcome::Failed(e.to_string()))
}
