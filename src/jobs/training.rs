//! `training`: the built-in MLP on OHLCV bars (engine in `crate::ml`).
//! This file only adapts it to the daemon: parameters, the model's place
//! under the state directory, resume state in and out.

use super::{Job, JobContext, JobOutcome};
use crate::market::ohlcv::load_csv;
use crate::ml::{run_training, TrainingOutcome, TrainingParams, TrainingState};
use serde_json::Value;
use std::path::Path;

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
        let bars = match load_csv(Path::new(&params.data)) {
            Ok(b) => b,
            Err(e) => return JobOutcome::Failed(e.to_string()),
        };
        let resume = match ctx.resume_state() {
            Some(s) => match serde_json::from_value::<TrainingState>(s.clone()) {
                Ok(st) => Some(st),
                Err(e) => {
                    return JobOutcome::Failed(format!(
                        "the checkpoint does not fit this training run: {e}"
                    ))
                }
            },
            None => None,
        };
        let model_path = match ctx.artifacts_dir() {
            Ok(d) => d.join("model.json"),
            Err(e) => {
                return JobOutcome::Failed(format!("cannot create the artifacts directory: {e}"))
            }
        };
        match run_training(&bars, &params, &model_path, resume, ctx) {
            Ok(TrainingOutcome::Completed(result)) => match serde_json::to_value(&result) {
                Ok(v) => JobOutcome::Completed(v),
                Err(e) => JobOutcome::Failed(format!("cannot encode the result: {e}")),
            },
            Ok(TrainingOutcome::Stopped(_)) => JobOutcome::Stopped,
            Err(e) => JobOutcome::Failed(e),
        }
    }
}
