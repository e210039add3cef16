//! Benchmark of `command` jobs through a real daemon (`cargo bench --bench
//! command`): launch overhead of trivial `/bin/true` jobs against a shell
//! loop starting the same processes, progress-file ingest rate, and the
//! daemon's CPU while 8 programs each report 1,000 progress lines a second.
//!
//! Plain `fn main` (no harness): it prints a table. `OPSD_BENCH_QUICK=1`
//! runs a smaller version.

#[path = "support/serve.rs"]
mod serve;

use opsd::client::Client;
use opsd::protocol::{Request, Submit};
use serde_json::{json, Value};

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

struct Daemon {
    _dir: tempfile::TempDir,
    state: PathBuf,
    socket: PathBuf,
    child: Child,
}

impl Daemon {
    fn start(config: &str) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().to_path_buf();
        let (mut child, socket) =
            serve::spawn(Path::new(env!("CARGO_BIN_EXE_opsd")), &state, config);
        serve::wait_ready(&mut child, &socket, Duration::from_secs(30));
        Daemon {
            _dir: dir,
            state,
            socket,
            child,
        }
    }

    fn req(&self, r: impl Into<Request>) -> Value {
        let r = r.into();
        let v = Client::connect(&self.socket)
            .and_then(|mut c| c.value(&r))
            .expect("a response");
        assert_eq!(v["ok"], true, "{r} -> {v}");
        v
    }

    fn submit(&self, argv: Value) -> String {
        let r = self.req(Submit::new("command", json!({ "argv": argv })));
        r["operation_id"].as_str().unwrap_or_default().to_string()
    }

    fn status(&self, id: &str) -> String {
        let r = self.req(Request::get(id));
        r["operation"]["status"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn wait_final(&self, id: &str) {
        while !matches!(
            self.status(id).as_str(),
            "completed" | "failed" | "cancelled"
        ) {
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// User + system CPU seconds of the daemon so far.
    fn cpu_seconds(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        let ticks: f64 = fields.get(11..13).map_or(0.0, |f| {
            f.iter().filter_map(|v| v.parse::<f64>().ok()).sum()
        });
        let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .unwrap_or(100) as f64;
        ticks / hz
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn row(name: &str, value: String) {
    println!("| {name:<58} | {value:>22} |");
}

fn main() {
    let quick = std::env::var_os("OPSD_BENCH_QUICK").is_some();
    let n_latency = if quick { 50 } else { 200 };
    let n_throughput = if quick { 100 } else { 500 };
    let n_lines: usize = if quick { 50_000 } else { 200_000 };
    // A [concurrency] table replaces the defaults of every type, so the
    // pipeline limit (which must stay below `workers`) is restated.
    let d = Daemon::start("[concurrency]\ncommand = 8\npipeline = 4\n");

    // Launch latency: one job at a time, submit -> running as seen through
    // the socket (polled in a tight loop), and submit -> completed.
    let mut to_running = Vec::new();
    let mut to_done = Vec::new();
    for _ in 0..n_latency {
        let t0 = Instant::now();
        let id = d.submit(json!(["/bin/true"]));
        loop {
            let s = d.status(&id);
            if s != "pending" {
                to_running.push(t0.elapsed().as_secs_f64() * 1e3);
                break;
            }
        }
        d.wait_final(&id);
        to_done.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    to_running.sort_by(f64::total_cmp);
    to_done.sort_by(f64::total_cmp);

    // Throughput: a batch of jobs in one durable submit, until all are done.
    let ops: Vec<Submit> = (0..n_throughput)
        .map(|_| Submit::new("command", json!({ "argv": ["/bin/true"] })))
        .collect();
    let t0 = Instant::now();
    let r = d.req(Request::SubmitBatch { operations: ops });
    let ids: Vec<String> = r["operations"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|o| o["operation_id"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default();
    for id in ids.iter().rev() {
        d.wait_final(id);
    }
    let daemon_rate = n_throughput as f64 / t0.elapsed().as_secs_f64();

    // The same processes from a shell loop.
    let t0 = Instant::now();
    let script = format!("i=0; while [ $i -lt {n_throughput} ]; do /bin/true; i=$((i+1)); done");
    let ok = Command::new("sh")
        .arg("-c")
        .arg(&script)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "shell loop failed");
    let shell_secs = t0.elapsed().as_secs_f64();
    let shell_rate = n_throughput as f64 / shell_secs;
    let shell_ms = shell_secs * 1e3 / n_throughput as f64;

    // Ingest: a prepared progress file appended at once by `cat`; the time
    // from submit to completed is dominated by reading and applying it.
    let ingest = |kind: &str| -> f64 {
        let file = d.state.join(format!("bench-{kind}.jsonl"));
        let mut text = String::with_capacity(n_lines * 80);
        for i in 0..n_lines {
            let line = match kind {
                "progress" => {
                    json!({ "progress": { "percentage": i as f64 * 100.0 / n_lines as f64, "message": format!("Batch {i}/{n_lines}"), "context": { "batch": i } } })
                }
                _ => json!({ "metric": { "step": i, "loss": 1.0 / (i as f64 + 1.0) } }),
            };
            text.push_str(&line.to_string());
            text.push('\n');
        }
        std::fs::write(&file, text).expect("write lines");
        let cmd = format!("cat '{}' >> \"$OPSD_PROGRESS_FILE\"", file.display());
        let t0 = Instant::now();
        let id = d.submit(json!(["sh", "-c", cmd]));
        d.wait_final(&id);
        n_lines as f64 / t0.elapsed().as_secs_f64()
    };
    let progress_rate = ingest("progress");
    let metric_rate = ingest("metric");

    // CPU: 8 programs, each 1,000 progress lines a second for a while.
    let secs = if quick { 3 } else { 10 };
    let writer = format!(
        "import json, os, time\n\
         f = os.open(os.environ['OPSD_PROGRESS_FILE'], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)\n\
         t0 = time.monotonic()\n\
         for i in range({n}):\n\
         \x20   os.write(f, (json.dumps({{'progress': {{'percentage': i / {n} * 100, 'message': 'step %d' % i}}}}) + '\\n').encode())\n\
         \x20   d = t0 + (i + 1) / 1000 - time.monotonic()\n\
         \x20   if d > 0: time.sleep(d)\n",
        n = secs * 1000
    );
    let ids: Vec<String> = (0..8)
        .map(|_| d.submit(json!(["python3", "-c", writer])))
        .collect();
    // Measure from when all eight are running.
    while ids.iter().any(|id| d.status(id) == "pending") {
        std::thread::sleep(Duration::from_millis(5));
    }
    let (cpu0, t0) = (d.cpu_seconds(), Instant::now());
    for id in &ids {
        d.wait_final(id);
    }
    let cpu_pct = (d.cpu_seconds() - cpu0) / t0.elapsed().as_secs_f64() * 100.0;

    println!();
    println!("| {:<58} | {:>22} |", "command jobs", "");
    println!("|{}|{}|", "-".repeat(60), "-".repeat(24));
    row(
        &format!("submit -> running, p50 / p99 ({n_latency} jobs, one at a time)"),
        format!(
            "{:.2} / {:.2} ms",
            percentile(&to_running, 0.5),
            percentile(&to_running, 0.99)
        ),
    );
    row(
        "submit -> completed, p50 / p99 (/bin/true)",
        format!(
            "{:.2} / {:.2} ms",
            percentile(&to_done, 0.5),
            percentile(&to_done, 0.99)
        ),
    );
    row("shell loop, per /bin/true", format!("{shell_ms:.2} ms"));
    row(
        "launch overhead ratio (p50 submit->completed / shell)",
        format!("{:.1}x", percentile(&to_done, 0.5) / shell_ms),
    );
    row(
        &format!("throughput, {n_throughput} jobs in one batch (8 at a time)"),
        format!("{daemon_rate:.0} jobs/s"),
    );
    row("shell loop throughput", format!("{shell_rate:.0} procs/s"));
    row(
        "throughput ratio (shell / daemon)",
        format!("{:.1}x", shell_rate / daemon_rate),
    );
    row(
        &format!("ingest, {n_lines} progress lines"),
        format!("{progress_rate:.0} lines/s"),
    );
    row(
        &format!("ingest, {n_lines} metric lines (to SQLite)"),
        format!("{metric_rate:.0} lines/s"),
    );
    row(
        &format!("daemon CPU, 8 jobs x 1,000 progress lines/s for {secs} s"),
        format!("{cpu_pct:.1} % of a core"),
    );
}
