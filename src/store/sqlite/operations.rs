//! SQL over the `operations` table: insert, claim, transitions, reads.
//!
//! Every status change is one `UPDATE ... WHERE status IN (allowed sources)`,
//! so the state machine of SPEC §2 holds even between concurrent requests;
//! when it matches no row we look the row up to say why (not found, or an
//! invalid transition from its current status).

use crate::aggregate::ChildProgress;
use crate::error::{Error, Result};
use crate::ids::OperationId;
use crate::model::{Status, StopReason};
use crate::store::records::{
    ClaimedOperation, Finish, ListFilter, NewOperation, OperationRecord, Progress, TreeCancel,
};
use crate::store::rows::{self, Cells, CLAIM_SELECT, OPERATION_COLUMNS};
use crate::store::{claiming, rules};
use rusqlite::types::ToSql;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension, Params, Statement};
use serde_json::Value;

/// Columns as the shared row mappings read them ([`crate::store::rows`]):
/// JSON is stored as text.
impl Cells for rusqlite::Row<'_> {
    fn text(&self, i: usize) -> Result<String> {
        Ok(self.get(i)?)
    }
    fn opt_text(&self, i: usize) -> Result<Option<String>> {
        Ok(self.get(i)?)
    }
    fn int(&self, i: usize) -> Result<i64> {
        Ok(self.get(i)?)
    }
    fn opt_int(&self, i: usize) -> Result<Option<i64>> {
        Ok(self.get(i)?)
    }
    fn real(&self, i: usize) -> Result<f64> {
        Ok(self.get(i)?)
    }
    fn opt_real(&self, i: usize) -> Result<Option<f64>> {
        Ok(self.get(i)?)
    }
    fn json_text(&self, i: usize) -> Result<String> {
        Ok(self.get(i)?)
    }
    fn json(&self, i: usize) -> Result<Option<Value>> {
        self.get::<_, Option<String>>(i)?
            .map(|s| {
                serde_json::from_str(&s)
                    .map_err(|e| Error::Internal(format!("column {i} is not JSON: {e}")))
            })
            .transpose()
    }
}

/// Every row of `stmt` with `params`, each read by `f`.
pub(crate) fn all<T>(
    stmt: &mut Statement<'_>,
    params: impl Params,
    f: impl Fn(&rusqlite::Row<'_>) -> Result<T>,
) -> Result<Vec<T>> {
    let mut rows = stmt.query(params)?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(f(r)?);
    }
    Ok(out)
}

/// The progress columns' values in their statement order (`percentage`
/// clamped to 0-100, `context` as JSON text): the write of live progress
/// and the final row bind the same nine.
fn progress_values(p: &Progress) -> [rusqlite::types::Value; 9] {
    let text = |s: &Option<String>| s.clone().into();
    [
        p.percentage.clamp(0.0, 100.0).into(),
        text(&p.message),
        text(&p.current_step),
        p.steps_completed.into(),
        p.steps_total.into(),
        p.items_processed.into(),
        p.items_total.into(),
        p.eta_seconds.into(),
        p.context.as_ref().map(|c| c.to_string()).into(),
    ]
}

/// Insert an operation, with `metadata` its `metadata` as JSON text. With
/// an idempotency key already used, return the existing operation's id and
/// status and `false`.
pub(crate) fn insert(
    conn: &Connection,
    op: &NewOperation,
    metadata: &str,
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
        if let Some((id, status, kind, stored)) = existing {
            let id = OperationId(id);
            let same = kind == op.kind.as_str()
                && serde_json::from_str::<Value>(&stored).ok().as_ref() == Some(&op.metadata);
            rules::key_reuse(key, &id, same)?;
            let status = status.parse().map_err(Error::Internal)?;
            return Ok((id, status, false));
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
                metadata,
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
    let row = match row {
        Some((status, stop)) => Some((status.parse().map_err(Error::Internal)?, stop.is_some())),
        None => None,
    };
    rules::parent_takes_children(parent, row)
}

/// One operation by id.
pub(crate) fn get(conn: &Connection, id: &OperationId) -> Result<OperationRecord> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {OPERATION_COLUMNS} FROM operations WHERE operation_id = ?1"
    ))?;
    all(&mut stmt, [id.as_str()], |r| rows::operation(r))?
        .pop()
        .ok_or_else(|| rules::not_found(id))
}

/// The status of one operation, or `not_found`.
pub(crate) fn status(conn: &Connection, id: &OperationId) -> Result<Status> {
    let s: Option<String> = conn
        .prepare_cached("SELECT status FROM operations WHERE operation_id = ?1")?
        .query_row([id.as_str()], |r| r.get(0))
        .optional()?;
    s.ok_or_else(|| rules::not_found(id))?
        .parse()
        .map_err(Error::Internal)
}

/// Operations matching `filter`, newest first, with the total matching and
/// the number active overall.
pub(crate) fn list(
    conn: &Connection,
    filter: &ListFilter,
) -> Result<(Vec<OperationRecord>, i64, i64)> {
    let q = rows::list_query(filter, |n| format!("?{n}"));
    let mut stmt = conn.prepare_cached(&q.rows)?;
    let rows = all(&mut stmt, params_from_iter(q.args.iter()), |r| {
        rows::operation(r)
    })?;
    let total: i64 = conn
        .prepare_cached(&q.count)?
        .query_row(params_from_iter(q.args.iter()), |r| r.get(0))?;
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
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {OPERATION_COLUMNS} FROM operations WHERE parent_operation_id = ?1 \
         ORDER BY created_at, operation_id"
    ))?;
    all(&mut stmt, [id.as_str()], |r| rows::operation(r))
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

