//! `dummy`: sleeps through steps, one progress update and one metric point
//! per step, checkpoint = the step index. For tests, demos and benchmarks.

use super::{params, Job, JobContext, JobOutcome};
use crate::control::{ProgressUpdate, RunControl};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::time::Duration;

/// Parameters of `dummy`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DummyParams {
    /// Steps to run [10].
    #[serde(default = "default_steps")]
    pub steps: i64,
    /// Milliseconds per step [100].
    #[serde(default = "default_step_ms")]
    pub step_ms: i64,
    /// Fail when reaching this step (1-based), if set.
    #[serde(default)]
    pub fail_at_step: Option<i64>,
    /// Panic when reaching this step (tests the daemon's panic handling).
    #[serde(default)]
    pub panic_at_step: Option<i64>,
    /// Ignore stop requests (tests the shutdown grace) [false].
    #[serde(default)]
    pub ignore_stop: bool,
    /// Checkpoint every this many steps [1].
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: i64,
}

fn default_steps() -> i64 {
    10
}
fn default_step_ms() -> i64 {
    100
}
fn default_checkpoint_every() -> i64 {
    1
}

/// The `dummy` job.
pub struct DummyJob;

impl Job for DummyJob {
    fn validate(&self, p: &Value) -> Result<Value, String> {
        let p: DummyParams = params::parse(p)?;
        if p.steps < 0 {
            return Err(format!("steps must be >= 0 (got {})", p.steps));
        }
        if !(0..=3_600_000).contains(&p.step_ms) {
            return Err(format!(
                "step_ms must be between 0 and 3600000 (got {})",
                p.step_ms
            ));
        }
        if let Some(f) = p.fail_at_step {
            if f < 1 {
                return Err(format!("fail_at_step must be >= 1 (got {f})"));
            }
        }
        if p.checkpoint_every < 1 {
            return Err(format!(
                "checkpoint_every must be >= 1 (got {})",
                p.checkpoint_every
            ));
        }
        params::normalized(&p)
    }

    fn run(&self, ctx: &mut JobContext) -> JobOutcome {
        let p: DummyParams = match params::parse(ctx.params()) {
            Ok(p) => p,
            Err(e) => return JobOutcome::Failed(e),
        };
        // Resume from the checkpointed step index, if any.
        let mut step = ctx
            .resume_state()
            .and_then(|s| s.get("step").and_then(Value::as_i64))
            .unwrap_or(0);
        let sleep = Duration::from_millis(p.step_ms as u64);
        while step < p.steps {
            if ctx.stop_requested() && !p.ignore_stop {
                if let Err(e) = ctx.checkpoint(json!({ "step": step })) {
                    return JobOutcome::Failed(e);
                }
                return JobOutcome::Stopped;
            }
            if p.ignore_stop {
                std::thread::sleep(sleep);
            } else if !sleep.is_zero() {
                ctx.sleep_unless_stopped(sleep);
                if ctx.stop_requested() {
                    // The step was interrupted: it is not done.
                    continue;
                }
            }
            step += 1;
            if p.fail_at_step == Some(step) {
                return JobOutcome::Failed(format!(
                    "dummy failed at step {step} as asked (fail_at_step)"
                ));
            }
            if p.panic_at_step == Some(step) {
                panic!("dummy panicked at step {step} as asked (panic_at_step)");
            }
            ctx.progress(ProgressUpdate {
                percentage: Some(step as f64 * 100.0 / p.steps as f64),
                message: Some(format!("Step {step}/{}", p.steps)),
                steps_completed: Some(step),
                steps_total: Some(p.steps),
                ..Default::default()
            });
            ctx.metric(json!({ "step": step, "value": step * step }));
            if step % p.checkpoint_every == 0 && step < p.steps {
                if let Err(e) = ctx.checkpoint(json!({ "step": step })) {
                    return JobOutcome::Failed(e);
                }
            }
        }
        JobOutcome::Completed(json!({ "steps": p.steps }))
    }
}
