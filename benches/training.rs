//! Benchmark of the `training` engine on GOOG.csv with the default
//! parameters: training throughput (median of several runs) and the cost of
//! reporting progress through a `RecordingControl` versus a control that
//! ignores everything. Run with `cargo bench --bench training`.
//!
//! The data file defaults to `../shared/data/GOOG.csv` beside the crate;
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

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), String> {
    let data = std::env::var_os("OPSD_BENCH_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../shared/data/GOOG.csv"
            ))
        });
    let runs: usize = std::env::var("OPSD_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5)
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
    println!(
        "{:<32} {:>12} {:>14} {:>10}",
        "control", "median s", "samples/s", "overhead"
    );
    let mut base = None;
    let mut first_bytes: Option<Vec<u8>> = None;
    for (label, make) in controls {
        let (mut walls, mut rates) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let mut ctl = make();
            let t = Instant::now();
            let out = run_training(&bars, &params, &model_path, None, ctl.as_mut())?;
            let wall = t.elapsed().as_secs_f64();
            let TrainingOutcome::Completed(r) = out else {
                return Err("the benchmark run stopped early".into());
            };
            walls.push(wall);
            rates.push(r.resource_usage.samples_processed as f64 / wall);
            // Every run must write the same bytes, whatever the control.
            let bytes = std::fs::read(&model_path).map_err(|e| e.to_string())?;
            match &first_bytes {
                None => first_bytes = Some(bytes),
                Some(b) if *b != bytes => return Err("model bytes differ between runs".into()),
                Some(_) => {}
            }
        }
        let (wall, rate) = (median(walls), median(rates));
        let base_wall = *base.get_or_insert(wall);
        println!(
            "{label:<32} {wall:>12.3} {rate:>14.0} {:>9.1}%",
            100.0 * (wall - base_wall) / base_wall
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
