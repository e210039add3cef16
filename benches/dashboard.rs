//! The dashboard's cost to the daemon (issue 13): the lifecycle of no-op
//! operations (section 3 of `benches/core`, smaller) with the dashboard
//! off, on but unused, on with 10 open `/` tabs (each polling
//! `/live/operations` once a second, as the page's script does), and on
//! with 10 scripts polling the uncached `/api/operations?limit=100` once a
//! second.
//!
//! cargo bench --bench dashboard                 # 20,000 ops, 3 rounds
//! cargo bench --bench dashboard -- 50000 5      # ops, rounds
//!
//! Rounds interleave the three settings so machine noise hits them alike.

use opsd::config::Config;
use opsd::daemon::Daemon;
use opsd::model::OperationType;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
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

fn call(conn: &mut (BufReader<UnixStream>, UnixStream), req: &Value) -> Value {
    let mut line = req.to_string();
    line.push('\n');
    conn.1.write_all(line.as_bytes()).expect("send");
    let mut out = String::new();
    conn.0.read_line(&mut out).expect("receive");
    let v: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(v["ok"], true, "{v}");
    v
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One poller: GET `path` once a second until `stop`; counts answers.
fn tab(port: u16, path: &str, token: String, stop: Arc<AtomicBool>, answered: Arc<AtomicU64>) {
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

/// One lifecycle run: ops/s and the tabs' answers.
fn once(ops: usize, mode: Mode) -> (f64, u64) {
    let base = std::env::var_os("OPSD_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    std::fs::create_dir_all(&base).unwrap();
    let dir = tempfile::tempdir_in(base).unwrap();
    let port = free_port();
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
    let s = UnixStream::connect(&daemon.socket).unwrap();
    let mut conn = (BufReader::new(s.try_clone().unwrap()), s);
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let mut tabs = Vec::new();
    let polling = match mode {
        Mode::Tabs(n) => Some((n, "/live/operations")),
        Mode::Api(n) => Some((n, "/api/operations?limit=100")),
        _ => None,
    };
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
    let one = json!({"type": "dummy", "params": {"steps": 0}});
    let t = Instant::now();
    let mut last = String::new();
    for b in 0..ops.div_ceil(BATCH) {
        let n = BATCH.min(ops - b * BATCH);
        let v = call(
            &mut conn,
            &json!({"cmd": "submit_batch", "operations": vec![one.clone(); n]}),
        );
        last = v["operations"][n - 1]["operation_id"]
            .as_str()
            .unwrap()
            .to_string();
    }
    while call(&mut conn, &json!({"cmd": "get", "id": last}))["operation"]["status"] != "completed" {
        std::thread::sleep(Duration::from_millis(2));
    }
    while call(&mut conn, &json!({"cmd": "list", "active": true, "limit": 0}))["active"] != 0 {
        std::thread::sleep(Duration::from_millis(2));
    }
    let rate = ops as f64 / t.elapsed().as_secs_f64();
    stop.store(true, Ordering::Release);
    for t in tabs {
        let _ = t.join();
    }
    daemon.stop(&|| false);
    (rate, answered.load(Ordering::Relaxed))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let ops: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let rounds: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(3);
    let modes = [Mode::Off, Mode::Idle, Mode::Tabs(10), Mode::Api(10)];
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    let mut polls = 0;
    for r in 0..rounds {
        for (i, m) in modes.iter().enumerate() {
            let (rate, answered) = once(ops, *m);
            std::thread::sleep(Duration::from_millis(500));
            eprintln!("round {}/{rounds}, {m:?}: {rate:.0} ops/s ({answered} tab answers)", r + 1);
            rates[i].push(rate);
            if matches!(m, Mode::Tabs(_) | Mode::Api(_)) {
                polls += answered;
            }
        }
    }
    let base = median(&mut rates[0].clone());
    println!("| dashboard | ops/s (median of {rounds}) | runs | vs off |");
    println!("|---|---|---|---|");
    let names = [
        "off (no `http`)",
        "on, no tab open",
        "on, 10 open `/` tabs (poll `/live/operations` 1/s)",
        "on, 10 scripts polling `/api/operations?limit=100` 1/s",
    ];
    for (i, name) in names.iter().enumerate()
    {
        let runs: Vec<String> = rates[i].iter().map(|r| format!("{r:.0}")).collect();
        let m = median(&mut rates[i].clone());
        println!(
            "| {name} | {m:.0} | {} | {:+.1} % |",
            runs.join(" / "),
            100.0 * (m - base) / base
        );
    }
    println!("\n{polls} poll requests answered during the polled runs; {ops} operations per run, {WORKERS} workers.");
}
