//! Parameters of the `backtest` job (SPEC §8) and their validation.
//!
//! Submit-time checks live here so the daemon can refuse a bad submission
//! with a message that names the key and says what to do, before any work
//! is queued.

use super::ohlcv::parse_time;
use chrono::NaiveDateTime;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::path::Path;

/// Which trading rule a backtest runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StrategyKind {
    /// Long when SMA(fast) crosses above SMA(slow), short when below.
    #[default]
    SmaCross,
    /// Long or short as a trained model predicts the next bar's direction.
    Model,
}

impl StrategyKind {
    /// The name users write: `sma_cross` or `model`.
    pub fn as_str(self) -> &'static str {
        match self {
            StrategyKind::SmaCross => "sma_cross",
            StrategyKind::Model => "model",
        }
    }
}

/// Parameters of a backtest, with SPEC §8's defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BacktestParams {
    /// Path of the OHLCV CSV file (required).
    pub data: String,
    /// The strategy [`sma_cross`].
    pub strategy: StrategyKind,
    /// Fast SMA length in bars [10].
    pub fast: usize,
    /// Slow SMA length in bars [20].
    pub slow: usize,
    /// Path of the trained model file; required when `strategy = model`.
    pub model: Option<String>,
    /// Initial cash [10000].
    pub cash: f64,
    /// Commission as a fraction of traded value, per side [0.002].
    pub commission: f64,
    /// Checkpoint every this many bars [1000].
    pub checkpoint_every_bars: u64,
    /// Trade only bars at or after this timestamp (SPEC §14); the bars
    /// before it only warm the indicators up. `None`: from the first bar.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    /// Trade only bars at or before this timestamp. `None`: to the last bar.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end: Option<String>,
}

impl Default for BacktestParams {
    fn default() -> Self {
        Self {
            data: String::new(),
            strategy: StrategyKind::SmaCross,
            fast: 10,
            slow: 20,
            model: None,
            cash: 10_000.0,
            commission: 0.002,
            checkpoint_every_bars: 1000,
            start: None,
            end: None,
        }
    }
}

/// The keys [`BacktestParams::from_json`] accepts.
pub const KEYS: [&str; 10] = [
    "data",
    "strategy",
    "fast",
    "slow",
    "model",
    "cash",
    "commission",
    "checkpoint_every_bars",
    "start",
    "end",
];

impl BacktestParams {
    /// Read parameters from a JSON object. Unlike plain serde, every error
    /// names the offending key (`fast: invalid type: string "x", expected
    /// usize`, `unknown key "fats"; known keys: ...`).
    pub fn from_json(value: &serde_json::Value) -> Result<Self, String> {
        let obj = value
            .as_object()
            .ok_or("backtest parameters must be a JSON object")?;
        let mut p = Self::default();
        for (key, v) in obj {
            match key.as_str() {
                "data" => p.data = field(key, v)?,
                "strategy" => p.strategy = field(key, v)?,
                "fast" => p.fast = field(key, v)?,
                "slow" => p.slow = field(key, v)?,
                "model" => p.model = field(key, v)?,
                "cash" => p.cash = field(key, v)?,
                "commission" => p.commission = field(key, v)?,
                "checkpoint_every_bars" => p.checkpoint_every_bars = field(key, v)?,
                "start" => p.start = field(key, v)?,
                "end" => p.end = field(key, v)?,
                _ => {
                    return Err(format!(
                        "unknown key {key:?}; known keys: {}",
                        KEYS.join(", ")
                    ))
                }
            }
        }
        Ok(p)
    }

    /// Check ranges and that the files exist. Messages name the key and say
    /// what to do.
    pub fn validate(&self) -> Result<(), String> {
        self.validate_files()?;
        self.validate_values()
    }

    /// The file checks of [`validate`](Self::validate): `data` (and `model`
    /// for the model strategy) name existing files.
    pub fn validate_files(&self) -> Result<(), String> {
        if self.data.trim().is_empty() {
            return Err("data: required; give the path of an OHLCV CSV file".into());
        }
        if !Path::new(&self.data).is_file() {
            return Err(format!(
                "data: file not found: {}; give the path of an existing OHLCV CSV file \
                 (absolute, or relative to the daemon's working directory)",
                self.data
            ));
        }
        match self.strategy {
            StrategyKind::SmaCross => {}
            StrategyKind::Model => match &self.model {
                None => {
                    return Err("model: required when strategy = model; give the path of \
                                a trained model file (the training job's model_path)"
                        .into())
                }
                Some(m) if !Path::new(m).is_file() => {
                    return Err(format!(
                        "model: file not found: {m}; give the path of a trained model file"
                    ))
                }
                Some(_) => {}
            },
        }
        Ok(())
    }

