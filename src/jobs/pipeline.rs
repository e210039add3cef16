//! `pipeline`: the research pipeline of SPEC §3 — a parent that trains a
//! model and then backtests it, as two child operations with the phase
//! weights setup 0-5 %, training 5-80 %, backtest 80-100 %.
//!
//! The backtest is out of sample (SPEC §14): it trades only the training's
//! test split, from `session_info.test_start` to `test_end`, so neither the
//! return nor its buy-and-hold comparison includes a bar the model learnt
//! from or was selected on.
//!
//! Its checkpoint is just the ids of the children it created, so a resumed
//! pipeline picks its children up again (resuming a stopped child) instead
//! of starting new ones.

use super::backtest::BacktestJob;
use super::{Job, JobContext, JobOutcome};
use crate::control::{ProgressUpdate, RunControl};
use crate::ids::OperationId;
use crate::ml::TrainingParams;
use crate::model::{OperationType, Status, StopReason};
use crate::runtime::running::StopRequest;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// Phase ranges of the children, percent of the pipeline.
const TRAINING_PHASE: (f64, f64) = (5.0, 80.0);
const BACKTEST_PHASE: (f64, f64) = (80.0, 100.0);

/// Parameters of `pipeline`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineParams {
    /// The OHLCV CSV both children use.
    pub data: String,
    /// Training parameters (`data` is filled in).
    #[serde(default)]
    pub training: Map<String, Value>,
    /// Backtest parameters (`data`, `strategy = model`, `model`, `start` and
    /// `end` are filled in).
    #[serde(default)]
    pub backtest: Map<String, Value>,
}

/// What the pipeline remembers across attempts.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct PipelineState {
    training: Option<OperationId>,
    backtest: Option<OperationId>,
}

impl PipelineParams {
    fn training_params(&self) -> Value {
        let mut t = self.training.clone();
        t.insert("data".into(), json!(self.data));
        Value::Object(t)
    }

    /// The backtest child's parameters; `test` is the model file and the
    /// test split's `(test_start, test_end)` once training has finished.
    fn backtest_params(&self, test: Option<(&str, &str, &str)>) -> Value {
        let mut b = self.backtest.clone();
        b.insert("data".into(), json!(self.data));
        b.insert("strategy".into(), json!("model"));
        if let Some((model, start, end)) = test {
            b.insert("model".into(), json!(model));
            b.insert("start".into(), json!(start));
            b.insert("end".into(), json!(end));
        }
        Value::Object(b)
    }
}

/// The `pipeline` job.
pub struct PipelineJob;

impl Job for PipelineJob {
    fn validate(&self, params: &Value) -> Result<Value, String> {
        let p: PipelineParams = super::params::parse(params)?;
        if p.training.contains_key("data") || p.backtest.contains_key("data") {
            return Err(
                "data: give it once at the top level; the pipeline passes it to both children"
                    .into(),
            );
        }
        if p.backtest.contains_key("model") || p.backtest.contains_key("strategy") {
            return Err("backtest.model / backtest.strategy: filled in by the pipeline (it backtests the model it trains)".into());
        }
        if p.backtest.contains_key("start") || p.backtest.contains_key("end") {
            return Err(
                "backtest.start / backtest.end: filled in by the pipeline (it backtests \
                        the training's test split only); choose the split with \
                        training.test_fraction"
                    .into(),
            );
        }
        let t =
            TrainingParams::from_json(&p.training_params()).map_err(|e| format!("training.{e}"))?;
        t.validate().map_err(|e| format!("training.{e}"))?;
        if t.test_fraction <= 0.0 {
            return Err(
                "training.test_fraction must be > 0 in a pipeline: its backtest runs \
                        on the test split only, out of sample (e.g. 0.15, the default)"
                    .into(),
            );
        }
        BacktestJob::validate_values(&p.backtest_params(None))
            .map_err(|e| format!("backtest.{e}"))?;
        super::params::normalized(&p)
    }

    fn run(&self, ctx: &mut JobContext) -> JobOutcome {
        let params: PipelineParams = match super::params::parse(ctx.params()) {
            Ok(p) => p,
            Err(e) => return JobOutcome::Failed(e),
        };
        let mut state: PipelineState = ctx
            .resume_state()
            .and_then(|s| serde_json::from_value(s.clone()).ok())
            .unwrap_or_default();
        ctx.progress(ProgressUpdate {
            percentage: Some(0.0),
            message: Some("Setup".into()),
            current_step: Some("setup".into()),
            steps_total: Some(2),
            steps_completed: Some(0),
            ..Default::default()
        });

        let (training, trained) =
            match phase(ctx, &mut state, Phase::Training, params.training_params()) {
                Ok(done) => done,
                Err(outcome) => return outcome,
            };
        let Some(model) = trained["artifacts"]["model_path"]
            .as_str()
            .map(str::to_string)
        else {
            return JobOutcome::Failed(format!(
                "training {training} finished without a model_path"
            ));
        };
        let split = &trained["session_info"];
        let (Some(test_start), Some(test_end)) =
            (split["test_start"].as_str(), split["test_end"].as_str())
        else {
            return JobOutcome::Failed(format!(
                "training {training} has an empty test split, and the pipeline backtests \
                 out of sample only; use more bars or a larger training.test_fraction"
            ));
        };
        let backtest_params = params.backtest_params(Some((&model, test_start, test_end)));
        let (backtest, tested) = match phase(ctx, &mut state, Phase::Backtest, backtest_params) {
            Ok(done) => done,
            Err(outcome) => return outcome,
        };
        ctx.progress(ProgressUpdate {
            percentage: Some(100.0),
            message: Some("Done".into()),
            steps_completed: Some(2),
            ..Default::default()
        });
        JobOutcome::Completed(json!({
            "training_operation": training,
            "backtest_operation": backtest,
            "model_path": model,
            "training": trained,
            "backtest": tested,
        }))
    }
}

