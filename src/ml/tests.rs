//! End-to-end tests of the training engine: learning, determinism,
//! stop-and-resume equality, and a short run on the bundled GOOG data.

use super::features::tests::bars_from_closes;
use super::rng::SplitMix64;
use super::*;
use crate::control::RecordingControl;
use crate::market::ohlcv::{load_csv, Bars};
use std::path::{Path, PathBuf};

/// A series whose next direction is a deterministic function of the last two
/// returns: up exactly when they had the same sign (an XOR, so it needs the
/// hidden layer). Magnitudes are random, so only signs carry the signal.
fn learnable_bars(n: usize, seed: u64) -> Bars {
    noisy_learnable_bars(n, seed, 0.0)
}

/// [`learnable_bars`] with each direction flipped with probability `noise`,
/// so the best possible accuracy is `1 - noise`.
fn noisy_learnable_bars(n: usize, seed: u64, noise: f64) -> Bars {
    let mut rng = SplitMix64::new(seed);
    let mut closes: Vec<f64> = vec![100.0, 101.0, 100.5];
    while closes.len() < n {
        let k = closes.len();
        let r1 = (closes[k - 1] / closes[k - 2]).ln();
        let r2 = (closes[k - 2] / closes[k - 3]).ln();
        let mag = 0.002 + 0.018 * rng.next_f64();
        let flip = rng.next_f64() < noise;
        let up = ((r1 > 0.0) == (r2 > 0.0)) != flip;
        closes.push(closes[k - 1] * if up { mag.exp() } else { (-mag).exp() });
    }
    bars_from_closes(&closes)
}

/// Small, fast parameters (the debug build runs this crate unoptimized).
fn small_params(epochs: usize) -> TrainingParams {
    TrainingParams {
        epochs,
        batch_size: 32,
        learning_rate: 0.01,
        hidden: vec![16, 8],
        lookback: 3,
        checkpoint_every_epochs: 2,
        ..TrainingParams::with_data("synthetic.csv")
    }
}

fn completed(outcome: TrainingOutcome) -> TrainingResult {
    match outcome {
        TrainingOutcome::Completed(r) => r,
        TrainingOutcome::Stopped(_) => panic!("expected completion"),
    }
}

