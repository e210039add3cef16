//! Streaming statistics of a backtest (the "Statistics" part of
//! BACKTEST-RULES.md).
//!
//! Everything is accumulated bar by bar in [`StatsAcc`], a small fixed-size
//! serializable struct, so that a checkpoint stays small however long the
//! run and a resumed run continues with exactly the same numbers. Where the
//! rules leave the arithmetic open, we follow backtesting.py 0.6.6's
//! expression order (e.g. `(Eq[-1] - Eq[0]) / Eq[0] * 100`) so results agree
//! to the last bits wherever its own arithmetic is sequential; its pairwise
//! (numpy) sums and two-pass variance are replaced by a compensated sum and
//! Welford's update, which agree to about 1e-15 relative.

use chrono::{Datelike, NaiveDate, NaiveDateTime};
use serde::{Deserialize, Serialize};

/// The calendar period over which returns are sampled for the Sharpe ratio.
/// backtesting.py picks it from the median spacing of the last 100 bars:
/// weekly, monthly or yearly bars use that period, anything else days.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    /// Calendar days (252 or 365 a year, see [`annual_periods`]).
    Day,
    /// Weeks ending on Sunday (52 a year).
    Week,
    /// Calendar months (12 a year).
    Month,
    /// Calendar years.
    Year,
}

/// The sampling period for `times` (backtesting.py's `_data_period`: the
/// median gap of the last 100 timestamps, in whole days).
pub fn detect_period(times: &[NaiveDateTime]) -> Period {
    let tail = &times[times.len().saturating_sub(100)..];
    let mut gaps: Vec<i128> = tail
        .windows(2)
        .map(|w| {
            let d = w[1] - w[0];
            d.num_seconds() as i128 * 1_000_000_000 + d.subsec_nanos() as i128
        })
        .collect();
    if gaps.is_empty() {
        return Period::Day;
    }
    gaps.sort_unstable();
    const DAY: i128 = 86_400_000_000_000;
    let m = gaps.len() / 2;
    let days = if gaps.len() % 2 == 1 {
        gaps[m] / DAY
    } else {
        (gaps[m - 1] + gaps[m]) / (2 * DAY)
    };
    match days {
        7 => Period::Week,
        31 => Period::Month,
        365 => Period::Year,
        _ => Period::Day,
    }
}

/// Periods per year: 52, 12 or 1, and for days 365 when more than
/// `2/7 * 0.6` of the bars fall on a weekend (markets that trade every day),
/// else 252.
pub fn annual_periods(period: Period, times: &[NaiveDateTime]) -> f64 {
    match period {
        Period::Week => 52.0,
        Period::Month => 12.0,
        Period::Year => 1.0,
        Period::Day => {
            let weekend = times
                .iter()
                .filter(|t| t.weekday().number_from_monday() >= 6)
                .count();
            if weekend as f64 / times.len().max(1) as f64 > 2.0 / 7.0 * 0.6 {
                365.0
            } else {
                252.0
            }
        }
    }
}

/// The bucket a date falls in for `period`; equal keys = same bucket.
#[inline]
pub fn period_key(period: Period, d: NaiveDate) -> i64 {
    match period {
        Period::Day => d.num_days_from_ce() as i64,
        // Day 1 of the common era is a Monday, so this groups Monday..Sunday.
        Period::Week => (d.num_days_from_ce() as i64 - 1).div_euclid(7),
        Period::Month => d.year() as i64 * 12 + d.month0() as i64,
        Period::Year => d.year() as i64,
    }
}

/// Running statistics of one backtest. All fields are finite numbers, so the
/// struct survives a JSON round trip exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatsAcc {
    /// Running maximum of equity.
    pub peak: f64,
    /// Largest `1 - equity / peak` so far (>= 0).
    pub max_dd: f64,
    /// Closed trades.
    pub trades: u64,
    /// Closed trades with PnL > 0.
    pub wins: u64,
    /// Entry plus exit commissions of closed trades, summed in order.
    pub commissions: f64,
    /// Bars covered by closed trades (`[entry bar, exit bar]`, union).
    pub exposed_bars: u64,
    /// First bar not yet counted in `exposed_bars`.
    pub exposure_from: usize,
    /// Date of the last bar seen (`None` before the first bar).
    pub date: Option<NaiveDate>,
    /// Period bucket of `date`.
    pub key: i64,
    /// Equity at the last bar seen (the bucket's last value so far).
    pub last_equity: f64,
    /// Last equity of the previous bucket, once there is one.
    pub prev_bucket: Option<f64>,
    /// Returns between buckets counted (NaN returns skipped, as pandas does).
    pub n_ret: u64,
    /// Welford running mean of the returns.
    pub ret_mean: f64,
    /// Welford running sum of squared deviations.
    pub ret_m2: f64,
    /// Sum of `ln(1 + r)` (Neumaier-compensated).
    pub log_sum: f64,
    /// Compensation term of `log_sum`.
    pub log_comp: f64,
    /// Some `1 + r <= 0` was seen (the geometric mean is then 0).
    pub nonpositive: bool,
}

