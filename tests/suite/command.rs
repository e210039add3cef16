//! `command` jobs: the user's own program under opsd (issue 4). The
//! program is `examples/train_toy.py` (python3, standard library only).

use crate::common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn toy() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/train_toy.py")
        .display()
        .to_string()
}

/// `argv` running the toy script with these flags.
fn toy_argv(flags: &[&str]) -> Value {
    let mut argv = vec!["python3".to_string(), toy()];
    argv.extend(flags.iter().map(|s| s.to_string()));
    json!(argv)
}

fn submit_toy(d: &Daemon, flags: &[&str], extra: Value) -> String {
    let mut params = json!({ "argv": toy_argv(flags) });
    if let Value::Object(m) = extra {
        for (k, v) in m {
            params[k] = v;
        }
    }
    d.submit("command", params)
}

/// Gone, or a zombie waiting for init: not running either way.
fn is_dead(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s
            .rsplit(')')
            .next()
            .map(|r| r.trim_start().starts_with('Z'))
            .unwrap_or(false),
    }
}

fn metric_data(d: &Daemon, id: &str) -> Vec<Value> {
    d.metrics(id).iter().map(|m| m["data"].clone()).collect()
}

fn seqs(d: &Daemon, id: &str) -> Vec<i64> {
    d.metrics(id)
        .iter()
        .map(|m| m["seq"].as_i64().unwrap_or(-1))
        .collect()
}

/// The GPUs assigned to a running operation (recorded just after its claim).
fn wait_gpus(d: &Daemon, id: &str) -> Value {
    let mut last = Value::Null;
    let ok = wait_until(Duration::from_secs(20), || {
        last = d.get(id);
        last["status"] == "running" && last["gpus_assigned"].is_array()
    });
    assert!(ok, "{id} got no GPUs: {last}");
    last["gpus_assigned"].clone()
}

fn expected_losses(epochs: i64) -> Vec<Value> {
    (1..=epochs)
        .map(|e| {
            let loss = (1.0 / e as f64 * 1e6).round() / 1e6;
            json!({ "epoch": e, "loss": loss })
        })
        .collect()
}

