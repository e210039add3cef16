//! The commands of SPEC §12 that pueue, task-spooler and Slurm users
//! reach for: `run`, `wait`, `rerun`, `clean`, `queue`, `completions`,
//! `man`, and the readable `list` table (short ids, label or command,
//! why a pending operation waits, fitted to the terminal).

use super::commands::{build_params, connect, op_id, print_json, submit_and_print, watch};
use super::commands::{write_stdout, Failure, Outcome};
use super::{output, ClientOpts};
use crate::client::{call, ClientError};
use crate::protocol::{
    Cleaned, OperationView, QueueChanged, QueueList, Released, Request, Rerun, Resolved, Submit,
};
use clap::{Args, CommandFactory, Subcommand};
use comfy_table::{presets::NOTHING, Cell, Color, ContentArrangement, Table};
use serde_json::{json, Map, Value};
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, Instant};

macro_rules! outln {
    ($($t:tt)*) => { write_stdout(format_args!($($t)*), true) };
}

/// `run` options.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The request's options: parent, priority, GPUs, key, attempts,
    /// start time, label, queue, hold, dependencies.
    #[command(flatten)]
    pub submit: Submit,
    /// Watch it until it ends (exit status as `watch`).
    #[arg(long)]
    pub watch: bool,
    /// Run with the daemon's environment instead of this shell's.
    #[arg(long)]
    pub no_env: bool,
    /// Seconds between SIGTERM and SIGKILL when it is stopped [30].
    #[arg(long)]
    pub grace_seconds: Option<f64>,
    /// The program and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "PROGRAM")]
    pub argv: Vec<String>,
}

/// `wait` options.
#[derive(Debug, Args)]
pub struct WaitArgs {
    /// The operations to wait for.
    #[arg(required = true)]
    pub ids: Vec<String>,
    /// Give up after this long (30s, 10m, 2h); exit 1 then.
    #[arg(long)]
    pub timeout: Option<String>,
}

/// `rerun` options.
#[derive(Debug, Args)]
pub struct RerunArgs {
    /// The operation to run again.
    pub id: String,
    /// A parameter to change, KEY=VALUE; VALUE is parsed as JSON when it can be (repeatable).
    #[arg(long = "param", short = 'p', value_name = "KEY=VALUE")]
    pub params: Vec<String>,
    /// Watch the new operation until it ends.
    #[arg(long)]
    pub watch: bool,
}

