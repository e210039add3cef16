//! Features and labels from OHLCV bars, the chronological split, and the
//! feature standardization.
//!
//! For a bar `t` and a window of `lookback` bars `t-lookback+1 ..= t`, each
//! bar `i` of the window contributes [`FEATURES_PER_BAR`] values:
//!
//! 1. `ln(close[i] / close[i-1])`: the log return (scale-free across prices);
//! 2. `(high[i] - low[i]) / close[i]`: the bar's relative range (volatility);
//! 3. `ln(close[i] / open[i])`: the intrabar move;
//! 4. `ln(1 + volume[i])` z-scored within the window: whether volume is high
//!    or low *for this stretch*, which removes the trend in volume levels
//!    across years (0 when the window's volume is constant).
//!
//! The return of the window's first bar needs the bar before it, so a bar has
//! a full window when `t >= lookback`. Its label is 1 when
//! `close[t+1] > close[t]`, else 0, so the last bar has features but no label.
//!
//! The split is chronological (train, then validation, then test), never
//! shuffled across the boundaries, and the standardization (per-feature mean
//! and standard deviation) is fitted on the train split only so nothing of the
//! later periods leaks into training.

use crate::market::ohlcv::Bars;

/// Values per bar in a window (see the module documentation).
pub const FEATURES_PER_BAR: usize = 4;

/// Human-readable description of the features, stored with the model and in
/// the run's summary.
pub const FEATURE_DESCRIPTION: &str = "per bar of the lookback window: ln(close/prev_close), \
(high-low)/close, ln(close/open), ln(1+volume) z-scored within the window; \
standardized with the train split's mean and std; label = close[t+1] > close[t]";

/// Features of one bar's window, written into `out` (length
/// `lookback * FEATURES_PER_BAR`). Returns false when the window is
/// incomplete (`t < lookback`) or a value is not finite (non-positive prices).
pub fn window_features(bars: &Bars, t: usize, lookback: usize, out: &mut [f64]) -> bool {
    debug_assert_eq!(out.len(), lookback * FEATURES_PER_BAR);
    if lookback == 0 || t < lookback || t >= bars.len() {
        return false;
    }
    let first = t + 1 - lookback;
    // Window statistics of log volume, in a fixed order (bit reproducible).
    let lv = |i: usize| (1.0 + bars.volume[i].max(0.0)).ln();
    let mut sum = 0.0;
    for i in first..=t {
        sum += lv(i);
    }
    let mean = sum / lookback as f64;
    let mut ss = 0.0;
    for i in first..=t {
        let d = lv(i) - mean;
        ss += d * d;
    }
    let std = (ss / lookback as f64).sqrt();
    for (k, i) in (first..=t).enumerate() {
        let (o, h, l, c, pc) = (
            bars.open[i],
            bars.high[i],
            bars.low[i],
            bars.close[i],
            bars.close[i - 1],
        );
        let f = &mut out[k * FEATURES_PER_BAR..(k + 1) * FEATURES_PER_BAR];
        f[0] = (c / pc).ln();
        f[1] = (h - l) / c;
        f[2] = (c / o).ln();
        f[3] = if std > 1e-12 {
            (lv(i) - mean) / std
        } else {
            0.0
        };
    }
    out.iter().all(|v| v.is_finite())
}

/// Labelled samples, features flat row-major (`len * dim`), oldest first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Samples {
    /// Features per sample.
    pub dim: usize,
    /// `len * dim` feature values.
    pub x: Vec<f64>,
    /// Labels, 0.0 or 1.0.
    pub y: Vec<f64>,
    /// The bar index `t` each sample belongs to.
    pub bar_index: Vec<usize>,
}

impl Samples {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.y.len()
    }
    /// True when there are no samples.
    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }
    /// Features of sample `i`.
    pub fn row(&self, i: usize) -> &[f64] {
        &self.x[i * self.dim..(i + 1) * self.dim]
    }
    /// Samples `range` as a new set (used to cut the split).
    fn slice(&self, range: std::ops::Range<usize>) -> Samples {
        Samples {
            dim: self.dim,
            x: self.x[range.start * self.dim..range.end * self.dim].to_vec(),
            y: self.y[range.clone()].to_vec(),
            bar_index: self.bar_index[range].to_vec(),
        }
    }
}

