//! The PostgreSQL schema and its migrations, tracked in the database.
//!
//! Migrations are SQL files (`migrations/NNNN_name.sql`), applied in order,
//! each recorded in `opsd_migrations` in the same transaction. Before
//! anything is written, the database is probed read-only: one that holds
//! tables but no `opsd_migrations` belongs to another application and is
//! refused untouched, as is one migrated by a newer opsd.

use super::pg_error;
use crate::error::{Error, Result};
use postgres::Client;

/// The migrations in order: version, name, SQL.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "0001_schema", include_str!("migrations/0001_schema.sql")),
    (
        2,
        "0002_everyday",
        include_str!("migrations/0002_everyday.sql"),
    ),
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Tables every opsd schema has; a database claiming a version without
/// them is not ours.
const OUR_TABLES: &[&str] = &[
    "operations",
    "operation_metrics",
    "operation_checkpoints",
    "hosts",
];

/// Check, reading only, that the database is empty or ours and not newer
/// than this build; then apply pending migrations.
pub(super) fn migrate(client: &mut Client, location: &str) -> Result<()> {
    let refuse = |why: String| {
        Error::Unavailable(format!(
            "refusing to use the PostgreSQL database {location}: {why}. Nothing was written; \
             create an empty database for opsd (`createdb opsd`) and point --store at it"
        ))
    };
    let tables: Vec<String> = client
        .query(
            "SELECT table_name::text FROM information_schema.tables \
             WHERE table_schema = current_schema() ORDER BY 1",
            &[],
        )
        .map_err(|e| refuse(pg_error(e).message))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if !tables.is_empty() {
        if !tables.iter().any(|t| t == "opsd_migrations") {
            let shown: Vec<&str> = tables.iter().take(5).map(|s| s.as_str()).collect();
            return Err(refuse(format!(
                "it holds tables of another application ({}{}) and no opsd_migrations table",
                shown.join(", "),
                if tables.len() > 5 { ", ..." } else { "" }
            )));
        }
        let version: i64 = client
            .query_one(
                "SELECT coalesce(max(version), 0)::bigint FROM opsd_migrations",
                &[],
            )
            .map_err(|e| refuse(pg_error(e).message))?
            .get(0);
        if version > SCHEMA_VERSION {
            return Err(refuse(format!(
                "its schema version {version} is newer than this opsd supports \
                 ({SCHEMA_VERSION}); upgrade opsd"
            )));
        }
        let missing: Vec<&str> = OUR_TABLES
            .iter()
            .copied()
            .filter(|t| version >= 1 && !tables.iter().any(|have| have == t))
            .collect();
        if !missing.is_empty() {
            return Err(refuse(format!(
                "it claims schema version {version} but has no {} table",
                missing.join(", ")
            )));
        }
    }
    let mut tx = client.transaction()?;
    // Daemons starting together on an empty database migrate one at a time.
    tx.execute("SELECT pg_advisory_xact_lock(7001100115)", &[])?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS opsd_migrations ( \
             version    BIGINT PRIMARY KEY NOT NULL, \
             name       TEXT NOT NULL, \
             applied_at TEXT NOT NULL)",
    )?;
    let current: i64 = tx
        .query_one(
            "SELECT coalesce(max(version), 0)::bigint FROM opsd_migrations",
            &[],
        )?
        .get(0);
    for (version, name, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
        tx.batch_execute(sql).map_err(|e| {
            Error::Internal(format!(
                "PostgreSQL migration {name} failed: {}",
                pg_error(e).message
            ))
        })?;
        tx.execute(
            "INSERT INTO opsd_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
            &[version, name, &crate::ids::now()],
        )?;
        tracing::info!(version, name, "PostgreSQL schema migrated");
    }
    tx.commit()?;
    Ok(())
}
