//! Everyday use (SPEC §12): dependencies, hold, queues, short ids, rerun,
//! clean, the on_finish hook, and the CLI that drives them (`run`, `wait`,
//! `list` at 80 columns, completions, man, global flags).

use crate::common::{open_db, request_json, wait_until, Daemon};
use serde_json::{json, Value};
use std::time::Duration;

/// A request line as a script writes it by hand (the new requests and
/// fields of SPEC §12, exactly as on the wire).
fn req(d: &Daemon, v: Value) -> Value {
    request_json(&d.socket, &v)
}

/// [`req`] that must succeed.
fn ok(d: &Daemon, v: Value) -> Value {
    let r = req(d, v.clone());
    assert_eq!(r["ok"], true, "request {v} failed: {r}");
    r
}

fn submit(d: &Daemon, v: Value) -> String {
    let mut v = v;
    v["cmd"] = json!("submit");
    ok(d, v)["operation_id"].as_str().unwrap().to_string()
}

fn quick() -> Value {
    json!({"steps": 1, "step_ms": 0})
}

#[test]
fn after_waits_for_completion_and_a_failed_dependency_cancels_the_chain() {
    let d = Daemon::start();
    let first = submit(
        &d,
        json!({"type": "dummy", "params": {"steps": 3, "step_ms": 200}}),
    );
    let then = submit(
        &d,
        json!({"type": "dummy", "params": quick(), "after": [first]}),
    );
    // Waits while its dependency runs, and says for what.
    let op = d.get(&then);
    assert_eq!(op["status"], "pending", "{op}");
    assert_eq!(op["waiting_on"], json!([first]), "{op}");
    let done = d.wait_status(&then, "completed", 30);
    let first_end = d.get(&first)["completed_at"].as_str().unwrap().to_string();
    assert!(
        done["started_at"].as_str().unwrap() >= first_end.as_str(),
        "{done}"
    );

    // A failing dependency cancels its `--after` dependents, transitively;
    // an `--after-any` one runs anyway.
    let bad = submit(
        &d,
        json!({"type": "dummy", "params": {"steps": 2, "step_ms": 100, "fail_at_step": 2}}),
    );
    let a = submit(
        &d,
        json!({"type": "dummy", "params": quick(), "after": [bad]}),
    );
    let b = submit(
        &d,
        json!({"type": "dummy", "params": quick(), "after": [a]}),
    );
    let any = submit(
        &d,
        json!({"type": "dummy", "params": quick(), "after_any": [bad]}),
    );
    d.wait_status(&bad, "failed", 30);
    for id in [&a, &b] {
        let op = d.wait_status(id, "cancelled", 30);
        assert_eq!(op["stop_reason"], "dependency", "{op}");
        assert!(op["started_at"].is_null(), "{op}");
    }
    d.wait_status(&any, "completed", 30);

    // `--after` an operation that already failed is refused, in words.
    let r = req(
        &d,
        json!({"cmd": "submit", "type": "dummy", "after": [bad]}),
    );
    assert_eq!(r["ok"], false);
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--after-any"),
        "{r}"
    );
}

#[test]
fn cancelling_a_waiting_dependency_cancels_its_dependents() {
    let d = Daemon::start();
    let held = submit(
        &d,
        json!({"type": "dummy", "params": quick(), "hold": true}),
    );
    let next = submit(
        &d,
        json!({"type": "dummy", "params": quick(), "after": [held]}),
    );
    ok(&d, json!({"cmd": "cancel", "id": held}));
    let op = d.wait_status(&next, "cancelled", 10);
    assert_eq!(op["stop_reason"], "dependency", "{op}");
}

