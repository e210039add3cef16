//! Durability and job-overhead benchmarks (issues 3 and 5):
//!
//! 1. SIGTERM → exit of a real `opsd serve` with 8 running operations that
//!    checkpoint on the way out.
//! 2. Start → every resumable operation running again, with 1,000,000
//!    operations in the database (target: under 1 s).
//! 3. The cost of one durable checkpoint with a 1 MB state.
//! 4. The overhead of periodic checkpointing on a dummy loop.
//! 5. Backtest and training through the daemon against the engine called
//!    directly (target: at most 3 % overhead).
//!
//! Run: `cargo build --release && cargo bench --bench durability`
//! (`-- quick` for fewer rows and runs). Medians of several runs.

#[path = "support/prefill.rs"]
mod prefill;
#[path = "support/serve.rs"]
mod serve;

use opsd::client::Client;
use opsd::config::Config;
use opsd::control::{ProgressUpdate, RunControl};
use opsd::daemon::Daemon;
use opsd::protocol::{Request, Submit};
use serde_json::{json, Value};

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn request(socket: &Path, r: impl Into<Request>) -> Value {
    Client::connect(socket)
        .and_then(|mut c| c.value(&r.into()))
        .expect("a response")
}

fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while t.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    false
}

fn release_bin() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/opsd");
    assert!(
        p.exists(),
        "build the release binary first: cargo build --release"
    );
    p
}

fn spawn(dir: &Path, config: &str) -> (Child, PathBuf) {
    serve::spawn(&release_bin(), dir, config)
}

fn sigterm(child: &Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
}

