//! The resumable training run: epochs of shuffled mini-batches with progress,
//! per-epoch metrics, periodic checkpoints, and stop-and-resume that ends
//! bit-identical to a run that never stopped.
//!
//! Why resume is exact: everything random is a pure function of the seed.
//! The initial weights come from the stream `derive(seed, INIT_STREAM)` and
//! epoch `e`'s shuffle from `derive(seed, EPOCH_STREAM + e)`, so a resumed run
//! regenerates the permutation of its epoch instead of storing it. The state
//! ([`TrainingState`]) then holds only what evolves: the position (epoch and
//! next batch), the weights, Adam's moments, step count and bias-correction
//! products, the running loss sums of the partial epoch and the metric
//! history. All of it is f64/u64, which serde_json round-trips exactly.

use super::features::{build_samples, split, Samples, Standardizer, FEATURE_DESCRIPTION};
use super::mlp::{evaluate, param_count, train_batch, AdamState, Mlp, Workspace};
use super::model::Model;
use super::params::TrainingParams;
use super::rng::SplitMix64;
use crate::control::{ProgressUpdate, RunControl};
use crate::market::ohlcv::Bars;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;

/// Stream label of the initial weights.
const INIT_STREAM: u64 = 0x1A17;
/// Stream label base of the epoch shuffles (plus the epoch index).
const EPOCH_STREAM: u64 = 0xE90C_0000;
/// Version of [`TrainingState`]'s layout.
pub const STATE_VERSION: u32 = 1;

/// One epoch's metric point, as sent to [`RunControl::metric`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Mean loss over the epoch's training batches (weights as they moved).
    pub train_loss: f64,
    /// Accuracy over the epoch's training batches.
    pub train_accuracy: f64,
    /// Mean loss on the validation split after the epoch (null when empty).
    pub val_loss: Option<f64>,
    /// Accuracy on the validation split after the epoch (null when empty).
    pub val_accuracy: Option<f64>,
}

/// Everything needed to continue a run exactly where it stopped. Serialize
/// it with serde_json (as the checkpoint `state`) and pass it back as
/// `resume`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingState {
    /// [`STATE_VERSION`].
    pub version: u32,
    /// 0-based epoch in progress (== `epochs` once training is finished).
    pub epoch: usize,
    /// Batches of that epoch already applied.
    pub batch: usize,
    /// Network parameters (see `mlp` for the layout).
    pub weights: Vec<f64>,
    /// Adam's moments and step count.
    pub adam: AdamState,
    /// Sum of per-sample losses so far in the partial epoch.
    pub epoch_loss_sum: f64,
    /// Correct predictions so far in the partial epoch.
    pub epoch_correct: u64,
    /// Samples seen so far in the partial epoch.
    pub epoch_samples: u64,
    /// Metric points of the finished epochs.
    pub history: Vec<EpochMetrics>,
    /// Layer sizes, to refuse a state from a different architecture.
    pub layer_sizes: Vec<usize>,
    /// Training samples, to refuse a state from different data or split.
    pub n_train: usize,
    /// FNV-1a hash of the bars' numbers (hex), to refuse changed data.
    pub data_fingerprint: String,
    /// The parameters the run started with.
    pub params: TrainingParams,
    /// How many times this run has been started (1 for the first attempt).
    pub starts: u32,
}

impl TrainingState {
    /// The state as the JSON a checkpoint stores.
    pub fn to_json(&self) -> Result<serde_json::Value, String> {
        to_json(self)
    }

    /// Decode a checkpoint's JSON `state`.
    pub fn from_json(value: &serde_json::Value) -> Result<TrainingState, String> {
        TrainingState::deserialize(value)
            .map_err(|e| format!("invalid training checkpoint state: {e}"))
    }
}

/// How a call to [`run_training`] ended.
// Returned once per run, so the size of the larger variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum TrainingOutcome {
    /// All epochs ran and the model was saved.
    Completed(TrainingResult),
    /// A stop was requested; this state was checkpointed and resumes the run.
    Stopped(TrainingState),
}