/// Claim what `ask` asks for: `resuming` rows first, then `pending` ones
/// by priority then age. Each becomes `running` with `attempt + 1`, in
/// one statement per status: with a single writer no `SKIP LOCKED` is needed.
/// Returns each claimed operation with its queue.
pub(crate) fn claim(
    conn: &Connection,
    now: &str,
    ask: claiming::Ask<'_>,
) -> Result<Vec<(String, ClaimedOperation)>> {
    // Queue names are bound, never spliced: `?6`, `?7`...
    let queue_term = if ask.closed.is_empty() {
        String::new()
    } else {
        let marks: Vec<String> = (0..ask.closed.len())
            .map(|i| format!("?{}", i + 6))
            .collect();
        format!(" AND queue NOT IN ({})", marks.join(","))
    };
    claiming::resuming_then_pending(ask.limit, |from, left| {
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
        // A SELECT, then an UPDATE by key per row, rather than one
        // `UPDATE ... WHERE operation_id IN (SELECT ...) RETURNING`: SQLite
        // builds two in-memory tables for that form (the IN list and the
        // RETURNING rows), each with its own pager and zeroed pages, on
        // every claim round; it was a tenth of the writer's work in the
        // no-op lifecycle. Both run in the writer's one transaction, so
        // nothing can change the rows in between. `attempt + 1` is the
        // attempt the claim starts.
        // `from` and the terms are literals above, never user text.
        let select = format!(
            "SELECT {CLAIM_SELECT} FROM operations \
             WHERE status = '{from}'{ready_term} AND {kind_term} = ?2 \
               AND gpus_requested BETWEEN ?3 AND ?4 AND (run_after IS NULL OR run_after <= ?1){queue_term} \
             ORDER BY priority DESC, created_at, operation_id LIMIT ?5 + 0"
        );
        let mut args: Vec<rusqlite::types::Value> = vec![
            now.to_string().into(),
            ask.kind.as_str().to_string().into(),
            (*ask.gpus.start()).into(),
            (*ask.gpus.end()).into(),
            (left as i64).into(),
        ];
        args.extend(ask.closed.iter().map(|q| q.clone().into()));
        let mut stmt = conn.prepare_cached(&select)?;
        let rows = all(&mut stmt, params_from_iter(args), |r| {
            rows::claimed(r, ask.kind)
        })?;
        let mut start = conn.prepare_cached(
            "UPDATE operations SET status = 'running', attempt = attempt + 1, \
                 started_at = ?2, updated_at = ?2, stop_reason = NULL, error_message = NULL \
             WHERE operation_id = ?1",
        )?;
        for (_, _, op) in &rows {
            start.execute(params![op.id.as_str(), now])?;
        }
        Ok(rows)
    })
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
    let mut stmt = conn.prepare_cached(
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
        )?;
    let result = f.result.as_ref().map(|v| v.to_string());
    let head: [&dyn ToSql; 8] = [
        &id.as_str(),
        &f.status.as_str(),
        &f.stop_reason.map(|r| r.as_str()),
        &result,
        &f.error,
        &now,
        &errors_append,
        &keep_progress,
    ];
    // The progress values less the ETA (a final row has none).
    let values = progress_values(&p);
    let progress = values.iter().enumerate().filter(|(i, _)| *i != 7);
    let args = head
        .into_iter()
        .chain(progress.map(|(_, v)| v as &dyn ToSql));
    Ok(stmt.execute(params_from_iter(args))? == 1)
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
    if let Some(e) = rules::cancel_refused(root, before) {
        return Err(e);
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
        None => Err(rules::not_resumable(id, status(conn, id)?)),
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
    .execute(params_from_iter(
        std::iter::once(id.0.clone().into()).chain(progress_values(p)),
    ))?;
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
    let mut stmt = conn.prepare_cached(
        "SELECT progress_percent, phase_start, phase_end, status FROM operations \
         WHERE parent_operation_id = ?1",
    )?;
    all(&mut stmt, [parent.as_str()], |r| {
        let status: Status = r.text(3)?.parse().map_err(Error::Internal)?;
        let phase = r.opt_real(1)?.zip(r.opt_real(2)?);
        Ok(ChildProgress::of(status, r.real(0)?, phase))
    })
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
            .ok_or_else(rules::no_last);
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
    if found.is_empty() && rules::could_be_tail(text) {
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
    rules::pick(text, found)
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
    Err(rules::release_refused(&get(conn, id)?))
}

/// Finished operations matching `filter` that `clean` may delete: a
/// parent only together with all its children, and never one an active
/// operation still waits for.
pub(crate) fn cleanable(
    conn: &Connection,
    filter: &crate::store::records::CleanFilter,
) -> Result<Vec<OperationId>> {
    let statuses = rules::clean_statuses(filter)?;
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
    rules::whole_trees(ids.into_iter().collect(), |id| {
        Ok(conn
            .prepare_cached("SELECT operation_id FROM operations WHERE parent_operation_id = ?1")?
            .query_map([id], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?)
    })
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
