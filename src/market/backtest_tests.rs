//! Tests of the backtest engine: hand-computed series, the model strategy,
//! progress and checkpoints, stop and resume, bad inputs.
//!
//! The tiny series were computed by hand from BACKTEST-RULES.md and then
//! confirmed with backtesting.py 0.6.6 (`Backtest(df, SmaCross, cash=1000,
//! commission=.01, exclusive_orders=True).run(n1=1, n2=2)`, daily bars from
//! 2021-01-04, High/Low = max/min of Open and Close).

use super::backtest::{run_backtest, BacktestOutcome, BacktestResult, BacktestState};
use super::ohlcv::{parse_time, Bars};
use super::params::{BacktestParams, StrategyKind};
use super::reference_tests::{load, sma_params};
use crate::control::{ProgressUpdate, RecordingControl, RunControl};
use serde_json::Value;

/// Daily bars from Monday 2021-01-04.
fn bars(open: &[f64], close: &[f64]) -> Bars {
    let mut b = Bars::default();
    let day0 = parse_time("2021-01-04").unwrap();
    for (i, (&o, &c)) in open.iter().zip(close).enumerate() {
        let t = day0 + chrono::Duration::days(i as i64);
        b.timestamps.push(t.date().to_string());
        b.times.push(t);
        b.open.push(o);
        b.high.push(o.max(c));
        b.low.push(o.min(c));
        b.close.push(c);
        b.volume.push(1.0);
    }
    b
}

fn tiny_params() -> BacktestParams {
    BacktestParams {
        fast: 1,
        slow: 2,
        cash: 1000.0,
        commission: 0.01,
        ..BacktestParams::default()
    }
}

fn run(b: &Bars, p: &BacktestParams, sig: Option<&[i8]>) -> (BacktestResult, RecordingControl) {
    let mut ctl = RecordingControl::new();
    match run_backtest(b, p, sig, None, &mut ctl).unwrap() {
        BacktestOutcome::Completed(r) => (r, ctl),
        BacktestOutcome::Stopped(_) => panic!("stopped"),
    }
}

fn equity_points(ctl: &RecordingControl) -> Vec<f64> {
    ctl.metrics
        .iter()
        .map(|m| m["equity"].as_f64().unwrap())
        .collect()
}

fn near(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * b.abs().max(1.0)
}

#[test]
fn hand_computed_long_then_short() {
    // SMA(1) = close, SMA(2) = mean of two closes: relation -1,+1,+1,-1,-1,+1
    // from bar 1. Up at bar 2 -> buy at O[3] = 11: floor(1000 s / 11.11) =
    // 90 units, commission 9.9, cash 990.1. Down at bar 4 -> at O[5] = 8 close
    // (PnL 90 * -3 - 7.2 - 9.9 = -287.1, cash 712.9) and short
    // floor(712.9 s / 8.08) = 88 units (commission 7.04, cash 705.86).
    // Up at the last bar: never filled, the short stays open.
    let b = bars(
        &[10., 10., 9., 11., 12., 8., 7.],
        &[10., 9., 11., 12., 8., 7., 10.],
    );
    let (r, ctl) = run(&b, &tiny_params(), None);
    let want = [1000.0, 1000.0, 1000.0, 1080.1, 720.1, 793.86, 529.86];
    for (g, w) in equity_points(&ctl).iter().zip(want) {
        assert!(near(*g, w), "{g} vs {w}");
    }
    assert_eq!(ctl.metrics.len(), 7);
    assert_eq!(ctl.metrics[3]["time"], "2021-01-07");
    assert_eq!(
        (r.trades, r.win_rate_pct, r.open_position),
        (1, Some(0.0), -88.0)
    );
    assert!(near(r.commissions, 17.1));
    assert!(near(r.final_equity, 529.86));
    assert!(near(r.return_pct, -47.014));
    assert!(near(r.buy_hold_return_pct, 100.0 / 9.0)); // from bar 1 (slow - 1)
    assert!(near(r.max_drawdown_pct, -100.0 * (1.0 - 529.86 / 1080.1)));
    assert!(near(r.exposure_pct, 300.0 / 7.0)); // bars 3..=5
                                                // backtesting.py's figures for this series, to the last bit.
    assert_eq!(r.final_equity, 529.8600000000001);
    assert_eq!(r.max_drawdown_pct, -50.94343116378111);
    assert_eq!(r.sharpe, Some(-9172325556482.309));
}

