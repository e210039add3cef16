//! Throughput of the backtest engine: `sma_cross` over GOOG replicated to
//! about 10 million bars, with a no-op control and with the in-memory
//! `RecordingControl`, several runs each, median reported.
//!
//! Run with `cargo bench --bench backtest` (the data defaults to the
//! repository's `data/GOOG.csv`; or pass a CSV path).

use opsd::control::{ProgressUpdate, RecordingControl, RunControl};
use opsd::market::backtest::{run_backtest, BacktestOutcome};
use opsd::market::ohlcv::{load_csv, Bars};
use opsd::market::params::BacktestParams;
use std::path::PathBuf;
use std::time::Instant;

const TARGET_BARS: usize = 10_000_000;
const RUNS: usize = 5;

/// A named benchmark case returning the run's final equity.
type Case<'a> = (&'static str, Box<dyn Fn() -> f64 + 'a>);

/// A control that does nothing: the engine's own cost.
struct Noop;

impl RunControl for Noop {
    fn progress(&mut self, _: ProgressUpdate) {}
    fn metric(&mut self, _: serde_json::Value) {}
    fn checkpoint(&mut self, _: serde_json::Value) -> Result<(), String> {
        Ok(())
    }
    fn stop_requested(&self) -> bool {
        false
    }
}

/// `src` repeated until `target` bars; each copy is shifted in time past the
/// previous one so timestamps keep increasing (daily buckets stay valid).
fn replicate(src: &Bars, target: usize) -> Bars {
    let span = src.times[src.len() - 1] - src.times[0] + chrono::Duration::days(1);
    let copies = target.div_ceil(src.len());
    let mut b = Bars::default();
    for k in 0..copies {
        let shift = span * k as i32;
        for i in 0..src.len() {
            let t = src.times[i] + shift;
            b.timestamps.push(t.date().to_string());
            b.times.push(t);
        }
        b.open.extend_from_slice(&src.open);
        b.high.extend_from_slice(&src.high);
        b.low.extend_from_slice(&src.low);
        b.close.extend_from_slice(&src.close);
        b.volume.extend_from_slice(&src.volume);
    }
    b
}

/// Median seconds of `RUNS` runs of `f`, and the last run's result check.
fn median_secs(mut f: impl FnMut() -> f64) -> (f64, f64) {
    let mut times = Vec::new();
    let mut last = 0.0;
    for _ in 0..RUNS {
        let t0 = Instant::now();
        last = f();
        times.push(t0.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    (times[RUNS / 2], last)
}

fn main() {
    let path = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/GOOG.csv"));
    let src = match load_csv(&path) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("backtest bench: {e}");
            std::process::exit(1);
        }
    };
    let bars = replicate(&src, TARGET_BARS);
    let n = bars.len();
    println!(
        "sma_cross 10/20 over {} ({} bars) x{} = {n} bars, median of {RUNS} runs\n",
        path.display(),
        src.len(),
        n / src.len()
    );

    let run = |params: &BacktestParams, ctl: &mut dyn RunControl| -> f64 {
        match run_backtest(&bars, params, None, None, ctl) {
            Ok(BacktestOutcome::Completed(r)) => r.final_equity,
            other => panic!("backtest did not complete: {other:?}"),
        }
    };
    let base = BacktestParams {
        data: path.display().to_string(),
        ..BacktestParams::default()
    };
    let no_ckpt = BacktestParams {
        checkpoint_every_bars: u64::MAX,
        ..base.clone()
    };
    let cases: Vec<Case> = vec![
        (
            "no-op control, no checkpoints",
            Box::new(|| run(&no_ckpt, &mut Noop)),
        ),
        (
            "no-op control, checkpoint/1000 bars",
            Box::new(|| run(&base, &mut Noop)),
        ),
        (
            "RecordingControl, checkpoint/1000 bars",
            Box::new(|| run(&base, &mut RecordingControl::new())),
        ),
    ];
    println!(
        "{:<40} {:>10} {:>12} {:>10}",
        "variant", "median s", "Mbars/s", "vs first"
    );
    let mut first = None;
    let mut equity = None;
    for (name, f) in &cases {
        let (secs, eq) = median_secs(f);
        assert!(
            equity.is_none_or(|e| e == eq),
            "results differ between controls"
        );
        equity = Some(eq);
        let base_secs = *first.get_or_insert(secs);
        println!(
            "{name:<40} {secs:>10.4} {:>12.1} {:>+9.1}%",
            n as f64 / secs / 1e6,
            (secs / base_secs - 1.0) * 100.0
        );
    }
}
