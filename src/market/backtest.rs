//! The backtest engine: fills, sizing and statistics exactly as
//! `shared/BACKTEST-RULES.md` says, as a resumable run.
//!
//! [`run_backtest`] walks the bars once. Everything it carries from one bar
//! to the next lives in [`BacktestState`], a small fixed-size struct that is
//! serialized to JSON at every checkpoint; a run resumed from such a state
//! ends bit for bit as the uninterrupted run would have.
//!
//! The rules' formulas are written in backtesting.py 0.6.6's arithmetic
//! (same values, same rounding), which makes our figures on the shared data
//! identical to the reference to the last bit: sizing divides by
//! `O + (s O c) / s` with `s = 1 - 2^-52` (rule 6 writes `O (1 + c)`),
//! equity is `cash + (C size - size entry)` (rule 7: `size (C - entry)`).
//! Beyond the rules, its "out of money" stop is kept: once equity is <= 0 the
//! position is closed at that bar's close and equity stays 0.
//!
//! Periodic work (progress, checkpoints, the stop check) happens only at
//! bar indices that are multiples of fixed strides counted from bar 0, so a
//! resumed run reports and samples at the same bars as an uninterrupted one.

use super::ohlcv::Bars;
use super::params::{BacktestParams, StrategyKind};
use super::sma::relation;
pub use super::state::{BacktestState, Book, SignalState, STATE_VERSION};
use super::stats::{annual_periods, detect_period, Period};
use crate::control::{ProgressUpdate, RunControl};
use serde::{Deserialize, Serialize};

/// The equity curve is sent as at most this many metric points.
pub const MAX_EQUITY_POINTS: usize = 2000;
/// `stop_requested` is polled at least every this many bars.
pub const STOP_CHECK_BARS: usize = 4096;

/// The figures of a finished backtest (SPEC §8 keys, plus context).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BacktestResult {
    /// `100 (Eq[N-1] - Eq[0]) / Eq[0]`.
    pub return_pct: f64,
    /// Long-only return from the first bar with every indicator defined.
    pub buy_hold_return_pct: f64,
    /// Largest peak-to-trough loss, as a negative percentage.
    pub max_drawdown_pct: f64,
    /// Annualized Sharpe ratio; `None` (JSON null) where it is undefined
    /// (fewer than two daily returns, zero volatility).
    pub sharpe: Option<f64>,
    /// Closed trades.
    pub trades: u64,
    /// Share of closed trades with PnL > 0; `None` without trades.
    pub win_rate_pct: Option<f64>,
    /// Equity at the last bar, the open position marked at the close.
    pub final_equity: f64,
    /// Share of bars covered by closed trades.
    pub exposure_pct: f64,
    /// Entry and exit commissions of closed trades.
    pub commissions: f64,
    /// Bars traded: those from `start` to `end`, both included.
    pub bars: usize,
    /// Timestamp of the first bar traded (as written in the data file).
    pub start: String,
    /// Timestamp of the last bar traded (as written in the data file).
    pub end: String,
    /// `sma_cross` or `model`.
    pub strategy: String,
    /// Units still held at the end (not counted as a trade), signed.
    pub open_position: f64,
}

/// How a call to [`run_backtest`] ended.
#[derive(Debug, Clone, PartialEq)]
pub enum BacktestOutcome {
    /// Every bar was processed.
    Completed(BacktestResult),
    /// A stop was requested; the state (also sent to `ctl.checkpoint`)
    /// continues the run when passed back as `resume`.
    Stopped(Box<BacktestState>),
}

/// The source of trading signals, decided at a bar's close.
trait Signals {
    /// Direction to trade at the next open after bar `t` (0: none).
    fn at_close(&self, s: &mut SignalState, t: usize) -> i8;
}

/// Rule 2: a strict crossing of SMA(fast) and SMA(slow).
struct SmaCross<'a> {
    close: &'a [f64],
}

impl Signals for SmaCross<'_> {
    #[inline(always)]
    fn at_close(&self, s: &mut SignalState, t: usize) -> i8 {
        let rel = relation(s.fast.update(self.close, t), s.slow.update(self.close, t));
        let prev = std::mem::replace(&mut s.rel, rel);
        // prev = -1 implies both SMAs existed at t-1; rel = 1 that they exist at t.
        if prev == -1 && rel == 1 {
            1
        } else if prev == 1 && rel == -1 {
            -1
        } else {
            0
        }
    }
}

/// The model's predicted directions, acted on when they change.
struct Model<'a> {
    dirs: &'a [i8],
}

