//! The built-in market jobs through the daemon: training, backtest,
//! pipeline — results, stop-and-resume equality, bad data.

use crate::common::*;
use serde_json::{json, Value};
use std::time::Duration;

fn goog() -> String {
    data("GOOG.csv").display().to_string()
}

#[test]
fn backtest_through_the_daemon_matches_the_engine_called_directly() {
    let d = Daemon::start();
    let params = json!({ "data": goog(), "fast": 10, "slow": 20 });
    let id = d.submit("backtest", params.clone());
    let op = d.wait_status(&id, "completed", 60);
    let r = &op["result_summary"];
    for k in [
        "return_pct",
        "buy_hold_return_pct",
        "max_drawdown_pct",
        "sharpe",
        "trades",
        "win_rate_pct",
        "final_equity",
        "exposure_pct",
        "commissions",
    ] {
        assert!(!r[k].is_null(), "missing {k}: {r}");
    }
    // The same engine, called directly, gives the same figures.
    let bars = opsd::market::ohlcv::load_csv(&data("GOOG.csv")).unwrap();
    let p = opsd::market::params::BacktestParams::from_json(&params).unwrap();
    let mut ctl = opsd::control::RecordingControl::new();
    let direct =
        match opsd::market::backtest::run_backtest(&bars, &p, None, None, &mut ctl).unwrap() {
            opsd::market::backtest::BacktestOutcome::Completed(res) => {
                serde_json::to_value(res).unwrap()
            }
            other => panic!("{other:?}"),
        };
    assert_eq!(r, &direct);
    // The equity curve is the metric series, at most 2,000 points.
    let m = d.metrics(&id);
    assert!(!m.is_empty() && m.len() <= 2000, "{}", m.len());
    assert_eq!(m.len(), ctl.metrics.len());
}