/// The pipeline's two phases.
#[derive(Clone, Copy)]
enum Phase {
    Training,
    Backtest,
}

impl Phase {
    fn kind(self) -> OperationType {
        match self {
            Phase::Training => OperationType::Training,
            Phase::Backtest => OperationType::Backtest,
        }
    }
    fn range(self) -> (f64, f64) {
        match self {
            Phase::Training => TRAINING_PHASE,
            Phase::Backtest => BACKTEST_PHASE,
        }
    }
    fn index(self) -> i64 {
        self as i64
    }
    fn slot(self, state: &mut PipelineState) -> &mut Option<OperationId> {
        match self {
            Phase::Training => &mut state.training,
            Phase::Backtest => &mut state.backtest,
        }
    }
}

/// Run one phase: create its child once (its id goes into the checkpoint
/// before anything else happens), pick it up again on a resumed attempt,
/// and wait for it. `Err` is the outcome the pipeline should return.
fn phase(
    ctx: &mut JobContext,
    state: &mut PipelineState,
    phase: Phase,
    params: Value,
) -> Result<(OperationId, Value), JobOutcome> {
    let name = phase.kind().as_str();
    let child = match phase.slot(state).clone() {
        Some(id) => id,
        None => {
            // A cancel that arrived after the previous phase must not be
            // outrun by a new child it never saw.
            if ctx.stop_requested() {
                return Err(JobOutcome::Stopped);
            }
            let id = ctx
                .submit_child(phase.kind(), params, Some(phase.range()), true)
                .map_err(|e| JobOutcome::Failed(format!("could not start the {name}: {e}")))?;
            *phase.slot(state) = Some(id.clone());
            save(ctx, state).map_err(JobOutcome::Failed)?;
            if let Some(why) = ctx.stop_request() {
                // The cancel raced the submit: take the new child with us.
                ctx.cancel_child(
                    &id,
                    if why == StopRequest::Shutdown {
                        why
                    } else {
                        StopRequest::Parent
                    },
                );
                return Err(JobOutcome::Stopped);
            }
            id
        }
    };
    step(ctx, name, phase.index(), &child);
    match run_child(ctx, &child) {
        Ok(Some(result)) => Ok((child, result)),
        Ok(None) => Err(JobOutcome::Stopped),
        Err(e) => Err(JobOutcome::Failed(format!("{name} {child} failed: {e}"))),
    }
}

fn save(ctx: &mut JobContext, state: &PipelineState) -> Result<(), String> {
    let v = serde_json::to_value(state).map_err(|e| e.to_string())?;
    ctx.save_checkpoint(crate::model::CheckpointType::Periodic, v, None)
}

fn step(ctx: &mut JobContext, name: &str, done: i64, child: &OperationId) {
    ctx.progress(ProgressUpdate {
        message: Some(format!("{} ({child})", capitalize(name))),
        current_step: Some(name.into()),
        steps_completed: Some(done),
        ..Default::default()
    });
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

/// Wait for a child to finish, resuming it first when an earlier attempt
/// of this pipeline left it stopped. `Ok(None)` when this pipeline is asked
/// to stop; the child's result summary when it completed.
fn run_child(ctx: &JobContext, child: &OperationId) -> Result<Option<Value>, String> {
    // On a new attempt a stopped child is resumed whatever stopped it (the
    // user resumed the pipeline). While waiting, only a stop that came from
    // this pipeline's own previous stop (parent, shutdown, crash) is
    // resumed: that is the child still finishing the cancel that ended the
    // last attempt. A child the user cancelled directly fails the pipeline.
    for round in 0..3 {
        let rec = ctx.operation(child)?;
        let resumable = match (rec.status, rec.stop_reason) {
            (Status::Completed, _) => return Ok(rec.result_summary),
            (Status::Failed, Some(StopReason::Error)) => {
                return Err(rec.error_message.unwrap_or_else(|| "failed".into()))
            }
            (Status::Failed | Status::Cancelled, Some(StopReason::User)) => round == 0,
            (Status::Failed | Status::Cancelled, _) => true,
            _ => false,
        };
        if matches!(rec.status, Status::Failed | Status::Cancelled) {
            if !resumable {
                return Err(rec
                    .error_message
                    .unwrap_or_else(|| format!("{}", rec.status)));
            }
            if let Err(e) = ctx.resume_child(child) {
                // Recovery may have resumed it already.
                if !matches!(
                    ctx.operation(child)?.status,
                    Status::Resuming | Status::Running | Status::Pending
                ) {
                    return Err(e);
                }
            }
        }
        match ctx.wait_for(child)? {
            None => return Ok(None),
            Some(Status::Completed) => return Ok(ctx.operation(child)?.result_summary),
            Some(_) if ctx.stop_requested() => return Ok(None),
            Some(_) => continue,
        }
    }
    Err(format!(
        "{child} stopped again after being resumed; see `opsd show {child}`"
    ))
}
