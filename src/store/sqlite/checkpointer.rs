//! The WAL checkpointer: copies committed pages from the WAL back into the
//! database file on a thread and connection of its own, so the writer's
//! commits never pay for it (SQLite's automatic checkpoint runs inside
//! whichever `COMMIT` crosses 1,000 pages, on the writer thread).
//!
//! It runs `PRAGMA wal_checkpoint(PASSIVE)`, which never blocks the writer
//! or readers; SQLite restarts the WAL from its start once everything in
//! it has been copied, so the file stays small.

use rusqlite::Connection;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often the WAL is folded back.
const EVERY: Duration = Duration::from_millis(200);

/// The running checkpointer; [`Checkpointer::stop`] joins it.
pub(super) struct Checkpointer {
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Checkpointer {
    /// Start checkpointing `path` (the writer has turned its automatic
    /// checkpoint off). Without a connection of its own it does nothing:
    /// the writer's shutdown still folds the WAL back.
    pub(super) fn start(path: &Path) -> Checkpointer {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = Connection::open(path).ok().and_then(|conn| {
            let _ = super::apply_pragmas(&conn);
            // A lock held elsewhere makes it skip a round, not wait.
            let _ = conn.busy_timeout(Duration::from_millis(100));
            std::thread::Builder::new()
                .name("opsd-checkpointer".into())
                .spawn(move || {
                    while !flag.load(Ordering::Acquire) {
                        std::thread::sleep(EVERY);
                        if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(PASSIVE)") {
                            tracing::debug!("WAL checkpoint: {e}");
                        }
                    }
                })
                .ok()
        });
        Checkpointer {
            stop,
            thread: Mutex::new(thread),
        }
    }

    /// Stop and join the thread (also on drop).
    pub(super) fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = t.join();
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop();
    }
}
