//! Section 7: the daemon's memory, as a user's `opsd serve` process.
//!
//! The built binary (`target/release/opsd` under `cargo bench`) is
//! spawned on a state directory and its `VmRSS` (resident now) and
//! `VmHWM` (peak resident) are read from `/proc/<pid>/status`: once idle
//! on an empty database, and on the prefilled large database right after
//! start-up and again after serving reads.

use crate::daemon::{line, Conn};
use crate::stats::{verdict, Table};
use opsd::protocol::{Request, Submit};
use opsd::store::records::ListFilter;
use serde_json::json;
use std::path::Path;
use std::process::Child;
use std::time::Duration;

/// A spawned `opsd serve`.
struct Proc {
    child: Child,
    socket: std::path::PathBuf,
}

impl Proc {
    /// Spawn the binary on `dir` and wait until its socket answers.
    fn spawn(dir: &Path) -> Proc {
        // No GPUs (skip discovery); no backtest slots, so the prefilled
        // pending backtests stay pending instead of failing as unavailable.
        let (mut child, socket) = crate::serve::spawn(
            Path::new(env!("CARGO_BIN_EXE_opsd")),
            dir,
            "gpus = []\n[concurrency]\nbacktest = 0\n",
        );
        crate::serve::wait_ready(&mut child, &socket, Duration::from_secs(300));
        let p = Proc { child, socket };
        // Let start-up work (recovery, first claims) settle.
        std::thread::sleep(Duration::from_secs(1));
        p
    }

    /// (VmRSS, VmHWM) in MB (10^6 bytes).
    fn rss(&self) -> (f64, f64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read /proc status");
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
                .map(|kb| kb * 1024.0 / 1e6)
                .unwrap_or(f64::NAN)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// SIGTERM and wait: the clean stop, so the next user of the
    /// directory finds a closed database.
    fn stop(mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

/// Serve `gets` gets of sampled ids, 100 `list --status running` and 20
/// default `list`s on one connection.
fn serve_reads(socket: &Path, ids: &[String], gets: usize) {
    let mut conn = Conn::connect(socket);
    for i in 0..gets {
        conn.raw(&line(Request::get(&ids[(i * 7_919) % ids.len()])));
    }
    let running = line(Request::List(ListFilter {
        status: vec![opsd::model::Status::Running],
        limit: Some(50),
        ..ListFilter::default()
    }));
    for _ in 0..100 {
        conn.raw(&running);
    }
    for _ in 0..20 {
        conn.raw(&line(Request::List(ListFilter::default())));
    }
}

/// Run section 7: idle on a fresh directory, then on `big_dir`.
pub fn run(empty_dir: &Path, big_dir: &Path, rows: usize, ids: &[String]) {
    let mut t = Table::new(
        "7. Daemon memory, `opsd serve` (release binary), /proc/<pid>/status",
        &["state", "VmRSS", "VmHWM (peak)", "target", "verdict"],
    );
    let mb = |x: f64| format!("{x:.1} MB");
    let p = Proc::spawn(empty_dir);
    let (idle, idle_peak) = p.rss();
    t.row(vec![
        "idle, empty database".into(),
        mb(idle),
        mb(idle_peak),
        "<= 20 MB".into(),
        verdict(idle <= 20.0).into(),
    ]);
    {
        let mut c = Conn::connect(&p.socket);
        let submit = line(Submit::new("dummy", json!({"steps": 0})));
        for _ in 0..1_000 {
            c.raw(&submit);
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    let (after, after_peak) = p.rss();
    t.row(vec![
        "empty database after 1,000 submits run to completion".into(),
        mb(after),
        mb(after_peak),
        String::new(),
        String::new(),
    ]);
    p.stop();

    let rows_s = crate::stats::thousands(rows as f64);
    let p = Proc::spawn(big_dir);
    let (start, start_peak) = p.rss();
    t.row(vec![
        format!("{rows_s} operations, after start-up"),
        mb(start),
        mb(start_peak),
        "<= 50 MB".into(),
        verdict(start <= 50.0).into(),
    ]);
    serve_reads(&p.socket, ids, 2_000);
    let (served, served_peak) = p.rss();
    t.row(vec![
        format!("{rows_s} operations, after 2,000 gets + 120 lists"),
        mb(served),
        mb(served_peak),
        "<= 50 MB".into(),
        verdict(served <= 50.0).into(),
    ]);
    p.stop();
    t.print();
}
