//! Rolling simple moving average, computed exactly the way pandas'
//! `Series.rolling(n).mean()` does (BACKTEST-RULES.md rule 1).
//!
//! Why so particular: the SMA-cross strategy compares two averages with
//! strict inequalities, so a last-bit difference on a bar where the averages
//! are equal in exact arithmetic flips a signal and changes every figure
//! after it. pandas keeps one running sum with Kahan compensation (separate
//! terms for removals and additions), returns the value itself when the
//! last `n` inputs are identical, and clips a mean to 0 when its sign
//! contradicts the inputs. We replicate each of these steps.
//!
//! The state is serde-serializable so a backtest checkpoint can carry it;
//! it never holds a non-finite number (JSON could not round-trip it).

use serde::{Deserialize, Serialize};

/// Incremental pandas-compatible rolling mean over a window of `n` values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RollingMean {
    /// Window length.
    pub n: usize,
    /// Values currently in the window (grows to `n`).
    nobs: usize,
    /// Running sum of the window.
    sum: f64,
    /// Kahan compensation of additions.
    comp_add: f64,
    /// Kahan compensation of removals.
    comp_remove: f64,
    /// Values in the window with the sign bit set.
    neg_ct: usize,
    /// Length of the current run of identical consecutive values.
    same_run: u64,
    /// The last value added (pandas starts from 0).
    prev: f64,
}

impl RollingMean {
    /// An empty window of length `n` (`n >= 1`).
    pub fn new(n: usize) -> Self {
        Self {
            n,
            nobs: 0,
            sum: 0.0,
            comp_add: 0.0,
            comp_remove: 0.0,
            neg_ct: 0,
            same_run: 0,
            prev: 0.0,
        }
    }

    /// Feed bar `t` of `values` (bars must be fed in order `0, 1, 2, ...`):
    /// removes `values[t - n]` when the window is full, adds `values[t]`,
    /// and returns the mean, or NaN while fewer than `n` values were seen.
    #[inline(always)]
    pub fn update(&mut self, values: &[f64], t: usize) -> f64 {
        if t >= self.n {
            self.remove(values[t - self.n]);
        }
        self.add(values[t]);
        self.value()
    }

    /// The current mean (NaN before the window is full).
    #[inline(always)]
    pub fn value(&self) -> f64 {
        if self.nobs < self.n || self.nobs == 0 {
            return f64::NAN;
        }
        let mean = self.sum / self.nobs as f64;
        if self.same_run >= self.nobs as u64 {
            self.prev
        } else if (self.neg_ct == 0 && mean < 0.0) || (self.neg_ct == self.nobs && mean > 0.0) {
            // All inputs positive (negative) but the sum rounded the other way.
            0.0
        } else {
            mean
        }
    }

    #[inline(always)]
    fn add(&mut self, x: f64) {
        self.nobs += 1;
        let y = x - self.comp_add;
        let t = self.sum + y;
        self.comp_add = t - self.sum - y;
        self.sum = t;
        if x.is_sign_negative() {
            self.neg_ct += 1;
        }
        if x == self.prev {
            self.same_run += 1;
        } else {
            self.same_run = 1;
        }
        self.prev = x;
    }

    #[inline(always)]
    fn remove(&mut self, x: f64) {
        self.nobs -= 1;
        let y = -x - self.comp_remove;
        let t = self.sum + y;
        self.comp_remove = t - self.sum - y;
        self.sum = t;
        if x.is_sign_negative() {
            self.neg_ct -= 1;
        }
    }
}

/// The whole rolling mean of `values` (NaN for the first `n - 1` entries),
/// for tests and tools; the engine updates a [`RollingMean`] bar by bar.
pub fn sma(values: &[f64], n: usize) -> Vec<f64> {
    let mut m = RollingMean::new(n);
    (0..values.len()).map(|t| m.update(values, t)).collect()
}