#[test]
fn tie_blocks_the_cross_and_same_direction_reenters() {
    // Relation from bar 1: -1, +1 (up), 0 (equal closes: SMA(2) is exactly
    // the close), -1 (no down signal: the tie blocked it), +1 (up again).
    // Rule 4: the second up closes the long at O[6] and reopens it.
    let b = bars(
        &[10., 10., 9., 11., 11., 10., 12., 13.],
        &[10., 9., 11., 11., 10., 12., 12., 14.],
    );
    let (r, ctl) = run(&b, &tiny_params(), None);
    let want = [
        1000.0, 1000.0, 1000.0, 990.1, 900.1, 1080.1, 1058.74, 1234.74,
    ];
    for (g, w) in equity_points(&ctl).iter().zip(want) {
        assert!(near(*g, w), "{g} vs {w}");
    }
    // Closed: 90 units 11 -> 12, PnL 90 - 9.9 - 10.8 = 69.3.
    assert_eq!((r.trades, r.win_rate_pct), (1, Some(100.0)));
    assert!(near(r.commissions, 20.7));
    assert!(r.open_position > 0.0);
    assert_eq!(r.exposure_pct, 50.0); // bars 3..=6 of 8
    assert_eq!(r.final_equity, 1234.74);
    assert_eq!(r.sharpe, Some(0.14666687419306643));
}

#[test]
fn out_of_money_closes_and_stays_at_zero() {
    // Short 110 units at 9, the close jumps to 30: equity < 0, the trade is
    // closed at that close and equity is 0 from then on.
    let b = bars(
        &[10., 10., 11., 9., 30., 35.],
        &[10., 11., 9., 30., 40., 38.],
    );
    let (r, ctl) = run(&b, &tiny_params(), None);
    assert_eq!(equity_points(&ctl), [1000.0, 1000.0, 1000.0, 0.0, 0.0, 0.0]);
    assert_eq!((r.trades, r.final_equity, r.open_position), (1, 0.0, 0.0));
    assert_eq!((r.return_pct, r.max_drawdown_pct), (-100.0, -100.0));
    assert!(near(r.commissions, 42.9));
    assert_eq!(r.sharpe, Some(0.0));
}

#[test]
fn model_signals_act_on_changes_only() {
    let b = bars(
        &[10., 10., 9., 11., 12., 8., 7.],
        &[10., 9., 11., 12., 8., 7., 10.],
    );
    let p = BacktestParams {
        strategy: StrategyKind::Model,
        ..tiny_params()
    };
    // Up at bar 1 (buy at O[2] = 9), repeated ups and a 0 change nothing,
    // down at bar 4 (close and short at O[5] = 8), up on the last bar: unfilled.
    let sig = [0, 1, 1, 0, -1, -1, 1];
    let (r, ctl) = run(&b, &p, Some(&sig));
    // floor(1000 s / 9.09) = 110 units; exit at 8: 110 * -1 - 8.8 - 9.9.
    assert_eq!((r.trades, r.win_rate_pct), (1, Some(0.0)));
    assert!(near(r.commissions, 9.9 + 8.8));
    assert!(r.open_position < 0.0);
    assert_eq!(r.exposure_pct, 4.0 / 7.0 * 100.0); // bars 2..=5
    assert!(near(r.buy_hold_return_pct, 100.0 / 9.0)); // from bar 1, the first prediction
    assert!(near(equity_points(&ctl)[2], 1000.0 - 9.9 + 110.0 * 2.0));
    let bad = |s: &[i8]| run_backtest(&b, &p, Some(s), None, &mut RecordingControl::new());
    assert!(bad(&[0, 1]).unwrap_err().contains("2 values for 7 bars"));
    assert!(bad(&[0, 1, 2, 0, 0, 0, 0])
        .unwrap_err()
        .contains("-1, 0 or +1"));
    let none = run_backtest(&b, &p, None, None, &mut RecordingControl::new());
    assert!(none.unwrap_err().contains("needs the model's signals"));
}

