//! SQL over the `operations` table: insert, claim, transitions, reads.
//!
//! Every status change is one `UPDATE ... WHERE status IN (allowed sources)`,
//! so the state machine of SPEC §2 holds even between concurrent requests;
//! when it matches no row we look the row up to say why (not found, or an
//! invalid transition from its current status).

use crate::aggregate::ChildProgress;
use crate::error::{Error, Result};
use crate::ids::OperationId;
use crate::model::{OperationType, Status, StopReason};
use crate::store::records::{
    ClaimedOperation, Finish, ListFilter, NewOperation, OperationRecord, Progress, TreeCancel,
};
use rusqlite::{params, params_from_iter, Connection, OptionalExtension};
use serde_json::Value;

/// Insert an operation. With an idempotency key already used, return the
/// existing operation's id and status and `false`.
pub(crate) fn insert(
    conn: &Connection,
    op: &NewOperation,
    now: &str,
) -> Result<(OperationId, Status, bool)> {
    if let Some(key) = &op.idempotency_key {
        let existing = conn
            .prepare_cached(
                "SELECT operation_id, status, operation_type, metadata FROM operations \
                 WHERE idempotency_key = ?1",
            )?
            .query_row([key], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })
            .optional()?;
        if let Some((id, status, kind, metadata)) = existing {
            let same = kind == op.kind.as_str()
                && serde_json::from_str::<Value>(&metadata).ok().as_ref() == Some(&op.metadata);
            if !same {
                return Err(Error::BadRequest(format!(
                    "key {key:?} was already used by operation {id} with a different type or \
                     parameters; use a new key, or submit the same parameters to get {id} back"
                )));
            }
            let status = status.parse().map_err(Error::Internal)?;
            return Ok((OperationId(id), status, false));
        }
    }
    if let Some(parent) = &op.parent {
        check_parent_takes_children(conn, parent)?;
    }
    let opts = &op.options;
    let queue = opts.queue.as_deref().unwrap_or("default");
    super::queues::ensure(conn, queue, now)?;
    let deps = super::dependencies::check(conn, &opts.after, &opts.after_any)?;
    let waiting_for = deps.iter().filter(|d| !d.met).count() as i64;
    // Ids made in the same second share everything but 32 random bits;
    // at the rates group commit allows (thousands a second) two of them
    // collide every few seconds. A failed INSERT changes nothing, so draw
    // a new suffix and insert again instead of failing the submit.
    let mut id = op.id.clone();
    for attempt in 0.. {
        let inserted = conn
            .prepare_cached(
                "INSERT INTO operations (operation_id, parent_operation_id, operation_type, status, \
                 priority, created_at, updated_at, metadata, idempotency_key, phase_start, phase_end, \
                 fail_parent, gpus_requested, max_attempts, run_after, label, queue, held, \
                 waiting_for) \
                 VALUES (?1, ?2, ?3, 'pending', ?4, ?5, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, \
                 ?14, ?15, ?16, ?17)",
            )?
            .execute(params![
                id.as_str(),
                op.parent.as_ref().map(|p| p.as_str()),
                op.kind.as_str(),
                op.priority,
                now,
                op.metadata.to_string(),
                op.idempotency_key,
                op.phase.map(|p| p.0),
                op.phase.map(|p| p.1),
                op.fail_parent as i64,
                op.gpus,
                op.max_attempts,
                op.run_after,
                opts.label,
                queue,
                opts.hold as i64,
                waiting_for,
            ]);
        match inserted {
            Ok(_) => break,
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
                    && attempt < 16 =>
            {
                id = id.with_new_suffix();
            }
            Err(e) => return Err(e.into()),
        }
    }
    super::dependencies::insert(conn, &id, &deps)?;
    Ok((id, Status::Pending, true))
}