/// Loss and accuracy on one split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitMetrics {
    /// Mean binary cross-entropy (null when the split is empty).
    pub loss: Option<f64>,
    /// Fraction predicted correctly (null when the split is empty).
    pub accuracy: Option<f64>,
    /// Samples in the split.
    pub samples: usize,
}

/// Cost of this attempt (wall time: not deterministic, unlike the model).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResourceUsage {
    /// Seconds this call took, including data preparation and saving.
    pub wall_seconds: f64,
    /// Training samples (forward + backward) processed in this call.
    pub samples_processed: u64,
    /// `samples_processed / wall_seconds`.
    pub samples_per_second: f64,
    /// Threads used (training is single-threaded for reproducibility).
    pub threads: usize,
}

/// Files the run produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Artifacts {
    /// The saved model (see `model` for the format).
    pub model_path: String,
}

/// Where a resumed attempt picked up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResumePoint {
    /// 0-based epoch it resumed in.
    pub epoch: usize,
    /// Batches of that epoch already done.
    pub batch: usize,
}

/// Facts about the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// Epochs trained in all, over every attempt.
    pub epochs_run: usize,
    /// The seed.
    pub seed: u64,
    /// Attempt number (1 = never resumed).
    pub attempt: u32,
    /// True when this attempt continued from a checkpoint.
    pub resumed: bool,
    /// Where it continued, when resumed.
    pub resumed_from: Option<ResumePoint>,
    /// The parameters.
    pub parameters: TrainingParams,
    /// What the inputs are.
    pub features: String,
    /// Network layer widths, inputs to output.
    pub layer_sizes: Vec<usize>,
    /// Trainable parameters.
    pub parameter_count: usize,
    /// Every epoch's metric point.
    pub epoch_history: Vec<EpochMetrics>,
    /// Timestamp of the first train sample's bar (SPEC §14). Each split's
    /// `*_start`/`*_end` name the bars whose windows end there (a sample at
    /// bar `t` predicts bar `t + 1`); null when the split is empty.
    pub train_start: Option<String>,
    /// Timestamp of the last train sample's bar.
    pub train_end: Option<String>,
    /// Timestamp of the first validation sample's bar.
    pub val_start: Option<String>,
    /// Timestamp of the last validation sample's bar.
    pub val_end: Option<String>,
    /// Timestamp of the first test sample's bar: where an out-of-sample
    /// backtest of this model starts.
    pub test_start: Option<String>,
    /// Timestamp of the last test sample's bar.
    pub test_end: Option<String>,
}

/// Timestamps of the first and last bars of a split's samples.
fn split_bounds(bars: &Bars, s: &Samples) -> (Option<String>, Option<String>) {
    let at = |i: Option<&usize>| i.and_then(|&t| bars.timestamps.get(t).cloned());
    (at(s.bar_index.first()), at(s.bar_index.last()))
}

/// The result summary of a completed run (SPEC §8's keys).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingResult {
    /// Final model on the train split.
    pub training_metrics: SplitMetrics,
    /// Final model on the validation split.
    pub validation_metrics: SplitMetrics,
    /// Final model on the test split.
    pub test_metrics: SplitMetrics,
    /// Time and throughput.
    pub resource_usage: ResourceUsage,
    /// `{"model_path": ...}`.
    pub artifacts: Artifacts,
    /// Epochs, seed, attempt, parameters, features.
    pub session_info: SessionInfo,
}

