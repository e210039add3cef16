//! SQL over the `queues` table (SPEC §12): named queues, paused or capped
//! at run time, and the gate the claim goes through.

use crate::error::{Error, Result};
use crate::store::claiming::Gate;
use crate::store::records::{QueueChange, QueueRow};
use rusqlite::{params, Connection};

/// Check a queue name: what a user types, not a path or a sentence.
pub(crate) fn check_name(name: &str) -> Result<()> {
    let ok = (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Error::BadRequest(format!(
            "queue name {name:?} is not valid: use 1 to 64 letters, digits, '-', '_' or '.'"
        )))
    }
}

/// Create the queue if it does not exist yet (a submit to a new name).
pub(crate) fn ensure(conn: &Connection, name: &str, now: &str) -> Result<()> {
    if name == "default" {
        return Ok(());
    }
    check_name(name)?;
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
    check_name(&ch.name)?;
    if let Some(Some(n)) = ch.parallel {
        if n < 1 {
            return Err(Error::BadRequest(format!(
                "--parallel must be at least 1 (got {n}); pause the queue to start nothing"
            )));
        }
    }
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
