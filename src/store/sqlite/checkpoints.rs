//! The latest checkpoint of each operation (SPEC §4).
//!
//! The row is written only after any state files are durable on disk (the
//! runtime fsyncs them first), so a committed row always points at files
//! that exist.

use crate::error::{Error, Result};
use crate::ids::OperationId;
use crate::model::CheckpointType;
use crate::store::records::Checkpoint;
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;

const COLUMNS: &str = "operation_id, checkpoint_type, created_at, state, artifacts_path, \
    state_size_bytes, artifacts_size_bytes, progress_percent, metrics_seq";

fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Checkpoint> {
    let kind: String = r.get(1)?;
    let state: String = r.get(3)?;
    Ok(Checkpoint {
        operation_id: OperationId(r.get(0)?),
        checkpoint_type: kind.parse().map_err(|e: String| {
            rusqlite::Error::FromSqlConversionFailure(1, rusqlite::types::Type::Text, e.into())
        })?,
        created_at: r.get(2)?,
        state: serde_json::from_str(&state).unwrap_or(Value::Null),
        artifacts_path: r.get(4)?,
        state_size_bytes: r.get(5)?,
        artifacts_size_bytes: r.get(6)?,
        progress_percent: r.get(7)?,
        metrics_seq: r.get(8)?,
    })
}

/// Insert or replace the operation's checkpoint.
pub(crate) fn save(conn: &Connection, cp: &Checkpoint) -> Result<()> {
    let state = cp.state.to_string();
    conn.prepare_cached(&format!(
        "INSERT OR REPLACE INTO operation_checkpoints ({COLUMNS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9)"
    ))?
    .execute(params![
        cp.operation_id.as_str(),
        cp.checkpoint_type.as_str(),
        cp.created_at,
        state,
        cp.artifacts_path,
        state.len() as i64,
        cp.artifacts_size_bytes,
        cp.progress_percent,
        cp.metrics_seq,
    ])?;
    Ok(())
}

/// Change the type of an existing checkpoint (a periodic one kept at
/// shutdown becomes the shutdown checkpoint).
pub(crate) fn set_type(conn: &Connection, id: &OperationId, kind: CheckpointType) -> Result<bool> {
    Ok(conn
        .prepare_cached(
            "UPDATE operation_checkpoints SET checkpoint_type = ?2 WHERE operation_id = ?1",
        )?
        .execute(params![id.as_str(), kind.as_str()])?
        == 1)
}

/// The checkpoint of one operation, if any.
pub(crate) fn get(conn: &Connection, id: &OperationId) -> Result<Option<Checkpoint>> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM operation_checkpoints WHERE operation_id = ?1"
        ))?
        .query_row([id.as_str()], from_row)
        .optional()?)
}

/// Every checkpoint, newest first.
pub(crate) fn list(conn: &Connection) -> Result<Vec<Checkpoint>> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM operation_checkpoints ORDER BY created_at DESC"
        ))?
        .query_map([], from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Delete the checkpoint of one operation if it has one (one statement,
/// no read first: this runs for every completed operation).
pub(crate) fn delete_if_any(conn: &Connection, id: &OperationId) -> Result<()> {
    conn.prepare_cached("DELETE FROM operation_checkpoints WHERE operation_id = ?1")?
        .execute([id.as_str()])?;
    Ok(())
}

/// Delete the checkpoint of one operation; `not_found` when there is none.
pub(crate) fn delete(conn: &Connection, id: &OperationId) -> Result<Checkpoint> {
    let cp = get(conn, id)?
        .ok_or_else(|| Error::NotFound(format!("operation {id} has no checkpoint")))?;
    conn.prepare_cached("DELETE FROM operation_checkpoints WHERE operation_id = ?1")?
        .execute([id.as_str()])?;
    Ok(cp)
}

/// Delete checkpoints older than `before` whose operation is not active;
/// returns the operation ids whose checkpoint went (to remove their files).
pub(crate) fn sweep_older_than(conn: &Connection, before: &str) -> Result<Vec<OperationId>> {
    let ids = conn
        .prepare_cached(
            "DELETE FROM operation_checkpoints WHERE created_at < ?1 AND operation_id IN ( \
                 SELECT operation_id FROM operations WHERE status IN ('completed','failed','cancelled')) \
             RETURNING operation_id",
        )?
        .query_map([before], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(ids.into_iter().map(OperationId).collect())
}
