//! Test harness: a daemon on a temporary state directory, a client, and
//! helpers to wait for conditions without fixed sleeps.

#![allow(dead_code)]

#[path = "../../benches/support/port.rs"]
mod port;

pub use opsd::client::Client;
pub use opsd::protocol::{Request, Submit};
pub use opsd::store::records::ListFilter;
pub use port::free_port;
use serde_json::Value;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Path of the built binary.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_opsd"))
}

/// A daemon process on its own state directory.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub child: Option<Child>,
    pub config: Option<PathBuf>,
    starts: u32,
}

impl Daemon {
    /// Start `opsd serve` with a TOML config and wait until it answers.
    pub fn start_with(config: &str) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("opsd.toml");
        std::fs::write(&cfg, config).unwrap();
        let mut d = Daemon {
            socket: dir.path().join("opsd.sock"),
            dir,
            child: None,
            config: Some(cfg),
            starts: 0,
        };
        d.spawn();
        d
    }

    /// Start with test defaults (fast flushes, short grace).
    pub fn start() -> Daemon {
        Daemon::start_with("flush_interval_ms = 50\nshutdown_grace_seconds = 10\n")
    }

    /// (Re)start the process on the same state directory.
    pub fn spawn(&mut self) {
        self.starts += 1;
        let log = self.dir.path().join(format!("daemon-{}.log", self.starts));
        let mut cmd = Command::new(bin());
        cmd.arg("serve")
            .arg("--state-dir")
            .arg(self.dir.path())
            .arg("--socket")
            .arg(&self.socket)
            .env("OPSD_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap());
        if let Some(c) = &self.config {
            cmd.arg("--config").arg(c);
        }
        let mut child = cmd.spawn().unwrap();
        let up = wait_until(Duration::from_secs(30), || {
            UnixStream::connect(&self.socket).is_ok() || child.try_wait().unwrap().is_some()
        });
        assert!(
            up && child.try_wait().unwrap().is_none(),
            "daemon did not start: {}",
            self.log()
        );
        self.child = Some(child);
    }

    /// Everything the daemon wrote to stderr so far.
    pub fn log(&self) -> String {
        (1..=self.starts)
            .map(|i| {
                std::fs::read_to_string(self.dir.path().join(format!("daemon-{i}.log")))
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n---\n")
    }

    pub fn db(&self) -> PathBuf {
        self.dir.path().join("opsd.db")
    }

    pub fn state(&self) -> &Path {
        self.dir.path()
    }

    /// A connected client (30 s read timeout, so a hung daemon fails the
    /// test instead of hanging it).
    pub fn client(&self) -> Client {
        client(&self.socket)
    }

    /// One request, its response as JSON (failures included).
    pub fn req(&self, r: impl Into<Request>) -> Value {
        request(&self.socket, r)
    }

    /// A successful request's response (panics on `ok: false`).
    pub fn ok(&self, r: impl Into<Request>) -> Value {
        let r = r.into();
        let v = self.req(r.clone());
        assert_eq!(v["ok"], true, "request {r:?} failed: {v}");
        v
    }

    /// Submit and return the id.
    pub fn submit(&self, kind: &str, params: Value) -> String {
        let r = self.ok(Submit::new(kind, params));
        r["operation_id"].as_str().unwrap().to_string()
    }

    /// The operation record.
    pub fn get(&self, id: &str) -> Value {
        self.ok(Request::get(id))["operation"].clone()
    }

    pub fn status(&self, id: &str) -> String {
        self.get(id)["status"].as_str().unwrap().to_string()
    }

    /// Wait until the operation has `status` (panics after `secs`).
    pub fn wait_status(&self, id: &str, status: &str, secs: u64) -> Value {
        let mut last = Value::Null;
        let ok = wait_until(Duration::from_secs(secs), || {
            last = self.get(id);
            last["status"] == status
        });
        assert!(ok, "{id} never became {status}: {last}");
        last
    }

    /// All metric points of an operation.
    pub fn metrics(&self, id: &str) -> Vec<Value> {
        let r = self.ok(Request::Metrics {
            id: id.into(),
            cursor: 0,
            limit: Some(100_000),
            follow: false,
        });
        r["metrics"].as_array().unwrap().clone()
    }

    /// Run the CLI against this daemon.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(bin())
            .args(args)
            .arg("--socket")
            .arg(&self.socket)
            .output()
            .unwrap()
    }

    /// SIGTERM and wait for exit; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("daemon not running");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        wait_child(&mut child, Duration::from_secs(60))
    }

    /// SIGKILL: an unclean exit.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("daemon not running");
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A child process killed when the test ends, passing or not (a daemon
/// left behind would keep the test runner waiting on its output).
pub struct Guard(pub Child);

impl Guard {
    /// Spawn `cmd` with its output discarded.
    pub fn spawn(cmd: &mut Command) -> Guard {
        Guard(
            cmd.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    }
    /// The process id, for signals.
    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.0.id() as i32)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Wait for a child with a deadline.
pub fn wait_child(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("process did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A client of the daemon at `socket`, with a 30 s read timeout.
pub fn client(socket: &Path) -> Client {
    let c = Client::connect(socket).unwrap_or_else(|e| panic!("{e}"));
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    c
}

/// One request on a fresh connection; the response as JSON.
pub fn request(socket: &Path, r: impl Into<Request>) -> Value {
    let r = r.into();
    client(socket)
        .value(&r)
        .unwrap_or_else(|e| panic!("request {r:?}: {e}"))
}

/// One hand-written request line on a fresh connection: only for tests of
/// what the daemon does with input the typed requests cannot express.
pub fn request_json(socket: &Path, v: &Value) -> Value {
    let mut c = client(socket);
    let mut line = v.to_string().into_bytes();
    line.push(b'\n');
    c.send_line(&line).unwrap();
    c.recv_value()
        .unwrap()
        .unwrap_or_else(|| panic!("no response to {v}"))
}

/// Wait for a child with a deadline, then read everything it wrote to
/// its (piped) stderr.
pub fn wait_stderr(child: &mut Child, limit: Duration) -> (std::process::ExitStatus, String) {
    use std::io::Read;
    let status = wait_child(child, limit);
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        e.read_to_string(&mut err).unwrap();
    }
    (status, err)
}

/// The pid a test script wrote to `path`, once it is there (20 s at most).
pub fn read_pid(path: &Path) -> i32 {
    let mut pid = None;
    assert!(
        wait_until(Duration::from_secs(20), || {
            pid = std::fs::read_to_string(path)
                .ok()
                .and_then(|s| s.trim().parse().ok());
            pid.is_some()
        }),
        "no pid in {}",
        path.display()
    );
    pid.unwrap_or_default()
}

/// A process's resident memory in KiB (0 once it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The database at `path` passes `PRAGMA integrity_check` and has no
/// operation left `running` (after the daemon that used it has stopped or
/// settled).
pub fn assert_sound(path: &Path) {
    let db = open_db(path);
    let check: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let running: i64 = db
        .query_row(
            "SELECT count(*) FROM operations WHERE status = 'running'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(running, 0, "operations left running in {}", path.display());
}

/// Poll `f` every 10 ms until true or `limit`; returns whether it became true.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    f()
}

/// Open the database read-only (as a user's sqlite3 would).
pub fn open_db(path: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap()
}

/// Path of a market data file bundled in the repository's `data/`.
pub fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data")
        .join(name)
}

/// An operation id from the text tests hold ids in.
pub fn id_of(id: impl AsRef<str>) -> opsd::ids::OperationId {
    opsd::ids::OperationId::from(id.as_ref())
}