#[test]
fn training_cancelled_and_resumed_ends_with_the_same_model_bytes() {
    let d = Daemon::start_with("flush_interval_ms = 50\n[concurrency]\ntraining = 2\n");
    let params = json!({ "data": goog(), "epochs": 60, "checkpoint_every_epochs": 7, "seed": 7 });
    let straight = d.submit("training", params.clone());
    let interrupted = d.submit("training", params);
    // Stop the second one part-way.
    assert!(wait_until(Duration::from_secs(120), || {
        let op = d.get(&interrupted);
        op["status"] != "running" || op["steps_completed"].as_i64().unwrap_or(0) >= 3
    }));
    d.ok(Request::cancel(&interrupted));
    // The cancel answers within its wait; on a loaded machine the job may
    // take longer to reach its checkpoint, so wait for the final status.
    let mut status = String::new();
    assert!(wait_until(Duration::from_secs(60), || {
        status = d.status(&interrupted);
        status == "cancelled" || status == "completed"
    }));
    if status == "cancelled" {
        d.ok(Request::resume(&interrupted));
    }
    let a = d.wait_status(&straight, "completed", 300);
    let b = d.wait_status(&interrupted, "completed", 300);
    let pa = a["result_summary"]["artifacts"]["model_path"]
        .as_str()
        .unwrap()
        .to_string();
    let pb = b["result_summary"]["artifacts"]["model_path"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(pa, pb);
    assert_eq!(
        std::fs::read(&pa).unwrap(),
        std::fs::read(&pb).unwrap(),
        "model bytes differ"
    );
    // Same per-epoch metrics, in order, once each.
    let strip = |ms: Vec<Value>| {
        ms.into_iter()
            .map(|m| m["data"].clone())
            .collect::<Vec<_>>()
    };
    let ma = strip(d.metrics(&straight));
    let mb = strip(d.metrics(&interrupted));
    assert_eq!(ma.len(), 60);
    assert_eq!(ma, mb);
    assert!(ma[0]["train_loss"].is_number() && ma[0]["val_accuracy"].is_number());
}

#[test]
fn pipeline_runs_training_then_backtest_with_phase_weights() {
    let d = Daemon::start();
    let id = d.submit(
        "pipeline",
        json!({ "data": goog(), "training": { "epochs": 3 }, "backtest": { "cash": 5000 } }),
    );
    let op = d.wait_status(&id, "completed", 300);
    let kids = d.ok(Request::children(&id))["operations"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(kids.len(), 2);
    assert_eq!(kids[0]["operation_type"], "training");
    assert_eq!(kids[1]["operation_type"], "backtest");
    assert_eq!(
        (
            kids[0]["phase_start"].as_f64(),
            kids[0]["phase_end"].as_f64()
        ),
        (Some(5.0), Some(80.0))
    );
    assert_eq!(
        (
            kids[1]["phase_start"].as_f64(),
            kids[1]["phase_end"].as_f64()
        ),
        (Some(80.0), Some(100.0))
    );
    assert!(kids
        .iter()
        .all(|k| k["status"] == "completed" && k["fail_parent"] == true));
    let r = &op["result_summary"];
    assert_eq!(kids[1]["metadata"]["strategy"], "model");
    assert_eq!(kids[1]["metadata"]["model"], r["model_path"]);
    assert!(r["backtest"]["return_pct"].is_number(), "{r}");
    assert!(r["training"]["test_metrics"]["accuracy"].is_number(), "{r}");
    assert_eq!(op["progress_percent"], 100.0);
}

#[test]
fn cancelling_a_pipeline_cancels_its_running_child_and_resume_finishes_it() {
    let d = Daemon::start();
    let id = d.submit(
        "pipeline",
        json!({ "data": goog(), "training": { "epochs": 400 } }),
    );
    let mut child = String::new();
    assert!(wait_until(Duration::from_secs(60), || {
        let kids = d.ok(Request::children(&id))["operations"].clone();
        match kids.as_array().and_then(|k| k.first()) {
            Some(k) if k["status"] == "running" => {
                child = k["operation_id"].as_str().unwrap().to_string();
                true
            }
            _ => false,
        }
    }));
    d.ok(Request::cancel(&id));
    let c = d.wait_status(&child, "cancelled", 30);
    assert_eq!(c["stop_reason"], "parent");
    let p = d.wait_status(&id, "cancelled", 30);
    assert_eq!(p["stop_reason"], "user");
    // Resuming the parent resumes the unfinished child, not a new one.
    d.ok(Request::resume(&id));
    d.wait_status(&id, "completed", 600);
    let kids = d.ok(Request::children(&id))["operations"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(kids.len(), 2);
    assert_eq!(kids[0]["operation_id"], child.as_str());
    assert_eq!(kids[0]["attempt"], 2);
}

#[test]
fn a_failing_child_fails_the_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("bad.csv");
    // Valid at submit (the file exists and starts well); bad deep inside.
    let good = std::fs::read_to_string(data("GOOG.csv")).unwrap();
    let mut lines: Vec<&str> = good.lines().collect();
    lines[1500] = "2010-09-01,oops,1,1,1,1";
    std::fs::write(&csv, lines.join("\n")).unwrap();
    let d = Daemon::start();
    let id = d.submit(
        "pipeline",
        json!({ "data": csv.display().to_string(), "training": { "epochs": 2 } }),
    );
    let op = d.wait_status(&id, "failed", 60);
    let msg = op["error_message"].as_str().unwrap();
    assert!(msg.contains("1501") && msg.contains("Open"), "{msg}");
}

#[test]
fn bad_market_parameters_and_files_are_refused_at_submit() {
    let d = Daemon::start();
    for (kind, params, needle) in [
        (
            "backtest",
            json!({ "data": goog(), "fast": 30, "slow": 10 }),
            "fast",
        ),
        ("backtest", json!({ "data": "/no/such.csv" }), "not found"),
        (
            "backtest",
            json!({ "data": goog(), "strategy": "model" }),
            "model",
        ),
        ("training", json!({ "data": goog(), "epochs": 0 }), "epochs"),
        (
            "training",
            json!({ "data": goog(), "learning_rate": "fast" }),
            "learning_rate",
        ),
        ("pipeline", json!({ "training": {} }), "data"),
        (
            "pipeline",
            json!({ "data": goog(), "training": { "epochs": -3 } }),
            "epochs",
        ),
    ] {
        let r = d.req(Submit::new(kind, params.clone()));
        assert_eq!(r["error"]["code"], "bad_request", "{kind} {params}: {r}");
        let msg = r["error"]["message"].as_str().unwrap();
        assert!(msg.contains(needle), "{msg} should mention {needle}");
    }
}

#[test]
fn a_pipeline_resumed_right_after_its_cancel_still_finishes() {
    let d = Daemon::start();
    let id = d.submit(
        "pipeline",
        json!({ "data": goog(), "training": { "epochs": 100 } }),
    );
    assert!(wait_until(Duration::from_secs(60), || {
        let kids = d.ok(Request::children(&id))["operations"].clone();
        kids.as_array()
            .and_then(|k| k.first())
            .is_some_and(|k| k["status"] == "running")
    }));
    // Resume as soon as the pipeline itself is cancelled, while its child
    // may still be stopping.
    d.ok(Request::Cancel {
        id: id_of(&id),
        reason: None,
        wait_ms: Some(5000),
    });
    d.wait_status(&id, "cancelled", 30);
    d.ok(Request::resume(&id));
    let op = d.wait_status(&id, "completed", 600);
    assert_eq!(op["attempt"], 2);
    let kids = d.ok(Request::children(&id))["operations"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(kids.len(), 2, "no extra children");
}
