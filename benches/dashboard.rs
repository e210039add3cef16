//! The dashboard's cost to the daemon (issue 13): the lifecycle of no-op
//! operations (section 3 of `benches/core`, smaller) with the dashboard
//! off, on but unused, on with 10 open `/` tabs (each polling
//! `/live/operations` once a second, as the page's script does), and on
//! with 10 scripts polling the uncached `/api/operations?limit=100` once a
//! second.
//!
//! cargo bench --bench dashboard                 # 20,000 ops, 3 rounds
//! cargo bench --bench dashboard -- 50000 5      # ops, rounds
//! cargo bench --bench dashboard -- 20000 0      # only the steady-state table
//!
//! First table: the daemon's CPU per second with the pollers and nothing
//! running (the dashboard's own cost, little affected by other load).
//! Second: the lifecycle's ops/s and CPU per operation in each setting.
//!
//! Rounds interleave the three settings so machine noise hits them alike.

#[path = "support/port.rs"]
mod port;

use opsd::client::Client;
use opsd::config::Config;
use opsd::daemon::Daemon;
use opsd::ids::OperationId;
use opsd::model::{OperationType, Status};
use opsd::protocol::Submit;
use opsd::store::records::ListFilter;
use serde_json::json;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BATCH: usize = 5_000;
const WORKERS: usize = 16;

#[derive(Clone, Copy, Debug)]
enum Mode {
    Off,
    Idle,
    Tabs(usize),
    Api(usize),
}

/// CPU seconds of this whole process so far (exited threads included).
fn process_cpu() -> f64 {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage only writes the struct it is given.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 * 1e-6;
    t(u.ru_utime) + t(u.ru_stime)
}

