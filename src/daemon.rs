//! `opsd serve`: wiring the store, the runtime and the socket server, and
//! the ordered shutdown of DESIGN-NOTES ("Shutdown, in order").
//!
//! [`Daemon::start`] returns once the socket is bound and recovery is done
//! (the moment systemd gets READY=1); [`Daemon::stop`] drains. The demo and
//! tests run the same code in-process.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::runtime::Runtime;
use crate::server;
use crate::service::Service;
use crate::store::Store;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// A started daemon.
pub struct Daemon {
    /// The runtime (scheduler, workers).
    pub runtime: Arc<Runtime>,
    /// The socket path it serves on.
    pub socket: PathBuf,
    tokio: tokio::runtime::Runtime,
    stop_server: watch::Sender<bool>,
    /// Exclusive lock on `<db>.lock`, held for the daemon's life: two
    /// daemons on one SQLite database would mark each other's work
    /// crashed. A PostgreSQL store is shared on purpose (no lock).
    _lock: Option<nix::fcntl::Flock<std::fs::File>>,
}

impl Daemon {
    /// Open the database, recover, start the workers and bind the socket.
    pub fn start(config: Config) -> Result<Daemon> {
        config.validate()?;
        private_umask(config.socket_group.is_some());
        std::fs::create_dir_all(&config.state_dir).map_err(|e| {
            Error::io(
                format!("creating state directory {}", config.state_dir.display()),
                e,
            )
        })?;
        let lock = match config.postgres_url() {
            Some(_) => None,
            None => Some(lock_database(&config.db_path())?),
        };
        let store: Store = crate::store::open_configured(&config)?;
        let socket = config.socket_path();
        let config = Arc::new(config);
        // One async thread: the handlers only parse, check from memory and
        // hand over (SQLite reads, slow checks and waits go to the blocking
        // pool, writes to the writer), so a second thread added nothing but
        // the runtime waking it for every answer that came back from the
        // writer: 2.5-3 more context switches and futex calls per job, and
        // 10-20 % of the rate at one CLI call at a time (BENCHMARKS.md §24).
        let tokio = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("opsd-io")
            .enable_all()
            .build()
            .map_err(|e| Error::io("starting the I/O runtime", e))?;
        // The dashboard, only when configured: bound now (before the socket,
        // so a client that sees the socket finds the dashboard and its token
        // too), and a taken port stops the start before any work.
        let http = match &config.http {
            Some(addr) => {
                let _guard = tokio.enter();
                Some((
                    crate::http::bind(addr)?,
                    crate::http::ensure_token(&config.state_dir)?,
                ))
            }
            None => None,
        };
        // Bind before starting work so a second daemon on the same socket
        // is refused before it touches anything.
        let (listener, access) = {
            let _guard = tokio.enter();
            server::bind(&socket, config.socket_group.as_deref())?
        };
        // Processes a job's program leaves behind (setsid) are adopted by
        // the daemon, so the job can kill them; adopted zombies are reaped.
        crate::jobs::command::procs::adopt_orphans();
        let runtime = Runtime::start(store, config)?;
        let (stop_server, stop_rx) = watch::channel(false);
        let service = Service {
            rt: runtime.clone(),
        };
        if let Some((l, token)) = http {
            tracing::info!(addr = ?l.local_addr().ok(), "dashboard is up (`opsd dashboard` prints its URL)");
            tokio.spawn(crate::http::serve(
                l,
                service.clone(),
                token,
                stop_rx.clone(),
            ));
        }
        tokio.spawn(server::serve(listener, access, service, stop_rx));
        tracing::info!(socket = %socket.display(), db = %runtime.store.location(), "opsd is ready");
        Ok(Daemon {
            runtime,
            socket,
            tokio,
            stop_server,
            _lock: lock,
        })
    }

    /// The drain: no new work, running jobs checkpoint and stop (up to the
    /// grace, or at once when `hurry` turns true), then the socket goes.
    pub fn stop(self, hurry: &dyn Fn() -> bool) {
        let grace = Duration::from_secs(self.runtime.config.shutdown_grace_seconds);
        self.runtime.shutdown(grace, hurry);
        let _ = self.stop_server.send(true);
        server::remove_socket(&self.socket);
        self.tokio.shutdown_timeout(Duration::from_millis(500));
        tracing::info!("opsd stopped");
    }
}

/// Keep state private: what the daemon creates (state directory, database,
/// logs, checkpoints, progress files) is 0700/0600, or group-readable when
/// `socket_group` shares the daemon by design. Only ever tightens the mask.
fn private_umask(shared: bool) {
    use nix::sys::stat::{umask, Mode};
    let want = Mode::from_bits_truncate(if shared { 0o027 } else { 0o077 });
    let old = umask(want);
    umask(old | want);
}

/// Take the exclusive lock that makes one daemon per database.
fn lock_database(db: &std::path::Path) -> Result<nix::fcntl::Flock<std::fs::File>> {
    let path = std::path::PathBuf::from(format!("{}.lock", db.display()));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(format!("opening the lock file {}", path.display()), e))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
        Error::Unavailable(format!(
            "another opsd is already using the database {} (lock {}: {e}); stop it first or pass --db",
            db.display(),
            path.display()
        ))
    })
}

/// Run in the foreground until SIGTERM or SIGINT; a second signal during
/// the drain stops at once (still leaving the database consistent).
pub fn serve(config: Config) -> Result<()> {
    let signals_seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    count_signals(signals_seen.clone())?;
    // Every handler of the daemon's is in place: a job's start resets
    // just those from now on instead of asking about all 64 signals.
    crate::jobs::command::spawn::signals_settled();
    let daemon = Daemon::start(config)?;
    notify(&[sd_notify::NotifyState::Ready]);
    let watchdog = watchdog_interval();
    let mut last_ping = std::time::Instant::now();
    while signals_seen.load(Ordering::Acquire) == 0 {
        std::thread::sleep(Duration::from_millis(20));
        if let Some(every) = watchdog {
            if last_ping.elapsed() >= every {
                notify(&[sd_notify::NotifyState::Watchdog]);
                last_ping = std::time::Instant::now();
            }
        }
    }
    tracing::info!("stop requested: checkpointing running operations");
    notify(&[sd_notify::NotifyState::Stopping]);
    let hurry = {
        let s = signals_seen.clone();
        move || s.load(Ordering::Acquire) >= 2
    };
    daemon.stop(&hurry);
    Ok(())
}

/// Count SIGTERM/SIGINT deliveries in `counter` on a signal-hook thread
/// (the first signal drains, a second hurries).
fn count_signals(counter: Arc<std::sync::atomic::AtomicUsize>) -> Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])
        .map_err(|e| Error::io("installing signal handlers", e))?;
    std::thread::Builder::new()
        .name("opsd-signals".into())
        .spawn(move || {
            for _ in signals.forever() {
                counter.fetch_add(1, Ordering::AcqRel);
            }
        })
        .map_err(|e| Error::io("starting the signal thread", e))?;
    Ok(())
}

/// Half of systemd's `WATCHDOG_USEC`, when the watchdog is on. As in
/// libsystemd, `WATCHDOG_PID` (when set) must name this process.
fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

fn notify(state: &[sd_notify::NotifyState]) {
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        if let Err(e) = sd_notify::notify(false, state) {
            tracing::warn!("sd_notify failed: {e}");
        }
    }
}
