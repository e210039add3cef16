//! An in-process daemon on a fresh directory, and a lean socket client.
//!
//! The daemon is the real one (`opsd::daemon::Daemon`, the code `opsd
//! serve` runs) bound to a real Unix socket; clients are threads in the
//! same process. On a 2-core machine the clients' CPU comes out of the
//! daemon's share either way, so the client is kept as cheap as possible:
//! requests are pre-serialized bytes and responses are only parsed where
//! the figure needs a field.

use opsd::config::Config;
use opsd::daemon::Daemon;
use opsd::model::OperationType;
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

/// Worker and concurrency settings of a benchmark daemon.
#[derive(Debug, Clone, Copy)]
pub struct Slots {
    /// `workers`.
    pub workers: usize,
    /// `concurrency.dummy`; 0 keeps submitted dummies pending.
    pub dummy: usize,
}

/// A config for `dir`: socket inside it, no GPUs (no `nvidia-smi` probe),
/// only `dummy` operations may run (every other type gets 0 slots, so the
/// prefilled `backtest` rows stay pending), short shutdown grace.
pub fn config(dir: &Path, slots: Slots) -> Config {
    let mut c = Config {
        state_dir: dir.to_path_buf(),
        socket: Some(dir.join("opsd.sock")),
        workers: slots.workers,
        gpus: Some(Vec::new()),
        shutdown_grace_seconds: 5,
        ..Config::default()
    };
    for kind in OperationType::ALL {
        c.concurrency.insert(*kind, 0);
    }
    c.concurrency.insert(OperationType::Dummy, slots.dummy);
    c
}

/// A daemon started in this process.
pub struct Bench {
    /// The daemon; `None` once stopped.
    pub daemon: Option<Daemon>,
    /// Its socket.
    pub socket: PathBuf,
    /// Keeps a fresh directory alive for the daemon's lifetime (`None`
    /// when the caller owns the directory).
    _dir: Option<tempfile::TempDir>,
    /// With `OPSD_BENCH_POSTGRES` (a server URL): the fresh PostgreSQL
    /// database this daemon runs on (admin URL, name), dropped after it.
    pg: Option<(String, String)>,
}

impl Bench {
    /// Start a daemon on a fresh temporary directory.
    pub fn fresh(slots: Slots) -> Bench {
        let dir = tempdir();
        let mut b = Bench::start_in(dir.path(), slots);
        b._dir = Some(dir);
        b
    }

    /// Start a daemon on `dir` (which may hold a database already).
    pub fn start_in(dir: &Path, slots: Slots) -> Bench {
        let mut cfg = config(dir, slots);
        let pg = std::env::var("OPSD_BENCH_POSTGRES").ok().map(|admin| {
            let name = format!(
                "opsd_bench_{}",
                std::process::id() as u64 * 1000 + fastrand_ish()
            );
            let mut c = postgres::Client::connect(&admin, postgres::NoTls).expect("bench server");
            c.batch_execute(&format!("CREATE DATABASE {name}"))
                .expect("create database");
            let root = admin
                .rsplit_once('/')
                .map(|r| r.0)
                .unwrap_or(&admin)
                .to_string();
            cfg.store = Some(format!("{root}/{name}"));
            (admin, name)
        });
        let daemon = Daemon::start(cfg).expect("daemon starts");
        let socket = daemon.socket.clone();
        Bench {
            daemon: Some(daemon),
            socket,
            _dir: None,
            pg,
        }
    }

    /// A connected client.
    pub fn client(&self) -> Conn {
        Conn::connect(&self.socket)
    }

    /// The clean stop `opsd serve` does on SIGTERM.
    pub fn stop(&mut self) {
        if let Some(d) = self.daemon.take() {
            d.stop(&|| false);
        }
        if let Some((admin, name)) = self.pg.take() {
            if let Ok(mut c) = postgres::Client::connect(&admin, postgres::NoTls) {
                let _ = c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
            }
        }
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A number unlike the last one (database names of one bench process).
fn fastrand_ish() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// A temporary directory on the real disk (not tmpfs), so fsyncs cost
/// what they cost for a user's state directory.
pub fn tempdir() -> tempfile::TempDir {
    let base = std::env::var_os("OPSD_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    std::fs::create_dir_all(&base).expect("bench dir");
    tempfile::tempdir_in(base).expect("temp dir")
}

/// One socket connection speaking newline-delimited JSON.
pub struct Conn {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    line: String,
}

impl Conn {
    /// Connect to `socket`.
    pub fn connect(socket: &Path) -> Conn {
        let s = UnixStream::connect(socket).expect("connect to the daemon");
        Conn {
            reader: BufReader::new(s.try_clone().expect("clone stream")),
            writer: s,
            line: String::new(),
        }
    }

    /// Send one pre-serialized request line (ending in `\n`) and read the
    /// response line into an internal buffer; returns it. Panics on an
    /// error response: a benchmark must not count failures as throughput.
    pub fn raw(&mut self, request: &[u8]) -> &str {
        self.writer.write_all(request).expect("send");
        self.line.clear();
        let n = self.reader.read_line(&mut self.line).expect("receive");
        assert!(n > 0, "the daemon closed the connection");
        assert!(
            self.line.starts_with("{\"ok\":true") || self.line.contains("\"ok\":true"),
            "error response: {}",
            self.line
        );
        &self.line
    }

    /// Send a request and parse the response.
    pub fn call(&mut self, request: &Value) -> Value {
        let mut bytes = request.to_string().into_bytes();
        bytes.push(b'\n');
        let line = self.raw(&bytes).to_string();
        serde_json::from_str(&line).expect("JSON response")
    }
}

/// `value` as a request line.
pub fn line(value: &Value) -> Vec<u8> {
    let mut v = value.to_string().into_bytes();
    v.push(b'\n');
    v
}