/// `-1` when `fast < slow`, `+1` when `fast > slow`, `0` when they are equal
/// or either is missing (NaN): the state rule 2's crossing test needs.
#[inline(always)]
pub fn relation(fast: f64, slow: f64) -> i8 {
    (fast > slow) as i8 - (fast < slow) as i8
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parse the output of Python's `float.hex()`.
    fn hex(s: &str) -> f64 {
        let (neg, s) = s.strip_prefix('-').map_or((false, s), |r| (true, r));
        let s = s.strip_prefix("0x").unwrap();
        let (mant, exp) = s.split_once('p').unwrap();
        let (int, frac) = mant.split_once('.').unwrap();
        let bits = u64::from_str_radix(&format!("{int}{frac}"), 16).unwrap();
        let x = bits as f64 * 2f64.powi(exp.parse::<i32>().unwrap() - 4 * frac.len() as i32);
        if neg {
            -x
        } else {
            x
        }
    }

    fn check(values: &[f64], n: usize, expected: &[&str]) {
        let got = sma(values, n);
        assert_eq!(got.len(), expected.len());
        for (t, (g, e)) in got.iter().zip(expected).enumerate() {
            if *e == "nan" {
                assert!(g.is_nan(), "t={t}: {g}");
            } else {
                assert_eq!(g.to_bits(), hex(e).to_bits(), "t={t}: {g} vs {e}");
            }
        }
    }

    // Expected values: pandas 3.1.1 `pd.Series(v).rolling(n).mean()`,
    // printed with `float.hex()` (script kept outside the repository).
    #[test]
    fn identical_closes_give_the_close_itself() {
        let v = [0.1, 0.1, 0.1, 0.1, 0.1, 0.2, 0.2, 0.2];
        let e = [
            "nan",
            "nan",
            "0x1.999999999999ap-4",
            "0x1.999999999999ap-4",
            "0x1.999999999999ap-4",
            "0x1.1111111111111p-3",
            "0x1.5555555555555p-3",
            "0x1.999999999999ap-3",
        ];
        check(&v, 3, &e);
        // The last value: three 0.2s, exactly 0.2 although 0.6/3 is not.
        assert_eq!(sma(&v, 3)[7], 0.2);
    }

    #[test]
    fn kahan_running_sum_matches_pandas() {
        let v = [0.1, 0.2, 0.3, 0.1, 0.2, 0.3, 0.1];
        check(
            &v,
            3,
            &[
                "nan",
                "nan",
                "0x1.9999999999999p-3",
                "0x1.9999999999999p-3",
                "0x1.9999999999999p-3",
                "0x1.9999999999999p-3",
                "0x1.9999999999999p-3",
            ],
        );
        let v = [1e16, 1.0, -1e16, 3.0, 3.0, 3.0];
        check(
            &v,
            2,
            &[
                "nan",
                "0x1.1c37937e08000p+52",
                "-0x1.1c37937e08000p+52",
                "-0x1.1c37937e07ffep+52",
                "0x1.8000000000000p+1",
                "0x1.8000000000000p+1",
            ],
        );
        let v = [1.1, 2.2, 3.3, 4.4, 5.5, 6.6, 7.7, 8.8];
        check(
            &v,
            3,
            &[
                "nan",
                "nan",
                "0x1.1999999999999p+1",
                "0x1.a666666666667p+1",
                "0x1.1999999999999p+2",
                "0x1.6000000000000p+2",
                "0x1.a666666666667p+2",
                "0x1.ecccccccccccdp+2",
            ],
        );
    }

    #[test]
    fn exact_ties_between_two_windows() {
        // 100.1, 100.1 then 100.2, 100.1: the n=2 means at t=3 and t=4 are
        // equal; pandas' arithmetic decides the last bits.
        let v = [100.1, 100.1, 100.1, 100.2, 100.1, 100.1];
        check(
            &v,
            2,
            &[
                "nan",
                "0x1.9066666666666p+6",
                "0x1.9066666666666p+6",
                "0x1.909999999999ap+6",
                "0x1.909999999999ap+6",
                "0x1.9066666666666p+6",
            ],
        );
        assert_eq!(relation(sma(&v, 2)[3], sma(&v, 2)[4]), 0);
    }

    #[test]
    fn window_of_one_and_relation() {
        check(
            &[1.5, 2.5, 3.5, 4.5],
            1,
            &["0x1.8p+0", "0x1.4p+1", "0x1.cp+1", "0x1.2p+2"],
        );
        assert_eq!(relation(1.0, 2.0), -1);
        assert_eq!(relation(2.0, 1.0), 1);
        assert_eq!(relation(f64::NAN, 1.0), 0);
    }

    #[test]
    fn state_round_trips_through_json() {
        let v: Vec<f64> = (0..50).map(|i| 100.0 + (i as f64 * 0.37).sin()).collect();
        let mut a = RollingMean::new(7);
        for t in 0..20 {
            a.update(&v, t);
        }
        let mut b: RollingMean = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
        for t in 20..50 {
            assert_eq!(a.update(&v, t).to_bits(), b.update(&v, t).to_bits());
        }
    }
}
