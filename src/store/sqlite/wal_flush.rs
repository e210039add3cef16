//! Flushing the writer's WAL file to disk from outside SQLite.
//!
//! The writer commits with `synchronous=NORMAL`: SQLite writes the commit's
//! frames into the `-wal` file and returns without `fsync`. Calling
//! `fdatasync` on that file afterwards makes every commit written so far
//! durable, exactly as `synchronous=FULL` would have at each commit (in WAL
//! mode FULL is that same flush of the same file, done inside `COMMIT`).
//! `crate::store::durable` calls [`WalFile::flush`] before it answers.
//!
//! The file is opened by path. SQLite keeps one `-wal` file for as long as
//! a connection (here the writer's) has the database open, and a
//! checkpoint truncates or rewrites it in place, so the open file stays the
//! right one; still, each flush checks that the path names the file it
//! holds and reopens it when not, so a flush never goes to a stale file.

use rusqlite::Connection;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

/// The `-wal` file of one database.
pub(crate) struct WalFile {
    path: PathBuf,
    file: Option<File>,
}

impl WalFile {
    /// The WAL of `conn`'s main database, when it is a file in WAL mode;
    /// `None` otherwise (an in-memory database, or another journal mode,
    /// whose commits must keep syncing themselves).
    pub(crate) fn of(conn: &Connection) -> Option<WalFile> {
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .ok()?;
        if !mode.eq_ignore_ascii_case("wal") {
            return None;
        }
        let db = conn.path().filter(|p| !p.is_empty())?;
        Some(WalFile {
            path: PathBuf::from(format!("{db}-wal")),
            file: None,
        })
    }

    /// Make everything written to the WAL so far durable.
    pub(crate) fn flush(&mut self) -> std::io::Result<()> {
        let on_disk = std::fs::metadata(&self.path)?;
        let same = match &self.file {
            Some(f) => {
                let held = f.metadata()?;
                held.ino() == on_disk.ino() && held.dev() == on_disk.dev()
            }
            None => false,
        };
        if !same {
            self.file = Some(File::open(&self.path)?);
        }
        match &self.file {
            Some(f) => f.sync_data(),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wal_database_gets_a_flush_of_its_own_wal_file_and_others_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let c = Connection::open(&path).unwrap();
        assert!(
            WalFile::of(&c).is_none(),
            "a rollback-journal database keeps syncing at commit"
        );
        c.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t (v INTEGER);")
            .unwrap();
        let mut wal = WalFile::of(&c).expect("a WAL database");
        assert_eq!(wal.path, dir.path().join("w.db-wal"));
        wal.flush().unwrap();
        let held = wal.file.as_ref().unwrap().metadata().unwrap().ino();
        assert_eq!(held, std::fs::metadata(&wal.path).unwrap().ino());
        assert!(WalFile::of(&Connection::open_in_memory().unwrap()).is_none());
    }

    #[test]
    fn a_replaced_wal_file_is_reopened_and_a_missing_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let c = Connection::open(dir.path().join("w.db")).unwrap();
        c.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t (v INTEGER);")
            .unwrap();
        let mut wal = WalFile::of(&c).unwrap();
        wal.flush().unwrap();
        let first = wal.file.as_ref().unwrap().metadata().unwrap().ino();
        // Stand-in for a file SQLite recreated: another inode at the path.
        let other = dir.path().join("other");
        std::fs::write(&other, b"x").unwrap();
        std::fs::rename(&other, &wal.path).unwrap();
        wal.flush().unwrap();
        let now = wal.file.as_ref().unwrap().metadata().unwrap().ino();
        assert_ne!(first, now, "the flush followed the path to the new file");
        std::fs::remove_file(&wal.path).unwrap();
        assert!(
            wal.flush().is_err(),
            "no WAL where one must be is an error, never a silent success"
        );
    }
}
