//! One function per subcommand. Each returns the exit code of SPEC §6:
//! 0 success, 1 the request failed (message on stderr), 2 usage error.

use super::watch::{self as watching, WatchEnd};
use super::{output, ClientOpts, Command};
use crate::client::{call, Client, ClientError};
use crate::config::Config;
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

/// Run a parsed subcommand.
pub fn run(cmd: Command) -> ExitCode {
    let result = match cmd {
        Command::Serve(a) => serve(a),
        Command::Submit(a) => submit(a),
        Command::List(a) => list(a),
        Command::Show(a) => show(&a.id, &a.client),
        Command::Watch(a) => watch(&a.id, a.cancel_on_interrupt, &a.client),
        Command::Cancel(a) => cancel(&a.id, a.reason, &a.client),
        Command::Resume(a) => simple(&a.client, json!({"cmd": "resume", "id": a.id}), |v| {
            format!("{} is resuming", output::text(&v["operation_id"]))
        }),
        Command::Metrics(a) => metrics(a),
        Command::Children(a) => children(&a.id, &a.client),
        Command::Logs(a) => logs(a),
        Command::Checkpoints(a) => checkpoints(a),
        Command::Health(a) => health(&a.client),
        Command::Hosts(a) => hosts(&a.client),
        Command::Demo(a) => super::demo::run(a),
    };
    match result {
        Ok(code) => code,
        Err(Failure::Request(m)) => {
            eprintln!("error: {m}");
            ExitCode::from(1)
        }
        Err(Failure::Usage(m)) => {
            eprintln!("error: {m}");
            ExitCode::from(2)
        }
    }
}

type Outcome = Result<ExitCode, Failure>;

fn print_json(v: &Value) {
    let mut v = v.clone();
    if let Value::Object(m) = &mut v {
        m.remove("ok");
    }
    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
}

fn simple(client: &ClientOpts, req: Value, human: impl Fn(&Value) -> String) -> Outcome {
    let v = call(&client.socket_path(), &req)?;
    if client.json {
        print_json(&v);
    } else {
        eprintln!("{}", human(&v));
    }
    Ok(ExitCode::SUCCESS)
}

