//! `opsd serve` as a child process, for the benchmarks that measure a real
//! daemon process (its memory, its exit, its launches). Included with
//! `#[path]` by each benchmark binary, so the way a daemon is started and
//! awaited is written once.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Start `bin serve` on the state directory `dir` with `config` (TOML,
/// written to `dir/opsd.toml`), output discarded. Returns the process and
/// its socket path; see [`wait_ready`].
pub fn spawn(bin: &Path, dir: &Path, config: &str) -> (Child, PathBuf) {
    let cfg = dir.join("opsd.toml");
    std::fs::write(&cfg, config).expect("write the benchmark's config");
    let socket = dir.join("opsd.sock");
    let child = Command::new(bin)
        .arg("serve")
        .arg("--state-dir")
        .arg(dir)
        .arg("--socket")
        .arg(&socket)
        .arg("--config")
        .arg(&cfg)
        .env("OPSD_LOG", "warn")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start opsd serve");
    (child, socket)
}

/// Wait until `socket` accepts connections; panics when the daemon exits
/// first or `limit` passes.
pub fn wait_ready(child: &mut Child, socket: &Path, limit: Duration) {
    let t = Instant::now();
    while UnixStream::connect(socket).is_err() {
        assert!(
            child.try_wait().expect("wait").is_none(),
            "opsd serve exited before it answered"
        );
        assert!(t.elapsed() < limit, "opsd serve did not start in {limit:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}
