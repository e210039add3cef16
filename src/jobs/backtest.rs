//! `backtest`: a strategy over OHLCV bars (engine in `crate::market`). For
//! `strategy = model` the trained model's predicted directions are the
//! signals.

use super::{Job, JobContext, JobOutcome};
use crate::market::backtest::{run_backtest, BacktestOutcome, BacktestState};
use crate::market::params::{BacktestParams, StrategyKind};
use crate::ml::Model;
use serde_json::Value;
use std::path::Path;

/// The `backtest` job.
pub struct BacktestJob;

impl BacktestJob {
    /// Check values only (the pipeline fills in `model` later).
    pub fn validate_values(params: &Value) -> Result<BacktestParams, String> {
        let p = BacktestParams::from_json(params)?;
        p.validate_values()?;
        Ok(p)
    }
}

impl Job for BacktestJob {
    fn validate(&self, params: &Value) -> Result<Value, String> {
        let p = BacktestParams::from_json(params)?;
        p.validate()?;
        serde_json::to_value(&p).map_err(|e| e.to_string())
    }

    fn run(&self, ctx: &mut JobContext) -> JobOutcome {
        let params = match BacktestParams::from_json(ctx.params()) {
            Ok(p) => p,
            Err(e) => return JobOutcome::Failed(e),
        };
        let (bars, resume) = match (
            super::load_bars(Path::new(&params.data)),
            super::resume_as::<BacktestState>(ctx, "backtest"),
        ) {
            (Ok(b), Ok(r)) => (b, r),
            (Err(o), _) | (_, Err(o)) => return o,
        };
        let signals = match (params.strategy, &params.model) {
            (StrategyKind::Model, Some(path)) => match Model::load(Path::new(path)) {
                Ok(m) => Some(m.predict_directions(&bars)),
                Err(e) => return JobOutcome::Failed(format!("model: {e}")),
            },
            (StrategyKind::Model, None) => {
                return JobOutcome::Failed("model: required when strategy = model".into())
            }
            _ => None,
        };
        match run_backtest(&bars, &params, signals.as_deref(), resume, ctx) {
            Ok(BacktestOutcome::Completed(result)) => super::completed(&result),
            Ok(BacktestOutcome::Stopped(_)) => JobOutcome::Stopped,
            Err(e) => JobOutcome::Failed(e),
        }
    }
}
