//! Parameters of the `training` job (SPEC §8) with their defaults and
//! validation. Every message names the offending key and the allowed range,
//! because users read them straight from `opsd submit`.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Parameters of a training run. Deserializing refuses unknown keys; prefer
/// [`TrainingParams::from_json`], whose type errors also name the key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingParams {
    /// CSV file of OHLCV bars (required).
    pub data: PathBuf,
    /// Passes over the training split.
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    /// Samples per mini-batch (the last batch of an epoch may be smaller).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Adam's step size.
    #[serde(default = "default_learning_rate")]
    pub learning_rate: f64,
    /// Widths of the hidden layers, input side first.
    #[serde(default = "default_hidden")]
    pub hidden: Vec<usize>,
    /// Bars in each input window.
    #[serde(default = "default_lookback")]
    pub lookback: usize,
    /// Seed of every random choice (initial weights, epoch shuffles).
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Fraction of samples (after the train period) held out for validation.
    #[serde(default = "default_fraction")]
    pub val_fraction: f64,
    /// Fraction of samples (the most recent) held out for the final test.
    #[serde(default = "default_fraction")]
    pub test_fraction: f64,
    /// A periodic checkpoint after every this many epochs.
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every_epochs: usize,
}

fn default_epochs() -> usize {
    20
}
fn default_batch_size() -> usize {
    64
}
fn default_learning_rate() -> f64 {
    0.001
}
fn default_hidden() -> Vec<usize> {
    vec![32, 16]
}
fn default_lookback() -> usize {
    10
}
fn default_seed() -> u64 {
    42
}
fn default_fraction() -> f64 {
    0.15
}
fn default_checkpoint_every() -> usize {
    5
}

/// Every parameter name, for "unknown parameter" messages.
pub const KNOWN_KEYS: &[&str] = &[
    "data",
    "epochs",
    "batch_size",
    "learning_rate",
    "hidden",
    "lookback",
    "seed",
    "val_fraction",
    "test_fraction",
    "checkpoint_every_epochs",
];

/// Upper bounds that keep a run within what a CPU job should attempt.
const MAX_EPOCHS: usize = 100_000;
const MAX_BATCH: usize = 1 << 20;
const MAX_LAYERS: usize = 8;
const MAX_WIDTH: usize = 4096;
const MAX_LOOKBACK: usize = 1000;

impl TrainingParams {
    /// Defaults for everything but `data`.
    pub fn with_data(data: impl Into<PathBuf>) -> TrainingParams {
        TrainingParams {
            data: data.into(),
            epochs: default_epochs(),
            batch_size: default_batch_size(),
            learning_rate: default_learning_rate(),
            hidden: default_hidden(),
            lookback: default_lookback(),
            seed: default_seed(),
            val_fraction: default_fraction(),
            test_fraction: default_fraction(),
            checkpoint_every_epochs: default_checkpoint_every(),
        }
    }

    /// Parse a JSON object of parameters, key by key, so that a wrong type
    /// is reported as e.g. `epochs: invalid type: string "x", expected usize`,
    /// then [`validate`](Self::validate) it.
    pub fn from_json(value: &serde_json::Value) -> Result<TrainingParams, String> {
        let obj = value
            .as_object()
            .ok_or_else(|| "training parameters must be a JSON object".to_string())?;
        for key in obj.keys() {
            if !KNOWN_KEYS.contains(&key.as_str()) {
                return Err(format!(
                    "unknown parameter {key:?} for training; known: {}",
                    KNOWN_KEYS.join(", ")
                ));
            }
        }
        fn field<T: serde::de::DeserializeOwned>(
            obj: &serde_json::Map<String, serde_json::Value>,
            key: &str,
            default: T,
        ) -> Result<T, String> {
            match obj.get(key) {
                None => Ok(default),
                Some(v) => serde_json::from_value(v.clone()).map_err(|e| format!("{key}: {e}")),
            }
        }
        let data: PathBuf = match obj.get("data") {
            None => return Err("data: required (path of a CSV file of OHLCV bars)".into()),
            Some(v) => serde_json::from_value(v.clone()).map_err(|e| format!("data: {e}"))?,
        };
        let d = TrainingParams::with_data(data);
        let p = TrainingParams {
            epochs: field(obj, "epochs", d.epochs)?,
            batch_size: field(obj, "batch_size", d.batch_size)?,
            learning_rate: field(obj, "learning_rate", d.learning_rate)?,
            hidden: field(obj, "hidden", d.hidden.clone())?,
            lookback: field(obj, "lookback", d.lookback)?,
            seed: field(obj, "seed", d.seed)?,
            val_fraction: field(obj, "val_fraction", d.val_fraction)?,
            test_fraction: field(obj, "test_fraction", d.test_fraction)?,
            checkpoint_every_epochs: field(
                obj,
                "checkpoint_every_epochs",
                d.checkpoint_every_epochs,
            )?,
            data: d.data,
        };
        p.validate()?;
        Ok(p)
    }