/// CPU seconds of the calling thread.
fn thread_cpu() -> f64 {
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: clock_gettime only writes the struct it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// CPU nanoseconds the pollers spent (subtracted: a browser's cost is not
/// the daemon's).
static POLLER_CPU_NS: AtomicU64 = AtomicU64::new(0);

/// One poller: GET `path` once a second until `stop`; counts answers.
fn tab(port: u16, path: &str, token: String, stop: Arc<AtomicBool>, answered: Arc<AtomicU64>) {
    struct Count;
    impl Drop for Count {
        fn drop(&mut self) {
            POLLER_CPU_NS.fetch_add((thread_cpu() * 1e9) as u64, Ordering::Relaxed);
        }
    }
    let _count = Count;
    while !stop.load(Ordering::Acquire) {
        let t = Instant::now();
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
            );
            let mut buf = Vec::new();
            if s.read_to_end(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.1 200") {
                answered.fetch_add(1, Ordering::Relaxed);
            }
        }
        while t.elapsed() < Duration::from_secs(1) && !stop.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A temporary state directory under `OPSD_BENCH_DIR` (else cargo's
/// target tmp dir).
fn bench_dir() -> tempfile::TempDir {
    let base = std::env::var_os("OPSD_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    std::fs::create_dir_all(&base).unwrap();
    tempfile::tempdir_in(base).unwrap()
}

/// The daemon's socket, through the one client.
type Conn = Client;

/// A daemon in `dir` running only dummies on `WORKERS` slots, with the
/// dashboard on `port` unless `mode` is `Off`; and a socket connection.
fn start(dir: &tempfile::TempDir, port: u16, mode: Mode) -> (Daemon, Conn) {
    let mut c = Config {
        state_dir: dir.path().to_path_buf(),
        socket: Some(dir.path().join("opsd.sock")),
        workers: WORKERS,
        gpus: Some(Vec::new()),
        shutdown_grace_seconds: 5,
        http: (!matches!(mode, Mode::Off)).then(|| format!("127.0.0.1:{port}")),
        ..Config::default()
    };
    for kind in OperationType::ALL {
        c.concurrency.insert(*kind, 0);
    }
    c.concurrency.insert(OperationType::Dummy, WORKERS);
    let daemon = Daemon::start(c).expect("daemon starts");
    let conn = Client::connect(&daemon.socket).expect("connect");
    (daemon, conn)
}

/// Start `mode`'s pollers (none for `Off` and `Idle`) against the
/// dashboard of the daemon in `dir`.
fn pollers(
    mode: Mode,
    dir: &tempfile::TempDir,
    port: u16,
    stop: &Arc<AtomicBool>,
    answered: &Arc<AtomicU64>,
) -> Vec<std::thread::JoinHandle<()>> {
    let polling = match mode {
        Mode::Tabs(n) => Some((n, "/live/operations")),
        Mode::Api(n) => Some((n, "/api/operations?limit=100")),
        _ => None,
    };
    let mut tabs = Vec::new();
    if let Some((n, path)) = polling {
        let token = std::fs::read_to_string(dir.path().join("http-token"))
            .unwrap()
            .trim()
            .to_string();
        for _ in 0..n {
            let (t, s, a) = (token.clone(), stop.clone(), answered.clone());
            tabs.push(std::thread::spawn(move || tab(port, path, t, s, a)));
        }
    }
    tabs
}

/// Submit `ops` no-op dummies in batches; the last one's id.
fn submit_all(conn: &mut Conn, ops: usize) -> OperationId {
    let one = Submit::new("dummy", json!({"steps": 0}));
    let mut last = None;
    for b in 0..ops.div_ceil(BATCH) {
        let n = BATCH.min(ops - b * BATCH);
        let done = conn
            .submit_batch(vec![one.clone(); n])
            .expect("submit_batch");
        last = done.operations.last().map(|s| s.operation_id.clone());
    }
    last.expect("at least one operation")
}

/// Wait until nothing is active, polling every `every`.
fn wait_idle(conn: &mut Conn, every: Duration) {
    let active = ListFilter {
        active: true,
        limit: Some(0),
        ..ListFilter::default()
    };
    while conn.list(active.clone()).expect("list").active != Some(0) {
        std::thread::sleep(every);
    }
}

/// Stop the pollers; the daemon's CPU seconds since `cpu0`, less theirs.
fn stop_pollers(stop: &AtomicBool, tabs: Vec<std::thread::JoinHandle<()>>, cpu0: f64) -> f64 {
    stop.store(true, Ordering::Release);
    for t in tabs {
        let _ = t.join();
    }
    process_cpu() - cpu0 - POLLER_CPU_NS.load(Ordering::Relaxed) as f64 * 1e-9
}

/// One lifecycle run: ops/s, the daemon's CPU microseconds per operation
/// (the process less the pollers), and the pollers' answers.
fn once(ops: usize, mode: Mode) -> (f64, f64, u64) {
    let dir = bench_dir();
    let port = port::free_port();
    let (daemon, mut conn) = start(&dir, port, mode);
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let tabs = pollers(mode, &dir, port, &stop, &answered);
    POLLER_CPU_NS.store(0, Ordering::Relaxed);
    let cpu0 = process_cpu();
    let t = Instant::now();
    let last = submit_all(&mut conn, ops);
    while conn.get(&last).expect("get").status != Status::Completed {
        std::thread::sleep(Duration::from_millis(2));
    }
    wait_idle(&mut conn, Duration::from_millis(2));
    let rate = ops as f64 / t.elapsed().as_secs_f64();
    let cpu = stop_pollers(&stop, tabs, cpu0);
    daemon.stop(&|| false);
    (
        rate,
        cpu * 1e6 / ops as f64,
        answered.load(Ordering::Relaxed),
    )
}

/// The daemon's CPU per second over `secs` with `mode`'s pollers, on a
/// database of `rows` completed operations and nothing running: the
/// dashboard's own cost, without the lifecycle's noise.
fn steady(rows: usize, mode: Mode, secs: u64) -> (f64, u64) {
    let dir = bench_dir();
    let port = port::free_port();
    let (daemon, mut conn) = start(&dir, port, mode);
    submit_all(&mut conn, rows);
    wait_idle(&mut conn, Duration::from_millis(20));
    std::thread::sleep(Duration::from_secs(1));
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    POLLER_CPU_NS.store(0, Ordering::Relaxed);
    let cpu0 = process_cpu();
    let t = Instant::now();
    let tabs = pollers(mode, &dir, port, &stop, &answered);
    std::thread::sleep(Duration::from_secs(secs));
    let cpu = stop_pollers(&stop, tabs, cpu0);
    let per_s = cpu / t.elapsed().as_secs_f64();
    daemon.stop(&|| false);
    (per_s, answered.load(Ordering::Relaxed))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let ops: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let rounds: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(3);
    let modes = [Mode::Off, Mode::Idle, Mode::Tabs(10), Mode::Api(10)];
    let names = [
        "off (no `http`)",
        "on, no tab open",
        "on, 10 open `/` tabs (poll `/live/operations` 1/s)",
        "on, 10 scripts polling `/api/operations?limit=100` 1/s",
    ];
    // The dashboard's own cost: daemon CPU per second, nothing running.
    println!("| dashboard, {ops} completed rows, nothing running | daemon CPU (ms per s, 10 s) | share of 2 cores | poll answers |");
    println!("|---|---|---|---|");
    for (m, name) in modes.iter().zip(names) {
        let (per_s, answered) = steady(ops, *m, 10);
        println!(
            "| {name} | {:.1} ms/s | {:.2} % | {answered} |",
            per_s * 1e3,
            per_s * 100.0 / 2.0
        );
    }
    println!();
    if rounds == 0 {
        return;
    }
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    let mut cpus: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    let mut polls = 0;
    for r in 0..rounds {
        for (i, m) in modes.iter().enumerate() {
            let (rate, cpu, answered) = once(ops, *m);
            std::thread::sleep(Duration::from_millis(500));
            eprintln!(
                "round {}/{rounds}, {m:?}: {rate:.0} ops/s, {cpu:.0} us CPU/op ({answered} poll answers)",
                r + 1
            );
            rates[i].push(rate);
            cpus[i].push(cpu);
            polls += answered;
        }
    }
    let base_rate = median(&mut rates[0].clone());
    let base_cpu = median(&mut cpus[0].clone());
    println!("| dashboard | ops/s (median of {rounds}) | vs off | daemon CPU/op (median) | vs off | runs (ops/s) |");
    println!("|---|---|---|---|---|---|");
    for (i, name) in names.iter().enumerate() {
        let runs: Vec<String> = rates[i].iter().map(|r| format!("{r:.0}")).collect();
        let m = median(&mut rates[i].clone());
        let c = median(&mut cpus[i].clone());
        println!(
            "| {name} | {m:.0} | {:+.1} % | {c:.0} us | {:+.1} % | {} |",
            100.0 * (m - base_rate) / base_rate,
            100.0 * (c - base_cpu) / base_cpu,
            runs.join(" / "),
        );
    }
    println!("\n{polls} poll requests answered; {ops} operations per run, {WORKERS} workers.");
}
