//! The trained model as a file: saving (atomically), loading, and predicting
//! directions for the backtest's `model` strategy.
//!
//! # File format (version 1)
//!
//! One compact JSON object followed by a newline, keys in this fixed order:
//!
//! ```text
//! {"format":"opsd-mlp","version":1,
//!  "lookback":10,"features_per_bar":4,"feature_description":"...",
//!  "layer_sizes":[40,32,16,1],"hidden_activation":"relu","output_activation":"sigmoid",
//!  "feature_mean":[..40..],"feature_std":[..40..],
//!  "weights":[..flat..],
//!  "epochs_trained":20,"training_parameters":{...}}
//! ```
//!
//! `weights` holds, per layer, `W[out][in]` row-major then the `out` biases.
//! A row of features is standardized as `(x - feature_mean) / feature_std`
//! before the forward pass; the output is the logit of P(close[t+1] > close[t]).
//! Floats are written by serde_json's shortest round-trip formatting, so the
//! same weights always give the same bytes, and reading them back is exact.
//! Nothing time-dependent is stored: the bytes depend only on the training.

use super::features::{window_features, Standardizer, FEATURES_PER_BAR, FEATURE_DESCRIPTION};
use super::mlp::{param_count, Mlp, Workspace};
use super::params::TrainingParams;
use crate::market::ohlcv::Bars;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;

/// Value of the file's `format` key.
pub const MODEL_FORMAT: &str = "opsd-mlp";
/// Value of the file's `version` key.
pub const MODEL_VERSION: u32 = 1;

/// The on-disk representation (see the module documentation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelFile {
    format: String,
    version: u32,
    lookback: usize,
    features_per_bar: usize,
    feature_description: String,
    layer_sizes: Vec<usize>,
    hidden_activation: String,
    output_activation: String,
    feature_mean: Vec<f64>,
    feature_std: Vec<f64>,
    weights: Vec<f64>,
    epochs_trained: usize,
    training_parameters: TrainingParams,
}

/// A trained direction classifier.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    /// Bars per input window.
    pub lookback: usize,
    /// The network.
    pub net: Mlp,
    /// Standardization fitted on the train split.
    pub standardizer: Standardizer,
    /// Epochs the weights were trained for.
    pub epochs_trained: usize,
    /// The parameters of the run that produced it.
    pub params: TrainingParams,
}