    /// The range checks of [`validate`](Self::validate), without touching
    /// the file system (the engine repeats them on the values it is given).
    pub fn validate_values(&self) -> Result<(), String> {
        if self.strategy == StrategyKind::SmaCross {
            if self.fast < 1 {
                return Err("fast must be >= 1 (a number of bars)".into());
            }
            if self.fast >= self.slow {
                return Err(format!(
                    "fast must be < slow (got fast = {}, slow = {}); swap them or \
                     choose a shorter fast window",
                    self.fast, self.slow
                ));
            }
        }
        if !(self.cash.is_finite() && self.cash > 0.0) {
            return Err(format!("cash must be > 0 (got {})", self.cash));
        }
        if !(self.commission.is_finite() && (0.0..0.1).contains(&self.commission)) {
            return Err(format!(
                "commission must be a fraction in [0, 0.1), e.g. 0.002 for 0.2 % per side \
                 (got {})",
                self.commission
            ));
        }
        if self.checkpoint_every_bars < 1 {
            return Err("checkpoint_every_bars must be >= 1".into());
        }
        if let (Some(a), Some(b)) = self.range_times()? {
            if a > b {
                return Err(format!(
                    "start ({}) is after end ({}); swap them",
                    self.start.as_deref().unwrap_or_default(),
                    self.end.as_deref().unwrap_or_default()
                ));
            }
        }
        Ok(())
    }

    /// `start` and `end` parsed (each `None` when not given); the error
    /// names the key and the formats accepted.
    pub fn range_times(&self) -> Result<(Option<NaiveDateTime>, Option<NaiveDateTime>), String> {
        let parse = |key: &str, v: &Option<String>| {
            v.as_deref()
                .map(|s| {
                    parse_time(s.trim()).ok_or_else(|| {
                        format!(
                            "{key}: not a timestamp: {s:?}; write YYYY-MM-DD or \
                             YYYY-MM-DD HH:MM:SS, like the data file's first column"
                        )
                    })
                })
                .transpose()
        };
        Ok((parse("start", &self.start)?, parse("end", &self.end)?))
    }
}

/// Deserialize one parameter, naming it in the error.
fn field<T: DeserializeOwned>(key: &str, v: &serde_json::Value) -> Result<T, String> {
    T::deserialize(v).map_err(|e| format!("{key}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn goog() -> String {
        format!("{}/data/GOOG.csv", env!("CARGO_MANIFEST_DIR"))
    }

    fn err(v: serde_json::Value) -> String {
        match BacktestParams::from_json(&v) {
            Err(e) => e,
            Ok(p) => p.validate().unwrap_err(),
        }
    }

    #[test]
    fn defaults_and_json() {
        let p = BacktestParams::from_json(&json!({ "data": goog() })).unwrap();
        assert_eq!(
            (p.fast, p.slow, p.cash, p.commission),
            (10, 20, 10000.0, 0.002)
        );
        assert_eq!(
            (p.strategy, p.checkpoint_every_bars),
            (StrategyKind::SmaCross, 1000)
        );
        p.validate().unwrap();
        let back: BacktestParams =
            serde_json::from_value(serde_json::to_value(&p).unwrap()).unwrap();
        assert_eq!(back, p);
        let strict = serde_json::from_value::<BacktestParams>(json!({"data": "x", "fats": 1}));
        assert!(strict.is_err(), "serde also refuses unknown keys");
    }

    #[test]
    fn bad_params_name_the_key() {
        let g = goog();
        let cases = [
            (json!({"data": g, "fats": 5}), "unknown key \"fats\""),
            (json!({"data": g, "fast": "x"}), "fast: invalid type"),
            (json!({"data": g, "fast": -1}), "fast: invalid value"),
            (
                json!({"data": g, "strategy": "rsi"}),
                "strategy: unknown variant",
            ),
            (
                json!({"data": g, "fast": 20, "slow": 20}),
                "fast must be < slow",
            ),
            (json!({"data": g, "fast": 0}), "fast must be >= 1"),
            (json!({"data": g, "cash": 0}), "cash must be > 0"),
            (json!({"data": g, "commission": 0.5}), "commission must be"),
            (
                json!({"data": g, "commission": -0.001}),
                "commission must be",
            ),
            (
                json!({"data": g, "checkpoint_every_bars": 0}),
                "checkpoint_every_bars must be",
            ),
            (
                json!({"data": "/no/such.csv"}),
                "data: file not found: /no/such.csv",
            ),
            (json!({}), "data: required"),
            (json!({"data": g, "strategy": "model"}), "model: required"),
            (
                json!({"data": g, "strategy": "model", "model": "/no/m.json"}),
                "model: file not found",
            ),
            (json!([1, 2]), "must be a JSON object"),
            (
                json!({"data": g, "start": "soon"}),
                "start: not a timestamp",
            ),
            (json!({"data": g, "end": 2012}), "end: invalid type"),
            (
                json!({"data": g, "start": "2012-01-02", "end": "2011-01-03"}),
                "start (2012-01-02) is after end (2011-01-03)",
            ),
        ];
        for (v, want) in cases {
            let e = err(v.clone());
            assert!(e.contains(want), "{v}: {e:?} lacks {want:?}");
        }
    }

    #[test]
    fn model_strategy_ignores_fast_slow() {
        let p = BacktestParams::from_json(&json!({
            "data": goog(), "strategy": "model", "model": goog(), "fast": 30, "slow": 5
        }))
        .unwrap();
        p.validate().unwrap();
    }
}