/// FNV-1a over the bit patterns of every OHLCV number.
fn fingerprint(bars: &Bars) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let cols = [&bars.open, &bars.high, &bars.low, &bars.close, &bars.volume];
    for col in cols {
        for v in col.iter() {
            for byte in v.to_bits().to_le_bytes() {
                h ^= u64::from(byte);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
    }
    format!("{h:016x}")
}

/// The parameters that must not change across a resume (all but `data`,
/// whose content the fingerprint covers, and `checkpoint_every_epochs`).
fn same_run(a: &TrainingParams, b: &TrainingParams) -> bool {
    let strip = |p: &TrainingParams| TrainingParams {
        data: Default::default(),
        checkpoint_every_epochs: 1,
        ..p.clone()
    };
    strip(a) == strip(b)
}

fn split_metrics(net: &Mlp, ws: &mut Workspace, s: &Samples) -> SplitMetrics {
    let r = evaluate(net, ws, s);
    SplitMetrics {
        loss: r.map(|r| r.0),
        accuracy: r.map(|r| r.1),
        samples: s.len(),
    }
}

fn to_json<T: Serialize>(v: &T) -> Result<serde_json::Value, String> {
    serde_json::to_value(v).map_err(|e| format!("cannot encode training state: {e}"))
}

/// Train (or continue training) on `bars` with `params`, reporting through
/// `ctl`, and on completion save the model to `model_path`.
///
/// `resume` is a state from an earlier `Stopped` outcome or checkpoint; it
/// must come from the same parameters and data, else this returns an error.
/// Errors are messages for the operation's `error_message` (bad data, too
/// few bars, a failed checkpoint or save).
pub fn run_training(
    bars: &Bars,
    params: &TrainingParams,
    model_path: &Path,
    resume: Option<TrainingState>,
    ctl: &mut dyn RunControl,
) -> Result<TrainingOutcome, String> {
    let started = Instant::now();
    params.validate_ranges()?;
    let samples = build_samples(bars, params.lookback)?;
    let mut sp = split(&samples, params.val_fraction, params.test_fraction)?;
    drop(samples);
    let standardizer = Standardizer::fit(&sp.train);
    for s in [&mut sp.train, &mut sp.val, &mut sp.test] {
        standardizer.apply(s);
    }
    let mut sizes = vec![sp.train.dim];
    sizes.extend(&params.hidden);
    sizes.push(1);
    let n_train = sp.train.len();
    let data_fingerprint = fingerprint(bars);

    let resumed_from = resume.as_ref().map(|s| ResumePoint {
        epoch: s.epoch,
        batch: s.batch,
    });
    let n_batches = n_train.div_ceil(params.batch_size);
    let mut st = match resume {
        Some(mut s) => {
            if s.version != STATE_VERSION {
                return Err(format!(
                    "resume state version {} is not supported",
                    s.version
                ));
            }
            if s.layer_sizes != sizes
                || s.n_train != n_train
                || s.data_fingerprint != data_fingerprint
                || !same_run(&s.params, params)
            {
                return Err("resume state does not match these parameters and data".into());
            }
            let n = param_count(&sizes);
            if s.weights.len() != n || s.adam.m.len() != n || s.adam.v.len() != n {
                return Err("resume state is corrupt: parameter counts differ".into());
            }
            if s.epoch > params.epochs || s.batch >= n_batches || s.history.len() != s.epoch {
                return Err("resume state is corrupt: position out of range".into());
            }
            s.starts += 1;
            s.params = params.clone();
            s
        }
        None => {
            let net = Mlp::new(
                sizes.clone(),
                &mut SplitMix64::derive(params.seed, INIT_STREAM),
            );
            TrainingState {
                version: STATE_VERSION,
                epoch: 0,
                batch: 0,
                adam: AdamState::new(net.params.len()),
                weights: net.params,
                epoch_loss_sum: 0.0,
                epoch_correct: 0,
                epoch_samples: 0,
                history: Vec::new(),
                layer_sizes: sizes.clone(),
                n_train,
                data_fingerprint,
                params: params.clone(),
                starts: 1,
            }
        }
    };
    // The live weights stay in `net`; `st.weights` is refreshed on snapshots.
    let mut net = Mlp {
        sizes: sizes.clone(),
        params: std::mem::take(&mut st.weights),
    };
    let mut ws = Workspace::new(&net);
    let mut perm: Vec<usize> = Vec::with_capacity(n_train);
    let total_batches = (params.epochs * n_batches) as i64;
    let mut processed: u64 = 0;

    while st.epoch < params.epochs {
        perm.clear();
        perm.extend(0..n_train);
        SplitMix64::derive(params.seed, EPOCH_STREAM + st.epoch as u64).shuffle(&mut perm);
        for b in st.batch..n_batches {
            if ctl.stop_requested() {
                st.batch = b;
                st.weights = net.params.clone();
                ctl.checkpoint(to_json(&st)?)?;
                return Ok(TrainingOutcome::Stopped(st));
            }
            let rows = &perm[b * params.batch_size..((b + 1) * params.batch_size).min(n_train)];
            let stats = train_batch(
                &mut net,
                &mut st.adam,
                &mut ws,
                &sp.train,
                rows,
                params.learning_rate,
            );
            st.epoch_loss_sum += stats.loss_sum;
            st.epoch_correct += stats.correct;
            st.epoch_samples += rows.len() as u64;
            processed += rows.len() as u64;
            let done = (st.epoch * n_batches + b + 1) as i64;
            ctl.progress(ProgressUpdate {
                percentage: Some(100.0 * done as f64 / total_batches as f64),
                message: Some(format!(
                    "Epoch {}/{} · Batch {}/{}",
                    st.epoch + 1,
                    params.epochs,
                    b + 1,
                    n_batches
                )),
                // Named once per attempt; `None` keeps the daemon's value.
                current_step: (processed == rows.len() as u64).then(|| "training".to_string()),
                steps_completed: Some(st.epoch as i64),
                steps_total: Some(params.epochs as i64),
                items_processed: Some(done),
                items_total: Some(total_batches),
                eta_seconds: None,
                context: Some(serde_json::json!({
                    "epoch": st.epoch + 1,
                    "batch": b + 1,
                    "loss": stats.loss_sum / rows.len() as f64,
                })),
            });
        }
        let seen = st.epoch_samples.max(1) as f64;
        if !(st.epoch_loss_sum.is_finite() && net.params.iter().all(|w| w.is_finite())) {
            return Err(format!(
                "training diverged in epoch {} (loss or weights not finite); \
                 lower learning_rate (now {})",
                st.epoch + 1,
                params.learning_rate
            ));
        }
        let val = evaluate(&net, &mut ws, &sp.val);
        let point = EpochMetrics {
            epoch: st.epoch + 1,
            train_loss: st.epoch_loss_sum / seen,
            train_accuracy: st.epoch_correct as f64 / seen,
            val_loss: val.map(|v| v.0),
            val_accuracy: val.map(|v| v.1),
        };
        ctl.metric(to_json(&point)?);
        st.history.push(point);
        st.epoch += 1;
        st.batch = 0;
        st.epoch_loss_sum = 0.0;
        st.epoch_correct = 0;
        st.epoch_samples = 0;
        if st.epoch % params.checkpoint_every_epochs == 0 {
            st.weights = net.params.clone();
            ctl.checkpoint(to_json(&st)?)?;
            st.weights = Vec::new();
        }
    }

    let model = Model {
        lookback: params.lookback,
        net,
        standardizer,
        epochs_trained: params.epochs,
        params: params.clone(),
    };
    model.save(model_path)?;
    let (train_start, train_end) = split_bounds(bars, &sp.train);
    let (val_start, val_end) = split_bounds(bars, &sp.val);
    let (test_start, test_end) = split_bounds(bars, &sp.test);
    let result = TrainingResult {
        training_metrics: split_metrics(&model.net, &mut ws, &sp.train),
        validation_metrics: split_metrics(&model.net, &mut ws, &sp.val),
        test_metrics: split_metrics(&model.net, &mut ws, &sp.test),
        resource_usage: {
            let wall = started.elapsed().as_secs_f64();
            ResourceUsage {
                wall_seconds: wall,
                samples_processed: processed,
                samples_per_second: if wall > 0.0 {
                    processed as f64 / wall
                } else {
                    0.0
                },
                threads: 1,
            }
        },
        artifacts: Artifacts {
            model_path: model_path.display().to_string(),
        },
        session_info: SessionInfo {
            epochs_run: st.epoch,
            seed: params.seed,
            attempt: st.starts,
            resumed: resumed_from.is_some(),
            resumed_from,
            parameters: params.clone(),
            features: FEATURE_DESCRIPTION.into(),
            parameter_count: model.net.params.len(),
            layer_sizes: sizes,
            epoch_history: st.history,
            train_start,
            train_end,
            val_start,
            val_end,
            test_start,
            test_end,
        },
    };
    Ok(TrainingOutcome::Completed(result))
}
