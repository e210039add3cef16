//! Flushing the writer's WAL file to disk from outside SQLite.
//!
//! The writer commits with `synchronous=NORMAL`: SQLite writes the commit's
//! frames into the `-wal` file and returns without `fsync`. Calling
//! `fdatasync` on that file afterwards makes every commit written so far
//! durable, exactly as `synchronous=FULL` would have at each commit (in WAL
//! mode FULL is that same flush of the same file, done inside `COMMIT`).
//! `crate::store::durable` calls [`WalFile::flush`] before it answers.
//!
//! The file is opened once, when the writer's engine is made: SQLite keeps
//! that one `-wal` file (the same inode) for as long as a connection, here
//! the writer's, has the database open, and a checkpoint truncates or
//! rewrites it in place. Flushes go to the open file, never to whatever the
//! path names later (a renamed state directory, a file put at the path),
//! since SQLite keeps writing through its own descriptor of that inode.

use rusqlite::Connection;
use std::fs::File;

/// The `-wal` file of one database, open.
pub(crate) struct WalFile {
    file: File,
    /// Flushes done (tests: an idle daemon must not flush).
    #[cfg(test)]
    flushes: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl WalFile {
    /// The WAL of `conn`'s main database, when it is a file in WAL mode
    /// whose WAL exists; `None` otherwise (an in-memory database, another
    /// journal mode), whose commits must keep syncing themselves.
    pub(crate) fn of(conn: &Connection) -> Option<WalFile> {
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .ok()?;
        if !mode.eq_ignore_ascii_case("wal") {
            return None;
        }
        let db = conn.path().filter(|p| !p.is_empty())?;
        // The connection has read the database in WAL mode, so its WAL
        // exists (SQLite made it at the first read).
        let file = File::open(format!("{db}-wal")).ok()?;
        Some(WalFile {
            file,
            #[cfg(test)]
            flushes: Default::default(),
        })
    }

    /// Make everything written to the WAL so far durable.
    pub(crate) fn flush(&mut self) -> std::io::Result<()> {
        #[cfg(test)]
        self.flushes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.file.sync_data()
    }

    /// How many flushes this file has had (shared, for tests).
    #[cfg(test)]
    pub(crate) fn flush_count(&self) -> std::sync::Arc<std::sync::atomic::AtomicU64> {
        self.flushes.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_wal_database_gets_a_flush_of_its_own_wal_file_and_others_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let c = Connection::open(&path).unwrap();
        c.execute_batch("CREATE TABLE t (v INTEGER);").unwrap();
        assert!(
            WalFile::of(&c).is_none(),
            "a rollback-journal database keeps syncing at commit"
        );
        c.execute_batch("PRAGMA journal_mode=WAL; INSERT INTO t VALUES (1);")
            .unwrap();
        let mut wal = WalFile::of(&c).expect("a WAL database");
        let wal_path = dir.path().join("w.db-wal");
        assert_eq!(
            wal.file.metadata().unwrap().ino(),
            std::fs::metadata(&wal_path).unwrap().ino(),
            "the file SQLite writes its frames to"
        );
        wal.flush().unwrap();
        // A later file at the path is not the one SQLite writes: flushes
        // keep going to the open one.
        let held = wal.file.metadata().unwrap().ino();
        std::fs::rename(&wal_path, dir.path().join("moved")).unwrap();
        std::fs::write(&wal_path, b"x").unwrap();
        wal.flush().unwrap();
        assert_eq!(wal.file.metadata().unwrap().ino(), held);
        assert!(WalFile::of(&Connection::open_in_memory().unwrap()).is_none());
    }
}
