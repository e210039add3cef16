//! Daemon configuration: defaults, the TOML file of `--config`, paths.

use crate::error::{Error, Result};
use crate::model::OperationType;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Everything `opsd serve` can be told. Every field has a default, so a
/// config file only names what it changes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Directory for the database, logs, models and checkpoints.
    pub state_dir: PathBuf,
    /// The SQLite file (default `<state_dir>/opsd.db`).
    pub db: Option<PathBuf>,
    /// The Unix socket (default: see [`default_socket_path`]).
    pub socket: Option<PathBuf>,
    /// Worker threads: the most operations running at once.
    pub workers: usize,
    /// Most operations of each type running at once.
    pub concurrency: BTreeMap<OperationType, usize>,
    /// How often live progress and metrics are written, in milliseconds.
    pub flush_interval_ms: u64,
    /// How long shutdown waits for jobs to checkpoint, in seconds.
    pub shutdown_grace_seconds: u64,
    /// Resume operations stopped by a crash when they have a checkpoint.
    pub auto_resume: bool,
    /// Group allowed to use the socket besides the daemon's own user.
    pub socket_group: Option<String>,
    /// GPU ids to hand out (overrides discovery); empty: discover.
    pub gpus: Option<Vec<String>>,
    /// Delete the checkpoint of an operation once it completes.
    pub delete_checkpoints_on_completion: bool,
    /// Periodic checkpoints without files closer together than this many
    /// milliseconds are skipped (resuming from the previous one is just as
    /// correct); checkpoints on cancel and shutdown are always written.
    pub checkpoint_min_interval_ms: u64,
    /// Delete checkpoints of stopped operations older than this many days
    /// (an hourly sweep); 0 keeps them forever.
    pub checkpoint_retention_days: u64,
    /// Base delay of retry backoff, in milliseconds.
    pub retry_base_delay_ms: u64,
    /// Size cap of a command job's log file before rotation, in bytes
    /// (one rotated `.1` file is kept; 0: no cap).
    pub log_max_bytes: u64,
    /// The `nvidia-smi` used to discover GPUs and sample their use.
    pub nvidia_smi: String,
    /// How often a GPU operation's GPUs are sampled, in milliseconds.
    pub gpu_sample_interval_ms: u64,
    /// How long a client's write (submit, cancel, resume) waits for a
    /// database locked by another program before it is told so, in
    /// milliseconds. The daemon's own writes (final rows, progress) wait
    /// as long as it takes.
    pub write_wait_ms: u64,
    /// A client connection with no request for this many milliseconds is
    /// closed (streams in progress are not idle); 0: never. Idle clients
    /// would otherwise hold file handles the daemon needs.
    pub idle_timeout_ms: u64,
    /// A program (and its arguments) run when an operation ends, with
    /// `OPSD_OPERATION_ID`, `OPSD_STATUS`, `OPSD_STOP_REASON` and
    /// `OPSD_LABEL` set; empty: none. Its failure is logged and never
    /// changes the operation.
    pub on_finish: Vec<String>,
    /// The web dashboard's address, `"127.0.0.1:PORT"` (loopback only);
    /// unset: no dashboard is started.
    pub http: Option<String>,
    /// Where the data lives: `None` (or a path) for SQLite, or a
    /// `postgres://USER@HOST:PORT/DB` URL for a queue shared by several
    /// hosts (SPEC §11). `--db` stays the short form for SQLite.
    pub store: Option<String>,
    /// This daemon's name among the hosts sharing a store (default: the
    /// machine's hostname); written to `claimed_by` and `hosts`.
    pub host: Option<String>,
    /// How long a claim holds without renewal, in seconds: a host silent
    /// longer than this has its operations rescued by another host.
    pub lease_seconds: u64,
    /// Directory for checkpoint files and models that other hosts can
    /// read (NFS); default the state directory, which only this host reads.
    pub shared_dir: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        let concurrency = OperationType::ALL
            .iter()
            .map(|k| (*k, default_limit(*k)))
            .collect();
        Config {
            state_dir: default_state_dir(),
            db: None,
            socket: None,
            workers: 16,
            concurrency,
            flush_interval_ms: 250,
            shutdown_grace_seconds: 60,
            auto_resume: true,
            socket_group: None,
            gpus: None,
            delete_checkpoints_on_completion: true,
            checkpoint_retention_days: 30,
            checkpoint_min_interval_ms: 2000,
            retry_base_delay_ms: 1000,
            log_max_bytes: 64 * 1024 * 1024,
            nvidia_smi: "nvidia-smi".into(),
            gpu_sample_interval_ms: 5000,
            write_wait_ms: 30_000,
            idle_timeout_ms: 60_000,
            on_finish: Vec::new(),
            http: None,
            store: None,
            host: None,
            lease_seconds: 30,
            shared_dir: None,
        }
    }
}