fn serve(a: super::ServeArgs) -> Outcome {
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
    if a.socket.is_some() {
        config.socket = a.socket;
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

fn submit(a: super::SubmitArgs) -> Outcome {
    let mut params = build_params(a.params_json.as_deref(), &a.params)?;
    absolutize(&a.kind, &mut params);
    let mut req = json!({ "cmd": "submit", "type": a.kind, "params": params, "priority": a.priority, "gpus": a.gpus });
    for (k, v) in [
        ("parent", a.parent),
        ("key", a.key),
        ("run_after", a.run_after),
    ] {
        if let Some(v) = v {
            req[k] = json!(v);
        }
    }
    if let Some(n) = a.max_attempts {
        req["max_attempts"] = json!(n);
    }
    let v = call(&a.client.socket_path(), &req)?;
    let id = output::text(&v["operation_id"]);
    if a.client.json {
        println!(
            "{}",
            json!({ "operation_id": v["operation_id"], "status": v["status"] })
        );
    } else {
        println!("{id}");
        if v["created"] == false {
            eprintln!("(already submitted with this key; this is the first operation)");
        }
    }
    if a.watch {
        return watch(&id, false, &a.client);
    }
    Ok(ExitCode::SUCCESS)
}

fn list(a: super::ListArgs) -> Outcome {
    let mut req = json!({ "cmd": "list", "status": a.status, "active": a.active, "limit": a.limit, "offset": a.offset });
    if let Some(t) = a.kind {
        req["type"] = json!(t);
    }
    if let Some(p) = a.parent {
        req["parent"] = json!(p);
    }
    let v = call(&a.client.socket_path(), &req)?;
    if a.client.json {
        print_json(&v);
        return Ok(ExitCode::SUCCESS);
    }
    let ops = v["operations"].as_array().cloned().unwrap_or_default();
    if ops.is_empty() {
        eprintln!("no operations match; submit one with `opsd submit dummy`");
    } else {
        println!("{}", output::operations_table(&ops));
    }
    eprintln!(
        "{} shown of {} matching · {} active",
        ops.len(),
        v["total"],
        v["active"]
    );
    Ok(ExitCode::SUCCESS)
}

fn show(id: &str, c: &ClientOpts) -> Outcome {
    let v = call(&c.socket_path(), &json!({ "cmd": "get", "id": id }))?;
    let op = &v["operation"];
    if c.json {
        println!("{}", serde_json::to_string_pretty(op).unwrap_or_default());
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = output::table(&["FIELD", "VALUE"]);
    if let Value::Object(m) = op {
        for (k, v) in m {
            let shown = match v {
                Value::Object(_) | Value::Array(_) => {
                    serde_json::to_string_pretty(v).unwrap_or_default()
                }
                other => output::text(other),
            };
            t.add_row(vec![k.clone(), shown]);
        }
    }
    println!("{t}");
    Ok(ExitCode::SUCCESS)
}

fn exit_for(op: &Value) -> ExitCode {
    if op["status"] == "completed" {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn watch(id: &str, cancel_on_interrupt: bool, c: &ClientOpts) -> Outcome {
    let interrupted = Arc::new(AtomicBool::new(false));
    let _ = signal_hook::flag::register(signal_hook::consts::SIGINT, interrupted.clone());
    match watching::watch(&c.socket_path(), id, c.json, &interrupted)? {
        WatchEnd::Finished(op) => {
            if c.json {
                println!("{}", serde_json::to_string_pretty(&op).unwrap_or_default());
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
    let v = call(
        &c.socket_path(),
        &json!({ "cmd": "cancel", "id": id, "reason": reason }),
    )?;
    if c.json {
        print_json(&v);
    } else if v["status"] == "running" {
        eprintln!(
            "{id}: cancel requested; it stops at its next checkpoint (see `opsd watch {id}`)"
        );
    } else {
        eprintln!("{id}: {}", output::text(&v["status"]));
    }
    Ok(ExitCode::SUCCESS)
}

/// One metric point as a line: `seq  recorded_at  data`.
fn print_point(p: &Value) {
    println!(
        "{:>6}  {}  {}",
        p["seq"],
        output::text(&p["recorded_at"]),
        p["data"]
    );
}

fn metrics(a: super::MetricsArgs) -> Outcome {
    let mut client = Client::connect(&a.client.socket_path())?;
    client
        .send(&json!({ "cmd": "metrics", "id": a.id, "cursor": a.cursor, "follow": a.follow }))?;
    let mut all = Vec::new();
    let mut cursor = a.cursor;
    while let Some(v) = client.recv()? {
        cursor = v["cursor"].as_i64().unwrap_or(cursor);
        let points = v["metrics"].as_array().cloned().unwrap_or_default();
        if a.follow && !a.client.json {
            points.iter().for_each(print_point);
        }
        all.extend(points);
        if !a.follow || v["event"] == "end" {
            break;
        }
    }
    if a.client.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "metrics": all, "cursor": cursor }))
                .unwrap_or_default()
        );
    } else if !a.follow {
        all.iter().for_each(print_point);
        eprintln!("cursor: {cursor} (pass --cursor {cursor} to get only newer points)");
    }
    Ok(ExitCode::SUCCESS)
}

fn children(id: &str, c: &ClientOpts) -> Outcome {
    let v = call(&c.socket_path(), &json!({ "cmd": "children", "id": id }))?;
    if c.json {
        print_json(&v);
    } else {
        let ops = v["operations"].as_array().cloned().unwrap_or_default();
        if ops.is_empty() {
            eprintln!("{id} has no children");
        } else {
            println!("{}", output::operations_table(&ops));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn logs(a: super::LogsArgs) -> Outcome {
    use std::io::Write;
    let mut client = Client::connect(&a.client.socket_path())?;
    client.send(&json!({ "cmd": "logs", "id": a.id, "follow": a.follow }))?;
    let mut text = String::new();
    while let Some(v) = client.recv()? {
        let chunk = v["text"].as_str().unwrap_or("");
        if a.client.json {
            text.push_str(chunk);
        } else {
            print!("{chunk}");
            let _ = std::io::stdout().flush();
        }
        if !a.follow || v["event"] == "end" {
            break;
        }
    }
    if a.client.json {
        println!("{}", json!({ "operation_id": a.id, "text": text }));
    }
    Ok(ExitCode::SUCCESS)
}

fn checkpoints(a: super::CheckpointsArgs) -> Outcome {
    let req = match a.args.as_slice() {
        [] => json!({ "cmd": "checkpoints" }),
        [verb, id] if verb == "delete" => json!({ "cmd": "delete_checkpoint", "id": id }),
        [id] => json!({ "cmd": "checkpoints", "id": id }),
        _ => {
            return Err(Failure::Usage(
                "usage: opsd checkpoints [ID] | opsd checkpoints delete ID".into(),
            ))
        }
    };
    let v = call(&a.client.socket_path(), &req)?;
    if a.client.json {
        print_json(&v);
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(id) = v["deleted"].as_str() {
        eprintln!("deleted the checkpoint of {id}");
        return Ok(ExitCode::SUCCESS);
    }
    let list = v["checkpoints"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        eprintln!("no checkpoints");
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = output::table(&["OPERATION", "TYPE", "CREATED", "STATE", "FILES", "PROGRESS"]);
    for c in &list {
        t.add_row(vec![
            output::text(&c["operation_id"]),
            output::text(&c["checkpoint_type"]),
            output::text(&c["created_at"]).chars().take(19).collect(),
            output::bytes(c["state_size_bytes"].as_i64().unwrap_or(0)),
            output::bytes(c["artifacts_size_bytes"].as_i64().unwrap_or(0)),
            format!("{:.1}%", c["progress_percent"].as_f64().unwrap_or(0.0)),
        ]);
    }
    println!("{t}");
    Ok(ExitCode::SUCCESS)
}

/// `opsd hosts`: the daemons sharing this store.
fn hosts(c: &ClientOpts) -> Outcome {
    let v = call(&c.socket_path(), &json!({ "cmd": "hosts" }))?;
    if c.json {
        print_json(&v);
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = output::table(&["HOST", "VERSION", "WORKERS", "GPUS", "TYPES", "LAST SEEN"]);
    let list = |x: &Value| {
        x.as_array()
            .map(|a| a.iter().map(output::text).collect::<Vec<_>>().join(","))
            .unwrap_or_default()
    };
    for h in v["hosts"].as_array().cloned().unwrap_or_default() {
        t.add_row(vec![
            output::text(&h["host"]),
            output::text(&h["version"]),
            output::text(&h["workers"]),
            list(&h["gpus"]),
            list(&h["types"]),
            output::text(&h["last_seen_at"]),
        ]);
    }
    println!("{t}");
    Ok(ExitCode::SUCCESS)
}

fn health(c: &ClientOpts) -> Outcome {
    let v = call(&c.socket_path(), &json!({ "cmd": "health" }))?;
    if c.json {
        print_json(&v);
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = output::table(&["", ""]);
    t.add_row(vec!["version".into(), output::text(&v["version"])]);
    t.add_row(vec![
        "uptime".into(),
        output::duration(v["uptime_seconds"].as_f64().unwrap_or(0.0)),
    ]);
    for k in ["state_dir", "db", "socket", "workers", "pid"] {
        t.add_row(vec![k.to_string(), output::text(&v[k])]);
    }
    if let Value::Object(m) = &v["counts"] {
        let counts: Vec<String> = m.iter().map(|(k, n)| format!("{k} {n}")).collect();
        t.add_row(vec!["operations".into(), counts.join(" · ")]);
    }
    t.add_row(vec!["gpus".into(), v["gpus"].to_string()]);
    t.add_row(vec!["recovery".into(), v["recovery"].to_string()]);
    println!("{t}");
    Ok(ExitCode::SUCCESS)
}
