//! One function per subcommand. Each returns the exit code of SPEC §6:
//! 0 success, 1 the request failed (message on stderr), 2 usage error.

use super::watch::{self as watching, WatchEnd};
use super::{output, ClientOpts, Command};
use crate::client::{Client, ClientError};
use crate::config::Config;
use crate::ids::OperationId;
use crate::model::Status;
use crate::protocol::{MetricsPage, OperationView, Request, StreamEvent};
use crate::store::records::{ListFilter, MetricPoint};
use serde_json::{json, Map, Value};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// What a command can fail with.
pub enum Failure {
    /// The request failed (exit 1).
    Request(String),
    /// The command line was wrong (exit 2).
    Usage(String),
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        Failure::Request(e.to_string())
    }
}

impl From<crate::error::Error> for Failure {
    fn from(e: crate::error::Error) -> Self {
        Failure::Request(e.to_string())
    }
}

/// Run the subcommands the light `opsd` binary runs in its own process
/// (the quick ones scripts call in loops: `cli::fast` parses them);
/// `Err` hands back any other, for `run` or for `opsd-full`. Both
/// binaries run these through this one function, so they behave the same.
pub fn run_light(cmd: Command, c: &ClientOpts) -> Result<ExitCode, Box<Command>> {
    let result = match cmd {
        Command::Submit(a) => submit(a, c),
        Command::List(a) => list(a, c),
        Command::Show(a) => show(&a.id, c),
        Command::Cancel(a) => cancel(&a.id, a.reason, c),
        Command::Health(_) => health(c),
        Command::Run(a) => super::everyday::run(a, c),
        Command::Wait(a) => super::everyday::wait(a, c),
        Command::Release(a) => super::everyday::release(&a.id, c),
        other => return Err(Box::new(other)),
    };
    Ok(exit_code(result))
}

/// Run a parsed subcommand with the global socket and output options.
pub fn run(cmd: Command, c: &ClientOpts) -> ExitCode {
    let cmd = match run_light(cmd, c) {
        Ok(code) => return code,
        Err(cmd) => *cmd,
    };
    let result = match cmd {
        Command::Serve(a) => serve(a, c),
        Command::Watch(a) => watch(&a.id, a.cancel_on_interrupt, c),
        Command::Resume(a) => resume(&a.id, c),
        Command::Metrics(a) => metrics(a, c),
        Command::Children(a) => children(&a.id, c),
        Command::Logs(a) => logs(a, c),
        Command::Checkpoints(a) => checkpoints(a, c),
        Command::Hosts(_) => hosts(c),
        Command::Demo(a) => super::demo::run(a, c.json),
        Command::Dashboard(_) => dashboard(c),
        Command::Rerun(a) => super::everyday::rerun(a, c),
        Command::Clean(a) => super::everyday::clean(a, c),
        Command::Queue(a) => super::everyday::queue(a, c),
        Command::Completions(a) => super::everyday::completions(a),
        Command::Man => super::everyday::man(),
        Command::Submit(_)
        | Command::List(_)
        | Command::Show(_)
        | Command::Cancel(_)
        | Command::Health(_)
        | Command::Run(_)
        | Command::Wait(_)
        | Command::Release(_) => unreachable!("run_light runs it"),
    };
    exit_code(result)
}

/// The exit code of a command's outcome, its failure said on stderr.
fn exit_code(result: Outcome) -> ExitCode {
    // Written without `eprintln!`, which panics when stderr is full.
    let say = |m: &str| {
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "error: {m}");
    };
    match result {
        Ok(code) => code,
        Err(Failure::Request(m)) => {
            say(&m);
            ExitCode::from(1)
        }
        Err(Failure::Usage(m)) => {
            say(&m);
            ExitCode::from(2)
        }
    }
}

pub(super) type Outcome = Result<ExitCode, Failure>;

/// `println!` for what goes to stdout: a reader that closed the pipe
/// (`opsd metrics ID | head`) ends the command quietly, as `ls | head` does.
macro_rules! outln {
    ($($t:tt)*) => { write_stdout(format_args!($($t)*), true) };
}