/// Every labelled sample of `bars`: bars `lookback ..= len-2`. Fails, naming
/// the bar, when a price is not positive and finite (the log features would
/// be meaningless).
pub fn build_samples(bars: &Bars, lookback: usize) -> Result<Samples, String> {
    for i in 0..bars.len() {
        let prices = [bars.open[i], bars.high[i], bars.low[i], bars.close[i]];
        if prices.iter().any(|p| !(p.is_finite() && *p > 0.0)) || !bars.volume[i].is_finite() {
            let ts = bars.timestamps.get(i).map(String::as_str).unwrap_or("?");
            return Err(format!(
                "data: bar {} ({ts}) has a non-positive or non-finite price or volume",
                i + 1
            ));
        }
    }
    let dim = lookback * FEATURES_PER_BAR;
    let mut s = Samples {
        dim,
        ..Samples::default()
    };
    let mut row = vec![0.0; dim];
    for t in lookback..bars.len().saturating_sub(1) {
        if window_features(bars, t, lookback, &mut row) {
            s.x.extend_from_slice(&row);
            s.y.push(if bars.close[t + 1] > bars.close[t] {
                1.0
            } else {
                0.0
            });
            s.bar_index.push(t);
        }
    }
    Ok(s)
}

/// The chronological three-way split.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    /// The oldest samples; the model learns from these.
    pub train: Samples,
    /// The following period; monitored every epoch.
    pub val: Samples,
    /// The most recent period; evaluated once at the end.
    pub test: Samples,
}

/// Sizes of the split for `n` samples: validation and test take
/// `floor(n * fraction)` each, the train split the rest (oldest first).
pub fn split_sizes(n: usize, val_fraction: f64, test_fraction: f64) -> (usize, usize, usize) {
    let n_val = (n as f64 * val_fraction).floor() as usize;
    let n_test = (n as f64 * test_fraction).floor() as usize;
    let n_train = n.saturating_sub(n_val + n_test);
    (n_train, n_val, n_test)
}

/// Fewest training samples a run accepts: below this the "model" is noise.
pub const MIN_TRAIN_SAMPLES: usize = 10;

/// Cut `samples` chronologically. Fails when the train split would have fewer
/// than [`MIN_TRAIN_SAMPLES`].
pub fn split(samples: &Samples, val_fraction: f64, test_fraction: f64) -> Result<Split, String> {
    let n = samples.len();
    let (n_train, n_val, n_test) = split_sizes(n, val_fraction, test_fraction);
    if n_train < MIN_TRAIN_SAMPLES {
        return Err(format!(
            "data: too few bars: {n} labelled samples leave {n_train} for training, \
             need at least {MIN_TRAIN_SAMPLES} (use more bars or a shorter lookback)"
        ));
    }
    Ok(Split {
        train: samples.slice(0..n_train),
        val: samples.slice(n_train..n_train + n_val),
        test: samples.slice(n_train + n_val..n_train + n_val + n_test),
    })
}

/// Per-feature standardization `(x - mean) / std`, fitted on the train split.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Standardizer {
    /// Mean of each feature over the train split.
    pub mean: Vec<f64>,
    /// Population standard deviation of each feature (1 where it is ~0, so
    /// constant features pass through centred instead of exploding).
    pub std: Vec<f64>,
}