#[test]
fn bad_inputs_are_refused() {
    let b = bars(&[10., 10., 9.], &[10., 9., 11.]);
    let mut ctl = RecordingControl::new();
    let p = BacktestParams {
        slow: 5,
        ..tiny_params()
    };
    let e = run_backtest(&b, &p, None, None, &mut ctl).unwrap_err();
    assert!(
        e.contains("slow = 5 is longer than the data (3 bars)"),
        "{e}"
    );
    let p = BacktestParams {
        fast: 3,
        slow: 2,
        ..tiny_params()
    };
    let e = run_backtest(&b, &p, None, None, &mut ctl).unwrap_err();
    assert!(e.contains("fast must be < slow"), "{e}");
    let e = run_backtest(&b, &tiny_params(), Some(&[0, 0, 0]), None, &mut ctl).unwrap_err();
    assert!(e.contains("only for strategy = model"), "{e}");
    // A state from other parameters or other data is refused.
    let other = BacktestState::new(
        &BacktestParams {
            slow: 3,
            ..tiny_params()
        },
        3,
    );
    let e = run_backtest(&b, &tiny_params(), None, Some(other), &mut ctl).unwrap_err();
    assert!(e.contains("does not belong"), "{e}");
    let longer = BacktestState::new(&tiny_params(), 4);
    assert!(run_backtest(&b, &tiny_params(), None, Some(longer), &mut ctl).is_err());
}

#[test]
fn progress_checkpoints_and_equity_sampling() {
    let b = load("GOOG.csv");
    let (_, ctl) = run(&b, &sma_params("GOOG.csv", 10, 20), None);
    // Checkpoints at bars 1000 and 2000; progress every 22 bars and at the end.
    let at: Vec<u64> = ctl
        .checkpoints
        .iter()
        .map(|c| c["next_bar"].as_u64().unwrap())
        .collect();
    assert_eq!(at, [1000, 2000]);
    let last: &ProgressUpdate = ctl.progress.last().unwrap();
    assert_eq!(last.message.as_deref(), Some("Bar 2148/2148 · 2013-03-01"));
    assert_eq!(
        (last.percentage, last.items_total),
        (Some(100.0), Some(2148))
    );
    assert_eq!(ctl.progress.len(), 98);
    assert_eq!(
        ctl.progress[0].message.as_deref(),
        Some("Bar 22/2148 · 2004-09-20")
    );
    // 2148 bars: every 2nd bar plus the last one.
    assert_eq!(ctl.metrics.len(), 1075);
    let e = load("EURUSD.csv");
    let (_, ctl) = run(&e, &sma_params("EURUSD.csv", 10, 20), None);
    assert!(ctl.metrics.len() <= 2000);
    assert_eq!(ctl.metrics.last().unwrap()["bar"], 4999);
    assert_eq!(ctl.metrics[1]["bar"], 3);
}

/// A control that asks to stop after `stop_after` progress reports.
struct StopAfter {
    inner: RecordingControl,
    stop_after: usize,
}

impl RunControl for StopAfter {
    fn progress(&mut self, u: ProgressUpdate) {
        self.inner.progress(u)
    }
    fn metric(&mut self, m: Value) {
        self.inner.metric(m)
    }
    fn checkpoint(&mut self, s: Value) -> Result<(), String> {
        self.inner.checkpoint(s)
    }
    fn stop_requested(&self) -> bool {
        self.inner.progress_calls >= self.stop_after
    }
}

/// Run in legs, stopping after the given progress counts; each resume goes
/// through the JSON text of the state. Returns the result, and every
/// metric and progress message in order.
fn run_in_legs(
    b: &Bars,
    p: &BacktestParams,
    stops: &[usize],
) -> (BacktestResult, Vec<Value>, Vec<String>) {
    let (mut metrics, mut msgs) = (Vec::new(), Vec::new());
    let mut state: Option<BacktestState> = None;
    for leg in 0..=stops.len() {
        let stop_after = stops.get(leg).copied().unwrap_or(usize::MAX);
        let mut ctl = StopAfter {
            inner: RecordingControl::new(),
            stop_after,
        };
        let out = run_backtest(b, p, None, state.take(), &mut ctl).unwrap();
        metrics.extend(ctl.inner.metrics);
        msgs.extend(ctl.inner.progress.into_iter().filter_map(|u| u.message));
        match out {
            BacktestOutcome::Completed(r) => return (r, metrics, msgs),
            BacktestOutcome::Stopped(st) => {
                // The stop checkpoint is the returned state.
                let sent = ctl.inner.checkpoints.last().unwrap();
                assert_eq!(*sent, serde_json::to_value(&st).unwrap());
                let text = serde_json::to_string(&st).unwrap();
                state = Some(serde_json::from_str(&text).unwrap());
                assert_eq!(state.as_ref(), Some(&*st));
            }
        }
    }
    panic!("never completed")
}