impl Signals for Model<'_> {
    #[inline(always)]
    fn at_close(&self, s: &mut SignalState, t: usize) -> i8 {
        let d = self.dirs[t];
        if d != 0 && d != s.last_dir {
            s.last_dir = d;
            d
        } else {
            0
        }
    }
}

/// What stays fixed during a run.
struct Ctx<'a> {
    bars: &'a Bars,
    /// First bar traded; periodic work is counted from it.
    first: usize,
    /// One past the last bar traded.
    n: usize,
    commission: f64,
    period: Period,
    /// Equity points are sent at multiples of this and at the last bar.
    sample_every: usize,
}

/// Python's float `//` (CPython `float_floor_div`), bit for bit: sizing
/// must round the way backtesting.py does.
pub fn py_floordiv(a: f64, b: f64) -> f64 {
    let m = a % b;
    let mut div = (a - m) / b;
    if m != 0.0 && ((b < 0.0) != (m < 0.0)) {
        div -= 1.0;
    }
    if div != 0.0 {
        let f = div.floor();
        if div - f > 0.5 {
            f + 1.0
        } else {
            f
        }
    } else {
        0f64.copysign(a / b)
    }
}

impl Book {
    /// Rule 5: close the whole position at `price` on bar `bar`.
    fn close(&mut self, price: f64, bar: usize, c: f64) {
        let exit_comm = self.size.abs() * price * c;
        let pl = self.size * (price - self.entry_price);
        self.cash += pl - exit_comm;
        let comm = exit_comm + self.size.abs() * self.entry_price * c;
        self.stats
            .on_trade_closed(pl - comm, comm, self.entry_bar, bar);
        self.size = 0.0;
    }

    /// Rule 6: enter `dir` with all the cash at `price` on bar `bar`.
    fn open(&mut self, dir: i8, price: f64, bar: usize, c: f64) {
        const S: f64 = 1.0 - f64::EPSILON;
        let per_unit = price + S * price * c / S;
        let margin = self.cash.max(0.0);
        let units = py_floordiv(margin * S, per_unit);
        if units == 0.0 || units * per_unit > margin {
            return; // cannot afford one unit: no trade
        }
        self.size = units.copysign(dir as f64);
        self.entry_price = price;
        self.entry_bar = bar;
        self.cash -= units * price * c;
    }
}

/// Process bars `from..to`: the hot loop, no allocation except for the
/// (at most [`MAX_EQUITY_POINTS`]) equity metric points.
#[inline(always)]
fn run_span<S: Signals>(
    book: &mut Book,
    sig: &mut SignalState,
    src: &S,
    ctx: &Ctx,
    (from, to): (usize, usize),
    ctl: &mut dyn RunControl,
) {
    let (open, close, times) = (
        &ctx.bars.open[..ctx.n],
        &ctx.bars.close[..ctx.n],
        &ctx.bars.times[..ctx.n],
    );
    let c = ctx.commission;
    let mut next_sample =
        ctx.first + (from - ctx.first).div_ceil(ctx.sample_every) * ctx.sample_every;
    for i in from..to {
        if book.pending != 0 {
            let dir = std::mem::take(&mut book.pending);
            if book.size != 0.0 {
                book.close(open[i], i, c);
            }
            book.open(dir, open[i], i, c);
        }
        // Rule 7, in backtesting.py's arithmetic (`cash + (C size - size
        // entry)`): the same value, and the same last bit as the reference.
        let mut equity = if book.size != 0.0 {
            book.cash + (close[i] * book.size - book.size * book.entry_price)
        } else {
            book.cash
        };
        if equity <= 0.0 && !book.bust {
            if book.size != 0.0 {
                book.close(close[i], i, c);
            }
            book.cash = 0.0;
            book.bust = true;
            equity = 0.0;
        }
        book.stats.on_equity(equity, times[i], ctx.period);
        if i == next_sample || i == ctx.n - 1 {
            next_sample += ctx.sample_every;
            ctl.metric(serde_json::json!({
                "bar": i, "time": ctx.bars.timestamps[i], "equity": equity,
            }));
        }
        if !book.bust {
            let dir = src.at_close(sig, i);
            if dir != 0 {
                book.pending = dir; // rule 3: a signal on the last bar never fills
            }
        }
    }
}

