//! Opening the database file safely and migrating its schema.
//!
//! The schema lives in `schema.sql` (the whole schema, SPEC §5); versions
//! are tracked with `PRAGMA user_version`. A file that is not an SQLite
//! database, or one written by a newer opsd, is refused with an error naming
//! it and is left untouched: opsd never deletes or rewrites a database it
//! cannot read.

use crate::error::{Error, Result};
use rusqlite::{Connection, OpenFlags};
use std::path::Path;

/// The schema, applied as migration 1.
pub const SCHEMA_SQL: &str = include_str!("../../schema.sql");

/// Migrations in order; index + 1 is the `user_version` after applying it.
const MIGRATIONS: &[&str] = &[SCHEMA_SQL];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Open `path` for writing, check that it is a database this build can
/// use, apply pending migrations, and set WAL mode and the pragmas.
pub fn open_and_migrate(path: &Path) -> Result<Connection> {
    let existed = path.exists();
    let refuse = |why: String| {
        Error::Unavailable(format!(
            "refusing to use the database {}: {why}. The file was left untouched; \
             move it aside or point --db at another file",
            path.display()
        ))
    };
    if existed {
        // Probe read-only first, so a damaged or foreign file is never
        // written to (not even a journal-mode change).
        let probe = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| refuse(e.to_string()))?;
        let version: i64 = probe
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| refuse(e.to_string()))?;
        // No full integrity check here: it reads the whole file and makes
        // start-up grow with the database (seconds at millions of rows).
        // Reading the header and the schema above already refuses files
        // that are not SQLite databases.
        if version > SCHEMA_VERSION {
            return Err(refuse(format!(
                "its schema version {version} is newer than this opsd supports \
                 ({SCHEMA_VERSION}); upgrade opsd"
            )));
        }
        if version == 0 {
            let tables: i64 = probe
                .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
                .map_err(|e| refuse(e.to_string()))?;
            if tables > 0 {
                return Err(refuse(
                    "it holds tables but no opsd schema version (not an opsd database?)".into(),
                ));
            }
        }
    }
    let conn = Connection::open(path).map_err(|e| refuse(e.to_string()))?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .map_err(|e| refuse(e.to_string()))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(refuse(format!("cannot switch to WAL mode (got {mode})")));
    }
    super::apply_pragmas(&conn)?;
    migrate(&conn)?;
    Ok(conn)
}

/// Apply every migration newer than the file's `user_version`, each in its
/// own transaction together with the version bump.
fn migrate(conn: &Connection) -> Result<()> {
    let current: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current.max(0) as usize) {
        let version = i as i64 + 1;
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE;\n{sql}\nPRAGMA user_version = {version};\nCOMMIT;"
        ))
        .map_err(|e| {
            let _ = conn.execute_batch("ROLLBACK");
            Error::Internal(format!("migration to schema version {version} failed: {e}"))
        })?;
        tracing::info!(version, "database schema migrated");
    }
    Ok(())
}