impl Config {
    /// Read a TOML config file.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("reading config {}", path.display()), e))?;
        let cfg: Config = toml::from_str(&text)
            .map_err(|e| Error::BadRequest(format!("config {}: {e}", path.display())))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Check the values make sense together.
    pub fn validate(&self) -> Result<()> {
        if self.workers == 0 {
            return Err(Error::BadRequest(
                "config: workers must be at least 1".into(),
            ));
        }
        let pipelines = self.limit(OperationType::Pipeline);
        if pipelines >= self.workers {
            return Err(Error::BadRequest(format!(
                "config: concurrency.pipeline ({pipelines}) must be below workers ({}): \
                 a pipeline waits on a worker while its children run",
                self.workers
            )));
        }
        if self.on_finish.first().is_some_and(|p| p.is_empty()) {
            return Err(Error::BadRequest(
                "config: on_finish must start with the program to run, e.g. [\"notify-send\", \"opsd\"]"
                    .into(),
            ));
        }
        if let Some(addr) = &self.http {
            crate::http::loopback_addr(addr)?;
        }
        if self.flush_interval_ms == 0 {
            return Err(Error::BadRequest(
                "config: flush_interval_ms must be at least 1".into(),
            ));
        }
        if self.lease_seconds < 2 {
            return Err(Error::BadRequest(
                "config: lease_seconds must be at least 2 (leases are renewed every third of it)"
                    .into(),
            ));
        }
        if self.host_name().is_empty() {
            return Err(Error::BadRequest(
                "config: host must not be empty (set `host = \"NAME\"` or leave it out to use \
                 the hostname)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// This daemon's host name: config `host`, else the machine's hostname.
    pub fn host_name(&self) -> String {
        self.host.clone().unwrap_or_else(hostname)
    }

    /// The PostgreSQL URL when the store is PostgreSQL.
    pub fn postgres_url(&self) -> Option<&str> {
        self.store
            .as_deref()
            .filter(|s| s.starts_with("postgres://") || s.starts_with("postgresql://"))
    }

    /// Where checkpoint files and models go: `shared_dir`, else the state
    /// directory.
    pub fn artifacts_root(&self) -> PathBuf {
        self.shared_dir
            .clone()
            .unwrap_or_else(|| self.state_dir.clone())
    }

    /// The concurrency limit of one type (the default for types the
    /// config file does not name).
    pub fn limit(&self, kind: OperationType) -> usize {
        self.concurrency
            .get(&kind)
            .copied()
            .unwrap_or_else(|| default_limit(kind))
    }

    /// The database path.
    pub fn db_path(&self) -> PathBuf {
        self.db
            .clone()
            .or_else(|| {
                self.store
                    .as_deref()
                    .filter(|_| self.postgres_url().is_none())
                    .map(|s| PathBuf::from(s.strip_prefix("sqlite://").unwrap_or(s)))
            })
            .unwrap_or_else(|| self.state_dir.join("opsd.db"))
    }

    /// Where an operation's files live under the state directory.
    pub fn paths(&self) -> crate::paths::StatePaths {
        crate::paths::StatePaths::new(&self.state_dir).with_shared(&self.artifacts_root())
    }

    /// The socket path.
    pub fn socket_path(&self) -> PathBuf {
        self.socket.clone().unwrap_or_else(default_socket_path)
    }

    /// The flush interval.
    pub fn flush_interval(&self) -> Duration {
        Duration::from_millis(self.flush_interval_ms)
    }
}

/// Default concurrency per type: many cheap dummies, a few user commands,
/// one CPU-heavy training at a time on a small machine.
fn default_limit(kind: OperationType) -> usize {
    match kind {
        OperationType::Dummy => 16,
        OperationType::Command => 4,
        OperationType::Training => 1,
        OperationType::Backtest => 2,
        OperationType::Pipeline => 4,
    }
}

/// `$OPSD_STATE_DIR`, else systemd's `$STATE_DIRECTORY`, else
/// `$XDG_STATE_HOME/opsd`, else `~/.local/state/opsd`.
pub fn default_state_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("OPSD_STATE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("STATE_DIRECTORY") {
        // systemd may pass several, colon separated; the first is ours.
        let s = d.to_string_lossy().to_string();
        return PathBuf::from(s.split(':').next().unwrap_or(&s));
    }
    if let Some(d) = std::env::var_os("XDG_STATE_HOME") {
        return PathBuf::from(d).join("opsd");
    }
    home().join(".local/state/opsd")
}

/// `$OPSD_SOCKET`, else `$RUNTIME_DIRECTORY/opsd.sock` (systemd), else
/// `$XDG_RUNTIME_DIR/opsd.sock`, else `<state dir>/opsd.sock`.
pub fn default_socket_path() -> PathBuf {
    if let Some(s) = std::env::var_os("OPSD_SOCKET") {
        return PathBuf::from(s);
    }
    for var in ["RUNTIME_DIRECTORY", "XDG_RUNTIME_DIR"] {
        if let Some(d) = std::env::var_os(var) {
            let s = d.to_string_lossy().to_string();
            return PathBuf::from(s.split(':').next().unwrap_or(&s)).join("opsd.sock");
        }
    }
    default_state_dir().join("opsd.sock")
}

/// The machine's hostname (`localhost` when it cannot be read).
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at
    // most that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    match rc {
        0 if end > 0 => String::from_utf8_lossy(&buf[..end]).to_string(),
        _ => "localhost".into(),
    }
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_file_overrides_defaults_and_rejects_typos() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "workers = 3\n[concurrency]\npipeline = 1\n").unwrap();
        let c = Config::load(&p).unwrap();
        assert_eq!(c.workers, 3);
        assert_eq!(c.limit(OperationType::Pipeline), 1);
        assert_eq!(c.flush_interval_ms, 250);
        std::fs::write(&p, "wrokers = 3\n").unwrap();
        let e = Config::load(&p).unwrap_err().to_string();
        assert!(e.contains("wrokers"), "{e}");
    }
}
