//! Submit, run, complete, cancel: the basic life of an operation.

use crate::common::*;
use serde_json::json;

#[test]
fn dummy_runs_to_completion_with_progress_and_metrics() {
    let d = Daemon::start();
    let id = d.submit("dummy", json!({ "steps": 5, "step_ms": 10 }));
    assert!(id.starts_with("op_dummy_"), "{id}");
    let op = d.wait_status(&id, "completed", 20);
    assert_eq!(op["progress_percent"], 100.0);
    assert_eq!(op["steps_completed"], 5);
    assert_eq!(op["attempt"], 1);
    assert_eq!(op["result_summary"]["steps"], 5);
    let m = d.metrics(&id);
    let seqs: Vec<i64> = m.iter().map(|p| p["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
}
