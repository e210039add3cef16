//! The socket under abuse: every bad input gets an error response and the
//! daemon keeps serving. Also the socket file's mode and stale handling.

use crate::common::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::time::Duration;

fn raw(socket: &std::path::Path, bytes: &[u8]) -> Vec<Value> {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(bytes).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut out = String::new();
    BufReader::new(s).read_to_string(&mut out).unwrap();
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn assert_error(v: &Value, code: &str) {
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["error"]["code"], code, "{v}");
    assert!(!v["error"]["message"].as_str().unwrap().is_empty());
}

#[test]
fn bad_input_gets_errors_and_the_daemon_keeps_serving() {
    let d = Daemon::start();
    // Random bytes (invalid UTF-8 and JSON) on one line.
    let mut junk: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .filter(|b| *b != b'\n')
        .collect();
    junk.push(b'\n');
    let r = raw(&d.socket, &junk);
    assert_eq!(r.len(), 1);
    assert_error(&r[0], "bad_request");
    // A 2 MiB line: too_large, then the next line on the same connection still works.
    let mut big = vec![b'x'; 2 * 1024 * 1024];
    big.push(b'\n');
    big.extend_from_slice(b"{\"cmd\":\"health\"}\n");
    let r = raw(&d.socket, &big);
    assert_eq!(r.len(), 2, "{r:?}");
    assert_error(&r[0], "too_large");
    assert_eq!(r[1]["ok"], true);
    // Invalid JSON, an unknown command, a missing cmd, wrong field types.
    for (line, code) in [
        ("{not json", "bad_request"),
        ("{\"cmd\":\"launch_rockets\"}", "bad_request"),
        ("{\"id\":\"x\"}", "bad_request"),
        ("[1,2,3]", "bad_request"),
        ("{\"cmd\":\"get\",\"id\":42}", "bad_request"),
        (
            "{\"cmd\":\"submit\",\"type\":\"dummy\",\"priority\":\"high\"}",
            "bad_request",
        ),
        ("{\"cmd\":\"list\",\"limit\":\"ten\"}", "bad_request"),
        (
            "{\"cmd\":\"metrics\",\"id\":\"op_x\",\"cursor\":-5}",
            "not_found",
        ),
        (
            "{\"cmd\":\"get\",\"id\":\"op_dummy_20260101_000000_deadbeef\"}",
            "not_found",
        ),
    ] {
        let r = raw(&d.socket, format!("{line}\n").as_bytes());
        assert_eq!(r.len(), 1, "{line}");
        assert_error(&r[0], code);
    }
    // Several requests on one connection are answered in order.
    let r = raw(&d.socket, b"{\"cmd\":\"health\"}\n\n{\"cmd\":\"list\"}\n");
    assert_eq!(r.len(), 2);
    assert!(r[0]["version"].is_string());
    assert!(r[1]["operations"].is_array());
    // A client that connects and vanishes mid-line does not hurt.
    {
        let mut s = UnixStream::connect(&d.socket).unwrap();
        s.write_all(b"{\"cmd\":\"hea").unwrap();
    }
    // Still serving.
    let id = d.submit("dummy", json!({ "steps": 1, "step_ms": 1 }));
    d.wait_status(&id, "completed", 10);
}

#[test]
fn socket_is_private_and_a_second_daemon_is_refused() {
    let d = Daemon::start();
    let mode = std::fs::metadata(&d.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // A second daemon on the same socket refuses to start and names it.
    let out = std::process::Command::new(bin())
        .args(["serve", "--state-dir"])
        .arg(d.state().join("other"))
        .arg("--socket")
        .arg(&d.socket)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already serving"), "{err}");
    // The first still answers.
    assert_eq!(d.req(Request::Health)["ok"], true);
}

#[test]
fn a_stale_socket_file_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("opsd.sock");
    // A socket file nobody listens on (its listener is gone).
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());
    let mut child = Guard::spawn(
        std::process::Command::new(bin())
            .args(["serve", "--state-dir"])
            .arg(dir.path())
            .arg("--socket")
            .arg(&sock),
    );
    assert!(wait_until(Duration::from_secs(20), || UnixStream::connect(
        &sock
    )
    .is_ok()));
    let r = request(&sock, Request::Health);
    assert_eq!(r["ok"], true);
    nix::sys::signal::kill(child.pid(), nix::sys::signal::Signal::SIGTERM).unwrap();
    assert!(wait_child(&mut child.0, Duration::from_secs(20)).success());
    assert!(!sock.exists(), "the socket is removed on exit");
}

#[test]
fn watch_streams_until_the_end() {
    let d = Daemon::start();
    let id = d.submit("dummy", json!({ "steps": 5, "step_ms": 30 }));
    let mut s = UnixStream::connect(&d.socket).unwrap();
    s.write_all(
        format!(
            "{}\n",
            Request::Watch {
                id: id_of(&id),
                interval_ms: Some(20)
            }
        )
        .as_bytes(),
    )
    .unwrap();
    let mut events = Vec::new();
    for line in BufReader::new(s).lines() {
        let v: Value = serde_json::from_str(&line.unwrap()).unwrap();
        events.push(v.clone());
        if v["event"] == "end" {
            break;
        }
    }
    assert!(events.len() >= 2, "{events:?}");
    let last = events.last().unwrap();
    assert_eq!(last["operation"]["status"], "completed");
    let pcts: Vec<f64> = events
        .iter()
        .map(|e| e["operation"]["progress_percent"].as_f64().unwrap())
        .collect();
    assert!(pcts.windows(2).all(|w| w[0] <= w[1]), "{pcts:?}");
}

#[test]
fn follow_with_a_zero_limit_and_far_run_after_are_answered() {
    let d = Daemon::start();
    let id = d.submit("dummy", json!({ "steps": 2, "step_ms": 1 }));
    d.wait_status(&id, "completed", 20);
    // limit 0 with follow used to spin an I/O thread for ever.
    let r = raw(
        &d.socket,
        format!(
            "{}\n",
            Request::Metrics {
                id: id_of(&id),
                cursor: 0,
                limit: Some(0),
                follow: true
            }
        )
        .as_bytes(),
    );
    assert_eq!(r.last().unwrap()["event"], "end", "{r:?}");
    let r = d.req(Submit {
        run_after: Some("300000years".into()),
        ..Submit::new("dummy", Value::Null)
    });
    assert_eq!(r["error"]["code"], "bad_request", "{r}");
    assert_eq!(d.req(Request::Health)["ok"], true);
}

#[test]
fn a_second_daemon_on_the_same_database_is_refused() {
    let d = Daemon::start();
    let out = std::process::Command::new(bin())
        .args(["serve", "--state-dir"])
        .arg(d.state())
        .arg("--socket")
        .arg(d.state().join("other.sock"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already using the database"), "{err}");
    assert_eq!(d.req(Request::Health)["ok"], true);
}
