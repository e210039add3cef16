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
pub const SCHEMA_SQL: &str = include_str!("../../../schema.sql");

/// Migration 2: the columns and table of several hosts (SPEC §11), so
/// SQLite and PostgreSQL show the same tables, columns and views. A
/// single daemon leaves them empty.
const HOSTS_SQL: &str = "\
ALTER TABLE operations ADD COLUMN claimed_by TEXT;
ALTER TABLE operations ADD COLUMN lease_expires_at TEXT;
CREATE TABLE IF NOT EXISTS hosts (
    host         TEXT PRIMARY KEY NOT NULL,
    started_at   TEXT NOT NULL,
    last_seen_at TEXT NOT NULL,
    version      TEXT NOT NULL,
    workers      INTEGER NOT NULL DEFAULT 0,
    gpus         TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(gpus)),
    types        TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(types))
);";

/// Migration 3: labels, queues, hold and dependencies (SPEC §12).
pub const EVERYDAY_SQL: &str = include_str!("../../../migrations/everyday.sql");

/// Migration 4: the same CHECK constraints without IN lists, which SQLite
/// evaluated by building a table on every write (migrations/checks.sql).
pub const CHECKS_SQL: &str = include_str!("../../../migrations/checks.sql");

/// Migrations in order; index + 1 is the `user_version` after applying it.
const MIGRATIONS: &[&str] = &[SCHEMA_SQL, HOSTS_SQL, EVERYDAY_SQL, CHECKS_SQL];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// `PRAGMA application_id` of an opsd database ("opsd" in ASCII), written
/// with the first migration so `file(1)` and the next start can tell the
/// file is ours.
pub const APPLICATION_ID: i64 = 0x6F70_7364;

/// Tables every opsd schema has; a file claiming a schema version without
/// them is someone else's.
const OUR_TABLES: &[&str] = &["operations", "operation_metrics", "operation_checkpoints"];

/// Decide, on a read-only connection, whether the file is an opsd
/// database (or an empty one) this build may open for writing. Anything
/// else is refused before a single byte is written, WAL switch included.
fn check_ours(probe: &Connection, version: i64) -> std::result::Result<(), String> {
    let app_id: i64 = probe
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    if app_id != 0 && app_id != APPLICATION_ID {
        return Err(format!(
            "it belongs to another application (application_id {app_id:#x}), not opsd"
        ));
    }
    if version < 0 {
        return Err(format!(
            "its schema version {version} is not one opsd ever wrote (not an opsd database?)"
        ));
    }
    if version > SCHEMA_VERSION {
        return Err(format!(
            "its schema version {version} is newer than this opsd supports \
             ({SCHEMA_VERSION}); upgrade opsd"
        ));
    }
    let tables: Vec<String> = probe
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
        .and_then(|mut st| {
            st.query_map([], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(|e| e.to_string())?;
    if version == 0 {
        return match tables.is_empty() {
            true => Ok(()),
            false => {
                Err("it holds tables but no opsd schema version (not an opsd database?)".into())
            }
        };
    }
    let missing: Vec<&str> = OUR_TABLES
        .iter()
        .copied()
        .filter(|t| !tables.iter().any(|have| have == t))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "it claims schema version {version} but has no {} table (not an opsd database?)",
            missing.join(", ")
        ));
    }
    Ok(())
}

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
        check_ours(&probe, version).map_err(refuse)?;
        drop(probe);
    }
    let conn = Connection::open(path).map_err(|e| refuse(e.to_string()))?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .map_err(|e| refuse(e.to_string()))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(refuse(format!("cannot switch to WAL mode (got {mode})")));
    }
    super::apply_pragmas(&conn)?;
    let conn = if migrate(&conn)? {
        // A migration may edit a table's stored definition (widening a
        // CHECK, the documented way); the schema cookie is bumped so every
        // connection re-reads it, and this one is reopened to load it.
        let cookie: i64 = conn.query_row("PRAGMA schema_version", [], |r| r.get(0))?;
        conn.execute_batch(&format!("PRAGMA schema_version = {}", cookie + 1))?;
        drop(conn);
        let conn = Connection::open(path).map_err(|e| refuse(e.to_string()))?;
        super::apply_pragmas(&conn)?;
        conn
    } else {
        conn
    };
    // Files made by opsd before it wrote an application_id get it now
    // (they passed the table check above).
    conn.execute_batch(&format!("PRAGMA application_id = {APPLICATION_ID}"))?;
    Ok(conn)
}

/// Apply every migration newer than the file's `user_version`, each in its
/// own transaction together with the version bump. True if any ran.
fn migrate(conn: &Connection) -> Result<bool> {
    let current: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let mut ran = false;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current.max(0) as usize) {
        let version = i as i64 + 1;
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE;\n{sql}\nPRAGMA user_version = {version};\n\
             PRAGMA application_id = {APPLICATION_ID};\nCOMMIT;"
        ))
        .map_err(|e| {
            let _ = conn.execute_batch("ROLLBACK");
            Error::Internal(format!("migration to schema version {version} failed: {e}"))
        })?;
        tracing::info!(version, "database schema migrated");
        if version == 4 {
            warn_if_checks_kept_lists(conn);
        }
        ran = true;
    }
    Ok(ran)
}

/// Migration 4 rewrites the CHECK constraints by matching their stored
/// text; a file whose text differs keeps its `IN` lists. The checks stay
/// correct (only slower), so this is said, not refused.
fn warn_if_checks_kept_lists(conn: &Connection) {
    let left: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' \
             AND name IN ('operations', 'operation_checkpoints', 'operation_dependencies') \
             AND sql LIKE '%IN (''%'",
            [],
            |r| r.get(0),
        )
        .unwrap_or(0);
    if left > 0 {
        tracing::warn!(
            tables = left,
            "schema migration 4 found CHECK constraints written differently and left them as they \
             were; writes stay correct, only slower"
        );
    }
}