/// Train to completion; return the model bytes and the control's record.
fn train_full(bars: &Bars, p: &TrainingParams, path: &Path) -> (Vec<u8>, RecordingControl) {
    let mut ctl = RecordingControl::new();
    completed(run_training(bars, p, path, None, &mut ctl).unwrap());
    (std::fs::read(path).unwrap(), ctl)
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn learns_a_learnable_series() {
    let dir = tmp();
    // 15 % of directions are noise: the best accuracy is 0.85, chance 0.5.
    let bars = noisy_learnable_bars(800, 1, 0.15);
    let p = TrainingParams {
        learning_rate: 0.003,
        ..small_params(20)
    };
    let path = dir.path().join("m.json");
    let mut ctl = RecordingControl::new();
    let r = completed(run_training(&bars, &p, &path, None, &mut ctl).unwrap());
    let losses: Vec<f64> = ctl
        .metrics
        .iter()
        .map(|m| m["train_loss"].as_f64().unwrap())
        .collect();
    assert_eq!(losses.len(), 20);
    // The first epoch's mean starts near ln 2 = 0.69 (chance).
    assert!(losses[0] > 0.6, "{losses:?}");
    assert!(
        losses[19] < 0.8 * losses[0],
        "loss did not fall: {losses:?}"
    );
    assert!(
        losses.windows(5).all(|w| w[4] < w[0]),
        "not falling: {losses:?}"
    );
    let val_acc = r.validation_metrics.accuracy.unwrap();
    let test_acc = r.test_metrics.accuracy.unwrap();
    assert!(
        val_acc > 0.7 && test_acc > 0.7,
        "val {val_acc}, test {test_acc}"
    );
    assert_eq!(ctl.metrics[19]["val_accuracy"].as_f64(), Some(val_acc));
    // Progress: one call per batch, ending at 100 %.
    let last = ctl.progress.last().unwrap();
    assert_eq!(last.percentage, Some(100.0));
    assert_eq!(last.items_processed, last.items_total);
    assert_eq!(ctl.progress.len() as i64, last.items_total.unwrap());
    assert!(last
        .message
        .as_deref()
        .unwrap()
        .starts_with("Epoch 20/20 · Batch "));
    assert_eq!(ctl.progress[0].current_step.as_deref(), Some("training"));
    // Checkpoints every 2 epochs.
    assert_eq!(ctl.checkpoints.len(), 10);
    // The result summary has the SPEC's keys.
    let v = serde_json::to_value(&r).unwrap();
    for key in [
        "training_metrics",
        "validation_metrics",
        "test_metrics",
        "resource_usage",
        "artifacts",
        "session_info",
    ] {
        assert!(v.get(key).is_some(), "missing {key}");
    }
    assert_eq!(v["artifacts"]["model_path"], path.display().to_string());
    assert_eq!(v["session_info"]["resumed"], false);
    // The saved model predicts the same directions the evaluation scored.
    let model = Model::load(&path).unwrap();
    let dirs = model.predict_directions(&bars);
    assert_eq!(dirs.len(), bars.len());
    assert!(dirs[..3].iter().all(|d| *d == 0));
    assert!(dirs[3..].iter().all(|d| *d == 1 || *d == -1));
    let hits = (700..799)
        .filter(|&t| (dirs[t] == 1) == (bars.close[t + 1] > bars.close[t]))
        .count();
    assert!(hits > 65, "{hits}/99 recent directions right");
}

#[test]
fn same_seed_same_bytes_different_seed_differs() {
    let dir = tmp();
    let bars = learnable_bars(300, 2);
    let p = small_params(3);
    let (a, ctl_a) = train_full(&bars, &p, &dir.path().join("a.json"));
    let (b, ctl_b) = train_full(&bars, &p, &dir.path().join("b.json"));
    assert_eq!(a, b);
    assert_eq!(ctl_a.metrics, ctl_b.metrics);
    let other = TrainingParams { seed: 43, ..p };
    let (c, _) = train_full(&bars, &other, &dir.path().join("c.json"));
    assert_ne!(a, c);
    // The file is the documented JSON and loads back to the same bytes.
    let m = Model::load(&dir.path().join("a.json")).unwrap();
    assert_eq!(m.to_bytes().unwrap(), a);
    assert_eq!(m.net.sizes, vec![12, 16, 8, 1]);
}

/// Stop after `stops` progress calls (successively), resuming each time from
/// the JSON text of the state; returns model bytes and all metric points.
fn train_with_stops(
    bars: &Bars,
    p: &TrainingParams,
    path: &Path,
    stops: &[usize],
) -> (Vec<u8>, Vec<serde_json::Value>) {
    let mut resume = None;
    let mut metrics = Vec::new();
    for stop in stops.iter().map(|s| Some(*s)).chain([None]) {
        let mut ctl = RecordingControl::new();
        ctl.stop_after_progress_calls = stop;
        let out = run_training(bars, p, path, resume.take(), &mut ctl).unwrap();
        metrics.extend(ctl.metrics.iter().cloned());
        match out {
            TrainingOutcome::Stopped(state) => {
                assert!(stop.is_some());
                // The checkpoint handed to the runner is this state; resume
                // from its JSON text, as the daemon stores it.
                let saved = ctl.checkpoints.last().expect("a stop checkpoints");
                assert_eq!(saved, &state.to_json().unwrap());
                let text = serde_json::to_string(saved).unwrap();
                let value: serde_json::Value = serde_json::from_str(&text).unwrap();
                let back = TrainingState::from_json(&value).unwrap();
                assert_eq!(back, state, "state changed through JSON");
                resume = Some(back);
            }
            TrainingOutcome::Completed(r) => {
                assert!(stop.is_none(), "completed before stop {stop:?}");
                assert_eq!(r.session_info.resumed, !stops.is_empty());
                assert_eq!(r.session_info.attempt as usize, stops.len() + 1);
            }
        }
    }
    (std::fs::read(path).unwrap(), metrics)
}

#[test]
fn stop_and_resume_is_bit_identical() {
    let dir = tmp();
    let bars = learnable_bars(300, 3);
    let p = small_params(4);
    let (full, full_ctl) = train_full(&bars, &p, &dir.path().join("full.json"));
    let per_epoch = full_ctl.progress.len() / 4;
    let total = full_ctl.progress.len();
    // Before any batch, mid-epoch, exactly at an epoch boundary, just after
    // one, at a checkpoint boundary, the very last batch; and several stops.
    let plans: Vec<Vec<usize>> = vec![
        vec![0],
        vec![1],
        vec![per_epoch / 2],
        vec![per_epoch],
        vec![per_epoch + 1],
        vec![2 * per_epoch],
        vec![total - 1],
        vec![3, 2, per_epoch, 1],
    ];
    for (i, plan) in plans.iter().enumerate() {
        let path = dir.path().join(format!("r{i}.json"));
        let (bytes, metrics) = train_with_stops(&bars, &p, &path, plan);
        assert!(bytes == full, "plan {plan:?}: model bytes differ");
        assert_eq!(metrics, full_ctl.metrics, "plan {plan:?}: metrics differ");
    }
    // Resuming from a periodic checkpoint (after a crash, say) also ends
    // identical and emits the metric points that followed it.
    let periodic = TrainingState::from_json(&full_ctl.checkpoints[0]).unwrap();
    assert_eq!((periodic.epoch, periodic.batch), (2, 0));
    let path = dir.path().join("crash.json");
    let mut ctl = RecordingControl::new();
    completed(run_training(&bars, &p, &path, Some(periodic), &mut ctl).unwrap());
    assert!(std::fs::read(&path).unwrap() == full);
    assert_eq!(ctl.metrics, full_ctl.metrics[2..]);
}

#[test]
fn resume_refuses_a_foreign_state() {
    let dir = tmp();
    let bars = learnable_bars(300, 4);
    let p = small_params(2);
    let mut ctl = RecordingControl::new();
    ctl.stop_after_progress_calls = Some(2);
    let path = dir.path().join("m.json");
    let TrainingOutcome::Stopped(state) = run_training(&bars, &p, &path, None, &mut ctl).unwrap()
    else {
        panic!("expected a stop")
    };
    let other = TrainingParams {
        batch_size: 16,
        ..p.clone()
    };
    let err = run_training(
        &bars,
        &other,
        &path,
        Some(state.clone()),
        &mut RecordingControl::new(),
    )
    .unwrap_err();
    assert!(err.contains("does not match"), "{err}");
    let other_bars = learnable_bars(300, 5);
    assert!(run_training(
        &other_bars,
        &p,
        &path,
        Some(state),
        &mut RecordingControl::new()
    )
    .is_err());
    assert!(TrainingState::from_json(&serde_json::json!({"epoch": 1})).is_err());
}

#[test]
fn too_few_bars_and_bad_models_are_errors() {
    let dir = tmp();
    let bars = learnable_bars(5, 6);
    let err = run_training(
        &bars,
        &small_params(1),
        &dir.path().join("m.json"),
        None,
        &mut RecordingControl::new(),
    )
    .unwrap_err();
    assert!(err.contains("too few bars"), "{err}");
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, b"{\"format\":\"x\"}").unwrap();
    assert!(Model::load(&bad).is_err());
    assert!(Model::load(&dir.path().join("missing.json"))
        .unwrap_err()
        .contains("cannot read"));
}