#[test]
fn command_progress_metrics_and_logs_through_the_cli() {
    let d = Daemon::start();
    let id = submit_toy(&d, &["--epochs", "5", "--step-ms", "20"], json!({}));
    assert!(id.starts_with("op_command_"), "{id}");
    let op = d.wait_status(&id, "completed", 30);
    assert_eq!(op["progress_percent"], 100.0);
    assert_eq!(op["steps_completed"], 5);
    assert_eq!(op["progress_message"], "Epoch 5/5");
    assert_eq!(op["progress_context"]["epoch"], 5);
    assert_eq!(op["result_summary"]["exit_code"], 0);
    assert_eq!(op["result_summary"]["epochs"], 5);

    let out = d.cli(&["metrics", &id, "--json"]);
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).expect("metrics --json");
    let data: Vec<Value> = v["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["data"].clone())
        .collect();
    assert_eq!(data, expected_losses(5));
    assert_eq!(v["cursor"], 5);

    let out = d.cli(&["show", &id, "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).expect("show --json");
    assert_eq!(v["status"], "completed");

    let out = d.cli(&["logs", &id]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(text.contains("epoch 5 loss 0.2"), "{text}");
    assert!(
        text.contains("==> opsd: the program exited with code 0"),
        "{text}"
    );
    assert!(
        text.starts_with("==> opsd: attempt 1 starting: "),
        "the attempt's line comes first: {text}"
    );
}

#[test]
fn a_program_that_prints_nothing_leaves_no_log_file() {
    // Creating a file is a large part of a short job's cost, so a silent
    // job's log is never made; `opsd logs` says it has printed nothing.
    let d = Daemon::start();
    let id = d.submit("command", json!({ "argv": ["true"] }));
    d.wait_status(&id, "completed", 20);
    let log = d.state().join("logs").join(format!("{id}.log"));
    assert!(!log.exists(), "{} exists", log.display());
    let out = d.cli(&["logs", &id]);
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("has printed nothing"), "{err}");
    let out = d.cli(&["logs", &id, "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).expect("logs --json");
    assert_eq!(v["text"], "");
    // A silent program that fails still has its reason where users look.
    let id = d.submit("command", json!({ "argv": ["false"] }));
    let op = d.wait_status(&id, "failed", 20);
    assert!(op["error_message"].to_string().contains("exit"), "{op}");
}

#[test]
fn command_bad_parameters_are_refused_at_submit_naming_the_key() {
    let d = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("train.py");
    std::fs::write(&plain, "print('hi')\n").unwrap();
    let cases = [
        (json!({}), "argv"),
        (json!({ "argv": [] }), "argv must not be empty"),
        (json!({ "argv": ["/no/such/program"] }), "argv[0]"),
        (json!({ "argv": ["no-such-program-opsd-test"] }), "argv[0]"),
        (
            json!({ "argv": [plain.display().to_string()] }),
            "not executable",
        ),
        (json!({ "argv": ["true"], "cwd": "/no/such/dir" }), "cwd"),
        (json!({ "argv": ["true"], "env": { "X": 1 } }), "env.X"),
        (
            json!({ "argv": ["true"], "grace_seconds": -2 }),
            "grace_seconds",
        ),
        (json!({ "argv": ["true"], "timeout": 5 }), "timeout"),
    ];
    for (params, needle) in cases {
        let r = d.req(Submit::new("command", params.clone()));
        assert_eq!(r["ok"], false, "{params} was accepted");
        let msg = r["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(needle), "{params}: {msg:?} lacks {needle:?}");
    }
}

#[test]
fn command_cancel_checkpoints_and_resume_finishes_from_the_state() {
    let d = Daemon::start();
    let id = submit_toy(
        &d,
        &[
            "--epochs",
            "12",
            "--step-ms",
            "100",
            "--checkpoint-every",
            "0",
        ],
        json!({}),
    );
    assert!(wait_until(Duration::from_secs(30), || d.metrics(&id).len() >= 3));
    d.ok(Request::cancel(&id));
    let op = d.wait_status(&id, "cancelled", 30);
    assert_eq!(op["stop_reason"], "user");
    let cps = d.ok(Request::checkpoints(Some(id_of(&id))));
    let cp = &cps["checkpoints"][0];
    assert_eq!(cp["checkpoint_type"], "cancellation", "{cps}");
    let epoch = cp["state"]["script_state"]["epoch"]
        .as_i64()
        .expect("epoch in the checkpoint");
    assert!((3..12).contains(&epoch), "{cp}");
    assert_eq!(
        d.metrics(&id).len() as i64,
        epoch,
        "points match the checkpoint"
    );
    let weights = cp["artifacts_path"].as_str().expect("weights file");
    assert!(Path::new(weights).exists());
    let log = String::from_utf8_lossy(&d.cli(&["logs", &id]).stdout).to_string();
    assert!(
        log.contains(&format!("SIGTERM: checkpointing epoch {epoch}")),
        "{log}"
    );

    d.ok(Request::resume(&id));
    let op = d.wait_status(&id, "completed", 30);
    assert_eq!(op["attempt"], 2);
    assert_eq!(op["result_summary"]["resumed_from"], epoch);
    // The weights came back through OPSD_RESUME_CHECKPOINT: same final
    // value as an uninterrupted run (w = w/2 + epoch over 12 epochs).
    let w = (1..=12).fold(0.0f64, |w, e| w * 0.5 + e as f64);
    assert_eq!(op["result_summary"]["weights"], w);
    assert_eq!(metric_data(&d, &id), expected_losses(12));
    assert_eq!(seqs(&d, &id), (1..=12).collect::<Vec<_>>());
    let log = String::from_utf8_lossy(&d.cli(&["logs", &id]).stdout).to_string();
    assert!(
        log.contains(&format!(
            "starting at epoch {} of 12 (attempt 2)",
            epoch + 1
        )),
        "{log}"
    );
}

#[test]
fn command_ignoring_sigterm_is_killed_after_the_grace_with_its_grandchild() {
    let d = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let (pid_file, gc_file) = (dir.path().join("pid"), dir.path().join("gc"));
    let pid_s = pid_file.display().to_string();
    let gc_s = gc_file.display().to_string();
    let id = submit_toy(
        &d,
        &[
            "--epochs",
            "100000",
            "--ignore-sigterm",
            "--pid-file",
            &pid_s,
            "--grandchild-pid-file",
            &gc_s,
        ],
        json!({ "grace_seconds": 1 }),
    );
    let pid = read_pid(&pid_file);
    let gc = read_pid(&gc_file);
    assert!(!is_dead(pid) && !is_dead(gc));
    let asked = Instant::now();
    d.ok(Request::Cancel {
        id: id_of(&id),
        reason: None,
        wait_ms: Some(0),
    });
    let op = d.wait_status(&id, "cancelled", 30);
    let took = asked.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "killed before the grace: {took:?}"
    );
    assert!(is_dead(pid), "the program survived");
    assert!(is_dead(gc), "the grandchild survived");
    let warnings = op["warnings"].to_string();
    assert!(warnings.contains("SIGKILL"), "{warnings}");
}

#[test]
fn command_grandchild_dies_with_a_program_that_obeys_sigterm() {
    let d = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let gc_file = dir.path().join("gc");
    let gc_s = gc_file.display().to_string();
    let id = submit_toy(
        &d,
        &["--epochs", "100000", "--grandchild-pid-file", &gc_s],
        json!({ "grace_seconds": 20 }),
    );
    let gc = read_pid(&gc_file);
    d.ok(Request::cancel(&id));
    d.wait_status(&id, "cancelled", 15);
    // The grandchild ignores SIGTERM; it goes with its parent, well
    // before the 20 s grace.
    assert!(
        wait_until(Duration::from_secs(5), || is_dead(gc)),
        "grandchild {gc} still running"
    );
}

#[test]
fn command_nonzero_exit_fails_with_the_code_and_stderr_tail() {
    let d = Daemon::start();
    let id = submit_toy(
        &d,
        &[
            "--epochs",
            "5",
            "--step-ms",
            "10",
            "--fail-code",
            "3",
            "--fail-at",
            "2",
        ],
        json!({}),
    );
    let op = d.wait_status(&id, "failed", 30);
    assert_eq!(op["stop_reason"], "error");
    let msg = op["error_message"].as_str().unwrap_or_default();
    assert!(msg.contains("exited with code 3"), "{msg}");
    assert!(
        msg.contains("RuntimeError: simulated failure at epoch 2"),
        "{msg}"
    );
    assert_eq!(d.metrics(&id).len(), 1);
}

#[test]
fn command_killed_by_a_signal_says_so() {
    let d = Daemon::start();
    let id = d.submit(
        "command",
        json!({ "argv": ["sh", "-c", "echo dying >&2; kill -9 $$"] }),
    );
    let op = d.wait_status(&id, "failed", 30);
    let msg = op["error_message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("killed by signal SIGKILL (9)") && msg.contains("dying"),
        "{msg}"
    );
}

#[test]
fn command_program_that_cannot_start_fails_clearly() {
    let d = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    // Executable, but its interpreter does not exist.
    let bad = dir.path().join("not-a-program");
    std::fs::write(&bad, "#!/no/such/interpreter\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o755)).unwrap();
    let id = d.submit("command", json!({ "argv": [bad.display().to_string()] }));
    let op = d.wait_status(&id, "failed", 30);
    let msg = op["error_message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("cannot start the program") && msg.contains("not-a-program"),
        "{msg}"
    );
    assert!(msg.contains("interpreter"), "{msg}");
}

#[test]
fn command_lots_of_stdout_keeps_memory_flat_and_the_log_capped() {
    let cap: u64 = 4 * 1024 * 1024;
    let d = Daemon::start_with(&format!("flush_interval_ms = 50\nlog_max_bytes = {cap}\n"));
    let pid = d.child.as_ref().map(|c| c.id()).unwrap_or_default();
    // Warm up (first job, threads, SQLite cache) before the baseline.
    let warm = submit_toy(&d, &["--epochs", "1", "--step-ms", "1"], json!({}));
    d.wait_status(&warm, "completed", 30);
    let before = rss_kib(pid);
    let id = submit_toy(
        &d,
        &["--epochs", "1", "--step-ms", "1", "--spew-mb", "200"],
        json!({}),
    );
    let mut peak = before;
    let done = wait_until(Duration::from_secs(60), || {
        peak = peak.max(rss_kib(pid));
        d.get(&id)["status"] == "completed"
    });
    assert!(done, "{}", d.get(&id));
    let log = d.state().join("logs").join(format!("{id}.log"));
    let rotated = d.state().join("logs").join(format!("{id}.log.1"));
    let (len, len1) = (
        std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0),
        std::fs::metadata(&rotated).map(|m| m.len()).unwrap_or(0),
    );
    assert!(len <= cap && len > 0, "log {len} bytes");
    assert_eq!(len1, cap, "rotated log");
    assert!(
        peak < before + 24 * 1024,
        "daemon RSS grew from {before} KiB to {peak} KiB while copying 200 MiB"
    );
}

#[test]
fn command_malformed_progress_lines_become_warnings() {
    let d = Daemon::start();
    let id = submit_toy(
        &d,
        &["--epochs", "3", "--step-ms", "10", "--malformed"],
        json!({}),
    );
    let op = d.wait_status(&id, "completed", 30);
    let w: Vec<String> = op["warnings"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|v| v.to_string())
        .collect();
    assert_eq!(w.len(), 3, "{w:?}");
    assert!(
        w[0].contains("not JSON") && w[0].contains("this is not json"),
        "{w:?}"
    );
    assert!(w[1].contains("progress"), "{w:?}");
    assert!(w[2].contains("metrc"), "{w:?}");
    assert_eq!(metric_data(&d, &id), expected_losses(3));
}

#[test]
fn command_gpus_are_exclusive_and_the_third_job_waits() {
    let d = Daemon::start_with("flush_interval_ms = 50\ngpus = [\"0\", \"1\"]\n");
    let dir = tempfile::tempdir().unwrap();
    let release: Vec<PathBuf> = (0..3).map(|i| dir.path().join(format!("go{i}"))).collect();
    let ids: Vec<String> = release
        .iter()
        .map(|f| {
            let f = f.display().to_string();
            let params = json!({ "argv": toy_argv(&["--epochs", "1", "--step-ms", "1", "--wait-file", &f]) });
            let r = d.ok(Submit { gpus: 1, ..Submit::new("command", params) });
            r["operation_id"].as_str().unwrap_or_default().to_string()
        })
        .collect();
    let a = wait_gpus(&d, &ids[0]);
    let b = wait_gpus(&d, &ids[1]);
    assert_ne!(a, b);
    // Both GPUs are held: the third waits.
    assert_eq!(d.status(&ids[2]), "pending");
    std::fs::write(&release[0], "").unwrap();
    let first = d.wait_status(&ids[0], "completed", 20);
    assert_eq!(wait_gpus(&d, &ids[2]), a, "the third gets the freed GPU");
    std::fs::write(&release[1], "").unwrap();
    std::fs::write(&release[2], "").unwrap();
    let second = d.wait_status(&ids[1], "completed", 20);
    let third = d.wait_status(&ids[2], "completed", 20);
    let cvd = |op: &Value| {
        op["result_summary"]["cuda_visible_devices"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(cvd(&first), a[0].as_str().unwrap_or("?"));
    assert_eq!(cvd(&second), b[0].as_str().unwrap_or("?"));
    assert_eq!(cvd(&third), cvd(&first));
    assert_ne!(cvd(&first), cvd(&second));
}

#[test]
fn command_gpu_usage_is_sampled_into_the_progress_context() {
    let dir = tempfile::tempdir().unwrap();
    let smi = dir.path().join("nvidia-smi");
    std::fs::write(
        &smi,
        "#!/bin/sh\necho '0, 35, 1024, 81559'\necho '1, 99, 80000, 81559'\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&smi, std::fs::Permissions::from_mode(0o755)).unwrap();
    let d = Daemon::start_with(&format!(
        "flush_interval_ms = 50\ngpus = [\"0\", \"1\"]\nnvidia_smi = \"{}\"\ngpu_sample_interval_ms = 100\n",
        smi.display()
    ));
    let go = dir.path().join("go");
    let params = json!({ "argv": toy_argv(&["--epochs", "2", "--step-ms", "100", "--wait-file", &go.display().to_string()]) });
    let r = d.ok(Submit {
        gpus: 1,
        ..Submit::new("command", params)
    });
    let id = r["operation_id"].as_str().unwrap_or_default().to_string();
    let mut last = Value::Null;
    assert!(
        wait_until(Duration::from_secs(20), || {
            last = d.get(&id);
            last["progress_context"]["gpu_usage"].is_array()
        }),
        "{last}"
    );
    assert_eq!(
        last["progress_context"]["gpu_usage"],
        json!([{ "gpu": "0", "utilization_percent": 35.0, "memory_used_mib": 1024.0, "memory_total_mib": 81559.0 }])
    );
    std::fs::write(&go, "").unwrap();
    let op = d.wait_status(&id, "completed", 20);
    // The script's own context and the samples live side by side.
    assert_eq!(op["progress_context"]["epoch"], 2);
    assert!(op["progress_context"]["gpu_usage"].is_array(), "{op}");
}

#[test]
fn command_daemon_restart_mid_job_neither_loses_nor_duplicates_metrics() {
    let flags = [
        "--epochs",
        "30",
        "--step-ms",
        "60",
        "--checkpoint-every",
        "4",
    ];
    let d = Daemon::start();
    let straight = submit_toy(&d, &flags, json!({}));
    d.wait_status(&straight, "completed", 60);
    let reference = metric_data(&d, &straight);
    assert_eq!(reference, expected_losses(30));

    let mut d = d;
    let id = submit_toy(&d, &flags, json!({}));
    // Past a periodic checkpoint, between two others.
    assert!(wait_until(Duration::from_secs(30), || d.metrics(&id).len() >= 6));
    assert!(d.terminate().success(), "{}", d.log());
    d.spawn();
    let op = d.wait_status(&id, "completed", 60);
    assert_eq!(op["attempt"], 2, "{op}");
    let resumed_from = op["result_summary"]["resumed_from"].as_i64().unwrap_or(0);
    assert!(
        resumed_from >= 6,
        "resumed from the shutdown checkpoint, not a periodic one: {op}"
    );
    assert_eq!(metric_data(&d, &id), reference);
    assert_eq!(seqs(&d, &id), (1..=30).collect::<Vec<_>>());
}

/// The program is the daemon's own child (started in the helper's place,
/// not under it) and dies with the daemon on a kill -9 instead of running
/// on unsupervised; the restart records the crash.
#[test]
fn a_program_dies_with_the_daemon_on_kill_9() {
    let mut d = Daemon::start();
    let pid_file = d.state().join("program.pid");
    let id = d.submit(
        "command",
        json!({ "argv": ["sh", "-c", format!("echo $$ > {}; exec sleep 60", pid_file.display())] }),
    );
    let mut pid = 0;
    assert!(
        wait_until(Duration::from_secs(20), || {
            pid = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
            pid > 0
        }),
        "the program never started"
    );
    let daemon = d.child.as_ref().unwrap().id() as i32;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let ppid: i32 = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(ppid, daemon, "the program's parent is the daemon: {stat}");
    d.kill9();
    assert!(
        wait_until(Duration::from_secs(5), || is_dead(pid)),
        "the program {pid} outlived the daemon"
    );
    d.spawn();
    let op = d.wait_status(&id, "failed", 20);
    assert_eq!(op["stop_reason"], "crash", "{op}");
}

#[test]
fn every_run_gets_an_empty_checkpoint_directory_and_finished_ones_leave_none() {
    // A finished run's empty directory is kept for the next run (no mkdir
    // or rmdir per job); one with files is removed with them. Either way
    // each run finds its own directory existing and empty, and nothing
    // of a finished operation stays under `checkpoints/`.
    let d = Daemon::start();
    let sh = |script: &str| d.submit("command", json!({"argv": ["sh", "-c", script]}));
    let check = "test -d \"$OPSD_CHECKPOINT_DIR\" && test -z \"$(ls -A \"$OPSD_CHECKPOINT_DIR\")\" \
                 && case \"$OPSD_CHECKPOINT_DIR\" in */\"$OPSD_OPERATION_ID\") ;; *) exit 9 ;; esac";
    for round in 0..3 {
        let writer = sh(&format!(
            "{check} && echo weights > \"$OPSD_CHECKPOINT_DIR/model.pt\""
        ));
        assert_eq!(
            d.wait_status(&writer, "completed", 30)["status"],
            "completed"
        );
        let empty = sh(check);
        let op = d.wait_status(&empty, "completed", 30);
        assert_eq!(op["status"], "completed", "round {round}: {op}");
    }
    let root = d.state().join("checkpoints");
    let left = || -> Vec<String> {
        std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .filter(|n| n.starts_with("op_"))
            .collect()
    };
    // The last one's directory goes just after its row is committed.
    wait_until(Duration::from_secs(10), || left().is_empty());
    assert!(
        left().is_empty(),
        "finished operations' directories remain: {:?}",
        left()
    );
    let spares: Vec<PathBuf> = std::fs::read_dir(root.join(".spare"))
        .map(|r| r.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    assert!(!spares.is_empty(), "an empty directory was kept for reuse");
    for s in &spares {
        assert_eq!(
            std::fs::read_dir(s).unwrap().count(),
            0,
            "{} is not empty",
            s.display()
        );
    }
}
