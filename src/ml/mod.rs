//! The `training` job's engine (SPEC §8): a small multilayer perceptron,
//! trained on CPU in pure Rust, that predicts from a window of OHLCV bars
//! whether the next close will be higher.
//!
//! - [`features`]: windows of normalized bar features, labels, the
//!   chronological split and the train-fitted standardization;
//! - [`mlp`]: the network, its gradient and Adam, deterministic to the bit;
//! - [`params`]: the job's parameters and their validation;
//! - [`train`]: the resumable run ([`run_training`]) and its result summary;
//! - [`model`]: the saved model file and [`Model::predict_directions`], the
//!   signal the backtest's `model` strategy consumes;
//! - [`rng`]: the crate's own seeded PRNG.
//!
//! Typical use:
//!
//! ```no_run
//! use opsd::control::RecordingControl;
//! use opsd::market::ohlcv::load_csv;
//! use opsd::ml::{run_training, Model, TrainingOutcome, TrainingParams};
//! use std::path::Path;
//!
//! let params = TrainingParams::from_json(&serde_json::json!({"data": "GOOG.csv"}))?;
//! let bars = load_csv(&params.data).map_err(|e| e.to_string())?;
//! let mut ctl = RecordingControl::new();
//! match run_training(&bars, &params, Path::new("model.json"), None, &mut ctl)? {
//!     TrainingOutcome::Completed(result) => println!("{}", serde_json::to_string(&result).unwrap()),
//!     TrainingOutcome::Stopped(state) => { /* checkpointed; pass Some(state) to resume */ }
//! }
//! let directions = Model::load(Path::new("model.json"))?.predict_directions(&bars);
//! # Ok::<(), String>(())
//! ```

pub mod features;
pub mod mlp;
pub mod model;
pub mod params;
pub mod rng;
pub mod train;

#[cfg(test)]
mod tests;

pub use model::Model;
pub use params::TrainingParams;
pub use train::{run_training, TrainingOutcome, TrainingResult, TrainingState};