/// A child may only join a parent that is waiting or running and not
/// being cancelled: a cancel of the tree is one transaction on the writer,
/// so a child inserted after it sees the parent's status or its stop
/// marker (`stop_reason` on a running row) and is refused, and one
/// inserted before it is part of the tree it cancels.
fn check_parent_takes_children(conn: &Connection, parent: &OperationId) -> Result<()> {
    let row: Option<(String, Option<String>)> = conn
        .prepare_cached("SELECT status, stop_reason FROM operations WHERE operation_id = ?1")?
        .query_row([parent.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((status, stop)) = row else {
        return Err(Error::NotFound(format!(
            "parent operation {parent} does not exist"
        )));
    };
    let status: Status = status.parse().map_err(Error::Internal)?;
    if !status.is_active() {
        return Err(Error::InvalidTransition(format!(
            "parent operation {parent} is {status}; children can only be added to a pending or \
             running operation (resume it first)"
        )));
    }
    if status == Status::Running && stop.is_some() {
        return Err(Error::InvalidTransition(format!(
            "parent operation {parent} is being cancelled; no new children can be added to it"
        )));
    }
    Ok(())
}

/// One operation by id.
pub(crate) fn get(conn: &Connection, id: &OperationId) -> Result<OperationRecord> {
    conn.prepare_cached(&format!(
        "SELECT {OPERATION_COLUMNS} FROM operations WHERE operation_id = ?1"
    ))?
    .query_row([id.as_str()], record_from_row)
    .optional()?
    .ok_or_else(|| Error::NotFound(format!("no operation {id}; `opsd list` shows the ids")))
}

/// The status of one operation, or `not_found`.
pub(crate) fn status(conn: &Connection, id: &OperationId) -> Result<Status> {
    let s: Option<String> = conn
        .prepare_cached("SELECT status FROM operations WHERE operation_id = ?1")?
        .query_row([id.as_str()], |r| r.get(0))
        .optional()?;
    s.ok_or_else(|| Error::NotFound(format!("no operation {id}; `opsd list` shows the ids")))?
        .parse()
        .map_err(Error::Internal)
}

/// Operations matching `filter`, newest first, with the total matching and
/// the number active overall.
pub(crate) fn list(
    conn: &Connection,
    filter: &ListFilter,
) -> Result<(Vec<OperationRecord>, i64, i64)> {
    let mut clauses: Vec<String> = Vec::new();
    let mut args: Vec<String> = Vec::new();
    let mut statuses: Vec<Status> = filter.status.clone();
    if filter.active {
        statuses.extend([Status::Pending, Status::Resuming, Status::Running]);
    }
    if !statuses.is_empty() {
        let marks: Vec<String> = statuses
            .iter()
            .map(|s| {
                args.push(s.as_str().to_string());
                format!("?{}", args.len())
            })
            .collect();
        clauses.push(format!("status IN ({})", marks.join(",")));
    }
    if let Some(kind) = filter.kind {
        args.push(kind.as_str().to_string());
        clauses.push(format!("operation_type = ?{}", args.len()));
    }
    if let Some(parent) = &filter.parent {
        args.push(parent.0.clone());
        clauses.push(format!("parent_operation_id = ?{}", args.len()));
    }
    if let Some(label) = &filter.label {
        args.push(label.clone());
        clauses.push(format!("label = ?{}", args.len()));
    }
    if let Some(queue) = &filter.queue {
        args.push(queue.clone());
        clauses.push(format!("queue = ?{}", args.len()));
    }
    let where_sql = if clauses.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", clauses.join(" AND "))
    };
    let limit = filter.limit.unwrap_or(50).clamp(0, 10_000);
    let offset = filter.offset.unwrap_or(0).max(0);
    let rows = conn
        .prepare_cached(&format!(
            "SELECT {OPERATION_COLUMNS} FROM operations {where_sql} \
             ORDER BY created_at DESC, operation_id DESC LIMIT {limit} OFFSET {offset}"
        ))?
        .query_map(params_from_iter(args.iter()), record_from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let total: i64 = conn
        .prepare_cached(&format!("SELECT count(*) FROM operations {where_sql}"))?
        .query_row(params_from_iter(args.iter()), |r| r.get(0))?;
    let active: i64 = conn
        .prepare_cached(
            "SELECT (SELECT count(*) FROM operations WHERE status = 'pending') \
                  + (SELECT count(*) FROM operations WHERE status = 'resuming') \
                  + (SELECT count(*) FROM operations WHERE status = 'running')",
        )?
        .query_row([], |r| r.get(0))?;
    Ok((rows, total, active))
}

/// Children of an operation, oldest first.
pub(crate) fn children(conn: &Connection, id: &OperationId) -> Result<Vec<OperationRecord>> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {OPERATION_COLUMNS} FROM operations WHERE parent_operation_id = ?1 \
             ORDER BY created_at, operation_id"
        ))?
        .query_map([id.as_str()], record_from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Counts of operations by status.
pub(crate) fn counts_by_status(conn: &Connection) -> Result<Vec<(Status, i64)>> {
    let mut out = Vec::new();
    for s in Status::ALL {
        let n: i64 = conn
            .prepare_cached("SELECT count(*) FROM operations WHERE status = ?1")?
            .query_row([s.as_str()], |r| r.get(0))?;
        out.push((*s, n));
    }
    Ok(out)
}

/// Claim up to `limit` runnable operations of one type: `resuming` ones
/// first, then `pending` ones by priority then age, asking for GPUs within
/// `gpus` (`0..=0` for none), leaving out the queues in `closed` (paused,
/// or at their parallel cap). Each becomes `running` with `attempt + 1`, in
/// one statement per status: with a single writer no `SKIP LOCKED` is needed.
/// Returns each claimed operation with its queue.
pub(crate) fn claim(
    conn: &Connection,
    now: &str,
    kind: OperationType,
    gpus: std::ops::RangeInclusive<i64>,
    limit: usize,
    closed: &[String],
) -> Result<Vec<(String, ClaimedOperation)>> {
    let mut claimed = Vec::new();
    // Queue names are bound, never spliced: `?6`, `?7`...
    let queue_term = if closed.is_empty() {
        String::new()
    } else {
        let marks: Vec<String> = (0..closed.len()).map(|i| format!("?{}", i + 6)).collect();
        format!(" AND queue NOT IN ({})", marks.join(","))
    };
    for from in ["resuming", "pending"] {
        let left = limit - claimed.len();
        if left == 0 {
            break;
        }
        // Pending rows are found through the partial index on runnable
        // rows (pending, not held, dependencies met), which needs the
        // plain `operation_type = ?2` and the index's own WHERE terms.
        // Resuming rows have no such index: left to itself SQLite then
        // walks every row of the type (all of history) and sorts them on
        // each claim round. `+operation_type` keeps it on (status,
        // created_at), where the few resuming rows are. A resumed row has
        // started before: hold and dependencies no longer apply to it.
        let (kind_term, ready_term) = if from == "pending" {
            ("operation_type", " AND held = 0 AND waiting_for = 0")
        } else {
            ("+operation_type", "")
        };
        // `LIMIT ?5 + 0`, not `LIMIT ?5`: SQLite's planner reads a bare
        // bound LIMIT and re-prepares the statement whenever its value
        // changes, which here is nearly every claim round (a whole
        // re-prepare, tens of microseconds, in the writer thread). An
        // expression keeps the cached plan; the order is the index's
        // either way.
        // `from` and the terms are literals above, never user text.
        let sql = format!(
            "UPDATE operations SET status = 'running', attempt = attempt + 1, \
                 started_at = ?1, updated_at = ?1, stop_reason = NULL, error_message = NULL \
             WHERE operation_id IN ( \
                 SELECT operation_id FROM operations \
                 WHERE status = '{from}'{ready_term} AND {kind_term} = ?2 \
                   AND gpus_requested BETWEEN ?3 AND ?4 AND (run_after IS NULL OR run_after <= ?1){queue_term} \
                 ORDER BY priority DESC, created_at, operation_id LIMIT ?5 + 0) \
             RETURNING operation_id, metadata, attempt, parent_operation_id, \
                 progress_percent, gpus_requested, max_attempts, priority, created_at, fail_parent, \
                 queue"
        );
        let mut stmt = conn.prepare_cached(&sql)?;
        let mut args: Vec<rusqlite::types::Value> = vec![
            now.to_string().into(),
            kind.as_str().to_string().into(),
            (*gpus.start()).into(),
            (*gpus.end()).into(),
            (left as i64).into(),
        ];
        args.extend(closed.iter().map(|q| q.clone().into()));
        let rows = stmt.query_map(params_from_iter(args), |r| {
            let order: (i64, String) = (r.get(7)?, r.get(8)?);
            let op = ClaimedOperation {
                id: OperationId(r.get(0)?),
                kind,
                metadata: serde_json::from_str(&r.get::<_, String>(1)?).unwrap_or(Value::Null),
                attempt: r.get(2)?,
                parent: r.get::<_, Option<String>>(3)?.map(OperationId),
                progress_percent: r.get(4)?,
                gpus_requested: r.get(5)?,
                max_attempts: r.get(6)?,
                fail_parent: r.get::<_, i64>(9)? != 0,
            };
            Ok((order, r.get::<_, String>(10)?, op))
        })?;
        // RETURNING does not keep the subquery's order: restore it, so
        // workers start the most urgent first.
        let mut batch = rows.collect::<rusqlite::Result<Vec<_>>>()?;
        batch.sort_by(|(a, _, x), (b, _, y)| {
            b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(x.id.cmp(&y.id))
        });
        claimed.extend(batch.into_iter().map(|(_, q, op)| (q, op)));
    }
    Ok(claimed)
}

/// Record the GPUs assigned to a running operation.
pub(crate) fn set_gpus(conn: &Connection, id: &OperationId, gpus: &[String]) -> Result<()> {
    conn.prepare_cached("UPDATE operations SET gpus_assigned = ?2 WHERE operation_id = ?1")?
        .execute(params![
            id.as_str(),
            serde_json::to_string(gpus).unwrap_or_default()
        ])?;
    Ok(())
}

/// Operations a start-up should resume by itself: stopped by a shutdown,
/// or by a crash when they have a checkpoint (`with_crashed`).
pub(crate) fn recoverable(conn: &Connection, with_crashed: bool) -> Result<Vec<OperationId>> {
    let ids = conn
        .prepare_cached(
            "SELECT o.operation_id FROM operations o \
             WHERE o.stop_reason IN ('shutdown','crash') AND o.status IN ('cancelled','failed') \
               AND (o.stop_reason = 'shutdown' OR (?1 AND EXISTS ( \
                   SELECT 1 FROM operation_checkpoints c WHERE c.operation_id = o.operation_id))) \
             ORDER BY o.created_at",
        )?
        .query_map([with_crashed], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(ids.into_iter().map(OperationId).collect())
}

/// Record the end of a run: `running -> completed | failed | cancelled`.
/// Returns false (and changes nothing) when the operation is not running.
pub(crate) fn finish(conn: &Connection, id: &OperationId, f: &Finish, now: &str) -> Result<bool> {
    debug_assert!(Status::Running.can_transition_to(f.status));
    let errors_append = f
        .error
        .as_ref()
        .map(|e| serde_json::json!({"at": now, "message": e}).to_string());
    // One statement for the final progress and the status: this runs for
    // every operation, on the writer thread.
    let p = f.progress.clone().unwrap_or_default();
    let keep_progress = f.progress.is_none();
    let n = conn
        .prepare_cached(
            "UPDATE operations SET status = ?2, stop_reason = ?3, result_summary = ?4, \
                 error_message = ?5, completed_at = ?6, updated_at = ?6, eta_seconds = NULL, \
                 errors = CASE WHEN ?7 IS NULL THEN errors ELSE json_insert(errors, '$[#]', json(?7)) END, \
                 progress_percent = CASE WHEN ?2 = 'completed' THEN 100 WHEN ?8 THEN progress_percent ELSE ?9 END, \
                 progress_message = CASE WHEN ?8 THEN progress_message ELSE ?10 END, \
                 current_step = CASE WHEN ?8 THEN current_step ELSE ?11 END, \
                 steps_completed = CASE WHEN ?8 THEN steps_completed ELSE ?12 END, \
                 steps_total = CASE WHEN ?8 THEN steps_total ELSE ?13 END, \
                 items_processed = CASE WHEN ?8 THEN items_processed ELSE ?14 END, \
                 items_total = CASE WHEN ?8 THEN items_total ELSE ?15 END, \
                 progress_context = CASE WHEN ?8 THEN progress_context ELSE ?16 END \
             WHERE operation_id = ?1 AND status = 'running'",
        )?
        .execute(params![
            id.as_str(),
            f.status.as_str(),
            f.stop_reason.map(|r| r.as_str()),
            f.result.as_ref().map(|v| v.to_string()),
            f.error,
            now,
            errors_append,
            keep_progress,
            p.percentage.clamp(0.0, 100.0),
            p.message,
            p.current_step,
            p.steps_completed,
            p.steps_total,
            p.items_processed,
            p.items_total,
            p.context.as_ref().map(|c| c.to_string()),
        ])?;
    Ok(n == 1)
}

/// Put a failed run with attempts left back in the queue, not before
/// `run_after` (retries with backoff).
pub(crate) fn requeue_for_retry(
    conn: &Connection,
    id: &OperationId,
    error: &str,
    run_after: &str,
    now: &str,
) -> Result<bool> {
    let entry = serde_json::json!({"at": now, "message": error}).to_string();
    // A cancel that reached the row while the failing run was being
    // recorded left its stop marker (`stop_reason` on the running row):
    // it wins over the retry, so the cancel is not lost.
    let n = conn
        .prepare_cached(
            "UPDATE operations SET \
                 status = CASE WHEN stop_reason IS NULL THEN 'pending' ELSE 'cancelled' END, \
                 completed_at = CASE WHEN stop_reason IS NULL THEN NULL ELSE ?3 END, \
                 run_after = CASE WHEN stop_reason IS NULL THEN ?2 ELSE NULL END, \
                 updated_at = ?3, eta_seconds = NULL, \
                 progress_message = CASE WHEN stop_reason IS NULL \
                     THEN printf('attempt %d of %d failed; retrying after %s', attempt, max_attempts, ?2) \
                     ELSE 'cancelled while its failed attempt was being recorded' END, \
                 error_message = ?4, errors = json_insert(errors, '$[#]', json(?5)) \
             WHERE operation_id = ?1 AND status = 'running'",
        )?
        .execute(params![id.as_str(), run_after, now, error, entry])?;
    Ok(n == 1)
}

/// Cancel `root` and every active descendant in one transaction: waiting
/// members become `cancelled` at once (`reason` for the root, `parent` for
/// the others); running ones get a stop marker, so a child inserted after
/// this is refused and a retry recorded after it becomes the cancel.
pub(crate) fn cancel_tree(
    conn: &Connection,
    root: &OperationId,
    reason: StopReason,
    message: Option<&str>,
    now: &str,
) -> Result<TreeCancel> {
    let before = status(conn, root)?;
    if !before.is_active() {
        return Err(Error::InvalidTransition(format!(
            "operation {root} is {before}; only pending, resuming or running operations can be cancelled"
        )));
    }
    const TREE: &str = "WITH RECURSIVE tree(id) AS ( \
             SELECT ?1 UNION SELECT o.operation_id FROM operations o \
             JOIN tree t ON o.parent_operation_id = t.id) ";
    let stopped = conn
        .prepare_cached(&format!(
            "{TREE} UPDATE operations SET status = 'cancelled', \
             stop_reason = CASE WHEN operation_id = ?1 THEN ?2 ELSE 'parent' END, \
             completed_at = ?3, updated_at = ?3, eta_seconds = NULL, \
             error_message = CASE WHEN operation_id = ?1 THEN ?4 ELSE NULL END \
         WHERE operation_id IN (SELECT id FROM tree) AND status IN ('pending','resuming') \
         RETURNING operation_id"
        ))?
        .query_map(params![root.as_str(), reason.as_str(), now, message], |r| {
            r.get::<_, String>(0)
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    // Their dependents stop waiting (an `--after` one is cancelled too).
    // A shutdown never cancels waiting work, so no reason here resumes.
    for id in stopped {
        super::dependencies::settle(conn, &OperationId(id), Status::Cancelled, now)?;
    }
    let running = conn
        .prepare_cached(&format!(
            "{TREE} UPDATE operations SET \
                 stop_reason = coalesce(stop_reason, CASE WHEN operation_id = ?1 THEN ?2 ELSE 'parent' END) \
             WHERE operation_id IN (SELECT id FROM tree) AND status = 'running' \
             RETURNING operation_id, attempt"
        ))?
        .query_map(params![root.as_str(), reason.as_str()], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?
        .into_iter()
        .map(|(id, attempt)| {
            let is_root = id == root.as_str();
            (OperationId(id), attempt, is_root)
        })
        .collect();
    Ok(TreeCancel { before, running })
}

/// try_resume (SPEC §2): one atomic `UPDATE ... RETURNING`; of concurrent
/// resumes exactly one wins, the others get `not_resumable`.
pub(crate) fn try_resume(conn: &Connection, id: &OperationId, now: &str) -> Result<()> {
    let won: Option<String> = conn
        .prepare_cached(
            "UPDATE operations SET status = 'resuming', updated_at = ?2, completed_at = NULL, \
                 run_after = NULL \
             WHERE operation_id = ?1 AND status IN ('cancelled','failed') RETURNING operation_id",
        )?
        .query_row(params![id.as_str(), now], |r| r.get(0))
        .optional()?;
    match won {
        Some(_) => Ok(()),
        None => {
            let s = status(conn, id)?;
            Err(Error::NotResumable(format!(
                "operation {id} is {s}; only cancelled or failed operations can be resumed"
            )))
        }
    }
}

/// Write live progress of a running operation (the flusher). Rows no longer
/// running are left alone, so a late flush never overwrites a final value.
pub(crate) fn write_progress(conn: &Connection, id: &OperationId, p: &Progress) -> Result<()> {
    conn.prepare_cached(
        "UPDATE operations SET progress_percent = ?2, progress_message = ?3, current_step = ?4, \
             steps_completed = ?5, steps_total = ?6, items_processed = ?7, items_total = ?8, \
             eta_seconds = ?9, progress_context = ?10 \
         WHERE operation_id = ?1 AND status = 'running'",
    )?
    .execute(params![
        id.as_str(),
        p.percentage.clamp(0.0, 100.0),
        p.message,
        p.current_step,
        p.steps_completed,
        p.steps_total,
        p.items_processed,
        p.items_total,
        p.eta_seconds,
        p.context.as_ref().map(|c| c.to_string()),
    ])?;
    Ok(())
}

/// Recompute a running parent's stored percentage from its children. Once
/// a parent has children its own part (setup) counts as done.
pub(crate) fn refresh_parent_progress(conn: &Connection, parent: &OperationId) -> Result<()> {
    let kids = child_progress(conn, parent)?;
    let Some(pct) = crate::aggregate::running_parent(&kids) else {
        return Ok(());
    };
    conn.prepare_cached(
        "UPDATE operations SET progress_percent = ?2 WHERE operation_id = ?1 AND status = 'running'",
    )?
    .execute(params![parent.as_str(), pct])?;
    Ok(())
}

/// Children's percentages and phase ranges, for aggregation.
pub(crate) fn child_progress(
    conn: &Connection,
    parent: &OperationId,
) -> Result<Vec<ChildProgress>> {
    Ok(conn
        .prepare_cached(
            "SELECT progress_percent, phase_start, phase_end, status FROM operations \
             WHERE parent_operation_id = ?1",
        )?
        .query_map([parent.as_str()], |r| {
            let status: Status = parse_enum(3, r.get(3)?)?;
            let start: Option<f64> = r.get(1)?;
            let end: Option<f64> = r.get(2)?;
            Ok(ChildProgress::of(status, r.get(0)?, start.zip(end)))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?)
}

/// After an unclean exit: every `running` operation becomes `failed` with
/// `stop_reason = crash`. Returns their ids. `resuming` rows are left as
/// they are: they are queued work that never started (the claim moves
/// them to `running` atomically), and the scheduler picks them up.
pub(crate) fn fail_crashed(conn: &Connection, now: &str) -> Result<Vec<OperationId>> {
    let ids = conn
        .prepare_cached(
            "UPDATE operations SET status = 'failed', stop_reason = 'crash', completed_at = ?1, \
                 updated_at = ?1, eta_seconds = NULL, \
                 error_message = 'the daemon stopped uncleanly while this operation was running' \
             WHERE status = 'running' RETURNING operation_id",
        )?
        .query_map([now], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(ids.into_iter().map(OperationId).collect())
}

/// Append a warning to an operation's `warnings` array.
pub(crate) fn add_warning(
    conn: &Connection,
    id: &OperationId,
    message: &str,
    now: &str,
) -> Result<()> {
    let entry = serde_json::json!({"at": now, "message": message}).to_string();
    conn.prepare_cached(
        "UPDATE operations SET warnings = json_insert(warnings, '$[#]', json(?2)) WHERE operation_id = ?1",
    )?
    .execute(params![id.as_str(), entry])?;
    Ok(())
}

/// The column list matching [`OperationRecord::from_row`].
pub(crate) const OPERATION_COLUMNS: &str =
    "operation_id, parent_operation_id, operation_type, status, \
    stop_reason, priority, attempt, max_attempts, run_after, created_at, started_at, \
    completed_at, updated_at, progress_percent, progress_message, current_step, \
    steps_completed, steps_total, items_processed, items_total, eta_seconds, \
    progress_context, metadata, result_summary, error_message, warnings, errors, \
    idempotency_key, phase_start, phase_end, fail_parent, gpus_requested, gpus_assigned, \
    claimed_by, lease_expires_at, label, queue, held, waiting_for";

fn parse_enum<T: std::str::FromStr<Err = String>>(idx: usize, s: String) -> rusqlite::Result<T> {
    s.parse().map_err(|e: String| {
        rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, e.into())
    })
}

fn parse_json(idx: usize, s: Option<String>) -> rusqlite::Result<Option<Value>> {
    s.map(|s| {
        serde_json::from_str(&s).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, e.into())
        })
    })
    .transpose()
}

/// Read a row selected with [`OPERATION_COLUMNS`].
pub(crate) fn record_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<OperationRecord> {
    Ok(OperationRecord {
        operation_id: OperationId(r.get(0)?),
        parent_operation_id: r.get::<_, Option<String>>(1)?.map(OperationId),
        operation_type: parse_enum(2, r.get(2)?)?,
        status: parse_enum(3, r.get(3)?)?,
        stop_reason: r
            .get::<_, Option<String>>(4)?
            .map(|s| parse_enum(4, s))
            .transpose()?,
        priority: r.get(5)?,
        attempt: r.get(6)?,
        max_attempts: r.get(7)?,
        run_after: r.get(8)?,
        created_at: r.get(9)?,
        started_at: r.get(10)?,
        completed_at: r.get(11)?,
        updated_at: r.get(12)?,
        progress_percent: r.get(13)?,
        progress_message: r.get(14)?,
        current_step: r.get(15)?,
        steps_completed: r.get(16)?,
        steps_total: r.get(17)?,
        items_processed: r.get(18)?,
        items_total: r.get(19)?,
        eta_seconds: r.get(20)?,
        progress_context: parse_json(21, r.get(21)?)?,
        metadata: parse_json(22, r.get(22)?)?.unwrap_or(Value::Null),
        result_summary: parse_json(23, r.get(23)?)?,
        error_message: r.get(24)?,
        warnings: parse_json(25, r.get(25)?)?.unwrap_or(Value::Array(vec![])),
        errors: parse_json(26, r.get(26)?)?.unwrap_or(Value::Array(vec![])),
        idempotency_key: r.get(27)?,
        phase_start: r.get(28)?,
        phase_end: r.get(29)?,
        fail_parent: r.get::<_, i64>(30)? != 0,
        gpus_requested: r.get(31)?,
        gpus_assigned: parse_json(32, r.get(32)?)?,
        claimed_by: r.get(33)?,
        lease_expires_at: r.get(34)?,
        label: r.get(35)?,
        queue: r.get(36)?,
        held: r.get::<_, i64>(37)? != 0,
        waiting_for: r.get(38)?,
    })
}

/// What the user typed for an id (SPEC §12): the full id, its 8-hex tail
/// (or the start of it), any unique prefix of the full id, or `last`.
/// Each is an index lookup (primary key, tail expression index, or
/// creation time); an ambiguous one lists the candidates.
pub(crate) fn resolve(conn: &Connection, text: &str) -> Result<OperationId> {
    let text = text.trim();
    if text.is_empty() {
        return Err(Error::BadRequest(
            "an operation id is empty; give the full id, its last 8 hex digits, or `last`".into(),
        ));
    }
    if text == "last" {
        return conn
            .prepare_cached(
                "SELECT operation_id FROM operations ORDER BY created_at DESC, operation_id DESC LIMIT 1",
            )?
            .query_row([], |r| r.get::<_, String>(0))
            .optional()?
            .map(OperationId)
            .ok_or_else(|| Error::NotFound("there are no operations yet, so `last` names none".into()));
    }
    // Exact ids are the common case (scripts, the tests): one PK probe.
    let exact: Option<String> = conn
        .prepare_cached("SELECT operation_id FROM operations WHERE operation_id = ?1")?
        .query_row([text], |r| r.get(0))
        .optional()?;
    if let Some(id) = exact {
        return Ok(OperationId(id));
    }
    let mut found: Vec<String> = conn
        .prepare_cached(
            "SELECT operation_id FROM operations WHERE operation_id >= ?1 AND operation_id < ?1 || char(1114111) \
             ORDER BY operation_id LIMIT 6",
        )?
        .query_map([text], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let hex = text.len() <= 8 && text.chars().all(|c| c.is_ascii_hexdigit());
    if found.is_empty() && hex {
        let low = text.to_ascii_lowercase();
        found = conn
            .prepare_cached(
                "SELECT operation_id FROM operations \
                 WHERE substr(operation_id, -8) >= ?1 AND substr(operation_id, -8) < ?1 || 'g' \
                 ORDER BY operation_id LIMIT 6",
            )?
            .query_map([low], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
    }
    match found.len() {
        0 => Err(Error::NotFound(format!(
            "no operation matches {text:?}; give the full id, its last 8 hex digits, a unique \
             start of it, or `last` (`opsd list` shows the ids)"
        ))),
        1 => Ok(OperationId(found.remove(0))),
        n => {
            let more = if n > 5 { ", ..." } else { "" };
            found.truncate(5);
            Err(Error::BadRequest(format!(
                "{text:?} matches more than one operation: {}{more}; give more of the id",
                found.join(", ")
            )))
        }
    }
}

/// `opsd release`: a held pending operation may start.
pub(crate) fn release(conn: &Connection, id: &OperationId, now: &str) -> Result<()> {
    let n = conn
        .prepare_cached(
            "UPDATE operations SET held = 0, updated_at = ?2 \
             WHERE operation_id = ?1 AND held = 1 AND status = 'pending'",
        )?
        .execute(params![id.as_str(), now])?;
    if n == 1 {
        return Ok(());
    }
    let rec = get(conn, id)?;
    Err(Error::InvalidTransition(if rec.held {
        format!(
            "operation {id} is {}; only a pending operation is held",
            rec.status
        )
    } else {
        format!(
            "operation {id} is not held (it is {}); only operations submitted with --hold need a release",
            rec.status
        )
    }))
}

/// Finished operations matching `filter` that `clean` may delete: a
/// parent only together with all its children, and never one an active
/// operation still waits for.
pub(crate) fn cleanable(
    conn: &Connection,
    filter: &crate::store::records::CleanFilter,
) -> Result<Vec<OperationId>> {
    let statuses: Vec<Status> = if filter.statuses.is_empty() {
        vec![Status::Completed, Status::Failed, Status::Cancelled]
    } else {
        filter.statuses.clone()
    };
    if let Some(s) = statuses.iter().find(|s| s.is_active()) {
        return Err(Error::BadRequest(format!(
            "clean never deletes {s} operations; --status takes completed, failed or cancelled"
        )));
    }
    let marks: Vec<String> = statuses
        .iter()
        .map(|s| format!("'{}'", s.as_str()))
        .collect();
    let before = filter.ended_before.clone().unwrap_or_else(|| "9999".into());
    let ids: Vec<String> = conn
        .prepare(&format!(
            "SELECT operation_id FROM operations \
             WHERE completed_at IS NOT NULL AND completed_at < ?1 AND status IN ({})",
            marks.join(",")
        ))?
        .query_map([before], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut set: std::collections::HashSet<String> = ids.into_iter().collect();
    // Drop, until nothing changes, parents with a child that stays.
    loop {
        let mut keep = Vec::new();
        for id in &set {
            let kids: Vec<String> = conn
                .prepare_cached(
                    "SELECT operation_id FROM operations WHERE parent_operation_id = ?1",
                )?
                .query_map([id], |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            if kids.iter().any(|k| !set.contains(k)) {
                keep.push(id.clone());
            }
        }
        if keep.is_empty() {
            break;
        }
        for k in keep {
            set.remove(&k);
        }
    }
    let mut out: Vec<String> = set.into_iter().collect();
    out.sort();
    Ok(out.into_iter().map(OperationId).collect())
}

/// Delete one finished operation (its metrics, checkpoint and dependency
/// rows go with it, by cascade).
pub(crate) fn delete(conn: &Connection, id: &OperationId) -> Result<()> {
    conn.prepare_cached(
        "DELETE FROM operations WHERE operation_id = ?1 \
         AND status IN ('completed','failed','cancelled')",
    )?
    .execute([id.as_str()])?;
    Ok(())
}