#[test]
fn hold_keeps_an_operation_waiting_until_released_across_a_kill_9() {
    let mut d = Daemon::start();
    let id = submit(
        &d,
        json!({"type": "dummy", "params": quick(), "hold": true}),
    );
    let dep = submit(
        &d,
        json!({"type": "dummy", "params": quick(), "after": [id]}),
    );
    // Let a few claim rounds pass: nothing starts.
    let other = submit(&d, json!({"type": "dummy", "params": quick()}));
    d.wait_status(&other, "completed", 30);
    assert_eq!(d.status(&id), "pending");
    assert_eq!(d.get(&id)["held"], true);
    // Hold and dependency are rows: they survive an unclean exit.
    d.kill9();
    d.spawn();
    let other = submit(&d, json!({"type": "dummy", "params": quick()}));
    d.wait_status(&other, "completed", 30);
    assert_eq!(d.status(&id), "pending");
    assert_eq!(d.status(&dep), "pending");
    assert_eq!(d.get(&dep)["waiting_on"], json!([id]));
    ok(&d, json!({"cmd": "release", "id": id}));
    d.wait_status(&id, "completed", 30);
    d.wait_status(&dep, "completed", 30);
    // Releasing what is not held says so.
    let r = req(&d, json!({"cmd": "release", "id": id}));
    assert_eq!(r["ok"], false);
    assert!(
        r["error"]["message"].as_str().unwrap().contains("not held"),
        "{r}"
    );
}