impl StatsAcc {
    /// Fresh statistics for a run starting with `cash`.
    pub fn new(cash: f64) -> Self {
        Self {
            peak: cash,
            max_dd: 0.0,
            trades: 0,
            wins: 0,
            commissions: 0.0,
            exposed_bars: 0,
            exposure_from: 0,
            date: None,
            key: 0,
            last_equity: cash,
            prev_bucket: None,
            n_ret: 0,
            ret_mean: 0.0,
            ret_m2: 0.0,
            log_sum: 0.0,
            log_comp: 0.0,
            nonpositive: false,
        }
    }

    /// Record the equity marked at the close of a bar at `time`.
    #[inline(always)]
    pub fn on_equity(&mut self, equity: f64, time: NaiveDateTime, period: Period) {
        if equity > self.peak {
            self.peak = equity;
        } else {
            let dd = 1.0 - equity / self.peak;
            if dd > self.max_dd {
                self.max_dd = dd;
            }
        }
        let d = time.date();
        if self.date != Some(d) {
            let key = period_key(period, d);
            if self.date.is_some() && key != self.key {
                self.close_bucket();
            }
            self.date = Some(d);
            self.key = key;
        }
        self.last_equity = equity;
    }

    /// The bucket in progress ends: its last equity becomes a sample.
    #[cold]
    fn close_bucket(&mut self) {
        let value = self.last_equity;
        if let Some(prev) = self.prev_bucket {
            // pandas' pct_change: value / prev - 1; 0/0 gives NaN, dropped.
            let r = value / prev - 1.0;
            if !r.is_nan() {
                self.add_return(r);
            }
        }
        self.prev_bucket = Some(value);
    }

    fn add_return(&mut self, r: f64) {
        self.n_ret += 1;
        let delta = r - self.ret_mean;
        self.ret_mean += delta / self.n_ret as f64;
        self.ret_m2 += delta * (r - self.ret_mean);
        let g = r + 1.0;
        if g <= 0.0 {
            self.nonpositive = true;
        } else {
            let x = g.ln();
            let t = self.log_sum + x;
            self.log_comp += if self.log_sum.abs() >= x.abs() {
                (self.log_sum - t) + x
            } else {
                (x - t) + self.log_sum
            };
            self.log_sum = t;
        }
    }

    /// Record a closed trade: its PnL (net of both commissions), both
    /// commissions together, and the bars it covered.
    pub fn on_trade_closed(&mut self, pnl: f64, commissions: f64, entry: usize, exit: usize) {
        self.trades += 1;
        if pnl > 0.0 {
            self.wins += 1;
        }
        self.commissions += commissions;
        let from = entry.max(self.exposure_from);
        if exit >= from {
            self.exposed_bars += (exit - from + 1) as u64;
            self.exposure_from = exit + 1;
        }
    }

