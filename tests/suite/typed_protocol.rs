//! Issue 9 items 3-4: one typed protocol. The client's typed answers agree
//! with the JSON on the wire, the operation's field names are the SPEC's,
//! and the CLI's submit options are the protocol's `Submit`.

use crate::common::*;
use opsd::model::Status;
use serde_json::{json, Value};
use std::collections::BTreeSet;

/// SPEC §5's operation fields, as scripts read them from `get`.
// SPEC §12 adds held, label, queue and waiting_for (waiting_on appears
// only on a pending operation that waits for others).
const OPERATION_FIELDS: [&str; 39] = [
    "attempt",
    "claimed_by",
    "completed_at",
    "created_at",
    "current_step",
    "error_message",
    "errors",
    "eta_seconds",
    "fail_parent",
    "gpus_assigned",
    "gpus_requested",
    "held",
    "idempotency_key",
    "items_processed",
    "items_total",
    "label",
    "lease_expires_at",
    "max_attempts",
    "metadata",
    "operation_id",
    "operation_type",
    "parent_operation_id",
    "phase_end",
    "phase_start",
    "priority",
    "progress_context",
    "progress_message",
    "progress_percent",
    "queue",
    "result_summary",
    "run_after",
    "started_at",
    "status",
    "steps_completed",
    "steps_total",
    "stop_reason",
    "updated_at",
    "waiting_for",
    "warnings",
];

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

#[test]
fn typed_answers_match_the_wire_and_its_field_names() {
    let d = Daemon::start();
    let mut c = d.client();
    let parent = c
        .submit(Submit::new(
            "dummy",
            json!({ "steps": 2000, "step_ms": 10 }),
        ))
        .unwrap();
    assert!(parent.created);
    let child = c
        .submit(Submit {
            parent: Some(parent.operation_id.clone()),
            phase: Some((0.0, 50.0)),
            ..Submit::new("dummy", json!({ "steps": 1, "step_ms": 1 }))
        })
        .unwrap();
    d.wait_status(child.operation_id.as_str(), "completed", 20);
    d.wait_status(parent.operation_id.as_str(), "running", 20);

    // `get`: the raw operation has exactly the SPEC's fields, and the
    // typed view reads the same values.
    let raw = d.get(parent.operation_id.as_str());
    let want: BTreeSet<String> = OPERATION_FIELDS.iter().map(|s| s.to_string()).collect();
    assert_eq!(keys(&raw), want);
    let view = c.get(&parent.operation_id).unwrap();
    assert_eq!(view.status, Status::Running);
    assert_eq!(view.operation_id, parent.operation_id);
    // A running parent with a completed child over 0-50 % reads at least 50 %.
    assert!(view.progress_percent >= 50.0, "{view:?}");

    // `children` and `list` carry the same rows as the typed answers.
    let kids = c.children(&parent.operation_id).unwrap();
    assert_eq!(kids.len(), 1);
    assert_eq!(kids[0].operation_id, child.operation_id);
    assert_eq!(kids[0].progress_percent, 100.0);
    let listed = c.list(ListFilter::default()).unwrap();
    assert_eq!(listed.total, Some(2));
    assert_eq!(listed.active, Some(1));
    let raw_list = d.ok(Request::List(ListFilter::default()));
    assert_eq!(
        keys(&raw_list),
        ["active", "ok", "operations", "total"]
            .map(String::from)
            .into()
    );

    // `cancel`, `resume`, `metrics`, `checkpoints`, `health`: typed.
    let cancelled = c
        .cancel(&parent.operation_id, Some("enough".into()), Some(5000))
        .unwrap();
    assert_eq!(cancelled.previous_status, Status::Running);
    assert_eq!(cancelled.status, Status::Cancelled);
    let page = c.metrics(&parent.operation_id, 0, Some(5)).unwrap();
    assert!(page.metrics.len() <= 5 && page.event.is_none());
    let cps = c.checkpoints(Some(parent.operation_id.clone())).unwrap();
    assert!(cps.checkpoints.len() <= 1);
    let resumed = c.resume(&parent.operation_id).unwrap();
    assert_eq!(resumed.status, Status::Resuming);
    let health = c.health().unwrap();
    assert_eq!(health.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(health.store, "ok");

    // A failure is the daemon's error, code and sentence.
    match c.get(&id_of("op_dummy_20260101_000000_00000000")) {
        Err(opsd::client::ClientError::Daemon { code, message }) => {
            assert_eq!(code, "not_found");
            assert!(!message.is_empty());
        }
        other => panic!("expected not_found, got {other:?}"),
    }
    // The same connection keeps serving after an error.
    assert!(c.health().is_ok());
}

#[test]
fn cli_submit_options_are_the_protocols_submit() {
    let d = Daemon::start();
    let out = d.cli(&[
        "submit",
        "dummy",
        "--priority",
        "-3",
        "--max-attempts",
        "2",
        "--key",
        "k-1",
        "--run-after",
        "1h",
        "-p",
        "steps=1",
        "--json",
    ]);
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let op = d.get(v["operation_id"].as_str().unwrap());
    assert_eq!(op["priority"], -3);
    assert_eq!(op["max_attempts"], 2);
    assert_eq!(op["idempotency_key"], "k-1");
    assert_eq!(op["metadata"]["steps"], 1);
    assert!(op["run_after"].is_string());
    // A status `list` does not know is a usage error (exit 2), said before
    // anything reaches the daemon.
    let out = d.cli(&["list", "--status", "bogus"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}