/// `print!` with the same handling of a closed stdout, flushed at once
/// (followed logs appear as they come).
macro_rules! out {
    ($($t:tt)*) => { write_stdout(format_args!($($t)*), false) };
}

/// Write to stdout; on a closed pipe exit 0 at once, on any other failure
/// (a full disk) say so and exit 1.
pub(super) fn write_stdout(args: std::fmt::Arguments, newline: bool) {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    let r = o
        .write_fmt(args)
        .and_then(|_| if newline { o.write_all(b"\n") } else { Ok(()) })
        .and_then(|_| o.flush());
    match r {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            eprintln!("error: cannot write the output: {e}");
            std::process::exit(1)
        }
    }
}

/// A response body as pretty JSON on stdout (`--json`).
pub(super) fn print_json<T: serde::Serialize>(body: &T) {
    outln!("{}", serde_json::to_string_pretty(body).unwrap_or_default());
}

/// One connection to the daemon the options name.
pub(super) fn connect(c: &ClientOpts) -> Result<Client, Failure> {
    Ok(Client::connect(&c.socket_path())?)
}

/// An operation id given on the command line.
pub(super) fn op_id(s: &str) -> OperationId {
    OperationId::from(s)
}

fn serve(a: super::ServeArgs, c: &ClientOpts) -> Outcome {
    let mut config = match &a.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    if let Some(d) = a.state_dir {
        config.state_dir = d;
    }
    if a.db.is_some() {
        config.db = a.db;
    }
    if c.socket.is_some() {
        config.socket = c.socket.clone();
    }
    if a.store.is_some() {
        config.store = a.store;
    }
    crate::daemon::serve(config)?;
    Ok(ExitCode::SUCCESS)
}

/// Build the parameter object from `--params` and `--param` flags.
pub fn build_params(json_arg: Option<&str>, pairs: &[String]) -> Result<Value, Failure> {
    let mut params = match json_arg {
        None => Map::new(),
        Some(s) => {
            let text = match s.strip_prefix('@') {
                Some(path) => std::fs::read_to_string(path)
                    .map_err(|e| Failure::Usage(format!("--params @{path}: cannot read: {e}")))?,
                None => s.to_string(),
            };
            match serde_json::from_str::<Value>(&text) {
                Ok(Value::Object(m)) => m,
                Ok(_) => return Err(Failure::Usage("--params must be a JSON object".into())),
                Err(e) => return Err(Failure::Usage(format!("--params is not valid JSON: {e}"))),
            }
        }
    };
    for pair in pairs {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| Failure::Usage(format!("--param {pair:?}: expected KEY=VALUE")))?;
        let value = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_string()));
        params.insert(k.to_string(), value);
    }
    Ok(Value::Object(params))
}

/// Make file parameters absolute from the client's working directory (the
/// daemon runs elsewhere), and give `command` jobs the client's directory
/// as `cwd` unless one is set.
pub fn absolutize(kind: &str, params: &mut Value) {
    let Ok(here) = std::env::current_dir() else {
        return;
    };
    fn fix(here: &std::path::Path, v: &mut Value, keys: &[&str]) {
        for k in keys {
            if let Some(Value::String(p)) = v.get_mut(*k) {
                if !p.is_empty() && std::path::Path::new(p.as_str()).is_relative() {
                    *p = here.join(&*p).display().to_string();
                }
            }
        }
    }
    match kind {
        "training" | "backtest" | "pipeline" => fix(&here, params, &["data", "model"]),
        "command" => {
            fix(&here, params, &["cwd"]);
            if let Value::Object(m) = params {
                m.entry("cwd")
                    .or_insert_with(|| json!(here.display().to_string()));
            }
        }
        _ => {}
    }
}

