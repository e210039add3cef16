//! The life of an operation: transitions allowed and refused, cancel,
//! list filters, idempotency, concurrency, metrics cursors, parents.

use crate::common::*;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::time::Duration;

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
    assert!(op["started_at"].is_string() && op["completed_at"].is_string());
    let seqs: Vec<i64> = d
        .metrics(&id)
        .iter()
        .map(|p| p["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
}

fn code(r: &Value) -> &str {
    r["error"]["code"].as_str().unwrap_or("")
}

#[test]
fn every_transition_and_every_refusal() {
    let d = Daemon::start_with("flush_interval_ms = 50\n[concurrency]\ndummy = 1\n");
    // running -> failed (error)
    let failing = d.submit(
        "dummy",
        json!({ "steps": 3, "step_ms": 1, "fail_at_step": 2 }),
    );
    let op = d.wait_status(&failing, "failed", 20);
    assert_eq!(op["stop_reason"], "error");
    assert!(
        op["error_message"].as_str().unwrap().contains("step 2"),
        "{op}"
    );
    // failed -> resuming -> running -> ... (resume) and it fails again at step 2
    d.ok(Request::resume(&failing));
    let op = d.wait_status(&failing, "failed", 20);
    assert_eq!(op["attempt"], 2);

    // A long one occupies the only dummy slot, so the next stays pending.
    let long = d.submit("dummy", json!({ "steps": 1000, "step_ms": 20 }));
    d.wait_status(&long, "running", 20);
    let waiting = d.submit("dummy", json!({ "steps": 1, "step_ms": 1 }));
    assert_eq!(d.status(&waiting), "pending");
    // pending -> running is refused to clients (only the scheduler claims):
    // resume of a pending operation is not_resumable and changes nothing.
    let r = d.req(Request::resume(&waiting));
    assert_eq!(code(&r), "not_resumable", "{r}");
    assert_eq!(d.status(&waiting), "pending");
    // resume of a running one too.
    let r = d.req(Request::resume(&long));
    assert_eq!(code(&r), "not_resumable", "{r}");
    // pending -> cancelled
    let r = d.ok(Request::cancel(&waiting));
    assert_eq!(r["status"], "cancelled");
    assert_eq!(d.get(&waiting)["stop_reason"], "user");
    // running -> cancelled
    let r = d.ok(Request::Cancel {
        id: id_of(&long),
        reason: Some("enough".into()),
        wait_ms: None,
    });
    assert_eq!(r["status"], "cancelled", "{r}");
    let op = d.get(&long);
    assert_eq!(op["stop_reason"], "user");
    let r = d.req(Request::cancel(&waiting));
    assert_eq!(
        code(&r),
        "invalid_transition",
        "cancelling a cancelled operation: {r}"
    );
    let short = d.submit("dummy", json!({ "steps": 3, "step_ms": 1 }));
    let done = d.wait_status(&short, "completed", 20);
    // completed is final: cancel and resume are refused and change nothing.
    let r = d.req(Request::cancel(&short));
    assert_eq!(code(&r), "invalid_transition", "{r}");
    let r = d.req(Request::resume(&short));
    assert_eq!(code(&r), "not_resumable", "{r}");
    assert_eq!(d.get(&short)["completed_at"], done["completed_at"]);
    // cancelled -> resuming
    d.ok(Request::resume(&waiting));
    d.wait_status(&waiting, "completed", 20);
    assert_eq!(
        d.get(&waiting)["attempt"],
        1,
        "it never ran before its cancel"
    );
    // Unknown ids.
    let nope = "op_dummy_nope";
    for req in [
        Request::get(nope),
        Request::cancel(nope),
        Request::resume(nope),
        Request::metrics(nope, 0),
        Request::children(nope),
    ] {
        let r = d.req(req.clone());
        assert_eq!(code(&r), "not_found", "{req:?}: {r}");
    }
}

#[test]
fn cancelling_a_running_dummy_stops_it_within_one_step() {
    let d = Daemon::start();
    let id = d.submit("dummy", json!({ "steps": 1000, "step_ms": 100 }));
    wait_until(Duration::from_secs(20), || {
        d.get(&id)["steps_completed"].as_i64().unwrap_or(0) >= 2
    });
    let before = d.get(&id)["steps_completed"].as_i64().unwrap();
    let t = std::time::Instant::now();
    let r = d.ok(Request::cancel(&id));
    assert_eq!(r["status"], "cancelled", "{r}");
    assert!(
        t.elapsed() < Duration::from_millis(1000),
        "{:?}",
        t.elapsed()
    );
    let op = d.get(&id);
    let after = op["steps_completed"].as_i64().unwrap();
    assert!(after <= before + 1, "ran {before} -> {after}");
    assert_eq!(op["stop_reason"], "user");
    // The cancellation checkpoint holds the step reached.
    let cps = d.ok(Request::checkpoints(Some(id_of(&id))));
    let cp = &cps["checkpoints"][0];
    assert_eq!(cp["checkpoint_type"], "cancellation", "{cps}");
    assert_eq!(cp["state"]["step"], after);
    // Resuming continues from there, attempt 2, and completes with every step once.
    d.ok(Request::resume(&id));
    wait_until(Duration::from_secs(10), || d.status(&id) == "running");
    d.ok(Request::cancel(&id));
}

#[test]
fn resumed_dummy_continues_metrics_without_gaps_or_repeats() {
    let d = Daemon::start();
    let id = d.submit("dummy", json!({ "steps": 30, "step_ms": 20 }));
    wait_until(Duration::from_secs(20), || {
        d.get(&id)["steps_completed"].as_i64().unwrap_or(0) >= 5
    });
    d.ok(Request::cancel(&id));
    d.ok(Request::resume(&id));
    let op = d.wait_status(&id, "completed", 30);
    assert_eq!(op["attempt"], 2);
    let m = d.metrics(&id);
    let seqs: Vec<i64> = m.iter().map(|p| p["seq"].as_i64().unwrap()).collect();
    let steps: Vec<i64> = m
        .iter()
        .map(|p| p["data"]["step"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=30).collect::<Vec<_>>());
    assert_eq!(steps, (1..=30).collect::<Vec<_>>());
}

#[test]
fn a_submit_with_a_free_slot_is_answered_with_its_claim_committed() {
    // A submit carries a claim round in the same writer batch, so with a
    // free slot its operation is already `running` in the database file
    // when the submit is answered: no scheduler round and no commit of
    // its own before it starts. (Before, the scheduler claimed it in a
    // later commit, and a read right after the answer found it `pending`
    // about half the time.) One miss is allowed: the scheduler's idle
    // round, in flight at that instant, may hold the free slots.
    let d =
        Daemon::start_with("flush_interval_ms = 50\nworkers = 12\n[concurrency]\ncommand = 12\n");
    let db = open_db(&d.db());
    let mut statuses = Vec::new();
    for _ in 0..12 {
        let id = d.submit("command", json!({"argv": ["sleep", "30"]}));
        let status: String = db
            .query_row(
                "SELECT status FROM operations WHERE operation_id = ?1",
                [&id],
                |r| r.get(0),
            )
            .unwrap();
        statuses.push(status);
        // Let the claim's answer land (its hold on the slots ends then).
        std::thread::sleep(Duration::from_millis(50));
    }
    let pending = statuses.iter().filter(|s| *s == "pending").count();
    assert!(pending <= 1, "pending at the submit's answer: {statuses:?}");
    assert!(
        statuses.iter().all(|s| s == "running" || s == "pending"),
        "{statuses:?}"
    );
}

#[test]
fn fifty_concurrent_submits_all_land_with_distinct_ids() {
    let d = Daemon::start();
    let socket = d.socket.clone();
    let handles: Vec<_> = (0..50)
        .map(|_| {
            let s = socket.clone();
            std::thread::spawn(move || request(&s, Submit::new("dummy", json!({ "steps": 0 }))))
        })
        .collect();
    let ids: HashSet<String> = handles
        .into_iter()
        .map(|h| {
            let r = h.join().unwrap();
            assert_eq!(r["ok"], true, "{r}");
            r["operation_id"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(ids.len(), 50);
    let db = open_db(&d.db());
    let n: i64 = db
        .query_row("SELECT count(*) FROM operations", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 50);
}

#[test]
fn list_filters_and_counts() {
    let d = Daemon::start_with("flush_interval_ms = 50\n[concurrency]\ndummy = 1\n");
    let done = d.submit("dummy", json!({ "steps": 1, "step_ms": 1 }));
    d.wait_status(&done, "completed", 20);
    let running = d.submit("dummy", json!({ "steps": 1000, "step_ms": 20 }));
    d.wait_status(&running, "running", 20);
    let pending: Vec<String> = (0..3)
        .map(|_| d.submit("dummy", json!({ "steps": 1 })))
        .collect();
    let all = d.ok(Request::List(ListFilter::default()));
    assert_eq!(all["total"], 5);
    assert_eq!(all["active"], 4);
    let r = d.ok(Request::List(ListFilter {
        status: vec![opsd::model::Status::Pending],
        ..ListFilter::default()
    }));
    assert_eq!(r["total"], 3);
    let listed: HashSet<String> = r["operations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["operation_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed, pending.iter().cloned().collect());
    let r = d.ok(Request::List(ListFilter {
        active: true,
        limit: Some(2),
        ..ListFilter::default()
    }));
    assert_eq!(r["operations"].as_array().unwrap().len(), 2);
    assert_eq!(r["total"], 4);
    let r = d.ok(Request::List(ListFilter {
        active: true,
        limit: Some(2),
        offset: Some(3),
        ..ListFilter::default()
    }));
    assert_eq!(r["operations"].as_array().unwrap().len(), 1);
    let r = d.ok(Request::List(ListFilter {
        status: vec![opsd::model::Status::Completed, opsd::model::Status::Running],
        ..ListFilter::default()
    }));
    assert_eq!(r["total"], 2);
    let r = d.ok(Request::List(ListFilter {
        kind: Some("training".parse().unwrap()),
        ..ListFilter::default()
    }));
    assert_eq!(r["total"], 0);
    let r = request_json(&d.socket, &json!({ "cmd": "list", "status": ["bogus"] }));
    assert_eq!(r["error"]["code"], "bad_request");
    // Newest first.
    let ops = d.ok(Request::List(ListFilter::default()))["operations"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(ops.last().unwrap()["operation_id"], done.as_str());
    d.ok(Request::cancel(&running));
}

#[test]
fn idempotency_key_returns_the_first_operation() {
    let d = Daemon::start();
    let a = d.ok(Submit {
        key: Some("nightly-1".into()),
        ..Submit::new("dummy", json!({ "steps": 1 }))
    });
    let b = d.ok(Submit {
        key: Some("nightly-1".into()),
        ..Submit::new("dummy", json!({ "steps": 1 }))
    });
    assert_eq!(a["operation_id"], b["operation_id"]);
    assert_eq!(a["created"], true);
    assert_eq!(b["created"], false);
    let c = d.ok(Submit {
        key: Some("nightly-2".into()),
        ..Submit::new("dummy", json!({ "steps": 1 }))
    });
    assert_ne!(a["operation_id"], c["operation_id"]);
    assert_eq!(d.ok(Request::List(ListFilter::default()))["total"], 2);
}

#[test]
fn metrics_cursor_has_no_gaps_or_repeats_while_running() {
    let d = Daemon::start();
    let id = d.submit("dummy", json!({ "steps": 60, "step_ms": 10 }));
    let mut cursor = 0;
    let mut seen = Vec::new();
    loop {
        let over = d.status(&id) == "completed";
        let r = d.ok(Request::Metrics {
            id: id_of(&id),
            cursor,
            limit: Some(7),
            follow: false,
        });
        for p in r["metrics"].as_array().unwrap() {
            seen.push(p["seq"].as_i64().unwrap());
        }
        let next = r["cursor"].as_i64().unwrap();
        assert!(next >= cursor);
        cursor = next;
        if over && r["metrics"].as_array().unwrap().is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(15));
    }
    assert_eq!(seen, (1..=60).collect::<Vec<_>>());
}

#[test]
fn parent_progress_aggregates_children_by_phase() {
    let d = Daemon::start();
    let parent = d.submit("dummy", json!({ "steps": 1000, "step_ms": 20 }));
    d.wait_status(&parent, "running", 20);
    let a = d.ok(Submit {
        parent: Some(id_of(&parent)),
        phase: Some((0.0, 40.0)),
        ..Submit::new("dummy", json!({ "steps": 2, "step_ms": 1 }))
    })["operation_id"]
        .as_str()
        .unwrap()
        .to_string();
    let b = d.ok(Submit {
        parent: Some(id_of(&parent)),
        phase: Some((40.0, 100.0)),
        ..Submit::new("dummy", json!({ "steps": 1000, "step_ms": 50 }))
    })["operation_id"]
        .as_str()
        .unwrap()
        .to_string();
    d.wait_status(&a, "completed", 20);
    d.wait_status(&b, "running", 20);
    let kids = d.ok(Request::children(&parent));
    assert_eq!(kids["operations"].as_array().unwrap().len(), 2);
    // 40 % from the finished child, a little of the other's 60 %.
    let pct = d.get(&parent)["progress_percent"].as_f64().unwrap();
    assert!((40.0..60.0).contains(&pct), "{pct}");
    // The database agrees within a flush.
    wait_until(Duration::from_secs(5), || {
        let db = open_db(&d.db());
        let v: f64 = db
            .query_row(
                "SELECT progress_percent FROM operations WHERE operation_id = ?1",
                [&parent],
                |r| r.get(0),
            )
            .unwrap();
        (40.0..60.0).contains(&v)
    });
    // Cancelling the parent cancels the running child with stop_reason parent.
    d.ok(Request::cancel(&parent));
    let child = d.wait_status(&b, "cancelled", 10);
    assert_eq!(child["stop_reason"], "parent");
    assert_eq!(d.get(&parent)["stop_reason"], "user");
    assert_eq!(d.status(&a), "completed");
}

#[test]
fn a_panicking_job_fails_and_the_daemon_carries_on() {
    let d = Daemon::start();
    let id = d.submit(
        "dummy",
        json!({ "steps": 5, "step_ms": 1, "panic_at_step": 2 }),
    );
    let op = d.wait_status(&id, "failed", 20);
    assert!(
        op["error_message"].as_str().unwrap().contains("panicked"),
        "{op}"
    );
    let ok = d.submit("dummy", json!({ "steps": 2, "step_ms": 1 }));
    d.wait_status(&ok, "completed", 20);
}

#[test]
fn retries_back_off_and_stop_after_max_attempts() {
    let d = Daemon::start_with("flush_interval_ms = 50\nretry_base_delay_ms = 100\n");
    let r = d.ok(Submit {
        max_attempts: Some(3),
        ..Submit::new(
            "dummy",
            json!({ "steps": 2, "step_ms": 1, "fail_at_step": 1 }),
        )
    });
    let id = r["operation_id"].as_str().unwrap().to_string();
    let op = d.wait_status(&id, "failed", 30);
    assert_eq!(op["attempt"], 3);
    assert_eq!(op["errors"].as_array().unwrap().len(), 3, "{op}");
    // Backoff: the attempts are spread out, the third no sooner than base*(1+2)/2.
    let started = chrono::DateTime::parse_from_rfc3339(op["created_at"].as_str().unwrap()).unwrap();
    let ended = chrono::DateTime::parse_from_rfc3339(op["completed_at"].as_str().unwrap()).unwrap();
    assert!((ended - started).num_milliseconds() >= 150, "{op}");
}

#[test]
fn delayed_start_waits_for_run_after() {
    let d = Daemon::start();
    let r = d.ok(Submit {
        run_after: Some("1s".into()),
        ..Submit::new("dummy", json!({ "steps": 1, "step_ms": 1 }))
    });
    let id = r["operation_id"].as_str().unwrap().to_string();
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(d.status(&id), "pending");
    d.wait_status(&id, "completed", 10);
    let r = d.req(Submit {
        run_after: Some("someday".into()),
        ..Submit::new("dummy", Value::Null)
    });
    assert_eq!(r["error"]["code"], "bad_request");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("run_after"),
        "{r}"
    );
}

#[test]
fn bad_parameters_are_refused_naming_the_key() {
    let d = Daemon::start();
    for (kind, params, needle) in [
        ("dummy", json!({ "steps": -1 }), "steps"),
        ("dummy", json!({ "stepz": 1 }), "stepz"),
        ("dummy", json!({ "steps": "many" }), "invalid type"),
        ("dummy", json!([1, 2]), "object"),
        (
            "rocket",
            json!({}),
            "dummy, command, training, backtest, pipeline",
        ),
    ] {
        let r = d.req(Submit::new(kind, params));
        assert_eq!(r["error"]["code"], "bad_request", "{r}");
        let msg = r["error"]["message"].as_str().unwrap();
        assert!(msg.contains(needle), "{msg} should mention {needle}");
    }
    assert_eq!(d.ok(Request::List(ListFilter::default()))["total"], 0);
}