fn goog_path() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/data/GOOG.csv"))
}

#[test]
fn trains_on_goog_and_the_model_loads() {
    let dir = tmp();
    let params = TrainingParams::from_json(&serde_json::json!({
        "data": goog_path(), "epochs": 2, "hidden": [16, 8], "checkpoint_every_epochs": 1
    }))
    .unwrap();
    let bars = load_csv(&params.data).unwrap();
    let path = dir.path().join("out/goog.json");
    let mut ctl = RecordingControl::new();
    let r = completed(run_training(&bars, &params, &path, None, &mut ctl).unwrap());
    let n = bars.len() - 10 - 1; // labelled samples
    assert_eq!(
        r.training_metrics.samples + r.validation_metrics.samples + r.test_metrics.samples,
        n
    );
    assert_eq!(
        r.validation_metrics.samples,
        (n as f64 * 0.15).floor() as usize
    );
    assert!(r.test_metrics.loss.unwrap().is_finite());
    // The split as timestamps (SPEC §14): contiguous, oldest first, the
    // samples at bars 10 ..= N-2 (the last bar has no label).
    let si = &r.session_info;
    let (n_train, n_val) = (r.training_metrics.samples, r.validation_metrics.samples);
    let ts = |i: usize| Some(bars.timestamps[i].clone());
    assert_eq!(
        (si.train_start.clone(), si.train_end.clone()),
        (ts(10), ts(10 + n_train - 1))
    );
    assert_eq!(
        (si.val_start.clone(), si.val_end.clone()),
        (ts(10 + n_train), ts(10 + n_train + n_val - 1))
    );
    assert_eq!(
        (si.test_start.clone(), si.test_end.clone()),
        (ts(10 + n_train + n_val), ts(bars.len() - 2))
    );
    assert_eq!(ctl.metrics.len(), 2);
    assert_eq!(ctl.checkpoints.len(), 2);
    let model = Model::load(&path).unwrap();
    assert_eq!(model.lookback, 10);
    let dirs = model.predict_directions(&bars);
    assert_eq!(dirs.len(), bars.len());
    assert!(dirs[..10].iter().all(|d| *d == 0));
    assert!(dirs[10..].iter().all(|d| *d != 0));
}