#[test]
fn stop_and_resume_equal_uninterrupted() {
    for (name, fast, slow) in [("GOOG.csv", 10, 20), ("EURUSD.csv", 2, 3)] {
        let b = load(name);
        let p = BacktestParams {
            checkpoint_every_bars: 250,
            ..sma_params(name, fast, slow)
        };
        let (whole, whole_metrics, whole_msgs) = run_in_legs(&b, &p, &[]);
        for stops in [
            &[0usize][..],
            &[1],
            &[7, 3, 50],
            &[1, 1, 1, 1],
            &[99],
            &[40, 59],
        ] {
            let (r, metrics, msgs) = run_in_legs(&b, &p, stops);
            assert_eq!(r, whole, "{name} stops {stops:?}");
            assert_eq!(r.final_equity.to_bits(), whole.final_equity.to_bits());
            assert_eq!(metrics, whole_metrics, "{name} stops {stops:?}");
            assert_eq!(msgs, whole_msgs, "{name} stops {stops:?}");
        }
    }
}

#[test]
fn resume_from_any_periodic_checkpoint() {
    let b = load("GOOG.csv");
    let p = BacktestParams {
        checkpoint_every_bars: 300,
        ..sma_params("GOOG.csv", 5, 30)
    };
    let (whole, ctl) = run(&b, &p, None);
    assert_eq!(ctl.checkpoints.len(), 7);
    for cp in &ctl.checkpoints {
        let st: BacktestState = serde_json::from_value(cp.clone()).unwrap();
        let from = st.next_bar as u64;
        let mut leg = RecordingControl::new();
        match run_backtest(&b, &p, None, Some(st), &mut leg).unwrap() {
            BacktestOutcome::Completed(r) => assert_eq!(r, whole),
            BacktestOutcome::Stopped(_) => panic!("stopped"),
        }
        let after: Vec<&Value> = ctl
            .metrics
            .iter()
            .filter(|m| m["bar"].as_u64().unwrap() >= from)
            .collect();
        assert_eq!(leg.metrics.iter().collect::<Vec<_>>(), after);
    }
}

/// GOOG from `start` to `end` (SPEC §14), `sma_cross` 10/20.
fn goog_range(start: &str, end: &str) -> BacktestParams {
    BacktestParams {
        start: Some(start.into()),
        end: Some(end.into()),
        ..sma_params("GOOG.csv", 10, 20)
    }
}

#[test]
fn a_range_trades_only_its_bars_and_buys_and_holds_over_them() {
    let b = load("GOOG.csv");
    // 2008-01-01 is a holiday: the range starts at the next bar.
    let p = goog_range("2008-01-01", "2010-12-31");
    let first = b.timestamps.iter().position(|t| t == "2008-01-02").unwrap();
    let last = b.timestamps.iter().position(|t| t == "2010-12-31").unwrap();
    let (r, ctl) = run(&b, &p, None);
    assert_eq!(
        (r.start.as_str(), r.end.as_str()),
        ("2008-01-02", "2010-12-31")
    );
    assert_eq!(r.bars, last - first + 1);
    // Buy and hold over exactly the range's first and last close.
    let c = &b.close;
    assert_eq!(
        r.buy_hold_return_pct,
        (c[last] - c[first]) / c[first] * 100.0
    );
    // The equity curve covers the range and nothing else.
    let bars: Vec<usize> = ctl
        .metrics
        .iter()
        .map(|m| m["bar"].as_u64().unwrap() as usize)
        .collect();
    assert_eq!((bars[0], *bars.last().unwrap()), (first, last));
    assert!(r.trades > 0, "{r:?}");
    // Bars after `end` are never seen: cutting them off changes nothing.
    let mut cut = b.clone();
    for col in [
        &mut cut.open,
        &mut cut.high,
        &mut cut.low,
        &mut cut.close,
        &mut cut.volume,
    ] {
        col.truncate(last + 1);
    }
    cut.times.truncate(last + 1);
    cut.timestamps.truncate(last + 1);
    assert_eq!(run(&cut, &p, None).0, r);
    // Progress counts the bars traded.
    let done = ctl.progress.last().unwrap();
    assert_eq!(done.items_total, Some(r.bars as i64));
    assert_eq!(
        done.message.as_deref(),
        Some(format!("Bar {0}/{0} · 2010-12-31", r.bars).as_str())
    );
}