fn submit(a: super::SubmitArgs, c: &ClientOpts) -> Outcome {
    let mut s = a.submit;
    s.kind = a.kind;
    s.params = build_params(a.params_json.as_deref(), &a.params)?;
    absolutize(&s.kind, &mut s.params);
    submit_and_print(s, a.watch, c)
}

/// Send a submit, print the id (or `--json`), and watch it if asked.
pub(super) fn submit_and_print(
    s: crate::protocol::Submit,
    watch_it: bool,
    c: &ClientOpts,
) -> Outcome {
    let v = connect(c)?.submit(s)?;
    let id = v.operation_id.to_string();
    if c.json {
        outln!(
            "{}",
            json!({ "operation_id": v.operation_id, "status": v.status })
        );
    } else {
        outln!("{id}");
        if !v.created {
            eprintln!("(already submitted with this key; this is the first operation)");
        }
    }
    if watch_it {
        return watch(&id, false, c);
    }
    Ok(ExitCode::SUCCESS)
}

fn list(a: super::ListArgs, c: &ClientOpts) -> Outcome {
    let filter = ListFilter {
        status: a.status,
        kind: a.kind,
        active: a.active,
        parent: a.parent,
        label: a.label,
        queue: a.queue,
        limit: Some(a.limit),
        offset: Some(a.offset),
    };
    let mut client = connect(c)?;
    let v = client.list(filter)?;
    if c.json {
        print_json(&v);
        return Ok(ExitCode::SUCCESS);
    }
    if v.operations.is_empty() {
        eprintln!(
            "no operations match; submit one with `opsd run -- PROGRAM` or `opsd submit dummy`"
        );
    } else {
        // Paused queues, to say why something waits.
        let paused: Vec<String> = client
            .request::<crate::protocol::QueueList>(&Request::Queues)
            .map(|q| q.queues)
            .unwrap_or_default()
            .into_iter()
            .filter(|q| q.paused)
            .map(|q| q.name)
            .collect();
        outln!(
            "{}",
            super::everyday::list_table(&v.operations, &paused, a.wide)
        );
    }
    eprintln!(
        "{} shown of {} matching · {} active",
        v.operations.len(),
        v.total.unwrap_or_default(),
        v.active.unwrap_or_default()
    );
    Ok(ExitCode::SUCCESS)
}

