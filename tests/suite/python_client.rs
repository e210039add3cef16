//! `clients/python/opsd_client.py` against the real daemon: python3
//! scripts drive it as a notebook would.

use crate::common::*;
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;

/// Run `script` with the client on `PYTHONPATH`, in `cwd`, with `env`;
/// returns stdout (panics with stderr when it fails).
fn python(script: &str, cwd: &Path, env: &[(&str, &str)]) -> String {
    let clients = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/python");
    let mut cmd = Command::new("python3");
    cmd.arg("-c")
        .arg(script)
        .current_dir(cwd)
        .env("PYTHONPATH", clients)
        .env_remove("OPSD_SOCKET");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("python3 runs");
    assert!(
        out.status.success(),
        "python failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn a_learning_rate_sweep_from_python() {
    let d = Daemon::start();
    let socket = d.socket.display().to_string();
    // Relative data paths are made absolute from the script's directory.
    let data_dir = data("GOOG.csv").parent().unwrap().to_path_buf();
    let out = python(
        r#"
import json
from opsd_client import Client
c = Client()   # $OPSD_SOCKET
ids = {lr: c.submit("training", {"data": "GOOG.csv", "epochs": 4, "learning_rate": lr, "seed": 7})
       for lr in (0.0003, 0.001, 0.003)}
final = {}
for lr, i in ids.items():
    op = c.wait(i, timeout=120)
    assert op["status"] == "completed", op
    points, cursor = c.metrics(i)
    assert len(points) == 4 and cursor == points[-1]["seq"], (points, cursor)
    again, same = c.metrics(i, cursor)
    assert again == [] and same == cursor
    final[str(lr)] = points[-1]["data"]["val_loss"]
listed = {o["operation_id"] for o in c.list(type="training", status="completed")}
assert listed == set(ids.values()), listed
print(json.dumps({"ids": {str(k): v for k, v in ids.items()}, "final": final}))
"#,
        &data_dir,
        &[("OPSD_SOCKET", &socket)],
    );
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    for lr in ["0.0003", "0.001", "0.003"] {
        let id = v["ids"][lr].as_str().unwrap();
        let op = d.get(id);
        assert_eq!(op["status"], "completed");
        assert_eq!(op["metadata"]["learning_rate"].to_string(), lr);
        let last = d.metrics(id).last().unwrap()["data"]["val_loss"].clone();
        assert_eq!(v["final"][lr], last, "the client read the daemon's points");
    }
}

#[test]
fn run_cancel_resume_wait_and_errors_with_codes() {
    let d = Daemon::start();
    let work = tempfile::tempdir().unwrap();
    let out = python(
        r#"
import os, sys, json
from opsd_client import Client, OpsdError
c = Client(socket=sys.argv[1] if len(sys.argv) > 1 else os.environ["SOCK"])
# run: this process's directory and environment.
i = c.run([sys.executable, "-c", "import os; print(os.environ['H5_MARK'], os.getcwd())"])
op = c.wait(i, timeout=60)
assert op["status"] == "completed", op
assert op["metadata"]["env"]["H5_MARK"] == "marked-42"
assert op["metadata"]["cwd"] == os.getcwd()
log = c.request("logs", id=i)["text"]
assert "marked-42 " + os.getcwd() in log.splitlines(), log
# Errors carry the server's code.
for call, code in [(lambda: c.get("op_dummy_19700101_000000_00000000"), "not_found"),
                   (lambda: c.submit("nosuchtype", {}), "bad_request"),
                   (lambda: c.resume(i), None)]:
    try:
        call()
        raise SystemExit("no error")
    except OpsdError as e:
        assert code is None or e.code == code, (e.code, str(e))
        assert e.code and e.message
# wait with a timeout, cancel, resume, wait.
slow = c.submit("dummy", {"steps": 200, "step_ms": 50})
try:
    c.wait(slow, timeout=0.3)
    raise SystemExit("no timeout")
except TimeoutError:
    pass
import time
while c.get(slow)["status"] != "running":
    time.sleep(0.01)
r = c.cancel(slow)
assert r["previous_status"] == "running", r
assert c.wait(slow, timeout=30)["status"] == "cancelled"
assert c.resume(slow)["status"] == "resuming"
c.cancel(slow)
assert c.wait(slow, timeout=30)["status"] == "cancelled"
try:
    Client(socket="/nonexistent/opsd.sock").health()
    raise SystemExit("reached nothing")
except OpsdError as e:
    assert e.code == "unreachable" and "opsd serve" in e.message
print(json.dumps({"run": i, "slow": slow}))
"#,
        work.path(),
        &[
            ("SOCK", &d.socket.display().to_string()),
            ("H5_MARK", "marked-42"),
        ],
    );
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    let slow = d.get(v["slow"].as_str().unwrap());
    assert_eq!(slow["status"], "cancelled");
    assert!(slow["attempt"].as_i64().unwrap() >= 1);
    let run = d.get(v["run"].as_str().unwrap());
    assert_eq!(run["operation_type"], "command");
    let cwd = std::fs::canonicalize(work.path()).unwrap();
    assert_eq!(run["metadata"]["cwd"], json!(cwd.display().to_string()));
}

#[test]
fn the_default_socket_is_the_clis() {
    // Without OPSD_SOCKET: $XDG_RUNTIME_DIR/opsd.sock, else the state dir's.
    let out = python(
        r#"
import os
from opsd_client import default_socket_path
print(default_socket_path())
os.environ.pop("XDG_RUNTIME_DIR"); os.environ.pop("RUNTIME_DIRECTORY", None)
os.environ["OPSD_STATE_DIR"] = "/srv/opsd"
print(default_socket_path())
os.environ["OPSD_SOCKET"] = "/x/y.sock"
print(default_socket_path())
"#,
        Path::new("/"),
        &[("XDG_RUNTIME_DIR", "/run/user/1234")],
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "/run/user/1234/opsd.sock",
            "/srv/opsd/opsd.sock",
            "/x/y.sock"
        ]
    );
}