impl Standardizer {
    /// Fit on `train` (sequential sums: bit reproducible).
    pub fn fit(train: &Samples) -> Standardizer {
        let (d, n) = (train.dim, train.len().max(1) as f64);
        let mut mean = vec![0.0; d];
        for i in 0..train.len() {
            for (m, v) in mean.iter_mut().zip(train.row(i)) {
                *m += v;
            }
        }
        mean.iter_mut().for_each(|m| *m /= n);
        let mut var = vec![0.0; d];
        for i in 0..train.len() {
            for ((s, v), m) in var.iter_mut().zip(train.row(i)).zip(&mean) {
                *s += (v - m) * (v - m);
            }
        }
        let std = var
            .into_iter()
            .map(|s| {
                let sd = (s / n).sqrt();
                if sd > 1e-12 {
                    sd
                } else {
                    1.0
                }
            })
            .collect();
        Standardizer { mean, std }
    }

    /// Standardize one row in place.
    pub fn apply_row(&self, row: &mut [f64]) {
        for ((v, m), s) in row.iter_mut().zip(&self.mean).zip(&self.std) {
            *v = (*v - m) / s;
        }
    }

    /// Standardize every row of `samples` in place.
    pub fn apply(&self, samples: &mut Samples) {
        let d = samples.dim;
        for row in samples.x.chunks_mut(d.max(1)) {
            self.apply_row(row);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Bars with the given closes; open = previous close, a 1% range.
    pub(crate) fn bars_from_closes(closes: &[f64]) -> Bars {
        let n = closes.len();
        let mut b = Bars::default();
        for i in 0..n {
            let c = closes[i];
            let o = if i == 0 { c } else { closes[i - 1] };
            b.timestamps.push(format!("t{i}"));
            b.open.push(o);
            b.high.push(c.max(o) * 1.005);
            b.low.push(c.min(o) * 0.995);
            b.close.push(c);
            b.volume.push(1000.0 + (i % 7) as f64 * 10.0);
        }
        b
    }

    #[test]
    fn windows_labels_and_split_are_chronological() {
        let closes: Vec<f64> = (0..50).map(|i| 100.0 + (i as f64 * 0.7).sin()).collect();
        let bars = bars_from_closes(&closes);
        let s = build_samples(&bars, 5).unwrap();
        // Bars 5..=48 have a full window and a next bar.
        assert_eq!(s.len(), 44);
        assert_eq!(s.dim, 20);
        assert_eq!(s.bar_index[0], 5);
        let t = 5;
        let r = s.row(0);
        // The last bar of the window is bar t.
        let last = &r[4 * FEATURES_PER_BAR..];
        assert_eq!(last[0], (closes[t] / closes[t - 1]).ln());
        assert_eq!(s.y[0], if closes[t + 1] > closes[t] { 1.0 } else { 0.0 });

        let sp = split(&s, 0.25, 0.25).unwrap();
        assert_eq!((sp.train.len(), sp.val.len(), sp.test.len()), (22, 11, 11));
        assert!(sp.train.bar_index.last() < sp.val.bar_index.first());
        assert!(sp.val.bar_index.last() < sp.test.bar_index.first());
    }

    #[test]
    fn standardizer_uses_train_only_and_handles_constants() {
        let train = Samples {
            dim: 2,
            x: vec![1.0, 5.0, 3.0, 5.0],
            y: vec![0.0, 1.0],
            bar_index: vec![0, 1],
        };
        let st = Standardizer::fit(&train);
        assert_eq!(st.mean, vec![2.0, 5.0]);
        assert_eq!(st.std, vec![1.0, 1.0]);
        let mut row = vec![4.0, 6.0];
        st.apply_row(&mut row);
        assert_eq!(row, vec![2.0, 1.0]);
    }

    #[test]
    fn bad_prices_and_short_data_are_errors() {
        let mut bars = bars_from_closes(&[1.0, 2.0, 3.0, 4.0]);
        bars.close[2] = 0.0;
        let err = build_samples(&bars, 2).unwrap_err();
        assert!(err.contains("bar 3") && err.contains("data"), "{err}");
        let bars = bars_from_closes(&[1.0, 2.0, 3.0]);
        let s = build_samples(&bars, 2).unwrap();
        assert!(split(&s, 0.5, 0.5).is_err());
        let mut row = vec![0.0; 8];
        assert!(!window_features(&bars, 1, 2, &mut row));
    }
}