fn show(id: &str, c: &ClientOpts) -> Outcome {
    let op = connect(c)?.get(&op_id(id))?;
    if c.json {
        print_json(&op);
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = output::table(&["FIELD", "VALUE"]);
    if let Ok(Value::Object(m)) = serde_json::to_value(&op) {
        for (k, v) in m {
            let shown = match &v {
                Value::Object(_) | Value::Array(_) => {
                    serde_json::to_string_pretty(&v).unwrap_or_default()
                }
                other => output::text(other),
            };
            t.add_row(vec![k, shown]);
        }
    }
    outln!("{t}");
    Ok(ExitCode::SUCCESS)
}

fn exit_for(op: &OperationView) -> ExitCode {
    if op.status == Status::Completed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

pub(super) fn watch(id: &str, cancel_on_interrupt: bool, c: &ClientOpts) -> Outcome {
    let interrupted = Arc::new(AtomicBool::new(false));
    let _ = signal_hook::flag::register(signal_hook::consts::SIGINT, interrupted.clone());
    match watching::watch(&c.socket_path(), id, c.json, &interrupted)? {
        WatchEnd::Finished(op) => {
            if c.json {
                print_json(&op);
            }
            Ok(exit_for(&op))
        }
        WatchEnd::Interrupted => {
            if cancel_on_interrupt || watching::ask_cancel(id) {
                cancel(id, Some("interrupted while watching".into()), c)?;
            }
            Ok(ExitCode::from(1))
        }
    }
}

fn cancel(id: &str, reason: Option<String>, c: &ClientOpts) -> Outcome {
    let v = connect(c)?.cancel(&op_id(id), reason, None)?;
    if c.json {
        print_json(&v);
    } else if v.status == Status::Running {
        eprintln!(
            "{id}: cancel requested; it stops at its next checkpoint (see `opsd watch {id}`)"
        );
    } else {
        eprintln!("{id}: {}", v.status);
    }
    Ok(ExitCode::SUCCESS)
}

fn resume(id: &str, c: &ClientOpts) -> Outcome {
    let v = connect(c)?.resume(&op_id(id))?;
    if c.json {
        print_json(&v);
    } else {
        eprintln!("{} is resuming", v.operation_id);
    }
    Ok(ExitCode::SUCCESS)
}

/// One metric point as a line: `seq  recorded_at  data`.
fn print_point(p: &MetricPoint) {
    outln!("{:>6}  {}  {}", p.seq, p.recorded_at, p.data);
}

fn metrics(a: super::MetricsArgs, c: &ClientOpts) -> Outcome {
    if a.plot.is_some() {
        let socket = c.socket_path();
        return super::plot::command(&a, |id, cursor| fetch_metrics(&socket, id, cursor));
    }
    let [id] = a.ids.as_slice() else {
        return Err(Failure::Usage(
            "several ids need --plot KEY (their curves are drawn on one chart)".into(),
        ));
    };
    let mut client = connect(c)?;
    client.send(&Request::Metrics {
        id: op_id(id),
        cursor: a.cursor,
        limit: None,
        follow: a.follow,
    })?;
    let mut all = Vec::new();
    let mut cursor = a.cursor;
    while let Some(page) = client.recv::<MetricsPage>()? {
        cursor = page.cursor;
        if a.follow && !c.json {
            page.metrics.iter().for_each(print_point);
        }
        all.extend(page.metrics);
        if !a.follow || page.event == Some(StreamEvent::End) {
            break;
        }
    }
    if c.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&MetricsPage {
                metrics: all,
                cursor,
                event: None,
            })
            .unwrap_or_default()
        );
    } else if !a.follow {
        all.iter().for_each(print_point);
        eprintln!("cursor: {cursor} (pass --cursor {cursor} to get only newer points)");
    }
    Ok(ExitCode::SUCCESS)
}

/// The points of `id` after `cursor`, the next cursor, and whether `id`
/// has stopped (read first, so no point recorded before the end is missed).
fn fetch_metrics(
    socket: &std::path::Path,
    id: &str,
    cursor: i64,
) -> Result<(Vec<Value>, i64, bool), Failure> {
    let mut client = Client::connect(socket)?;
    let id = op_id(id);
    let over = !client.get(&id)?.status.is_active();
    let page = client.metrics(&id, cursor, Some(100_000))?;
    let points = page
        .metrics
        .iter()
        .map(|p| serde_json::to_value(p).unwrap_or_default())
        .collect();
    Ok((points, page.cursor, over))
}

fn dashboard(c: &ClientOpts) -> Outcome {
    let health = connect(c)?.health()?;
    let v = serde_json::to_value(&health).unwrap_or_default();
    let url = crate::http::dashboard_url(&v).map_err(Failure::Request)?;
    if c.json {
        println!("{}", json!({ "url": url }));
    } else {
        println!("{url}");
    }
    Ok(ExitCode::SUCCESS)
}