#[test]
fn a_model_backtest_over_a_range_is_a_backtest_of_those_bars_alone() {
    // The model strategy has no warm-up, so a range must give exactly what
    // the sliced data gives as a whole: no trade, fill or equity mark
    // outside it, and the statistics of its bars only.
    let b = load("GOOG.csv");
    let mut x: u64 = 7;
    let sig: Vec<i8> = (0..b.len())
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 33) % 3) as i8 - 1
        })
        .collect();
    let (first, last) = (1500, 1900);
    let p = BacktestParams {
        strategy: StrategyKind::Model,
        start: Some(b.timestamps[first].clone()),
        end: Some(b.timestamps[last].clone()),
        ..sma_params("GOOG.csv", 10, 20)
    };
    let (r, ctl) = run(&b, &p, Some(&sig));
    let slice = |v: &Vec<f64>| v[first..=last].to_vec();
    let sliced = Bars {
        timestamps: b.timestamps[first..=last].to_vec(),
        times: b.times[first..=last].to_vec(),
        open: slice(&b.open),
        high: slice(&b.high),
        low: slice(&b.low),
        close: slice(&b.close),
        volume: slice(&b.volume),
    };
    let whole = BacktestParams {
        start: None,
        end: None,
        ..p.clone()
    };
    let (want, want_ctl) = run(&sliced, &whole, Some(&sig[first..=last]));
    assert_eq!(r, want);
    assert!(r.trades > 10, "{r:?}");
    let shifted: Vec<f64> = ctl
        .metrics
        .iter()
        .map(|m| m["equity"].as_f64().unwrap())
        .collect();
    assert_eq!(shifted, equity_points(&want_ctl));
}

#[test]
fn sma_history_before_the_range_warms_the_averages_up() {
    // A range from bar 100: the averages exist from its first bar (they
    // use the bars before it), so buy and hold starts there and the
    // first signal may come at its first close.
    let b = load("GOOG.csv");
    let p = BacktestParams {
        start: Some(b.timestamps[100].clone()),
        ..sma_params("GOOG.csv", 10, 20)
    };
    let (r, _) = run(&b, &p, None);
    let c = &b.close;
    assert_eq!(r.buy_hold_return_pct, (c[2147] - c[100]) / c[100] * 100.0);
    assert_eq!((r.bars, r.end.as_str()), (2048, "2013-03-01"));
    // A range that starts before the warm-up ends buys and holds from
    // bar slow - 1, as the whole data does.
    let early = BacktestParams {
        start: Some(b.timestamps[5].clone()),
        ..sma_params("GOOG.csv", 10, 20)
    };
    let (r, _) = run(&b, &early, None);
    assert_eq!(r.buy_hold_return_pct, (c[2147] - c[19]) / c[19] * 100.0);
    // Naming the first and last bars is the same as naming none.
    let all = goog_range("2004-08-19", "2013-03-01");
    let (named, _) = run(&b, &all, None);
    assert_eq!(named, run(&b, &sma_params("GOOG.csv", 10, 20), None).0);
}

#[test]
fn a_range_stopped_and_resumed_equals_the_uninterrupted_range() {
    let b = load("GOOG.csv");
    let p = BacktestParams {
        checkpoint_every_bars: 100,
        ..goog_range("2006-06-01", "2011-06-30")
    };
    let (whole, whole_metrics, whole_msgs) = run_in_legs(&b, &p, &[]);
    for stops in [&[0usize][..], &[3, 40], &[1, 1, 1]] {
        let (r, metrics, msgs) = run_in_legs(&b, &p, stops);
        assert_eq!(r, whole, "stops {stops:?}");
        assert_eq!(metrics, whole_metrics);
        assert_eq!(msgs, whole_msgs);
    }
    // A checkpoint of another range does not resume this one.
    let (_, ctl) = run(&b, &p, None);
    let st: BacktestState = serde_json::from_value(ctl.checkpoints[0].clone()).unwrap();
    let other = goog_range("2006-06-01", "2011-07-29");
    let e = run_backtest(&b, &other, None, Some(st), &mut RecordingControl::new()).unwrap_err();
    assert!(e.contains("does not belong"), "{e}");
}

#[test]
fn ranges_without_bars_are_refused_naming_the_data_range() {
    let b = load("GOOG.csv");
    let mut ctl = RecordingControl::new();
    let e = run_backtest(
        &b,
        &goog_range("2014-01-01", "2015-01-01"),
        None,
        None,
        &mut ctl,
    )
    .unwrap_err();
    assert!(
        e.contains("start/end: no bars") && e.contains("2004-08-19 to 2013-03-01"),
        "{e}"
    );
    let short = BacktestParams {
        end: Some(b.timestamps[10].clone()),
        ..sma_params("GOOG.csv", 10, 20)
    };
    let e = run_backtest(&b, &short, None, None, &mut ctl).unwrap_err();
    assert!(
        e.contains("slow = 20 is longer than the data up to end"),
        "{e}"
    );
}
