//! `opsd watch`: indicatif bars for an operation and its children, fed by
//! the daemon's `watch` stream. Ctrl-C stops watching and asks whether to
//! cancel (or cancels at once with `--cancel-on-interrupt`).

use super::output;
use crate::client::{Client, ClientError};
use crate::ids::OperationId;
use crate::model::Status;
use crate::protocol::{OperationView, Request, StreamEvent, WatchUpdate};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How watching ended.
pub enum WatchEnd {
    /// The operation reached this final (or stopped) record.
    Finished(Box<OperationView>),
    /// The user pressed Ctrl-C.
    Interrupted,
}

fn style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix:<28} [{bar:30.cyan/blue}] {percent:>3}% {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

fn label(op: &OperationView) -> String {
    let id = op.operation_id.as_str();
    let short = id.rsplit('_').next().unwrap_or(id);
    format!("{} {short}", op.operation_type)
}

fn message(op: &OperationView) -> String {
    if op.status != Status::Running {
        return op.status.to_string();
    }
    let m = op.progress_message.clone().unwrap_or_default();
    match op.eta_seconds {
        Some(eta) => format!("{m} · ETA {}", output::duration(eta)),
        None => m,
    }
}

fn update(bar: &ProgressBar, op: &OperationView) {
    bar.set_position((op.progress_percent * 10.0).round() as u64);
    bar.set_message(message(op));
}

/// Follow `id` until it ends or Ctrl-C. With `quiet`, draw nothing.
pub fn watch(
    socket: &Path,
    id: &str,
    quiet: bool,
    interrupted: &Arc<AtomicBool>,
) -> Result<WatchEnd, ClientError> {
    let mut client = Client::connect(socket)?;
    client.send(&Request::watch(OperationId::from(id)))?;
    client.set_read_timeout(Some(Duration::from_millis(100)))?;
    let multi = MultiProgress::with_draw_target(if quiet || !std::io::stderr().is_terminal() {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    });
    let mut bars: HashMap<String, ProgressBar> = HashMap::new();
    let mut bar_for = |op: &OperationView, indent: bool| -> ProgressBar {
        bars.entry(op.operation_id.to_string())
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
        let msg: WatchUpdate = match client.recv() {
            Ok(Some(m)) => m,
            Ok(None) => {
                return Err(ClientError::Protocol(
                    "the daemon closed the watch stream".into(),
                ))
            }
            Err(e) if e.is_timeout() => continue,
            Err(e) => return Err(e),
        };
        update(&bar_for(&msg.operation, false), &msg.operation);
        for k in &msg.children {
            update(&bar_for(k, true), k);
        }
        if msg.event == StreamEvent::End {
            for b in bars.values() {
                b.abandon();
            }
            let _ = multi.clear();
            if !quiet {
                print_final(&msg.operation, &msg.children);
            }
            return Ok(WatchEnd::Finished(Box::new(msg.operation)));
        }
    }
}

fn print_final(op: &OperationView, children: &[OperationView]) {
    eprintln!(
        "{}",
        output::operations_table(std::iter::once(op).chain(children))
    );
    if let Some(e) = &op.error_message {
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
