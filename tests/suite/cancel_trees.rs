//! Cancel of a tree is one transaction: no child escapes it, and a retry
//! recorded at the same moment does not swallow it.

use crate::common::*;
use serde_json::{json, Value};
use std::time::Duration;

fn submit_child(d: &Daemon, parent: &str) -> Value {
    d.req(Submit {
        parent: Some(id_of(parent)),
        ..Submit::new(
            "dummy",
            json!({ "steps": 1000, "step_ms": 10, "checkpoint_every": 1000 }),
        )
    })
}

#[test]
fn children_of_a_cancelled_or_stopping_parent_are_refused() {
    let d = Daemon::start();
    // A parent that does not react to the stop request for a while: it
    // stays running, marked as being cancelled.
    let parent = d.submit(
        "dummy",
        json!({ "steps": 4, "step_ms": 1000, "checkpoint_every": 1000, "ignore_stop": true }),
    );
    d.wait_status(&parent, "running", 20);
    let r = d.ok(Request::Cancel {
        id: id_of(&parent),
        reason: None,
        wait_ms: Some(0),
    });
    assert_eq!(r["previous_status"], "running");
    let r = submit_child(&d, &parent);
    assert_eq!(r["ok"], false, "child of a stopping parent accepted: {r}");
    assert_eq!(r["error"]["code"], "invalid_transition");
    let msg = r["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains(&parent) && msg.contains("being cancelled"),
        "{msg}"
    );

    // A cancelled parent: refused too, with a sentence naming it.
    let mut later = Submit::new("dummy", json!({}));
    later.run_after = Some("1h".into());
    let waiting = d.ok(later)["operation_id"].as_str().unwrap().to_string();
    d.ok(Request::cancel(&waiting));
    let r = submit_child(&d, &waiting);
    assert_eq!(r["ok"], false, "{r}");
    let msg = r["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains(&waiting) && msg.contains("is cancelled"),
        "{msg}"
    );
}

#[test]
fn children_submitted_while_the_tree_is_cancelled_do_not_escape() {
    let d = Daemon::start_with("flush_interval_ms = 50\nworkers = 32\n[concurrency]\ndummy = 30\n");
    let parent = d.submit(
        "dummy",
        json!({ "steps": 1000, "step_ms": 20, "checkpoint_every": 1000 }),
    );
    d.wait_status(&parent, "running", 20);
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (sock, parent) = (d.socket.clone(), parent.clone());
            std::thread::spawn(move || {
                let mut accepted = Vec::new();
                let start = std::time::Instant::now();
                // Submitting before, during and after the cancel.
                while start.elapsed() < Duration::from_millis(900) {
                    std::thread::sleep(Duration::from_millis(5));
                    let r = request(
                        &sock,
                        Submit {
                            parent: Some(id_of(&parent)),
                            ..Submit::new(
                                "dummy",
                                json!({ "steps": 1000, "step_ms": 10, "checkpoint_every": 1000 }),
                            )
                        },
                    );
                    if r["ok"] == true {
                        accepted.push(r["operation_id"].as_str().unwrap().to_string());
                    }
                }
                accepted
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    d.ok(Request::Cancel {
        id: id_of(&parent),
        reason: None,
        wait_ms: Some(0),
    });
    let accepted: Vec<String> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    assert!(
        !accepted.is_empty(),
        "no child was submitted before the cancel"
    );
    d.wait_status(&parent, "cancelled", 20);
    for id in &accepted {
        let op = d.wait_status(id, "cancelled", 20);
        assert_eq!(op["stop_reason"], "parent", "{op}");
    }
    // And nothing of the tree is still going a moment later.
    std::thread::sleep(Duration::from_millis(300));
    let active = d.ok(Request::List(ListFilter {
        parent: Some(id_of(&parent)),
        active: true,
        limit: Some(1000),
        ..ListFilter::default()
    }));
    assert_eq!(
        active["operations"].as_array().unwrap().len(),
        0,
        "{active}"
    );
}

#[test]
fn a_failed_attempt_waiting_to_retry_says_so_not_resuming() {
    let d = Daemon::start_with(
        "flush_interval_ms = 50\nretry_base_delay_ms = 3000\ncheckpoint_min_interval_ms = 0\n",
    );
    let r = d.ok(Submit {
        max_attempts: Some(3),
        ..Submit::new(
            "dummy",
            json!({ "steps": 4, "step_ms": 20, "fail_at_step": 3 }),
        )
    });
    let id = r["operation_id"].as_str().unwrap().to_string();
    // The second attempt resumes from a checkpoint, then fails again.
    let mut last = Value::Null;
    assert!(
        wait_until(Duration::from_secs(30), || {
            last = d.get(&id);
            last["attempt"] == 2 && last["status"] == "pending"
        }),
        "never waited for a third attempt: {last}"
    );
    let msg = last["progress_message"].as_str().unwrap_or("");
    assert!(
        msg.contains("attempt 2 of 3 failed") && msg.contains("retrying"),
        "stale message while waiting to retry: {msg:?}"
    );
    d.ok(Request::cancel(&id));
}