/// Run (or resume) a backtest of `params` over `bars`.
///
/// Only the bars from `params.start` to `params.end` (both optional, see
/// [`trade_range`]) are traded and counted in the statistics, as if the data
/// held only them; the bars before `start` serve only as history for the
/// indicators, so `sma_cross` may signal on the first bar traded. Without
/// `start`/`end` every bar is traded, exactly as before the range existed.
///
/// `signals` is required for `strategy = model`: one predicted direction
/// per bar of the whole data (+1 up, -1 down, 0 none), `signals[t]` being
/// the prediction for bar `t + 1` made at bar `t`'s close. A signal fires
/// when a non-zero direction differs from the last non-zero one; the first
/// non-zero bar traded is also where buy & hold starts. `resume` continues
/// from a state returned in [`BacktestOutcome::Stopped`] or sent to
/// `ctl.checkpoint`.
///
/// Reports progress every 1 % of the bars traded, checkpoints every
/// `params.checkpoint_every_bars` bars, polls `ctl.stop_requested()` at
/// least every [`STOP_CHECK_BARS`] bars, and sends the equity curve as
/// metric points `{"bar", "time", "equity"}` at every `ceil(N / 1999)`-th
/// bar traded and the last one (at most [`MAX_EQUITY_POINTS`]); `bar` is
/// the index in the whole data.
pub fn run_backtest(
    bars: &Bars,
    params: &BacktestParams,
    signals: Option<&[i8]>,
    resume: Option<BacktestState>,
    ctl: &mut dyn RunControl,
) -> Result<BacktestOutcome, String> {
    params.validate_values()?;
    check_bars(bars, params, signals)?;
    let (first, last) = trade_range(bars, params)?;
    check_warm_up(bars, params, last)?;
    let n = last + 1;
    let len = n - first;
    let range = (first != 0 || n != bars.len()).then_some((first, last));
    let close = SmaCross { close: &bars.close };
    let mut st = match resume {
        Some(st) => {
            st.check_resumable(params, bars.len(), range)?;
            st
        }
        None => {
            let mut st = BacktestState::new(params, bars.len());
            st.range = range;
            st.next_bar = first;
            if params.strategy == StrategyKind::SmaCross {
                // History before the range: the averages (and the relation
                // at the bar before it) are what they are in the whole data.
                for t in 0..first {
                    close.at_close(&mut st.signal, t);
                }
            }
            st
        }
    };
    let times = &bars.times[first..n];
    let ctx = Ctx {
        bars,
        first,
        n,
        commission: params.commission,
        period: detect_period(times),
        sample_every: len.div_ceil(MAX_EQUITY_POINTS - 1).max(1),
    };
    let progress_every = len.div_ceil(100).max(1);
    let ckpt_every = usize::try_from(params.checkpoint_every_bars).unwrap_or(usize::MAX);
    let model = Model {
        dirs: signals.unwrap_or(&[]),
    };
    loop {
        let i = st.next_bar;
        if i == n {
            break;
        }
        if ctl.stop_requested() {
            checkpoint(&st, ctl)?;
            return Ok(BacktestOutcome::Stopped(Box::new(st)));
        }
        // Strides are counted from the first bar traded.
        let done = i - first;
        let to = first
            + [STOP_CHECK_BARS, progress_every, ckpt_every]
                .iter()
                .map(|k| (done / k + 1).saturating_mul(*k))
                .fold(len, usize::min);
        match params.strategy {
            StrategyKind::SmaCross => {
                run_span(&mut st.book, &mut st.signal, &close, &ctx, (i, to), ctl)
            }
            StrategyKind::Model => {
                run_span(&mut st.book, &mut st.signal, &model, &ctx, (i, to), ctl)
            }
        }
        st.next_bar = to;
        let done = to - first;
        if done % progress_every == 0 || to == n {
            ctl.progress(progress(bars, first, done, len));
        }
        if done % ckpt_every == 0 && to < n {
            checkpoint(&st, ctl)?;
        }
    }
    Ok(BacktestOutcome::Completed(finish(
        &st, bars, params, signals, &ctx,
    )))
}

/// The bars `params.start ..= params.end` select, as indices `(first,
/// last)` into `bars` (both included): the first bar at or after `start`
/// and the last at or before `end`. Without `start`/`end`, every bar.
/// Fails, naming the keys and the data's own range, when no bar is selected.
pub fn trade_range(bars: &Bars, params: &BacktestParams) -> Result<(usize, usize), String> {
    let n = bars.len();
    if n == 0 {
        return Err("data: no bars".into());
    }
    let (start, end) = params.range_times()?;
    let first = start.map_or(0, |s| bars.times.partition_point(|t| *t < s));
    let past = end.map_or(n, |e| bars.times.partition_point(|t| *t <= e));
    if first >= past {
        return Err(format!(
            "start/end: no bars from {} to {}; the data runs from {} to {}, \
             choose start and end inside it",
            params.start.as_deref().unwrap_or("the first bar"),
            params.end.as_deref().unwrap_or("the last bar"),
            bars.timestamps[0],
            bars.timestamps[n - 1]
        ));
    }
    Ok((first, past - 1))
}