impl Model {
    /// The file's exact bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, String> {
        let file = ModelFile {
            format: MODEL_FORMAT.into(),
            version: MODEL_VERSION,
            lookback: self.lookback,
            features_per_bar: FEATURES_PER_BAR,
            feature_description: FEATURE_DESCRIPTION.into(),
            layer_sizes: self.net.sizes.clone(),
            hidden_activation: "relu".into(),
            output_activation: "sigmoid".into(),
            feature_mean: self.standardizer.mean.clone(),
            feature_std: self.standardizer.std.clone(),
            weights: self.net.params.clone(),
            epochs_trained: self.epochs_trained,
            training_parameters: self.params.clone(),
        };
        let mut bytes =
            serde_json::to_vec(&file).map_err(|e| format!("cannot encode the model: {e}"))?;
        bytes.push(b'\n');
        Ok(bytes)
    }

    /// Write the model to `path` durably: a temporary file beside it,
    /// fsynced, then renamed over `path` (so a reader never sees half a
    /// model), then the directory fsynced (so the rename survives a crash).
    pub fn save(&self, path: &Path) -> Result<(), String> {
        let bytes = self.to_bytes()?;
        let err = |what: &str, e: std::io::Error| format!("{}: {what}: {e}", path.display());
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => std::path::PathBuf::from("."),
        };
        std::fs::create_dir_all(&dir).map_err(|e| err("cannot create the directory", e))?;
        let name = path
            .file_name()
            .ok_or_else(|| format!("{}: not a file path", path.display()))?;
        let mut tmp_name = name.to_os_string();
        tmp_name.push(format!(".tmp.{}", std::process::id()));
        let tmp = dir.join(tmp_name);
        let result = (|| {
            let mut f = std::fs::File::create(&tmp).map_err(|e| err("cannot create", e))?;
            f.write_all(&bytes).map_err(|e| err("cannot write", e))?;
            f.sync_all().map_err(|e| err("cannot fsync", e))?;
            std::fs::rename(&tmp, path).map_err(|e| err("cannot rename into place", e))
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result?;
        // Best effort: some filesystems refuse fsync on directories.
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Read a model file written by [`Model::save`], checking that its parts
    /// agree with each other.
    pub fn load(path: &Path) -> Result<Model, String> {
        let bytes =
            std::fs::read(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        Self::from_bytes(&bytes).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Decode a model from the file's bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Model, String> {
        let f: ModelFile =
            serde_json::from_slice(bytes).map_err(|e| format!("not an opsd model file: {e}"))?;
        if f.format != MODEL_FORMAT || f.version != MODEL_VERSION {
            return Err(format!(
                "unsupported model format {:?} version {} (expected {MODEL_FORMAT:?} version {MODEL_VERSION})",
                f.format, f.version
            ));
        }
        let dim = f.lookback * FEATURES_PER_BAR;
        let s = &f.layer_sizes;
        if f.lookback == 0
            || f.features_per_bar != FEATURES_PER_BAR
            || s.len() < 2
            || s[0] != dim
            || s[s.len() - 1] != 1
            || s.contains(&0)
            || f.feature_mean.len() != dim
            || f.feature_std.len() != dim
            || f.weights.len() != param_count(s)
            || f.hidden_activation != "relu"
            || f.output_activation != "sigmoid"
        {
            return Err(
                "inconsistent model file: layer sizes, lookback, normalization \
                        and weights do not agree"
                    .into(),
            );
        }
        if f.feature_std.iter().any(|v| !(v.is_finite() && *v > 0.0))
            || f.feature_mean
                .iter()
                .chain(&f.weights)
                .any(|v| !v.is_finite())
        {
            return Err("model file holds non-finite or non-positive-std values".into());
        }
        Ok(Model {
            lookback: f.lookback,
            net: Mlp {
                sizes: f.layer_sizes,
                params: f.weights,
            },
            standardizer: Standardizer {
                mean: f.feature_mean,
                std: f.feature_std,
            },
            epochs_trained: f.epochs_trained,
            params: f.training_parameters,
        })
    }

    /// Per bar `t`, the output logit, or `None` where the lookback window is
    /// incomplete or not finite.
    fn logits(&self, bars: &Bars) -> Vec<Option<f64>> {
        let mut row = vec![0.0; self.lookback * FEATURES_PER_BAR];
        let mut ws = Workspace::new(&self.net);
        (0..bars.len())
            .map(|t| {
                if !window_features(bars, t, self.lookback, &mut row) {
                    return None;
                }
                self.standardizer.apply_row(&mut row);
                Some(self.net.forward(&row, &mut ws.acts))
            })
            .collect()
    }

    /// Per bar `t`, the model's probability that `close[t+1] > close[t]`,
    /// or `None` where the lookback window is incomplete or not finite.
    pub fn predict_probabilities(&self, bars: &Bars) -> Vec<Option<f64>> {
        self.logits(bars)
            .into_iter()
            .map(|z| z.map(super::mlp::sigmoid))
            .collect()
    }

    /// Per bar `t` (same length as `bars`): `+1` when the model predicts
    /// `close[t+1] > close[t]`, `-1` when it predicts not, `0` where the
    /// lookback window is incomplete (`t < lookback`) or has unusable prices.
    pub fn predict_directions(&self, bars: &Bars) -> Vec<i8> {
        // The logit's sign, exactly the rule training's accuracy uses.
        self.logits(bars)
            .into_iter()
            .map(|z| match z {
                None => 0,
                Some(z) if z > 0.0 => 1,
                Some(_) => -1,
            })
            .collect()
    }
}
