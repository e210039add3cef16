//! `opsd demo`: a newcomer's first command. Starts a daemon in-process on
//! a fresh state directory, runs a parent with child operations, shows
//! their live bars and prints what to try next.

use super::commands::Failure;
use super::watch::{self as watching, WatchEnd};
use super::DemoArgs;
use crate::client::call;
use crate::config::Config;
use crate::daemon::Daemon;
use serde_json::json;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// Run the demo.
pub fn run(a: DemoArgs) -> Result<ExitCode, Failure> {
    let tmp;
    let state_dir = match a.state_dir {
        Some(d) => d,
        None => {
            tmp = tempfile::Builder::new()
                .prefix("opsd-demo-")
                .tempdir()
                .map_err(|e| Failure::Request(format!("cannot create a temporary directory: {e}")))?;
            tmp.path().to_path_buf()
        }
    };
    let socket = state_dir.join("opsd.sock");
    let config = Config {
        state_dir: state_dir.clone(),
        socket: Some(socket.clone()),
        ..Config::default()
    };
    eprintln!("Starting an opsd daemon in this process (state in {})", state_dir.display());
    let daemon = Daemon::start(config)?;
    let result = run_demo(&socket, a.epochs, a.json);
    daemon.stop(&|| false);
    result
}

fn run_demo(socket: &std::path::Path, _epochs: i64, json_out: bool) -> Result<ExitCode, Failure> {
    let parent = call(socket, &json!({ "cmd": "submit", "type": "dummy", "params": { "steps": 30, "step_ms": 100 } }))?;
    let pid = parent["operation_id"].as_str().unwrap_or_default().to_string();
    for (i, (s, e)) in [(0.0, 20.0), (20.0, 60.0), (60.0, 100.0)].iter().enumerate() {
        call(
            socket,
            &json!({ "cmd": "submit", "type": "dummy", "parent": pid, "phase": [s, e],
                     "params": { "steps": 10 + 5 * i, "step_ms": 150 } }),
        )?;
    }
    let interrupted = Arc::new(AtomicBool::new(false));
    let _ = signal_hook::flag::register(signal_hook::consts::SIGINT, interrupted.clone());
    let end = watching::watch(socket, &pid, json_out, &interrupted)?;
    let op = match end {
        WatchEnd::Finished(op) => op,
        WatchEnd::Interrupted => return Ok(ExitCode::from(1)),
    };
    if json_out {
        println!("{}", serde_json::to_string_pretty(&op).unwrap_or_default());
    }
    eprintln!("\nNext: run `opsd serve` in one terminal, then `opsd submit dummy --watch` in another.");
    Ok(if op["status"] == "completed" { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
