//! The append-only metric series of each operation (SPEC §4).
//!
//! `seq` is assigned here, on the writer thread, as `max(seq) + 1` per
//! operation, so a reader's cursor never sees a gap or a repeat.

use crate::error::Result;
use crate::ids::OperationId;
use crate::store::records::MetricPoint;
use rusqlite::{params, Connection};
use serde_json::Value;

/// The highest `seq` of an operation (0 when it has none).
pub(crate) fn last_seq(conn: &Connection, id: &OperationId) -> Result<i64> {
    Ok(conn
        .prepare_cached(
            "SELECT coalesce(max(seq), 0) FROM operation_metrics WHERE operation_id = ?1",
        )?
        .query_row([id.as_str()], |r| r.get(0))?)
}

/// Append points (each `(recorded_at, data)`) and return the last `seq`.
pub(crate) fn append(
    conn: &Connection,
    id: &OperationId,
    points: &[(String, Value)],
) -> Result<i64> {
    let mut seq = last_seq(conn, id)?;
    let mut stmt = conn.prepare_cached(
        "INSERT INTO operation_metrics (operation_id, seq, recorded_at, data) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for (at, data) in points {
        seq += 1;
        stmt.execute(params![id.as_str(), seq, at, data.to_string()])?;
    }
    Ok(seq)
}

/// Points with `seq > cursor`, at most `limit`, in order, and the new cursor.
pub(crate) fn read_after(
    conn: &Connection,
    id: &OperationId,
    cursor: i64,
    limit: i64,
) -> Result<(Vec<MetricPoint>, i64)> {
    let points = conn
        .prepare_cached(
            "SELECT seq, recorded_at, data FROM operation_metrics \
             WHERE operation_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        )?
        .query_map(params![id.as_str(), cursor, limit], |r| {
            let data: String = r.get(2)?;
            Ok(MetricPoint {
                seq: r.get(0)?,
                recorded_at: r.get(1)?,
                data: serde_json::from_str(&data).unwrap_or(Value::Null),
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let next = points.last().map(|p| p.seq).unwrap_or(cursor);
    Ok((points, next))
}

/// Drop points after `seq` (a resume replays from its checkpoint, which
/// regenerates them; this keeps the series free of duplicates).
pub(crate) fn truncate_after(conn: &Connection, id: &OperationId, seq: i64) -> Result<usize> {
    Ok(conn
        .prepare_cached("DELETE FROM operation_metrics WHERE operation_id = ?1 AND seq > ?2")?
        .execute(params![id.as_str(), seq])?)
}