fn children(id: &str, c: &ClientOpts) -> Outcome {
    let ops = connect(c)?.children(&op_id(id))?;
    if c.json {
        print_json(&crate::protocol::Listed {
            operations: ops,
            total: None,
            active: None,
        });
    } else {
        if ops.is_empty() {
            eprintln!("{id} has no children");
        } else {
            outln!("{}", output::operations_table(&ops));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn logs(a: super::LogsArgs, c: &ClientOpts) -> Outcome {
    let mut client = connect(c)?;
    client.send(&Request::logs(op_id(&a.id), a.follow))?;
    let mut text = String::new();
    let mut printed = false;
    while let Some(chunk) = client.recv::<crate::protocol::LogChunk>()? {
        printed |= !chunk.text.is_empty();
        if c.json {
            text.push_str(&chunk.text);
        } else {
            out!("{}", chunk.text);
        }
        if !a.follow || chunk.event == Some(StreamEvent::End) {
            break;
        }
    }
    if c.json {
        outln!("{}", json!({ "operation_id": a.id, "text": text }));
    } else if !printed {
        // A program that prints nothing leaves no log file (its start and
        // exit are in `opsd show`).
        eprintln!(
            "{} has printed nothing; `opsd show {}` has its status",
            a.id, a.id
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn checkpoints(a: super::CheckpointsArgs, c: &ClientOpts) -> Outcome {
    let id = match a.args.as_slice() {
        [] => None,
        [verb, id] if verb == "delete" => {
            let v = connect(c)?.delete_checkpoint(&op_id(id))?;
            if c.json {
                print_json(&v);
            } else {
                eprintln!("deleted the checkpoint of {}", v.deleted);
            }
            return Ok(ExitCode::SUCCESS);
        }
        [id] => Some(op_id(id)),
        _ => {
            return Err(Failure::Usage(
                "usage: opsd checkpoints [ID] | opsd checkpoints delete ID".into(),
            ))
        }
    };
    let v = connect(c)?.checkpoints(id)?;
    if c.json {
        print_json(&v);
        return Ok(ExitCode::SUCCESS);
    }
    if v.checkpoints.is_empty() {
        eprintln!("no checkpoints");
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = output::table(&["OPERATION", "TYPE", "CREATED", "STATE", "FILES", "PROGRESS"]);
    for cp in &v.checkpoints {
        let progress = cp
            .progress_percent
            .map_or_else(|| "-".to_string(), |p| format!("{p:.1}%"));
        t.add_row(vec![
            cp.operation_id.to_string(),
            cp.checkpoint_type.to_string(),
            cp.created_at.chars().take(19).collect(),
            output::bytes(cp.state_size_bytes),
            output::bytes(cp.artifacts_size_bytes),
            progress,
        ]);
    }
    outln!("{t}");
    Ok(ExitCode::SUCCESS)
}

/// `opsd hosts`: the daemons sharing this store.
fn hosts(c: &ClientOpts) -> Outcome {
    let list = connect(c)?.hosts()?;
    if c.json {
        print_json(&list);
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = output::table(&["HOST", "VERSION", "WORKERS", "GPUS", "TYPES", "LAST SEEN"]);
    let joined = |x: &Value| {
        x.as_array()
            .map(|a| a.iter().map(output::text).collect::<Vec<_>>().join(","))
            .unwrap_or_default()
    };
    for h in &list.hosts {
        t.add_row(vec![
            h.host.clone(),
            h.version.clone(),
            h.workers.to_string(),
            joined(&h.gpus),
            joined(&h.types),
            h.last_seen_at.clone(),
        ]);
    }
    outln!("{t}");
    Ok(ExitCode::SUCCESS)
}

fn health(c: &ClientOpts) -> Outcome {
    let v = connect(c)?.health()?;
    if c.json {
        print_json(&v);
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = output::table(&["", ""]);
    t.add_row(vec!["version".into(), v.version.clone()]);
    t.add_row(vec!["uptime".into(), output::duration(v.uptime_seconds)]);
    t.add_row(vec!["state_dir".into(), v.state_dir.display().to_string()]);
    t.add_row(vec!["db".into(), v.db.clone()]);
    t.add_row(vec!["socket".into(), v.socket.display().to_string()]);
    t.add_row(vec!["workers".into(), v.workers.to_string()]);
    t.add_row(vec!["pid".into(), v.pid.to_string()]);
    let counts: Vec<String> = v.counts.iter().map(|(k, n)| format!("{k} {n}")).collect();
    t.add_row(vec!["operations".into(), counts.join(" · ")]);
    t.add_row(vec!["gpus".into(), v.gpus.to_string()]);
    t.add_row(vec!["recovery".into(), v.recovery.to_string()]);
    outln!("{t}");
    Ok(ExitCode::SUCCESS)
}
