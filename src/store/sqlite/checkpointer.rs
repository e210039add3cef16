//! The WAL checkpointer: copies committed pages from the WAL back into the
//! database file on a thread and connection of its own, so the writer's
//! commits never pay for it (SQLite's automatic checkpoint runs inside
//! whichever `COMMIT` crosses 1,000 pages, on the writer thread).
//!
//! It runs `PRAGMA wal_checkpoint(PASSIVE)`, which never blocks the writer
//! or readers. SQLite restarts the WAL from its start (writing over it
//! instead of after it) only at a write transaction that finds everything
//! in it copied. Under a steady stream of commits that hardly ever
//! happened: the writer added frames while a pass ran, so the pass ended
//! behind (it copies what it saw when it began, and reports that as all),
//! and the WAL grew for as long as the stream lasted (60 MB in 2,000
//! CLI-submitted jobs, about 30 KB a job, one restart). Every commit then
//! wrote past the end of the file, and each flush of it had to write the
//! file's size and block map as well as the frames (BENCHMARKS.md §25). So
//! a pass that found frames raises [`CatchUp`], and the writer, right
//! after its next commit, copies on its own connection what was added
//! during the pass (`SqliteEngine::after_commit`): no frame can be added
//! meanwhile, and the writer's next transaction restarts the WAL.

use rusqlite::Connection;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often the WAL is folded back.
const EVERY: Duration = Duration::from_millis(200);

/// Raised by a pass that found frames in the WAL (more may have come in
/// while it ran); the writer takes it down when it copies the rest.
pub(crate) type CatchUp = Arc<AtomicBool>;

/// The running checkpointer; [`Checkpointer::stop`] joins it.
pub(super) struct Checkpointer {
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Checkpointer {
    /// Start checkpointing `path` (the writer has turned its automatic
    /// checkpoint off), raising `catch_up` after a pass that found frames.
    /// Without a connection of its own it does nothing: the writer's
    /// shutdown still folds the WAL back.
    pub(super) fn start(path: &Path, catch_up: CatchUp) -> Checkpointer {
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
                        match pass(&conn) {
                            Ok(p) if p.frames > 0 => catch_up.store(true, Ordering::Release),
                            Ok(_) => {}
                            Err(e) => tracing::debug!("WAL checkpoint: {e}"),
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

/// What a checkpoint pass saw.
pub(super) struct Pass {
    /// Another checkpoint held the lock: nothing was done.
    pub(super) busy: bool,
    /// Frames in the WAL when the pass began.
    pub(super) frames: i64,
}

/// One `PASSIVE` checkpoint on `conn`.
pub(super) fn pass(conn: &Connection) -> rusqlite::Result<Pass> {
    let (busy, frames): (i64, i64) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })?;
    Ok(Pass {
        busy: busy != 0,
        frames,
    })
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop();
    }
}