/// Section 1: SIGTERM to exit with 8 running dummies that checkpoint.
fn shutdown_with_eight(runs: usize) -> f64 {
    let mut times = Vec::new();
    for _ in 0..runs {
        let dir = tempfile::tempdir().expect("tmp");
        let (mut child, socket) = spawn(dir.path(), "[concurrency]\ndummy = 8\n");
        serve::wait_ready(&mut child, &socket, Duration::from_secs(10));
        let ids: Vec<String> = (0..8)
            .map(|_| {
                request(
                    &socket,
                    Submit::new("dummy", json!({"steps":100000,"step_ms":10})),
                )["operation_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect();
        assert!(wait_until(Duration::from_secs(10), || {
            ids.iter().all(|id| {
                request(&socket, Request::get(id))["operation"]["steps_completed"]
                    .as_i64()
                    .unwrap_or(0)
                    >= 2
            })
        }));
        let t = Instant::now();
        sigterm(&child);
        let status = child.wait().expect("wait");
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        assert!(status.success());
        let db = rusqlite::Connection::open(dir.path().join("opsd.db")).expect("db");
        let n: i64 = db
            .query_row(
                "SELECT count(*) FROM operation_checkpoints WHERE checkpoint_type = 'shutdown'",
                [],
                |r| r.get(0),
            )
            .expect("count");
        assert_eq!(n, 8, "every operation left a shutdown checkpoint");
    }
    median(times)
}

/// Fill a fresh database with `rows` completed operations plus `stopped`
/// dummies stopped by a shutdown (with checkpoints).
fn prefill(db: &Path, rows: usize, stopped: usize) {
    let store = opsd::store::open(db).expect("open");
    store.close();
    let mut c = rusqlite::Connection::open(db).expect("db");
    c.pragma_update(None, "synchronous", "OFF").expect("pragma");
    let tx = c.transaction().expect("tx");
    {
        let mut ins = tx
            .prepare(
                "INSERT INTO operations (operation_id, operation_type, status, created_at, updated_at, \
                 completed_at, progress_percent, metadata, attempt) \
                 VALUES (?1, 'dummy', ?2, ?3, ?3, ?3, 100, '{\"steps\":1,\"step_ms\":0}', 1)",
            )
            .expect("prepare");
        for i in 0..rows {
            ins.execute(rusqlite::params![
                prefill::id(i),
                "completed",
                prefill::at(i)
            ])
            .expect("insert");
        }
        let mut stop = tx
            .prepare(
                "INSERT INTO operations (operation_id, operation_type, status, stop_reason, created_at, updated_at, \
                 progress_percent, metadata, attempt) \
                 VALUES (?1, 'dummy', 'cancelled', 'shutdown', '2026-02-01T00:00:00.000000Z', '2026-02-01T00:00:00.000000Z', 50, \
                 '{\"steps\":100000,\"step_ms\":10,\"fail_at_step\":null,\"panic_at_step\":null,\"ignore_stop\":false,\"checkpoint_every\":1000}', 1)",
            )
            .expect("prepare");
        let mut cp = tx
            .prepare(
                "INSERT INTO operation_checkpoints (operation_id, checkpoint_type, created_at, state, metrics_seq) \
                 VALUES (?1, 'shutdown', '2026-02-01T00:00:00.000000Z', '{\"step\":5}', 0)",
            )
            .expect("prepare");
        for i in 0..stopped {
            let id = format!("op_dummy_20260201_000000_{i:08x}");
            stop.execute([&id]).expect("insert");
            cp.execute([&id]).expect("insert");
        }
    }
    tx.commit().expect("commit");
}

/// Section 2: start to every resumable operation running again, 1M rows.
fn recovery_at_scale(rows: usize, runs: usize) -> (f64, f64) {
    const STOPPED: usize = 100;
    let template = tempfile::tempdir().expect("tmp");
    let db = template.path().join("opsd.db");
    let t = Instant::now();
    prefill(&db, rows, STOPPED);
    let fill = t.elapsed().as_secs_f64();
    let mut times = Vec::new();
    for _ in 0..runs {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::copy(&db, dir.path().join("opsd.db")).expect("copy");
        let t = Instant::now();
        let (mut child, socket) = spawn(dir.path(), "workers = 128\n[concurrency]\ndummy = 120\n");
        let ok = wait_until(Duration::from_secs(30), || {
            UnixStream::connect(&socket).is_ok()
                && request(&socket, Request::Health)["running"]
                    .as_array()
                    .map(|a| a.len())
                    .unwrap_or(0)
                    >= STOPPED
        });
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        assert!(ok, "resumed operations did not all start");
        sigterm(&child);
        let _ = child.wait();
    }
    (median(times), fill)
}

/// Section 3: one durable checkpoint of a 1 MB state, through the writer.
fn checkpoint_1mb(runs: usize) -> f64 {
    let dir = tempfile::tempdir().expect("tmp");
    let store = opsd::store::open(&dir.path().join("opsd.db")).expect("open");
    let kind = opsd::model::OperationType::Dummy;
    let id = store
        .submit(vec![opsd::store::records::NewOperation::new(
            kind,
            json!({}),
        )])
        .wait()
        .expect("insert")[0]
        .id
        .clone();
    let weights: Vec<f64> = (0..50_000).map(|i| (i as f64).sin()).collect();
    let state = json!({ "weights": weights });
    let size = state.to_string().len();
    let mut times = Vec::new();
    for _ in 0..runs {
        let checkpoint = opsd::store::records::Checkpoint {
            operation_id: id.clone(),
            checkpoint_type: opsd::model::CheckpointType::Periodic,
            created_at: opsd::ids::now(),
            state: state.clone(),
            artifacts_path: None,
            state_size_bytes: 0,
            artifacts_size_bytes: 0,
            progress_percent: None,
            metrics_seq: 0,
        };
        let t = Instant::now();
        store
            .save_checkpoint(opsd::store::records::CheckpointWrite {
                checkpoint,
                live: opsd::store::records::ProgressWrite {
                    id: id.clone(),
                    attempt: 0,
                    progress: Default::default(),
                    points: Vec::new(),
                },
                parent: None,
            })
            .wait()
            .expect("save");
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    store.close();
    println!("    (state {:.2} MB as JSON)", size as f64 / 1e6);
    median(times)
}

fn in_process(dir: &Path, extra: impl FnOnce(&mut Config)) -> Daemon {
    let mut cfg = Config {
        state_dir: dir.to_path_buf(),
        socket: Some(dir.join("opsd.sock")),
        ..Config::default()
    };
    extra(&mut cfg);
    Daemon::start(cfg).expect("daemon")
}

/// Submit, wait, and return the seconds from creation to completion as the
/// daemon recorded them (its own timestamps), so the benchmark's polling
/// (every 25 ms) neither adds to the figure nor steals much CPU from it.
fn run_to_end(socket: &Path, kind: &str, params: Value) -> (f64, Value) {
    let id = request(socket, Submit::new(kind, params))["operation_id"]
        .as_str()
        .expect("an id")
        .to_string();
    let op = loop {
        std::thread::sleep(Duration::from_millis(25));
        let op = request(socket, Request::get(&id))["operation"].clone();
        if matches!(
            op["status"].as_str(),
            Some("completed" | "failed" | "cancelled")
        ) {
            break op;
        }
    };
    assert_eq!(op["status"], "completed", "{op}");
    let at = |k: &str| {
        chrono::DateTime::parse_from_rfc3339(op[k].as_str().unwrap_or_default()).expect("timestamp")
    };
    let secs = (at("completed_at") - at("created_at"))
        .num_microseconds()
        .unwrap_or(0) as f64
        / 1e6;
    (secs, op)
}

/// Section 4: a dummy loop with a checkpoint every step against none, with the
/// rate limit at `min_interval_ms` (0: every checkpoint is written).
fn periodic_checkpoint_overhead(runs: usize, min_interval_ms: u64) -> (f64, f64) {
    let dir = tempfile::tempdir().expect("tmp");
    let d = in_process(dir.path(), |c| {
        c.checkpoint_min_interval_ms = min_interval_ms
    });
    let steps = 500;
    let mut every = Vec::new();
    let mut never = Vec::new();
    for _ in 0..runs {
        every.push(
            run_to_end(
                &d.socket,
                "dummy",
                json!({"steps": steps, "step_ms": 0, "checkpoint_every": 1}),
            )
            .0,
        );
        never.push(
            run_to_end(
                &d.socket,
                "dummy",
                json!({"steps": steps, "step_ms": 0, "checkpoint_every": 1_000_000}),
            )
            .0,
        );
    }
    d.stop(&|| false);
    let (e, n) = (median(every), median(never));
    ((e - n) / steps as f64 * 1e6, n / steps as f64 * 1e6)
}

struct Noop;
impl RunControl for Noop {
    fn progress(&mut self, _: ProgressUpdate) {}
    fn metric(&mut self, _: Value) {}
    fn checkpoint(&mut self, _: Value) -> Result<(), String> {
        Ok(())
    }
    fn stop_requested(&self) -> bool {
        false
    }
}

/// A synthetic daily series of `n` bars (a random walk), written as CSV.
fn synthetic_csv(path: &Path, n: usize) {
    let mut s = String::from(",Open,High,Low,Close,Volume\n");
    let mut price = 100.0f64;
    let mut x: u64 = 0x2545F4914F6CDD1D;
    let start = chrono::NaiveDate::from_ymd_opt(1900, 1, 1).expect("date");
    for i in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let r = ((x >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * 0.04;
        let open = price;
        price = (price * (1.0 + r)).max(1.0);
        let (hi, lo) = (open.max(price) * 1.005, open.min(price) * 0.995);
        let day = start + chrono::Duration::days(i as i64);
        s.push_str(&format!(
            "{day},{open:.4},{hi:.4},{lo:.4},{price:.4},{}\n",
            1000 + i % 500
        ));
    }
    std::fs::write(path, s).expect("csv");
}

/// Section 5: engines through the daemon against called directly.
fn job_overhead(runs: usize, bars: usize) -> Vec<(String, f64, f64)> {
    let dir = tempfile::tempdir().expect("tmp");
    let csv = dir.path().join("walk.csv");
    synthetic_csv(&csv, bars);
    let goog = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/GOOG.csv");
    let d = in_process(dir.path(), |_| {});
    let mut out = Vec::new();
    // Backtest: load + engine, both ways.
    let params = json!({"data": csv, "fast": 10, "slow": 30});
    let (mut direct, mut daemon) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        // On a thread of its own, as a daemon worker runs it (a fresh
        // thread has its own malloc arena; the main thread's is warmer).
        let (c, pp) = (csv.clone(), params.clone());
        direct.push(
            std::thread::spawn(move || {
                let t = Instant::now();
                let b = opsd::market::ohlcv::load_csv(&c).expect("load");
                let p = opsd::market::params::BacktestParams::from_json(&pp).expect("params");
                let _ = opsd::market::backtest::run_backtest(&b, &p, None, None, &mut Noop)
                    .expect("run");
                t.elapsed().as_secs_f64()
            })
            .join()
            .expect("thread"),
        );
        daemon.push(run_to_end(&d.socket, "backtest", params.clone()).0);
    }
    out.push((
        format!("backtest sma_cross, {bars} bars"),
        median(direct),
        median(daemon),
    ));
    // Training: GOOG with more epochs so the run is long enough to time.
    let tparams = json!({"data": goog, "epochs": 200});
    let (mut direct, mut daemon) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let t = Instant::now();
        let b = opsd::market::ohlcv::load_csv(&goog).expect("load");
        let p = opsd::ml::TrainingParams::from_json(&tparams).expect("params");
        let model = dir.path().join("direct-model.json");
        let _ = opsd::ml::run_training(&b, &p, &model, None, &mut Noop).expect("train");
        direct.push(t.elapsed().as_secs_f64());
        daemon.push(run_to_end(&d.socket, "training", tparams.clone()).0);
    }
    out.push((
        "training GOOG, 200 epochs".into(),
        median(direct),
        median(daemon),
    ));
    d.stop(&|| false);
    out
}

fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    let (runs, rows) = if quick { (3, 100_000) } else { (5, 1_000_000) };
    println!(
        "opsd durability benchmarks ({} mode), medians of {runs} runs\n",
        if quick { "quick" } else { "full" }
    );
    let t = shutdown_with_eight(runs);
    println!("1. SIGTERM -> exit, 8 running operations checkpointing: {t:.1} ms");
    let (t, fill) = recovery_at_scale(rows, runs);
    println!("2. start -> 100 resumable operations running again, {rows} rows in the database: {t:.0} ms (target < 1000 ms; prefill took {fill:.1} s)");
    let t = checkpoint_1mb(runs * 4);
    println!("3. one durable checkpoint with a ~1 MB state: {t:.2} ms");
    let (per, base) = periodic_checkpoint_overhead(runs, 0);
    println!("4. periodic checkpoint on a dummy loop, every one written: {per:.0} µs per checkpoint (a step without one: {base:.1} µs)");
    let (per, _) = periodic_checkpoint_overhead(runs, 2000);
    println!("   with the default rate limit (2 s): {per:.1} µs per requested checkpoint");
    println!("5. engines through opsd against called directly:");
    println!(
        "   {:<36} {:>10} {:>10} {:>9}",
        "job", "direct s", "opsd s", "overhead"
    );
    for (name, direct, daemon) in job_overhead(runs, if quick { 200_000 } else { 2_000_000 }) {
        println!(
            "   {name:<36} {direct:>10.3} {daemon:>10.3} {:>8.1}%",
            (daemon / direct - 1.0) * 100.0
        );
    }
}