    /// The Sharpe ratio of the returns seen, with `periods_per_year` from
    /// [`annual_periods`]; `None` where backtesting.py gives NaN (fewer than
    /// two returns, zero volatility).
    pub fn sharpe(&self, periods_per_year: f64) -> Option<f64> {
        let mut acc = self.clone();
        if acc.date.is_some() {
            acc.close_bucket();
        }
        let n = acc.n_ret;
        let g = if n == 0 {
            f64::NAN
        } else if acc.nonpositive {
            0.0
        } else {
            ((acc.log_sum + acc.log_comp) / n as f64).exp() - 1.0
        };
        let var = if n >= 2 {
            acc.ret_m2 / (n - 1) as f64
        } else {
            f64::NAN
        };
        let d = periods_per_year;
        let annual = (1.0 + g).powf(d) - 1.0;
        let vol = ((var + (1.0 + g).powf(2.0)).powf(d) - (1.0 + g).powf(2.0 * d)).sqrt();
        // backtesting.py divides the percentages: (100 a - 0) / (100 v).
        let sharpe = (annual * 100.0 - 0.0) / (vol * 100.0);
        (vol != 0.0 && sharpe.is_finite()).then_some(sharpe)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(s: &str) -> NaiveDateTime {
        crate::market::ohlcv::parse_time(s).unwrap()
    }

    #[test]
    fn drawdown_trades_exposure() {
        let mut s = StatsAcc::new(100.0);
        let t = day("2020-01-06");
        for eq in [100.0, 120.0, 90.0, 110.0, 60.0, 130.0] {
            s.on_equity(eq, t, Period::Day);
        }
        // Worst: 60 against the peak 120.
        assert_eq!(s.max_dd, 0.5);
        assert_eq!(s.peak, 130.0);
        s.on_trade_closed(5.0, 0.5, 2, 4);
        s.on_trade_closed(-1.0, 0.25, 4, 6); // shares bar 4 with the first
        s.on_trade_closed(0.0, 0.25, 8, 8); // PnL 0 is not a win
        assert_eq!((s.trades, s.wins, s.commissions), (3, 1, 1.0));
        assert_eq!(s.exposed_bars, 3 + 2 + 1);
    }

    #[test]
    fn sharpe_of_a_known_daily_curve() {
        // Last equity per day: 100, 110, 99, 108.9 (two bars on day 2).
        let mut s = StatsAcc::new(100.0);
        let bars = [
            ("2021-03-01 10:00:00", 100.0),
            ("2021-03-02 10:00:00", 105.0),
            ("2021-03-02 15:00:00", 110.0),
            ("2021-03-03 10:00:00", 99.0),
            ("2021-03-04 10:00:00", 108.9),
        ];
        for (t, eq) in bars {
            s.on_equity(eq, day(t), Period::Day);
        }
        let r: [f64; 3] = [110.0 / 100.0 - 1.0, 99.0 / 110.0 - 1.0, 108.9 / 99.0 - 1.0];
        let g = ((r.iter().map(|x| (x + 1.0).ln()).sum::<f64>()) / 3.0).exp() - 1.0;
        let mean = r.iter().sum::<f64>() / 3.0;
        let var = r.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 2.0;
        let annual = (1.0 + g).powf(252.0) - 1.0;
        let vol = ((var + (1.0 + g).powi(2)).powf(252.0) - (1.0 + g).powf(504.0)).sqrt();
        let got = s.sharpe(252.0).unwrap();
        assert!(
            (got / (annual / vol) - 1.0).abs() < 1e-12,
            "{got} vs {}",
            annual / vol
        );
        // Round trip in the middle changes nothing.
        let back: StatsAcc = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn sharpe_undefined_and_bust() {
        let mut s = StatsAcc::new(100.0);
        s.on_equity(100.0, day("2021-03-01"), Period::Day);
        s.on_equity(101.0, day("2021-03-02"), Period::Day);
        assert_eq!(s.sharpe(252.0), None, "one return: no variance");
        s.on_equity(0.0, day("2021-03-03"), Period::Day);
        s.on_equity(0.0, day("2021-03-04"), Period::Day);
        // A -100 % day makes the geometric mean 0; 0/0 days are dropped.
        let acc_ret = s.sharpe(252.0).unwrap();
        assert_eq!(acc_ret, 0.0);
        assert_eq!(s.max_dd, 1.0);
    }

    #[test]
    fn periods() {
        let daily: Vec<_> = (1..=9).map(|d| day(&format!("2021-03-0{d}"))).collect();
        assert_eq!(detect_period(&daily), Period::Day);
        assert_eq!(annual_periods(Period::Day, &daily), 365.0); // 2 of 9 on weekends
        let weekdays: Vec<_> = daily
            .iter()
            .copied()
            .filter(|t| t.weekday().number_from_monday() < 6)
            .collect();
        assert_eq!(annual_periods(Period::Day, &weekdays), 252.0);
        let weekly: Vec<_> = (0..10)
            .map(|w| daily[0] + chrono::Duration::days(7 * w))
            .collect();
        assert_eq!(detect_period(&weekly), Period::Week);
        // 2021-03-01 is a Monday, 2021-03-07 the Sunday of the same week.
        assert_eq!(
            period_key(Period::Week, daily[0].date()),
            period_key(Period::Week, daily[6].date())
        );
        assert_ne!(
            period_key(Period::Week, daily[6].date()),
            period_key(Period::Week, daily[7].date())
        );
    }
}
