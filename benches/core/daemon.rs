//! An in-process daemon on a fresh directory, and opsd's socket client.
//!
//! The daemon is the real one (`opsd::daemon::Daemon`, the code `opsd
//! serve` runs) bound to a real Unix socket; clients are threads in the
//! same process. On a 2-core machine the clients' CPU comes out of the
//! daemon's share either way, so the client is kept as cheap as possible:
//! requests are pre-serialized lines and responses are only parsed where
//! the figure needs a field.

use opsd::client::Client;
use opsd::config::Config;
use opsd::daemon::Daemon;
use opsd::model::OperationType;
use opsd::protocol::Request;
use serde_json::Value;
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

/// One connection through opsd's own client, failing loudly: a benchmark
/// must not count error responses as throughput.
pub struct Conn {
    client: Client,
}

impl Conn {
    /// Connect to `socket`.
    pub fn connect(socket: &Path) -> Conn {
        Conn {
            client: Client::connect(socket).expect("connect to the daemon"),
        }
    }

    /// Send one pre-serialized request line (see [`line`]) and return the
    /// response line. Panics on an error response.
    pub fn raw(&mut self, request: &[u8]) -> &str {
        self.client.send_line(request).expect("send");
        let line = self
            .client
            .recv_line()
            .expect("receive")
            .expect("the daemon closed the connection");
        assert!(line.contains("\"ok\":true"), "error response: {line}");
        line
    }

    /// Send a request and parse the response.
    pub fn call(&mut self, request: impl Into<Request>) -> Value {
        let line = self.raw(&line(request)).to_string();
        serde_json::from_str(&line).expect("JSON response")
    }
}

/// `request` as a line to send (serialized once, outside the timing).
pub fn line(request: impl Into<Request>) -> Vec<u8> {
    request.into().to_line()
}
