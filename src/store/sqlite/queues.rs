//! SQL over the `queues` table (SPEC §12): named queues, paused or capped
//! at run time, and the gate the claim goes through.

use crate::error::{Error, Result};
use crate::store::claiming::Gate;
use crate::store::records::{QueueChange, QueueRow};
use crate::store::rules;
use rusqlite::{params, Connection};

/// Create the queue if it does not exist yet (a submit to a new name).
pub(crate) fn ensure(conn: &Connection, name: &str, now: &str) -> Result<()> {
    if name == "default" {
        return Ok(());
    }
    rules::queue_name(name)?;
    conn.prepare_cached("INSERT OR IGNORE INTO queues (name, created_at) VALUES (?1, ?2)")?
        .execute(params![name, now])?;
    Ok(())
}

/// Every queue with its waiting and running counts, by name.
pub(crate) fn list(conn: &Connection) -> Result<Vec<QueueRow>> {
    Ok(conn
        .prepare_cached(
            "SELECT q.name, q.paused, q.parallel, \
                 (SELECT count(*) FROM operations o WHERE o.status IN ('pending','resuming') \
                     AND o.queue = q.name), \
                 (SELECT count(*) FROM operations o WHERE o.status = 'running' \
                     AND o.queue = q.name) \
             FROM queues q ORDER BY q.name",
        )?
        .query_map([], |r| {
            Ok(QueueRow {
                name: r.get(0)?,
                paused: r.get::<_, i64>(1)? != 0,
                parallel: r.get(2)?,
                waiting: r.get(3)?,
                running: r.get(4)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Pause, start or cap a queue (creating it); returns it as it is now.
pub(crate) fn change(conn: &Connection, ch: &QueueChange, now: &str) -> Result<QueueRow> {
    rules::queue_change(ch)?;
    conn.prepare_cached("INSERT OR IGNORE INTO queues (name, created_at) VALUES (?1, ?2)")?
        .execute(params![ch.name, now])?;
    if let Some(p) = ch.paused {
        conn.prepare_cached("UPDATE queues SET paused = ?2 WHERE name = ?1")?
            .execute(params![ch.name, p as i64])?;
    }
    if let Some(n) = ch.parallel {
        conn.prepare_cached("UPDATE queues SET parallel = ?2 WHERE name = ?1")?
            .execute(params![ch.name, n])?;
    }
    list(conn)?
        .into_iter()
        .find(|q| q.name == ch.name)
        .ok_or_else(|| Error::Internal(format!("queue {} vanished", ch.name)))
}

/// Read the paused and capped queues and count their running work, for
/// a claim round.
pub(crate) fn gate(conn: &Connection) -> Result<Gate> {
    let rows = conn
        .prepare_cached(
            "SELECT name, paused, parallel FROM queues WHERE paused = 1 OR parallel IS NOT NULL",
        )?
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)? != 0,
                r.get::<_, Option<i64>>(2)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut queues = Vec::new();
    for (name, paused, cap) in rows {
        let running = if cap.is_some() && !paused {
            conn.prepare_cached(
                "SELECT count(*) FROM operations WHERE status = 'running' AND queue = ?1",
            )?
            .query_row([&name], |r| r.get(0))?
        } else {
            0
        };
        queues.push((name, paused, cap, running));
    }
    Ok(Gate::new(queues))
}
