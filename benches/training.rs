//! Benchmark of the `training` engine on GOOG.csv with the default
//! parameters: training throughput (median of several runs) and the cost of
//! reporting progress through a `RecordingControl` versus a control that
//! ignores everything. Run with `cargo bench --bench training`.
//!
//! The data file defaults to the repository's `data/GOOG.csv`;
//! `OPSD_BENCH_DATA` overrides it and `OPSD_BENCH_RUNS` sets the run count.

use opsd::control::{ProgressUpdate, RecordingControl, RunControl};
use opsd::market::ohlcv::load_csv;
use opsd::ml::{run_training, TrainingOutcome, TrainingParams};
use std::path::PathBuf;
use std::time::Instant;

/// Accepts and drops everything: the floor for progress-reporting overhead.
struct NoopControl;

impl RunControl for NoopControl {
    fn progress(&mut self, update: ProgressUpdate) {
        std::hint::black_box(update);
    }
    fn metric(&mut self, data: serde_json::Value) {
        std::hint::black_box(data);
    }
    fn checkpoint(&mut self, state: serde_json::Value) -> Result<(), String> {
        std::hint::black_box(state);
        Ok(())
    }
    fn stop_requested(&self) -> bool {
        false
    }
}

/// The update the training loop builds for each batch.
fn sample_update(i: usize, epochs: usize) -> ProgressUpdate {
    ProgressUpdate {
        percentage: Some(i as f64 / 1e3),
        message: Some(format!(
            "Epoch {}/{epochs} · Batch {}/24",
            i % 20 + 1,
            i % 24 + 1
        )),
        current_step: None,
        steps_completed: Some((i % 20) as i64),
        steps_total: Some(epochs as i64),
        items_processed: Some(i as i64),
        items_total: Some(480),
        eta_seconds: None,
        context: Some(serde_json::json!({"epoch": i % 20 + 1, "batch": i % 24 + 1, "loss": 0.69})),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), String> {
    let data = std::env::var_os("OPSD_BENCH_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/data/GOOG.csv")));
    let runs: usize = std::env::var("OPSD_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7)
        .max(1);
    let params = TrainingParams::with_data(&data);
    params.validate()?;
    let bars = load_csv(&data).map_err(|e| e.to_string())?;
    let dir = std::env::temp_dir().join(format!("opsd-bench-training-{}", std::process::id()));
    let model_path = dir.join("model.json");

    // (label, control factory); each run gets a fresh control.
    type Factory = fn() -> Box<dyn RunControl>;
    let controls: [(&str, Factory); 3] = [
        ("no-op control", || Box::new(NoopControl)),
        ("RecordingControl (counting)", || {
            Box::new(RecordingControl {
                keep_progress: false,
                ..RecordingControl::default()
            })
        }),
        ("RecordingControl (keeping all)", || {
            Box::new(RecordingControl::new())
        }),
    ];
    println!(
        "training on {} ({} bars), defaults: {} epochs, batch {}, hidden {:?}, lookback {}; {runs} runs each",
        data.display(),
        bars.len(),
        params.epochs,
        params.batch_size,
        params.hidden,
        params.lookback
    );
    // Warm up once, then interleave the controls run by run so that load
    // from other processes on the machine spreads evenly across them.
    let mut walls: Vec<Vec<f64>> = vec![Vec::new(); controls.len()];
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); controls.len()];
    let mut first_bytes: Option<Vec<u8>> = None;
    let mut progress_calls = 0;
    for round in 0..=runs {
        for (k, (_, make)) in controls.iter().enumerate() {
            let mut ctl = make();
            let t = Instant::now();
            let out = run_training(&bars, &params, &model_path, None, ctl.as_mut())?;
            let wall = t.elapsed().as_secs_f64();
            let TrainingOutcome::Completed(r) = out else {
                return Err("the benchmark run stopped early".into());
            };
            if round > 0 {
                walls[k].push(wall);
                rates[k].push(r.resource_usage.samples_processed as f64 / wall);
            }
            // Every run must write the same bytes, whatever the control.
            let bytes = std::fs::read(&model_path).map_err(|e| e.to_string())?;
            match &first_bytes {
                None => first_bytes = Some(bytes),
                Some(b) if *b != bytes => return Err("model bytes differ between runs".into()),
                Some(_) => {}
            }
            progress_calls =
                r.session_info.epochs_run * r.training_metrics.samples.div_ceil(params.batch_size);
        }
    }
    println!(
        "{:<32} {:>10} {:>12} {:>10}",
        "control", "median s", "samples/s", "vs no-op"
    );
    let base = median(walls[0].clone());
    for (k, (label, _)) in controls.iter().enumerate() {
        let (wall, rate) = (median(walls[k].clone()), median(rates[k].clone()));
        println!(
            "{label:<32} {wall:>10.3} {rate:>12.0} {:>9.1}%",
            100.0 * (wall - base) / base
        );
    }

    // The same per-batch report in isolation: whole-run differences above
    // are within noise, so measure one progress call directly.
    let calls = 200_000;
    println!("\nper progress call ({progress_calls} calls per run), {calls} calls:");
    for (label, make) in controls {
        let mut ctl = make();
        let t = Instant::now();
        for i in 0..calls {
            ctl.progress(sample_update(i, params.epochs));
            if ctl.stop_requested() {
                return Err("unexpected stop".into());
            }
        }
        let ns = t.elapsed().as_secs_f64() * 1e9 / calls as f64;
        let share = 100.0 * ns * 1e-9 * progress_calls as f64 / base;
        println!("{label:<32} {ns:>8.0} ns/call  ({share:.2}% of a run)");
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