    /// Check ranges (and that `data` exists). The message names the key and
    /// the allowed range.
    pub fn validate(&self) -> Result<(), String> {
        self.validate_ranges()?;
        if !self.data.is_file() {
            return Err(format!("data: file not found: {}", self.data.display()));
        }
        Ok(())
    }

    /// [`validate`](Self::validate) without touching the filesystem (for
    /// callers that already hold the bars).
    pub fn validate_ranges(&self) -> Result<(), String> {
        if self.data.as_os_str().is_empty() {
            return Err("data: must be a CSV file path, got an empty string".into());
        }
        let in_range = |key: &str, v: usize, lo: usize, hi: usize| {
            if !(lo..=hi).contains(&v) {
                Err(format!("{key} must be between {lo} and {hi}, got {v}"))
            } else {
                Ok(())
            }
        };
        if self.epochs < 1 {
            return Err("epochs must be >= 1".into());
        }
        in_range("epochs", self.epochs, 1, MAX_EPOCHS)?;
        if self.batch_size < 1 {
            return Err("batch_size must be >= 1".into());
        }
        in_range("batch_size", self.batch_size, 1, MAX_BATCH)?;
        if !(self.learning_rate.is_finite()
            && self.learning_rate > 0.0
            && self.learning_rate <= 1.0)
        {
            return Err(format!(
                "learning_rate must be > 0 and <= 1, got {}",
                self.learning_rate
            ));
        }
        if self.hidden.len() > MAX_LAYERS {
            return Err(format!(
                "hidden must have at most {MAX_LAYERS} layers, got {}",
                self.hidden.len()
            ));
        }
        for (i, &w) in self.hidden.iter().enumerate() {
            if !(1..=MAX_WIDTH).contains(&w) {
                return Err(format!(
                    "hidden[{i}] must be between 1 and {MAX_WIDTH} units, got {w}"
                ));
            }
        }
        if self.lookback < 1 {
            return Err("lookback must be >= 1".into());
        }
        in_range("lookback", self.lookback, 1, MAX_LOOKBACK)?;
        for (key, f) in [
            ("val_fraction", self.val_fraction),
            ("test_fraction", self.test_fraction),
        ] {
            if !(f.is_finite() && (0.0..1.0).contains(&f)) {
                return Err(format!("{key} must be >= 0 and < 1, got {f}"));
            }
        }
        if self.val_fraction + self.test_fraction >= 1.0 {
            return Err(format!(
                "val_fraction + test_fraction must be < 1, got {}",
                self.val_fraction + self.test_fraction
            ));
        }
        if self.checkpoint_every_epochs < 1 {
            return Err("checkpoint_every_epochs must be >= 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn goog() -> String {
        format!("{}/data/GOOG.csv", env!("CARGO_MANIFEST_DIR"))
    }

    #[test]
    fn defaults_fill_in() {
        let p = TrainingParams::from_json(&json!({ "data": goog() })).unwrap();
        assert_eq!(p, TrainingParams::with_data(goog()));
        assert_eq!(p.hidden, vec![32, 16]);
        let q: TrainingParams = serde_json::from_value(json!({ "data": goog() })).unwrap();
        assert_eq!(p, q);
    }

    #[test]
    fn bad_params_name_the_key() {
        let cases = [
            (json!({"data": goog(), "epochs": 0}), "epochs must be >= 1"),
            (json!({"data": goog(), "epochs": -3}), "epochs:"),
            (json!({"data": goog(), "epochs": "ten"}), "epochs:"),
            (
                json!({"data": goog(), "batch_size": 0}),
                "batch_size must be >= 1",
            ),
            (
                json!({"data": goog(), "learning_rate": 0.0}),
                "learning_rate must be > 0",
            ),
            (
                json!({"data": goog(), "hidden": [32, 0]}),
                "hidden[1] must be between 1",
            ),
            (json!({"data": goog(), "hidden": 32}), "hidden:"),
            (
                json!({"data": goog(), "lookback": 0}),
                "lookback must be >= 1",
            ),
            (
                json!({"data": goog(), "val_fraction": 1.5}),
                "val_fraction must be >= 0 and < 1",
            ),
            (
                json!({"data": goog(), "test_fraction": -0.1}),
                "test_fraction must be",
            ),
            (
                json!({"data": goog(), "val_fraction": 0.5, "test_fraction": 0.5}),
                "val_fraction + test_fraction must be < 1",
            ),
            (
                json!({"data": goog(), "checkpoint_every_epochs": 0}),
                "checkpoint_every_epochs",
            ),
            (
                json!({"data": "/nonexistent/x.csv"}),
                "data: file not found: /nonexistent/x.csv",
            ),
            (json!({"epochs": 3}), "data: required"),
            (
                json!({"data": goog(), "epoch": 3}),
                "unknown parameter \"epoch\"",
            ),
        ];
        for (v, want) in cases {
            let err = TrainingParams::from_json(&v).unwrap_err();
            assert!(err.contains(want), "{v}: got {err:?}, want {want:?}");
        }
        // The derived deserializer also refuses unknown keys.
        let r: Result<TrainingParams, _> = serde_json::from_value(json!({"data": "x", "nope": 1}));
        assert!(r.is_err());
    }
}
