//! Backtests of the shared GOOG and EURUSD data checked against figures of
//! the reference library.
//!
//! How the figures were produced (Python kept outside the repository): in a
//! throwaway virtualenv, `pip install backtesting==0.6.6` (with pandas 3.1.1,
//! numpy 2.4.6), then for each file and (fast, slow):
//! `Backtest(pd.read_csv(f, index_col=0, parse_dates=True), SmaCross,
//! cash=10000, commission=.002, exclusive_orders=True).run(n1=fast, n2=slow)`
//! with backtesting.py's README `SmaCross` (`self.I(SMA, Close, n)` twice;
//! on `crossover(sma1, sma2)`: `position.close(); buy()`, on
//! `crossover(sma2, sma1)`: `position.close(); sell()`), printing the stats
//! with `repr(float(...))`. The Sharpe ratio, Win Rate and the others map
//! to our keys one to one.

use super::backtest::{run_backtest, BacktestOutcome, BacktestResult};
use super::ohlcv::{load_csv, Bars};
use super::params::BacktestParams;
use crate::control::RecordingControl;
use std::path::PathBuf;

pub(crate) fn data_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("data")
        .join(name)
}

pub(crate) fn load(name: &str) -> Bars {
    load_csv(&data_path(name)).expect("shared data file")
}

pub(crate) fn sma_params(name: &str, fast: usize, slow: usize) -> BacktestParams {
    BacktestParams {
        data: data_path(name).display().to_string(),
        fast,
        slow,
        ..BacktestParams::default()
    }
}

pub(crate) fn run_sma(bars: &Bars, p: &BacktestParams) -> BacktestResult {
    let mut ctl = RecordingControl::new();
    match run_backtest(bars, p, None, None, &mut ctl).unwrap() {
        BacktestOutcome::Completed(r) => r,
        BacktestOutcome::Stopped(_) => panic!("stopped without a stop request"),
    }
}

/// Reference: return, buy & hold, max drawdown, Sharpe, trades, win rate,
/// final equity, exposure, commissions.
type Reference = (f64, f64, f64, f64, u64, f64, f64, f64, f64);

fn close(what: &str, got: f64, want: f64) {
    let rel = ((got - want) / want).abs();
    assert!(
        rel <= 1e-9,
        "{what}: got {got:?}, reference {want:?} (rel {rel:e})"
    );
}

fn check(name: &str, fast: usize, slow: usize, r: Reference) {
    let bars = load(name);
    let got = run_sma(&bars, &sma_params(name, fast, slow));
    let what = |k: &str| format!("{name} {fast}/{slow} {k}");
    close(&what("return_pct"), got.return_pct, r.0);
    close(&what("buy_hold_return_pct"), got.buy_hold_return_pct, r.1);
    close(&what("max_drawdown_pct"), got.max_drawdown_pct, r.2);
    close(&what("sharpe"), got.sharpe.unwrap_or(f64::NAN), r.3);
    assert_eq!(got.trades, r.4, "{}", what("trades"));
    close(
        &what("win_rate_pct"),
        got.win_rate_pct.unwrap_or(f64::NAN),
        r.5,
    );
    close(&what("final_equity"), got.final_equity, r.6);
    close(&what("exposure_pct"), got.exposure_pct, r.7);
    close(&what("commissions"), got.commissions, r.8);
}

#[test]
fn goog_10_20() {
    check(
        "GOOG.csv",
        10,
        20,
        (
            462.6351934000004,
            607.3703606212162,
            -33.93159182905461,
            0.6007399729861899,
            93,
            52.68817204301075,
            56263.51934000004,
            94.27374301675978,
            10563.951540000002,
        ),
    );
}

#[test]
fn goog_5_30() {
    check(
        "GOOG.csv",
        5,
        30,
        (
            226.1480622,
            522.0601851851852,
            -47.55394318371873,
            0.43815097486458016,
            81,
            41.9753086419753,
            32614.806220000002,
            95.7635009310987,
            6785.822180000001,
        ),
    );
}

#[test]
fn goog_2_3() {
    check(
        "GOOG.csv",
        2,
        3,
        (
            -93.40154940000001,
            636.9195612431445,
            -94.43933785734657,
            -1.2230368887913705,
            715,
            36.92307692307693,
            659.8450599999992,
            94.6461824953445,
            7499.344940000001,
        ),
    );
}

#[test]
fn eurusd_10_20() {
    check(
        "EURUSD.csv",
        10,
        20,
        (
            -64.73082040659989,
            14.568030127894401,
            -64.9222452053178,
            -17.449810210053826,
            262,
            11.450381679389313,
            3526.9179593400117,
            99.18,
            6341.564264060003,
        ),
    );
}

#[test]
fn eurusd_5_30() {
    check(
        "EURUSD.csv",
        5,
        30,
        (
            -55.93603349879962,
            14.162571871777951,
            -56.179263384463084,
            -12.137884328708507,
            207,
            12.560386473429952,
            4406.396650120038,
            99.2,
            5564.812505279999,
        ),
    );
}

#[test]
fn eurusd_2_3() {
    check(
        "EURUSD.csv",
        2,
        3,
        (
            -99.95747679899985,
            14.657810284349571,
            -99.95763339899985,
            -9430.048985651352,
            1954,
            1.6888433981576252,
            4.252320100014938,
            99.9,
            9806.914507460004,
        ),
    );
}
