//! `opsd watch`: indicatif bars for an operation and its children, fed by
//! the daemon's `watch` stream. Ctrl-C stops watching and asks whether to
//! cancel (or cancels at once with `--cancel-on-interrupt`).

use super::{output, plot};
use crate::client::{Client, ClientError};
use crate::ids::OperationId;
use crate::model::{Status, StopReason};
use crate::protocol::{OperationView, Request, StreamEvent, WatchUpdate};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;
use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    let mut client = open_stream(socket, id)?;
    let multi = MultiProgress::with_draw_target(if quiet || !std::io::stderr().is_terminal() {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    });
    let mut bars: HashMap<String, ProgressBar> = HashMap::new();
    // The live loss curve, always the last thing drawn, only on a terminal.
    let mut curve = (!quiet && std::io::stderr().is_terminal()).then(|| Curve {
        bar: multi.add(ProgressBar::new(1).with_style(
            ProgressStyle::with_template("{msg}").unwrap_or_else(|_| ProgressStyle::default_bar()),
        )),
        source: None,
        points: Vec::new(),
        cursor: 0,
        fetched: None,
    });
    let curve_bar = curve.as_ref().map(|c| c.bar.clone());
    let mut bar_for = |op: &OperationView, indent: bool| -> ProgressBar {
        bars.entry(op.operation_id.to_string())
            .or_insert_with(|| {
                let b = match &curve_bar {
                    Some(c) => multi.insert_before(c, ProgressBar::new(1000)),
                    None => multi.add(ProgressBar::new(1000)),
                };
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
            Err(e) if e.is_timeout() => continue,
            // The daemon went away (a restart): follow the operation on
            // the next daemon, as the run itself continues there.
            Ok(None) | Err(ClientError::Io(_)) => {
                if !quiet {
                    multi.suspend(|| {
                        eprintln!(
                            "the daemon closed the connection; reconnecting to follow {id}..."
                        )
                    });
                }
                client = reconnect(socket, id, interrupted)?;
                continue;
            }
            Err(e) => return Err(e),
        };
        update(&bar_for(&msg.operation, false), &msg.operation);
        for k in &msg.children {
            update(&bar_for(k, true), k);
        }
        if let Some(c) = curve.as_mut() {
            // The curve code reads the JSON view, as the chart code does.
            let op = serde_json::to_value(&msg.operation).unwrap_or_default();
            let kids: Vec<Value> = msg
                .children
                .iter()
                .map(|k| serde_json::to_value(k).unwrap_or_default())
                .collect();
            c.update(socket, &op, &kids, 2 + kids.len());
        }
        // Stopped by a daemon shutdown: it resumes when the daemon is
        // back, so keep following it there.
        if msg.event == StreamEvent::End && msg.operation.stop_reason == Some(StopReason::Shutdown)
        {
            if !quiet {
                multi.suspend(|| eprintln!("the daemon is restarting; {id} resumes after it..."));
            }
            std::thread::sleep(Duration::from_millis(200));
            client = reconnect(socket, id, interrupted)?;
            continue;
        }
        if msg.event == StreamEvent::End {
            if let Some(c) = &curve {
                c.bar.finish_and_clear();
            }
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

/// How long `watch` keeps trying to reach a daemon that went away.
const RECONNECT_FOR: Duration = Duration::from_secs(300);

fn open_stream(socket: &Path, id: &str) -> Result<Client, ClientError> {
    let mut client = Client::connect(socket)?;
    client.send(&Request::watch(OperationId::from(id)))?;
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
    let start = Instant::now();
    loop {
        match open_stream(socket, id) {
            Ok(c) => return Ok(c),
            Err(e) if start.elapsed() >= RECONNECT_FOR => return Err(e),
            Err(ClientError::Connect { .. }) | Err(ClientError::Io(_)) => {}
            Err(e) => return Err(e),
        }
        if interrupted.load(Ordering::Acquire) {
            return Err(ClientError::Protocol(
                "interrupted while reconnecting".into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The small live loss curve under the bars: whose metrics it follows
/// (the watched training or command, else its running one of those
/// children), the points so far and when they were last fetched.
struct Curve {
    bar: ProgressBar,
    source: Option<String>,
    points: Vec<Value>,
    cursor: i64,
    fetched: Option<Instant>,
}

/// Types whose metric points carry a loss worth drawing.
fn has_curve(op: &Value) -> bool {
    matches!(op["operation_type"].as_str(), Some("training" | "command"))
}

/// The operation whose curve to show: the watched one, else the running
/// child that has one, else the last child that had one.
fn curve_source<'a>(op: &'a Value, children: &'a [Value]) -> Option<&'a str> {
    if has_curve(op) {
        return op["operation_id"].as_str();
    }
    let mut kids = children.iter().filter(|k| has_curve(k));
    kids.clone()
        .find(|k| k["status"] == "running")
        .or_else(|| kids.rfind(|k| k["status"] != "pending"))
        .and_then(|k| k["operation_id"].as_str())
}

/// The loss series of these points, labelled by key: `train_loss` and
/// `val_loss` for a training, else every key with `loss` in its name.
pub fn loss_series(points: &[Value]) -> Vec<plot::Series> {
    let mut keys: Vec<String> = Vec::new();
    for p in points {
        if let Value::Object(m) = &p["data"] {
            for (k, v) in m {
                if k.contains("loss") && v.is_number() && !keys.contains(k) {
                    keys.push(k.clone());
                }
            }
        }
    }
    keys.sort_by_key(|k| (k != "train_loss", k != "loss", k.clone()));
    keys.iter()
        .take(4)
        .map(|k| plot::series(k, points, k, None))
        .collect()
}

/// The box for the live curve under `bars` lines of bars on a terminal of
/// `cols` × `rows`: none unless at least 12 rows are left over.
pub fn curve_box(cols: usize, rows: usize, bars: usize) -> Option<(usize, usize)> {
    let left = rows.checked_sub(bars + 2)?;
    (left >= 12 && cols >= 40).then(|| (cols.min(100) - 1, left.min(18)))
}

impl Curve {
    fn update(&mut self, socket: &Path, op: &Value, children: &[Value], bars: usize) {
        let source = curve_source(op, children).map(str::to_string);
        if source != self.source {
            self.source = source;
            self.points.clear();
            self.cursor = 0;
            self.fetched = None;
        }
        let Some(id) = self.source.clone() else {
            return;
        };
        if self
            .fetched
            .is_some_and(|t| t.elapsed() < Duration::from_millis(500))
        {
            return;
        }
        self.fetched = Some(Instant::now());
        let page = Client::connect(socket).and_then(|mut c| {
            c.metrics(&OperationId::from(id.as_str()), self.cursor, Some(100_000))
        });
        if let Ok(page) = page {
            self.cursor = page.cursor;
            self.points.extend(
                page.metrics
                    .iter()
                    .map(|p| serde_json::to_value(p).unwrap_or_default()),
            );
        }
        let (cols, rows) = plot::terminal_size(2);
        let chart = curve_box(cols, rows, bars).and_then(|(w, h)| {
            let title = format!("  loss of {} (live)", plot::short_id(&id));
            plot::render(&loss_series(&self.points), &title, w, h, true)
        });
        self.bar.set_message(chart.unwrap_or_default());
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_curve_follows_the_running_training_child() {
        let op = json!({"operation_id": "op_pipeline_1", "operation_type": "pipeline"});
        let kids = vec![
            json!({"operation_id": "op_training_a", "operation_type": "training", "status": "completed"}),
            json!({"operation_id": "op_backtest_b", "operation_type": "backtest", "status": "running"}),
        ];
        assert_eq!(curve_source(&op, &kids), Some("op_training_a"));
        let t = json!({"operation_id": "op_training_c", "operation_type": "training"});
        assert_eq!(curve_source(&t, &[]), Some("op_training_c"));
        let pending =
            vec![json!({"operation_id": "x", "operation_type": "training", "status": "pending"})];
        assert_eq!(curve_source(&op, &pending), None);
    }

    #[test]
    fn loss_keys_train_first_and_the_box_needs_room() {
        let pts: Vec<Value> = (1..=3)
            .map(|i| json!({"seq": i, "data": {"epoch": i, "val_loss": 1.0, "train_loss": 0.5, "train_accuracy": 0.6}}))
            .collect();
        let s = loss_series(&pts);
        assert_eq!(
            s.iter().map(|x| x.label.as_str()).collect::<Vec<_>>(),
            ["train_loss", "val_loss"]
        );
        assert_eq!(s[0].points.len(), 3);
        assert_eq!(curve_box(120, 24, 2), Some((99, 18)));
        assert_eq!(curve_box(80, 16, 3), None);
        assert_eq!(curve_box(30, 60, 1), None);
    }
}
