//! `opsd watch`: indicatif bars for an operation and its children, fed by
//! the daemon's `watch` stream. Ctrl-C stops watching and asks whether to
//! cancel (or cancels at once with `--cancel-on-interrupt`).

use super::output;
use crate::client::{Client, ClientError};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How watching ended.
pub enum WatchEnd {
    /// The operation reached this final (or stopped) record.
    Finished(Value),
    /// The user pressed Ctrl-C.
    Interrupted,
}

fn style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix:<28} [{bar:30.cyan/blue}] {percent:>3}% {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

fn label(op: &Value) -> String {
    let kind = op["operation_type"].as_str().unwrap_or("?");
    let id = op["operation_id"].as_str().unwrap_or("?");
    let short = id.rsplit('_').next().unwrap_or(id);
    format!("{kind} {short}")
}

fn message(op: &Value) -> String {
    let status = op["status"].as_str().unwrap_or("?");
    let mut m = match status {
        "running" => op["progress_message"].as_str().unwrap_or("").to_string(),
        other => other.to_string(),
    };
    if let Some(eta) = op["eta_seconds"].as_f64() {
        if status == "running" {
            m = format!("{m} · ETA {}", output::duration(eta));
        }
    }
    m
}

fn update(bar: &ProgressBar, op: &Value) {
    bar.set_position((op["progress_percent"].as_f64().unwrap_or(0.0) * 10.0).round() as u64);
    bar.set_message(message(op));
}

/// Follow `id` until it ends or Ctrl-C. With `quiet`, draw nothing.
pub fn watch(
    socket: &Path,
    id: &str,
    quiet: bool,
    interrupted: &Arc<AtomicBool>,
) -> Result<WatchEnd, ClientError> {
    let mut client = open_stream(socket, id)?;
    let multi = MultiProgress::with_draw_target(if quiet || !std::io::stderr().is_terminal() {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    });
    let mut bars: HashMap<String, ProgressBar> = HashMap::new();
    let mut bar_for = |op: &Value, indent: bool| -> ProgressBar {
        let key = op["operation_id"].as_str().unwrap_or("").to_string();
        bars.entry(key)
            .or_insert_with(|| {
                let b = multi.add(ProgressBar::new(1000));
                b.set_style(style());
                b.set_prefix(if indent {
                    format!("  └ {}", label(op))
                } else {
                    label(op)
                });
                b
            })
            .clone()
    };
    loop {
        if interrupted.load(Ordering::Acquire) {
            let _ = multi.clear();
            return Ok(WatchEnd::Interrupted);
        }
        let msg = match client.recv() {
            Ok(Some(m)) => m,
            Err(ClientError::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            // The daemon went away (a restart): follow the operation on
            // the next daemon, as the run itself continues there.
            Ok(None) | Err(ClientError::Io(_)) => {
                if !quiet {
                    multi.suspend(|| {
                        eprintln!("the daemon closed the connection; reconnecting to follow {id}...")
                    });
                }
                client = reconnect(socket, id, interrupted)?;
                continue;
            }
            Err(e) => return Err(e),
        };
        let op = &msg["operation"];
        update(&bar_for(op, false), op);
        if let Some(kids) = msg["children"].as_array() {
            for k in kids {
                update(&bar_for(k, true), k);
            }
        }
        // Stopped by a daemon shutdown: it resumes when the daemon is
        // back, so keep following it there.
        if msg["event"] == "end" && op["stop_reason"] == "shutdown" {
            if !quiet {
                multi.suspend(|| eprintln!("the daemon is restarting; {id} resumes after it..."));
            }
            std::thread::sleep(Duration::from_millis(200));
            client = reconnect(socket, id, interrupted)?;
            continue;
        }
        if msg["event"] == "end" {
            for b in bars.values() {
                b.abandon();
            }
            let _ = multi.clear();
            if !quiet {
                print_final(
                    op,
                    msg["children"].as_array().map(Vec::as_slice).unwrap_or(&[]),
                );
            }
            return Ok(WatchEnd::Finished(op.clone()));
        }
    }
}

/// How long `watch` keeps trying to reach a daemon that went away.
const RECONNECT_FOR: Duration = Duration::from_secs(300);

fn open_stream(socket: &Path, id: &str) -> Result<Client, ClientError> {
    let mut client = Client::connect(socket)?;
    client.send(&json!({ "cmd": "watch", "id": id }))?;
    client.set_read_timeout(Some(Duration::from_millis(100)))?;
    Ok(client)
}

/// Open the watch stream again once the daemon answers (a restart takes
/// a moment), for up to [`RECONNECT_FOR`].
fn reconnect(
    socket: &Path,
    id: &str,
    interrupted: &Arc<AtomicBool>,
) -> Result<Client, ClientError> {
    let start = std::time::Instant::now();
    loop {
        match open_stream(socket, id) {
            Ok(c) => return Ok(c),
            Err(e) if start.elapsed() >= RECONNECT_FOR => return Err(e),
            Err(ClientError::Connect { .. }) | Err(ClientError::Io(_)) => {}
            Err(e) => return Err(e),
        }
        if interrupted.load(Ordering::Acquire) {
            return Err(ClientError::Protocol("interrupted while reconnecting".into()));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn print_final(op: &Value, children: &[Value]) {
    let mut rows: Vec<Value> = vec![op.clone()];
    rows.extend(children.iter().cloned());
    eprintln!("{}", output::operations_table(&rows));
    if let Some(e) = op["error_message"].as_str() {
        eprintln!("error: {e}");
    }
}

/// Ask on the terminal whether to cancel; false when not interactive.
pub fn ask_cancel(id: &str) -> bool {
    if !std::io::stdin().is_terminal() {
        eprintln!("stopped watching; {id} keeps running (cancel it with `opsd cancel {id}`)");
        return false;
    }
    eprint!("Stopped watching. Cancel {id} too? [y/N] ");
    let mut answer = String::new();
    let _ = std::io::stdin().read_line(&mut answer);
    matches!(answer.trim(), "y" | "Y" | "yes")
}