/// `clean` options.
#[derive(Debug, Args)]
pub struct CleanArgs {
    /// Only operations that ended longer ago than this (7d, 12h).
    #[arg(long, value_name = "DURATION")]
    pub older_than: Option<String>,
    /// Only these statuses: completed, failed, cancelled (repeatable) [all three].
    #[arg(long)]
    pub status: Vec<String>,
    /// Say what would be deleted, delete nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// `queue` subcommands.
#[derive(Debug, Args)]
pub struct QueueArgs {
    /// What to do with queues.
    #[command(subcommand)]
    pub action: QueueAction,
}

/// What `opsd queue` does.
#[derive(Debug, Subcommand)]
pub enum QueueAction {
    /// Every queue with its paused state, cap and counts.
    List,
    /// Start nothing new from this queue (running work goes on).
    Pause {
        /// The queue.
        name: String,
    },
    /// Start work from this queue again.
    Start {
        /// The queue.
        name: String,
    },
    /// Change a queue's settings.
    Set {
        /// The queue (created if new).
        name: String,
        /// At most this many of its operations run at once.
        #[arg(long)]
        parallel: i64,
    },
}

/// `completions` options.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Variables the daemon sets for a job itself; a shell that has them (a
/// job that submits another) must not pass them on.
const JOB_VARIABLES: &[&str] = &[
    "OPSD_OPERATION_ID",
    "OPSD_ATTEMPT",
    "OPSD_PROGRESS_FILE",
    "OPSD_CHECKPOINT_DIR",
    "OPSD_RESUME_STATE",
    "OPSD_RESUME_CHECKPOINT",
];

/// `opsd run -- PROGRAM ARGS...`: a `command` with this directory and
/// (unless `--no-env`) this shell's environment.
pub fn run(a: RunArgs, c: &ClientOpts) -> Outcome {
    let cwd = std::env::current_dir()
        .map_err(|e| Failure::Usage(format!("cannot read the current directory: {e}")))?;
    let mut params = Map::new();
    params.insert("argv".into(), json!(a.argv));
    params.insert("cwd".into(), json!(cwd.display().to_string()));
    if !a.no_env {
        let env: Map<String, Value> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .filter(|(k, _)| !JOB_VARIABLES.contains(&k.as_str()))
            .map(|(k, v)| (k, Value::String(v)))
            .collect();
        params.insert("env".into(), Value::Object(env));
    }
    if let Some(g) = a.grace_seconds {
        params.insert("grace_seconds".into(), json!(g));
    }
    let mut s = a.submit;
    s.kind = "command".into();
    s.params = Value::Object(params);
    submit_and_print(s, a.watch, c)
}

/// `opsd wait ID...`: until each has ended; 0 when all completed. Keeps
/// waiting across a daemon restart (it asks again until the timeout).
pub fn wait(a: WaitArgs, c: &ClientOpts) -> Outcome {
    let limit = match &a.timeout {
        None => None,
        Some(t) => Some(humantime::parse_duration(t).map_err(|_| {
            Failure::Usage(format!(
                "--timeout {t:?} is not a duration; write it like 30s, 10m or 2h"
            ))
        })?),
    };
    let start = Instant::now();
    let socket = c.socket_path();
    // Resolve short ids once, so a later `last` cannot move.
    let mut ids = Vec::new();
    for id in &a.ids {
        let r: Resolved = call(&socket, &Request::Resolve { id: op_id(id) })?;
        ids.push(r.operation_id.to_string());
    }
    let mut ended: Vec<Option<Value>> = vec![None; ids.len()];
    let mut unreachable_since: Option<Instant> = None;
    loop {
        for (i, id) in ids.iter().enumerate() {
            if ended[i].is_some() {
                continue;
            }
            match call::<crate::protocol::Got>(&socket, &Request::get(id)) {
                Ok(got) => {
                    unreachable_since = None;
                    let op = serde_json::to_value(&got.operation).unwrap_or_default();
                    if has_ended(&op) {
                        if !c.json {
                            eprintln!("{} {}", id, status_text(&op));
                        }
                        ended[i] = Some(op);
                    }
                }
                // The daemon restarting: ask again.
                Err(ClientError::Connect { .. }) | Err(ClientError::Io(_)) => {
                    unreachable_since.get_or_insert_with(Instant::now);
                }
                Err(e) => return Err(e.into()),
            }
        }
        if ended.iter().all(Option::is_some) {
            break;
        }
        if limit.is_some_and(|l| start.elapsed() >= l) {
            let left: Vec<&str> = ids
                .iter()
                .zip(&ended)
                .filter(|(_, e)| e.is_none())
                .map(|(i, _)| i.as_str())
                .collect();
            let why = if unreachable_since.is_some() {
                " (the daemon is not answering)"
            } else {
                ""
            };
            return Err(Failure::Request(format!(
                "timed out after {}: still waiting for {}{why}",
                a.timeout.as_deref().unwrap_or(""),
                left.join(", ")
            )));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let ops: Vec<Value> = ended.into_iter().flatten().collect();
    if c.json {
        print_json(&json!({ "operations": ops }));
    }
    let all = ops.iter().all(|op| op["status"] == "completed");
    Ok(if all {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Ended for good: final, and not a shutdown's stop (that resumes at the
/// next start).
fn has_ended(op: &Value) -> bool {
    matches!(
        op["status"].as_str(),
        Some("completed" | "failed" | "cancelled")
    ) && op["stop_reason"] != "shutdown"
}

fn status_text(op: &Value) -> String {
    match op["stop_reason"].as_str() {
        Some(r) => format!("{} ({r})", output::text(&op["status"])),
        None => output::text(&op["status"]),
    }
}

/// `opsd rerun ID [-p K=V]...`.
pub fn rerun(a: RerunArgs, c: &ClientOpts) -> Outcome {
    let edits = build_params(None, &a.params)?;
    let v: Rerun = connect(c)?.request(&Request::Rerun {
        id: op_id(&a.id),
        params: edits,
    })?;
    let id = v.submitted.operation_id.to_string();
    if c.json {
        print_json(&v);
    } else {
        outln!("{id}");
    }
    if a.watch {
        return watch(&id, false, c);
    }
    Ok(ExitCode::SUCCESS)
}

/// `opsd clean`.
pub fn clean(a: CleanArgs, c: &ClientOpts) -> Outcome {
    let v: Cleaned = connect(c)?.request(&Request::Clean {
        older_than: a.older_than,
        status: a.status,
        dry_run: a.dry_run,
    })?;
    if c.json {
        print_json(&v);
        return Ok(ExitCode::SUCCESS);
    }
    let n = v.deleted;
    if a.dry_run {
        for id in &v.operations {
            outln!("{id}");
        }
        eprintln!("would delete {n} finished operation(s); run without --dry-run to delete them");
    } else {
        eprintln!("deleted {n} finished operation(s) with their metrics, checkpoints and logs");
    }
    Ok(ExitCode::SUCCESS)
}

/// `opsd queue list|pause|start|set`.
pub fn queue(a: QueueArgs, c: &ClientOpts) -> Outcome {
    let set = |name: &str, paused: Option<bool>, parallel: Option<i64>| Request::QueueSet {
        name: name.to_string(),
        paused,
        parallel,
    };
    let mut client = connect(c)?;
    let rows = match &a.action {
        QueueAction::List => {
            let v: QueueList = client.request(&Request::Queues)?;
            if c.json {
                print_json(&v);
                return Ok(ExitCode::SUCCESS);
            }
            v.queues
        }
        action => {
            let req = match action {
                QueueAction::Pause { name } => set(name, Some(true), None),
                QueueAction::Start { name } => set(name, Some(false), None),
                QueueAction::Set { name, parallel } => set(name, None, Some(*parallel)),
                QueueAction::List => unreachable!("handled above"),
            };
            let v: QueueChanged = client.request(&req)?;
            if c.json {
                print_json(&v);
                return Ok(ExitCode::SUCCESS);
            }
            vec![v.queue]
        }
    };
    let mut t = output::table(&["QUEUE", "STATE", "PARALLEL", "WAITING", "RUNNING"]);
    for q in &rows {
        t.add_row(vec![
            q.name.clone(),
            if q.paused { "paused" } else { "started" }.to_string(),
            q.parallel
                .map(|n| n.to_string())
                .unwrap_or_else(|| "-".into()),
            q.waiting.to_string(),
            q.running.to_string(),
        ]);
    }
    outln!("{t}");
    Ok(ExitCode::SUCCESS)
}

/// `opsd release ID`.
pub fn release(id: &str, c: &ClientOpts) -> Outcome {
    let v: Released = connect(c)?.request(&Request::Release { id: op_id(id) })?;
    if c.json {
        print_json(&v);
    } else {
        eprintln!("{} is released", v.operation_id);
    }
    Ok(ExitCode::SUCCESS)
}

/// `opsd completions SHELL`.
pub fn completions(a: CompletionsArgs) -> Outcome {
    let mut cmd = super::Cli::command();
    let mut buf = Vec::new();
    clap_complete::generate(a.shell, &mut cmd, "opsd", &mut buf);
    outln!("{}", String::from_utf8_lossy(&buf));
    Ok(ExitCode::SUCCESS)
}

/// `opsd man`: the roff manual page.
pub fn man() -> Outcome {
    let mut buf = Vec::new();
    clap_mangen::Man::new(super::Cli::command())
        .render(&mut buf)
        .map_err(|e| Failure::Request(format!("cannot render the man page: {e}")))?;
    outln!("{}", String::from_utf8_lossy(&buf));
    Ok(ExitCode::SUCCESS)
}

/// The width to fit: `COLUMNS`, else the terminal's, else 80.
pub fn terminal_width() -> usize {
    if let Some(n) = std::env::var("COLUMNS")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .filter(|n| *n >= 20)
    {
        return n;
    }
    if std::io::stdout().is_terminal() {
        // SAFETY: TIOCGWINSZ fills a winsize struct we own.
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        if unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) } == 0
            && ws.ws_col >= 20
        {
            return ws.ws_col as usize;
        }
    }
    80
}

/// The 8-hex tail `watch` shows and every command takes.
pub fn short_id(id: &str) -> String {
    id.rsplit('_').next().unwrap_or(id).to_string()
}

/// What `list` calls an operation: its label, else its command line.
fn name_of(op: &Value) -> String {
    if let Some(l) = op["label"].as_str() {
        return l.to_string();
    }
    if let Some(argv) = op["metadata"]["argv"].as_array() {
        return argv
            .iter()
            .map(|a| {
                let s = a.as_str().unwrap_or("");
                if s.is_empty() || s.contains(char::is_whitespace) {
                    format!("'{s}'")
                } else {
                    s.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join(" ");
    }
    "-".into()
}

/// Why a pending operation has not started, if it can tell.
fn waiting_reason(op: &Value, paused: &[String]) -> Option<String> {
    if op["status"] != "pending" {
        return None;
    }
    if op["held"] == true {
        return Some("held".into());
    }
    if let Some(deps) = op["waiting_on"].as_array().filter(|d| !d.is_empty()) {
        let ids: Vec<String> = deps
            .iter()
            .map(|d| short_id(d.as_str().unwrap_or("")))
            .collect();
        return Some(format!("after {}", ids.join(",")));
    }
    if let Some(q) = op["queue"].as_str() {
        if paused.iter().any(|p| p == q) {
            return Some(if q == "default" {
                "queue paused".into()
            } else {
                format!("queue {q} paused")
            });
        }
    }
    if let Some(at) = op["run_after"].as_str() {
        if let Ok(t) = chrono::DateTime::parse_from_rfc3339(at) {
            if t > chrono::Utc::now() {
                return Some(format!("not before {}", local_time(at)));
            }
        }
    }
    match op["gpus_requested"].as_i64() {
        Some(1) => Some("waiting for 1 GPU".into()),
        Some(n) if n > 1 => Some(format!("waiting for {n} GPUs")),
        _ => None,
    }
}

/// `14:30` today, `11-22 14:30` another day, in local time.
fn local_time(at: &str) -> String {
    let Ok(t) = chrono::DateTime::parse_from_rfc3339(at) else {
        return "-".into();
    };
    let t = t.with_timezone(&chrono::Local);
    if t.date_naive() == chrono::Local::now().date_naive() {
        t.format("%H:%M").to_string()
    } else {
        t.format("%m-%d %H:%M").to_string()
    }
}

fn seconds_between(a: &str, b: &str) -> Option<f64> {
    let a = chrono::DateTime::parse_from_rfc3339(a).ok()?;
    let b = chrono::DateTime::parse_from_rfc3339(b).ok()?;
    Some((b - a).num_milliseconds() as f64 / 1000.0)
}

fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

fn colour(status: &str) -> Option<Color> {
    match status {
        "completed" => Some(Color::Green),
        "failed" => Some(Color::Red),
        "cancelled" => Some(Color::Yellow),
        "running" | "resuming" => Some(Color::Cyan),
        _ => None,
    }
}

/// The `list` table: short id (full with `wide`), type, label or
/// command, status with why it waits, progress, start, duration and GPUs
/// (when any asked for some), fitted to [`terminal_width`].
pub fn list_table(ops: &[OperationView], paused: &[String], wide: bool) -> String {
    // The table reads the JSON view, as the chart code does.
    let ops: Vec<Value> = ops
        .iter()
        .map(|o| serde_json::to_value(o).unwrap_or_default())
        .collect();
    let width = terminal_width();
    let gpus = ops.iter().any(|o| o["gpus_requested"].as_i64() > Some(0));
    let now = crate::ids::now();
    struct Row {
        cells: Vec<String>,
        status: String,
    }
    let rows: Vec<Row> = ops
        .iter()
        .map(|op| {
            let id = output::text(&op["operation_id"]);
            let status = output::text(&op["status"]);
            // A waiting operation shows why it waits (that it is pending
            // goes without saying).
            let mut shown = status.clone();
            if let Some(r) = waiting_reason(op, paused) {
                shown = r;
            } else if let Some(r) = op["stop_reason"].as_str() {
                shown = format!("{shown} ({r})");
            }
            let started = op["started_at"].as_str();
            let duration = started.and_then(|s| {
                let end = op["completed_at"].as_str().unwrap_or(&now);
                seconds_between(s, end)
            });
            let mut cells = vec![
                if wide { id.clone() } else { short_id(&id) },
                output::text(&op["operation_type"]),
                name_of(op),
                shown,
                format!("{:.0}%", op["progress_percent"].as_f64().unwrap_or(0.0)),
                started.map(local_time).unwrap_or_else(|| "-".into()),
                duration.map(output::duration).unwrap_or_else(|| "-".into()),
            ];
            if gpus {
                let n = op["gpus_requested"].as_i64().unwrap_or(0);
                cells.push(if n == 0 { "-".into() } else { n.to_string() });
            }
            Row { cells, status }
        })
        .collect();
    let mut header = vec!["ID", "TYPE", "NAME", "STATUS", "DONE", "STARTED", "TOOK"];
    if gpus {
        header.push("GPUS");
    }
    // Widths: every column as wide as its widest cell, then NAME and
    // STATUS give way (NAME first, down to 10) until the row fits. Each
    // column costs 2 more for its padding.
    let n = header.len();
    let mut w: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (i, c) in r.cells.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    if !wide {
        let total = |w: &[usize]| w.iter().sum::<usize>() + 2 * n;
        while total(&w) > width {
            if w[2] > 10 {
                w[2] -= 1;
            } else if w[3] > 16 {
                w[3] -= 1;
            } else if w[2] > 4 {
                w[2] -= 1;
            } else {
                break;
            }
        }
    }
    let mut t = Table::new();
    t.load_preset(NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.clone());
    let plain = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
        || !std::io::stdout().is_terminal();
    if plain {
        t.force_no_tty();
    }
    for r in rows {
        let cells: Vec<Cell> = r
            .cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let text = if wide { c.clone() } else { clip(c, w[i]) };
                let cell = Cell::new(text);
                match (i, colour(&r.status)) {
                    (3, Some(col)) if !plain => cell.fg(col),
                    _ => cell,
                }
            })
            .collect();
        t.add_row(cells);
    }
    // The preset pads each cell with a space either side; trailing
    // spaces are trimmed so a row is no wider than its text.
    t.to_string()
        .lines()
        .map(|l| l.trim_end().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_command_is_clipped_to_fit_80_columns() {
        std::env::set_var("COLUMNS", "80");
        let op = json!({
            "operation_id": "op_command_20261122_143022_0a1b2c3d",
            "operation_type": "command",
            "status": "pending",
            "held": true,
            "metadata": {"argv": ["python", "train.py", "--lr", "0.001", "--epochs", "200", "--data", "/very/long/path/to/data.csv"]},
            "progress_percent": 0.0,
            "created_at": "2026-11-22T14:30:22.000000Z",
        });
        let mut full = json!({
            "operation_id": "x", "operation_type": "command", "status": "pending",
            "priority": 0, "attempt": 0, "max_attempts": 1, "created_at": "c",
            "updated_at": "u", "progress_percent": 0.0, "metadata": {}, "warnings": [],
            "errors": [], "fail_parent": false, "gpus_requested": 0,
        });
        for (k, v) in op.as_object().unwrap() {
            full[k] = v.clone();
        }
        let view: crate::protocol::OperationView = serde_json::from_value(full).unwrap();
        let text = list_table(&[view], &[], false);
        for line in text.lines() {
            assert!(
                line.chars().count() <= 80,
                "{line:?} ({})",
                line.chars().count()
            );
        }
        assert!(text.contains("0a1b2c3d") && text.contains("held"), "{text}");
    }
}
