//! `training`: the built-in MLP on OHLCV bars (engine in `crate::ml`).
//! This file only adapts it to the daemon: parameters, the model's place
//! under the state directory, resume state in and out.

use super::{Job, JobContext, JobOutcome};
use crate::ml::{run_training, TrainingOutcome, TrainingParams, TrainingState};
use serde_json::Value;

/// The `training` job.
pub struct TrainingJob;

impl Job for TrainingJob {
    fn validate(&self, params: &Value) -> Result<Value, String> {
        let p = TrainingParams::from_json(params)?;
        p.validate()?;
        serde_json::to_value(&p).map_err(|e| e.to_string())
    }

    fn run(&self, ctx: &mut JobContext) -> JobOutcome {
        let params = match TrainingParams::from_json(ctx.params()) {
            Ok(p) => p,
            Err(e) => return JobOutcome::Failed(e),
        };
        let (bars, resume) = match (
            super::load_bars(&params.data),
            super::resume_as::<TrainingState>(ctx, "training run"),
        ) {
            (Ok(b), Ok(r)) => (b, r),
            (Err(o), _) | (_, Err(o)) => return o,
        };
        let model_path = match ctx.artifacts_dir() {
            Ok(d) => d.join("model.json"),
            Err(e) => {
                return JobOutcome::Failed(format!("cannot create the artifacts directory: {e}"))
            }
        };
        match run_training(&bars, &params, &model_path, resume, ctx) {
            Ok(TrainingOutcome::Completed(result)) => super::completed(&result),
            Ok(TrainingOutcome::Stopped(_)) => JobOutcome::Stopped,
            Err(e) => JobOutcome::Failed(e),
        }
    }
}