#[test]
fn a_paused_queue_starts_nothing_across_a_restart_and_a_kill_9_and_parallel_caps_it() {
    let mut d = Daemon::start();
    ok(
        &d,
        json!({"cmd": "queue_set", "name": "gpu", "paused": true}),
    );
    let ids: Vec<String> = (0..3)
        .map(|_| {
            submit(
                &d,
                json!({"type": "dummy", "params": {"steps": 4, "step_ms": 150}, "queue": "gpu"}),
            )
        })
        .collect();
    let other = submit(&d, json!({"type": "dummy", "params": quick()}));
    d.wait_status(&other, "completed", 30);
    for id in &ids {
        assert_eq!(d.status(id), "pending");
    }
    // The pause is a row: a clean restart and a kill -9 keep it.
    for unclean in [false, true] {
        if unclean {
            d.kill9();
        } else {
            d.terminate();
        }
        d.spawn();
        let other = submit(&d, json!({"type": "dummy", "params": quick()}));
        d.wait_status(&other, "completed", 30);
        for id in &ids {
            assert_eq!(
                d.status(id),
                "pending",
                "after a restart (kill -9: {unclean})"
            );
        }
    }
    let qs = ok(&d, json!({"cmd": "queues"}));
    let gpu = qs["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "gpu")
        .unwrap()
        .clone();
    assert_eq!(gpu["paused"], true, "{qs}");
    assert_eq!(gpu["waiting"], 3, "{qs}");
    // Capped at 1 and started: they run one at a time.
    ok(
        &d,
        json!({"cmd": "queue_set", "name": "gpu", "parallel": 1}),
    );
    ok(
        &d,
        json!({"cmd": "queue_set", "name": "gpu", "paused": false}),
    );
    let mut most = 0;
    let all_done = wait_until(Duration::from_secs(60), || {
        // One request, so one snapshot of the rows: reading the three
        // statuses one by one could see a run that ended and the one that
        // replaced it in the same commit both `running`.
        let running = ok(
            &d,
            json!({"cmd": "list", "queue": "gpu", "status": ["running"], "limit": 0}),
        )["total"]
            .as_i64()
            .unwrap();
        most = most.max(running);
        ids.iter().all(|id| d.status(id) == "completed")
    });
    assert!(
        all_done,
        "{:?}",
        ids.iter().map(|i| d.status(i)).collect::<Vec<_>>()
    );
    assert_eq!(most, 1, "the cap of 1 was exceeded");
    // Runs did not overlap.
    let mut spans: Vec<(String, String)> = ids
        .iter()
        .map(|id| {
            let op = d.get(id);
            (
                op["started_at"].as_str().unwrap().to_string(),
                op["completed_at"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    spans.sort();
    for w in spans.windows(2) {
        assert!(w[1].0 >= w[0].1, "{spans:?}");
    }
    let bad = req(
        &d,
        json!({"cmd": "queue_set", "name": "gpu", "parallel": 0}),
    );
    assert_eq!(bad["ok"], false, "{bad}");
}

#[test]
fn short_ids_work_wherever_an_id_is_taken() {
    let d = Daemon::start();
    let id = submit(&d, json!({"type": "dummy", "params": quick()}));
    d.wait_status(&id, "completed", 30);
    let tail = &id[id.len() - 8..];
    for text in [tail, &id[..id.len() - 3], "last"] {
        let op = ok(&d, json!({"cmd": "get", "id": text}));
        assert_eq!(op["operation"]["operation_id"], id.as_str(), "{text}");
    }
    let m = ok(&d, json!({"cmd": "metrics", "id": tail}));
    assert!(m["metrics"].is_array());
    // As a dependency too.
    let next = submit(
        &d,
        json!({"type": "dummy", "params": quick(), "after": [tail]}),
    );
    d.wait_status(&next, "completed", 30);
    // An ambiguous prefix lists the candidates.
    let r = req(&d, json!({"cmd": "get", "id": "op_dummy_"}));
    assert_eq!(r["ok"], false);
    let msg = r["error"]["message"].as_str().unwrap();
    assert!(msg.contains(&id) && msg.contains(&next), "{msg}");
    let r = req(&d, json!({"cmd": "get", "id": "zzzz"}));
    assert_eq!(r["error"]["code"], "not_found", "{r}");
}

#[test]
fn rerun_copies_type_parameters_label_and_queue_with_edits() {
    let d = Daemon::start();
    let id = submit(
        &d,
        json!({"type": "dummy", "params": {"steps": 2, "step_ms": 0}, "label": "sweep a", "queue": "night"}),
    );
    d.wait_status(&id, "completed", 30);
    let r = ok(
        &d,
        json!({"cmd": "rerun", "id": "last", "params": {"steps": 3}}),
    );
    let new = r["operation_id"].as_str().unwrap();
    assert_ne!(new, id);
    let op = d.wait_status(new, "completed", 30);
    assert_eq!(op["metadata"]["steps"], 3, "{op}");
    assert_eq!(op["metadata"]["step_ms"], 0, "{op}");
    assert_eq!(op["label"], "sweep a");
    assert_eq!(op["queue"], "night");
    let bad = req(
        &d,
        json!({"cmd": "rerun", "id": id, "params": {"stepz": 3}}),
    );
    assert_eq!(bad["ok"], false);
    assert!(
        bad["error"]["message"].as_str().unwrap().contains("stepz"),
        "{bad}"
    );
}

#[test]
fn clean_deletes_finished_operations_with_their_rows_and_files_never_active_ones() {
    let d = Daemon::start();
    let done = submit(
        &d,
        json!({"type": "command", "params": {"argv": ["sh", "-c", "echo hi"]}}),
    );
    d.wait_status(&done, "completed", 30);
    let failed = submit(
        &d,
        json!({"type": "dummy", "params": {"steps": 1, "step_ms": 0, "fail_at_step": 1}}),
    );
    d.wait_status(&failed, "failed", 30);
    let active = submit(
        &d,
        json!({"type": "dummy", "params": quick(), "hold": true}),
    );
    let log = d.state().join("logs").join(format!("{done}.log"));
    assert!(log.exists());
    // A dry run deletes nothing.
    let r = ok(&d, json!({"cmd": "clean", "dry_run": true}));
    assert_eq!(r["deleted"], 2, "{r}");
    assert_eq!(d.status(&done), "completed");
    // Only failed ones.
    let r = ok(&d, json!({"cmd": "clean", "status": ["failed"]}));
    assert_eq!(r["operations"], json!([failed]), "{r}");
    // Nothing older than an hour.
    let r = ok(&d, json!({"cmd": "clean", "older_than": "1h"}));
    assert_eq!(r["deleted"], 0, "{r}");
    let r = ok(&d, json!({"cmd": "clean"}));
    assert_eq!(r["operations"], json!([done]), "{r}");
    assert!(!log.exists());
    let db = open_db(&d.db());
    let left: i64 = db
        .query_row("SELECT count(*) FROM operations", [], |r| r.get(0))
        .unwrap();
    let points: i64 = db
        .query_row("SELECT count(*) FROM operation_metrics", [], |r| r.get(0))
        .unwrap();
    assert_eq!((left, points), (1, 0));
    assert_eq!(d.status(&active), "pending");
    let r = req(&d, json!({"cmd": "clean", "status": ["running"]}));
    assert_eq!(r["ok"], false, "{r}");
    let r = req(&d, json!({"cmd": "clean", "older_than": "soon"}));
    assert!(
        r["error"]["message"].as_str().unwrap().contains("7d"),
        "{r}"
    );
}

#[test]
fn a_key_reused_with_other_parameters_names_the_first_operation() {
    let d = Daemon::start();
    let a = submit(&d, json!({"type": "dummy", "params": quick(), "key": "k1"}));
    let again = submit(&d, json!({"type": "dummy", "params": quick(), "key": "k1"}));
    assert_eq!(a, again);
    let r = req(
        &d,
        json!({"cmd": "submit", "type": "dummy", "params": {"steps": 5}, "key": "k1"}),
    );
    assert_eq!(r["ok"], false, "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains(&a), "{r}");
}

#[test]
fn user_errors_read_as_sentences() {
    let d = Daemon::start();
    let r = req(&d, json!({"cmd": "list", "status": ["bogus"]}));
    let msg = r["error"]["message"].as_str().unwrap();
    assert!(!msg.contains("unknown variant"), "{msg}");
    assert!(
        msg.contains("\"bogus\" is not a valid value") && msg.contains("pending"),
        "{msg}"
    );
    // Logs of an operation that has none say so.
    let id = submit(&d, json!({"type": "dummy", "params": quick()}));
    let r = req(&d, json!({"cmd": "logs", "id": id}));
    assert_eq!(r["ok"], false, "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("only command operations have logs"),
        "{r}"
    );
}

#[test]
fn on_finish_runs_with_the_outcome_and_its_failure_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("hook.txt");
    let script = format!(
        "echo \"$OPSD_OPERATION_ID $OPSD_STATUS $OPSD_STOP_REASON $OPSD_LABEL\" >> {}; exit 3",
        out.display()
    );
    let cfg = format!(
        "flush_interval_ms = 50\nshutdown_grace_seconds = 10\non_finish = [\"sh\", \"-c\", {}]\n",
        toml_string(&script)
    );
    let d = Daemon::start_with(&cfg);
    let good = submit(
        &d,
        json!({"type": "dummy", "params": quick(), "label": "nightly"}),
    );
    let bad = submit(
        &d,
        json!({"type": "dummy", "params": {"steps": 1, "step_ms": 0, "fail_at_step": 1}}),
    );
    let waiting = submit(
        &d,
        json!({"type": "dummy", "params": quick(), "hold": true}),
    );
    ok(&d, json!({"cmd": "cancel", "id": waiting}));
    d.wait_status(&good, "completed", 30);
    d.wait_status(&bad, "failed", 30);
    let seen = wait_until(Duration::from_secs(20), || {
        std::fs::read_to_string(&out)
            .map(|t| t.lines().count() >= 3)
            .unwrap_or(false)
    });
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    assert!(seen, "{text}");
    assert!(
        text.contains(&format!("{good} completed  nightly")),
        "{text}"
    );
    assert!(text.contains(&format!("{bad} failed error")), "{text}");
    assert!(
        text.contains(&format!("{waiting} cancelled user")),
        "{text}"
    );
    // The hook exited 3: logged, and the operation is still completed.
    assert_eq!(d.status(&good), "completed");
    assert!(
        wait_until(Duration::from_secs(10), || d.log().contains("on_finish")),
        "{}",
        d.log()
    );
}

fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn cli_env(
    d: &Daemon,
    args: &[&str],
    env: &[(&str, &str)],
    cwd: &std::path::Path,
) -> std::process::Output {
    let mut cmd = std::process::Command::new(crate::common::bin());
    // `--socket` first: after `run --` everything is the program's.
    cmd.arg("--socket")
        .arg(&d.socket)
        .args(args)
        .current_dir(cwd);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

#[test]
fn run_takes_the_shell_environment_and_directory_and_shows_the_command() {
    let d = Daemon::start();
    let here = tempfile::tempdir().unwrap();
    let bin = here.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    // A program found only on the PATH this shell prepended.
    let tool = bin.join("my-tool");
    std::fs::write(&tool, "#!/bin/sh\necho \"tool $MYVAR in $(pwd)\"\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let o = cli_env(
        &d,
        &["run", "--label", "nightly", "--", "my-tool", "--flag"],
        &[("MYVAR", "x42"), ("PATH", &path)],
        here.path(),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let id = stdout(&o);
    let op = d.wait_status(&id, "completed", 30);
    assert_eq!(op["metadata"]["argv"], json!(["my-tool", "--flag"]));
    let log = std::fs::read_to_string(d.state().join("logs").join(format!("{id}.log"))).unwrap();
    let dir = here.path().canonicalize().unwrap();
    assert!(
        log.contains(&format!("tool x42 in {}", dir.display())),
        "{log}"
    );
    // `--no-env`: the daemon's environment (no MYVAR there).
    let o = cli_env(
        &d,
        &["run", "--no-env", "--", "sh", "-c", "echo \"[$MYVAR]\""],
        &[("MYVAR", "x42")],
        here.path(),
    );
    let id2 = stdout(&o);
    d.wait_status(&id2, "completed", 30);
    let log = std::fs::read_to_string(d.state().join("logs").join(format!("{id2}.log"))).unwrap();
    assert!(log.contains("[]"), "{log}");
    // `list` shows the label, and the command line when there is none.
    let o = cli_env(
        &d,
        &["list"],
        &[("COLUMNS", "80"), ("NO_COLOR", "1")],
        here.path(),
    );
    let text = stdout(&o);
    assert!(text.contains("nightly"), "{text}");
    assert!(text.contains("sh -c"), "{text}");
    assert!(text.contains(&id[id.len() - 8..]), "{text}");
    // `show` has the command too.
    let o = d.cli(&["show", &id[id.len() - 8..]]);
    assert!(stdout(&o).contains("my-tool"), "{}", stdout(&o));
}

#[test]
fn list_fits_80_columns_and_says_why_operations_wait() {
    let d = Daemon::start();
    let long = "x".repeat(150);
    let running = submit(
        &d,
        json!({"type": "command", "params": {"argv": ["sh", "-c", format!("sleep 30 # {long}")]}}),
    );
    d.wait_status(&running, "running", 30);
    let held = submit(
        &d,
        json!({"type": "dummy", "params": quick(), "hold": true, "label": long}),
    );
    let after = submit(
        &d,
        json!({"type": "dummy", "params": quick(), "after": [running]}),
    );
    let later = submit(
        &d,
        json!({"type": "dummy", "params": quick(), "run_after": "2h"}),
    );
    ok(
        &d,
        json!({"cmd": "queue_set", "name": "slow", "paused": true}),
    );
    let paused = submit(
        &d,
        json!({"type": "dummy", "params": quick(), "queue": "slow"}),
    );
    let here = tempfile::tempdir().unwrap();
    let o = cli_env(
        &d,
        &["list"],
        &[("COLUMNS", "80"), ("NO_COLOR", "1")],
        here.path(),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    for line in text.lines() {
        assert!(
            line.chars().count() <= 80,
            "{} columns: {line:?}\n{text}",
            line.chars().count()
        );
    }
    let line_of = |id: &str| {
        text.lines()
            .find(|l| l.contains(&id[id.len() - 8..]))
            .unwrap_or_else(|| panic!("{id} not listed:\n{text}"))
            .to_string()
    };
    assert!(line_of(&held).contains("held"), "{text}");
    assert!(
        line_of(&after).contains(&format!("after {}", &running[running.len() - 8..])),
        "{text}"
    );
    assert!(line_of(&later).contains("not before"), "{text}");
    assert!(line_of(&paused).contains("queue slow paused"), "{text}");
    assert!(!text.contains('\u{1b}'), "NO_COLOR: {text:?}");
    // `--wide` shows full ids.
    let o = cli_env(
        &d,
        &["list", "--wide"],
        &[("COLUMNS", "80"), ("NO_COLOR", "1")],
        here.path(),
    );
    assert!(stdout(&o).contains(&held), "{}", stdout(&o));
    ok(&d, json!({"cmd": "cancel", "id": running}));
}

#[test]
fn wait_exits_0_when_all_completed_and_1_otherwise() {
    let d = Daemon::start();
    let a = submit(
        &d,
        json!({"type": "dummy", "params": {"steps": 2, "step_ms": 100}}),
    );
    let b = submit(&d, json!({"type": "dummy", "params": quick()}));
    let o = d.cli(&["wait", &a[a.len() - 8..], &b]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(d.status(&a), "completed");
    let bad = submit(
        &d,
        json!({"type": "dummy", "params": {"steps": 1, "step_ms": 0, "fail_at_step": 1}}),
    );
    let o = d.cli(&["wait", &a, &bad]);
    assert_eq!(o.status.code(), Some(1));
    // A timeout ends the wait with 1 and says what is left.
    let held = submit(
        &d,
        json!({"type": "dummy", "params": quick(), "hold": true}),
    );
    let o = d.cli(&["wait", "last", "--timeout", "300ms"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("timed out") && err.contains(&held), "{err}");
}

#[test]
fn the_cli_drives_hold_release_queue_rerun_and_clean() {
    let d = Daemon::start();
    let o = d.cli(&[
        "submit",
        "dummy",
        "-p",
        "steps=1",
        "-p",
        "step_ms=0",
        "--hold",
        "--label",
        "h",
    ]);
    let id = stdout(&o);
    assert_eq!(d.get(&id)["held"], true);
    let o = d.cli(&["release", &id[id.len() - 8..]]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    d.wait_status(&id, "completed", 30);
    let o = d.cli(&["rerun", "last", "-p", "steps=2"]);
    let new = stdout(&o);
    let op = d.wait_status(&new, "completed", 30);
    assert_eq!(
        (op["metadata"]["steps"].clone(), op["label"].clone()),
        (json!(2), json!("h"))
    );
    assert!(d.cli(&["queue", "pause", "q1"]).status.success());
    assert!(d
        .cli(&["queue", "set", "q1", "--parallel", "2"])
        .status
        .success());
    let o = d.cli(&["queue", "list", "--json"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let q = v["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "q1")
        .unwrap();
    assert_eq!(
        (q["paused"].clone(), q["parallel"].clone()),
        (json!(true), json!(2))
    );
    let o = d.cli(&[
        "submit",
        "dummy",
        "--queue",
        "q1",
        "-p",
        "steps=1",
        "-p",
        "step_ms=0",
    ]);
    let queued = stdout(&o);
    assert!(d.cli(&["queue", "start", "q1"]).status.success());
    d.wait_status(&queued, "completed", 30);
    let o = d.cli(&["clean", "--dry-run"]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("would delete 3"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = d.cli(&["clean"]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("deleted 3"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // An unknown status is a sentence, exit 2.
    let o = d.cli(&["list", "--status", "bogus"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("bogus") && err.contains("completed") && !err.contains("variant"),
        "{err}"
    );
}

#[test]
fn global_flags_go_before_or_after_the_subcommand() {
    let d = Daemon::start();
    let sock = d.socket.display().to_string();
    let o = std::process::Command::new(crate::common::bin())
        .args(["--json", "--socket", &sock, "list"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["operations"].is_array(), "{v}");
}

#[test]
fn completions_and_man_page_are_generated() {
    for shell in ["bash", "zsh", "fish"] {
        let o = std::process::Command::new(crate::common::bin())
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(o.status.success(), "{shell}");
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(
            text.contains("opsd") && text.contains("rerun"),
            "{shell}: {text}"
        );
    }
    let o = std::process::Command::new(crate::common::bin())
        .arg("man")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && text.starts_with(".ie") || text.contains(".TH opsd"),
        "{text}"
    );
}

#[test]
fn watch_follows_an_operation_across_a_daemon_restart() {
    let mut d = Daemon::start();
    let id = submit(
        &d,
        json!({"type": "dummy", "params": {"steps": 30, "step_ms": 100}}),
    );
    d.wait_status(&id, "running", 30);
    let mut watcher = std::process::Command::new(crate::common::bin())
        .args(["watch", &id[id.len() - 8..], "--socket"])
        .arg(&d.socket)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    d.terminate();
    d.spawn();
    let status = crate::common::wait_child(&mut watcher, Duration::from_secs(60));
    let mut err = String::new();
    use std::io::Read;
    watcher
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(0), "{err}");
    assert_eq!(d.status(&id), "completed");
}