/// `sma_cross` needs its slow average to exist by the last bar traded.
fn check_warm_up(bars: &Bars, params: &BacktestParams, last: usize) -> Result<(), String> {
    if params.strategy != StrategyKind::SmaCross || params.slow <= last + 1 {
        return Ok(());
    }
    if last + 1 == bars.len() {
        Err(format!(
            "slow = {} is longer than the data ({} bars); choose a shorter window",
            params.slow,
            bars.len()
        ))
    } else {
        Err(format!(
            "slow = {} is longer than the data up to end = {} ({} bars); choose a \
             shorter window or a later end",
            params.slow,
            params.end.as_deref().unwrap_or_default(),
            last + 1
        ))
    }
}

/// The inputs must fit together before any bar is processed.
fn check_bars(bars: &Bars, params: &BacktestParams, signals: Option<&[i8]>) -> Result<(), String> {
    let n = bars.len();
    if n == 0 {
        return Err("data: no bars".into());
    }
    let cols = [bars.open.len(), bars.times.len(), bars.timestamps.len()];
    if cols.iter().any(|&l| l != n) {
        return Err(
            "data: bars with columns of different lengths (load them with ohlcv::load_csv)".into(),
        );
    }
    match (params.strategy, signals) {
        (StrategyKind::SmaCross, Some(_)) => Err("signals are only for strategy = model".into()),
        (StrategyKind::Model, None) => Err("strategy = model needs the model's signals".into()),
        (StrategyKind::Model, Some(s)) if s.len() != n => {
            Err(format!("model signals: {} values for {n} bars", s.len()))
        }
        (StrategyKind::Model, Some(s)) if s.iter().any(|d| !(-1..=1).contains(d)) => {
            Err("model signals must be -1, 0 or +1".into())
        }
        _ => Ok(()),
    }
}

fn checkpoint(st: &BacktestState, ctl: &mut dyn RunControl) -> Result<(), String> {
    let v = serde_json::to_value(st).map_err(|e| format!("cannot serialize the state: {e}"))?;
    ctl.checkpoint(v)
}

/// Progress after `done` of the `n` bars traded, which start at `first`.
fn progress(bars: &Bars, first: usize, done: usize, n: usize) -> ProgressUpdate {
    ProgressUpdate {
        percentage: Some(100.0 * done as f64 / n as f64),
        message: Some(format!(
            "Bar {done}/{n} · {}",
            bars.timestamps[first + done.max(1) - 1]
        )),
        current_step: Some("backtest".into()),
        items_processed: Some(done as i64),
        items_total: Some(n as i64),
        ..ProgressUpdate::default()
    }
}

/// The statistics once every bar is processed.
fn finish(
    st: &BacktestState,
    bars: &Bars,
    params: &BacktestParams,
    signals: Option<&[i8]>,
    ctx: &Ctx,
) -> BacktestResult {
    let s = &st.book.stats;
    let (first, n) = (ctx.first, ctx.n);
    let len = n - first;
    let eq0 = params.cash;
    let last = s.last_equity;
    // First bar traded with every indicator defined (backtesting.py's
    // warm-up; the history before `start` counts for the indicators).
    let w = match (params.strategy, signals) {
        (StrategyKind::Model, Some(d)) => d[first..n]
            .iter()
            .position(|&x| x != 0)
            .map_or(first, |p| first + p),
        _ => (params.slow - 1).max(first),
    };
    let c = &bars.close;
    BacktestResult {
        return_pct: (last - eq0) / eq0 * 100.0,
        buy_hold_return_pct: (c[n - 1] - c[w]) / c[w] * 100.0,
        max_drawdown_pct: -s.max_dd * 100.0,
        sharpe: s.sharpe(annual_periods(ctx.period, &bars.times[first..n])),
        trades: s.trades,
        win_rate_pct: (s.trades > 0).then(|| s.wins as f64 / s.trades as f64 * 100.0),
        final_equity: last,
        exposure_pct: s.exposed_bars as f64 / len as f64 * 100.0,
        commissions: s.commissions,
        bars: len,
        start: bars.timestamps[first].clone(),
        end: bars.timestamps[n - 1].clone(),
        strategy: params.strategy.as_str().into(),
        open_position: st.book.size,
    }
}
