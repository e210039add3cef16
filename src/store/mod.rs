//! The SQLite store: the only module that touches rusqlite.
//!
//! Writes go through one writer thread ([`writer`]) that groups every
//! request waiting in its channel into one transaction (group commit); reads
//! use a pool of read-only connections that run beside it thanks to WAL.

pub mod checkpoints;
pub mod metrics;
pub mod migrate;
pub mod operations;
pub mod records;
pub mod writer;

use crate::error::{Error, Result};
use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::{Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use writer::Writer;

/// How long a connection waits on a lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Set the pragmas every connection needs. Called on the writer and on each
/// pooled connection (r2d2's init hook), because pragmas are per connection
/// and a misspelt one is silently ignored: `tests` read them back.
pub fn apply_pragmas(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // FULL: an acknowledged submit, cancel or resume survives a power cut
    // (SPEC §5). Group commit keeps it fast.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.pragma_update(None, "cache_size", -16_000)?;
    Ok(())
}

/// The database: a writer thread and a read pool over one file.
#[derive(Clone)]
pub struct Store {
    /// Path of the SQLite file.
    path: PathBuf,
    /// Read-only connections for queries that must not queue behind writes.
    pool: r2d2::Pool<SqliteConnectionManager>,
    /// Handle to the single writer thread.
    writer: Writer,
}

impl Store {
    /// Open (creating if needed) and migrate the database at `path`, start
    /// the writer thread and the read pool.
    ///
    /// A file that is not a readable opsd database makes this fail with an
    /// error naming the file; the file is never modified in that case.
    pub fn open(path: &Path) -> Result<Store> {
        let conn = migrate::open_and_migrate(path)?;
        let writer = Writer::start(conn)?;
        let manager = SqliteConnectionManager::file(path)
            .with_flags(OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
            .with_init(|c| apply_pragmas(c));
        let pool = r2d2::Pool::builder()
            .max_size(8)
            .min_idle(Some(1))
            .connection_timeout(Duration::from_secs(10))
            .build(manager)
            .map_err(|e| {
                Error::Unavailable(format!("{}: cannot open read connections: {e}", path.display()))
            })?;
        Ok(Store {
            path: path.to_path_buf(),
            pool,
            writer,
        })
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The writer handle, for mutations.
    pub fn writer(&self) -> &Writer {
        &self.writer
    }

    /// Run a read-only query on a pooled connection.
    pub fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let conn = self.pool.get()?;
        f(&conn)
    }

    /// Run a mutation on the writer thread and wait until it is committed.
    pub fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.writer.write(f)
    }

    /// Like [`Store::write`], for async callers.
    pub async fn write_async<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.writer.write_async(f).await
    }

    /// Stop the writer after it has committed everything queued.
    pub fn close(&self) {
        self.writer.shutdown();
    }
}
