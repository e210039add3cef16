//! The SQL of the PostgreSQL backend: the same operations as SQLite's
//! `operations.rs`, `metrics.rs` and `checkpoints.rs`, plus what several
//! hosts need (claims with `FOR UPDATE SKIP LOCKED`, leases, fencing,
//! the rescuer, the `hosts` table, NOTIFY).
//!
//! Every write of a running operation is fenced by `claimed_by` (this
//! host) and `attempt` (this run): a host that lost its claim to the
//! rescuer writes nothing over the new run's rows.

use super::{everyday, Db};
use crate::aggregate::{parent_percentage, ChildProgress};
use crate::error::{Error, Result};
use crate::ids::OperationId;
use crate::model::{Status, StopReason};
use crate::store::claiming;
use crate::store::records::{
    Checkpoint, ClaimedOperation, Finish, HostRecord, ListFilter, MetricPoint, NewOperation,
    OperationRecord, Progress, TreeCancel,
};
use crate::store::rows::{self, Cells, CLAIM_RETURNING, OPERATION_COLUMNS};
use crate::store::rules::{self, not_found};
use postgres::types::{ToSql, Type};
use postgres::{GenericClient, Row};
use serde_json::Value;

type P<'a> = &'a (dyn ToSql + Sync);

/// Columns as the shared row mappings read them
/// ([`crate::store::rows`]): JSON is `jsonb`; the flags and counters of
/// migration 2 are `integer`, widened here.
impl Cells for Row {
    fn text(&self, i: usize) -> Result<String> {
        Ok(self.try_get(i)?)
    }
    fn opt_text(&self, i: usize) -> Result<Option<String>> {
        Ok(self.try_get(i)?)
    }
    fn int(&self, i: usize) -> Result<i64> {
        Ok(match *self.columns()[i].type_() {
            Type::INT4 => self.try_get::<_, i32>(i)?.into(),
            _ => self.try_get(i)?,
        })
    }
    fn opt_int(&self, i: usize) -> Result<Option<i64>> {
        Ok(match *self.columns()[i].type_() {
            Type::INT4 => self.try_get::<_, Option<i32>>(i)?.map(i64::from),
            _ => self.try_get(i)?,
        })
    }
    fn real(&self, i: usize) -> Result<f64> {
        Ok(self.try_get(i)?)
    }
    fn opt_real(&self, i: usize) -> Result<Option<f64>> {
        Ok(self.try_get(i)?)
    }
    fn json(&self, i: usize) -> Result<Option<Value>> {
        Ok(self.try_get(i)?)
    }
    fn json_text(&self, i: usize) -> Result<String> {
        Ok(self.try_get::<_, Value>(i)?.to_string())
    }
}

/// The progress columns' values in their statement order, `percentage`
/// clamped to 0-100: the write of live progress binds all nine, the
/// final row all but the ETA (`eta`: false).
fn progress_values<'a>(p: &'a Progress, pct: &'a f64, eta: bool) -> Vec<P<'a>> {
    let mut v: Vec<P<'a>> = vec![
        pct,
        &p.message,
        &p.current_step,
        &p.steps_completed,
        &p.steps_total,
        &p.items_processed,
        &p.items_total,
    ];
    if eta {
        v.push(&p.eta_seconds);
    }
    v.push(&p.context);
    v
}

/// NOTIFY channel: something became runnable.
pub(super) const WORK_CHANNEL: &str = "opsd_work";
/// NOTIFY channel: a running operation was asked to stop (payload: host).
pub(super) const STOP_CHANNEL: &str = "opsd_stop";

/// Who writes: this host's name and its lease length.
#[derive(Debug, Clone)]
pub(super) struct Me {
    pub host: String,
    pub lease_secs: f64,
    /// A path prefix other hosts can read (config `shared_dir`), if any.
    pub shared_prefix: Option<String>,
}

const LEASE: &str = "opsd_ts(clock_timestamp() + make_interval(secs => $LEASE::float8))";

fn lease_sql(sql: &str, n: usize) -> String {
    sql.replace("$LEASE_EXPR", &LEASE.replace("$LEASE", &format!("${n}")))
}

fn parse<T: std::str::FromStr<Err = String>>(s: &str) -> Result<T> {
    s.parse().map_err(Error::Internal)
}

/// Insert an operation (see the SQLite insert for the rules).
pub(super) fn insert<C: GenericClient>(
    c: &mut Db<'_, C>,
    op: &NewOperation,
    now: &str,
) -> Result<(OperationId, Status, bool)> {
    if let Some(key) = &op.idempotency_key {
        if let Some(found) = same_key(c, op, key)? {
            return Ok(found);
        }
    }
    if let Some(parent) = &op.parent {
        check_parent_takes_children(c, parent)?;
    }
    let opts = &op.options;
    let queue = opts.queue.as_deref().unwrap_or("default");
    everyday::ensure_queue(c, queue, now)?;
    let deps = everyday::check_deps(c, &opts.after, &opts.after_any)?;
    let waiting_for = deps.iter().filter(|d| !d.met).count() as i64;
    let held = opts.hold as i64;
    let mut id = op.id.clone();
    for _ in 0..16 {
        let fail_parent = op.fail_parent as i64;
        let phase_start = op.phase.map(|p| p.0);
        let phase_end = op.phase.map(|p| p.1);
        let parent = op.parent.as_ref().map(|p| p.as_str());
        let inserted = c.query_opt(
            "INSERT INTO operations (operation_id, parent_operation_id, operation_type, status, \
             priority, created_at, updated_at, metadata, idempotency_key, phase_start, phase_end, \
             fail_parent, gpus_requested, max_attempts, run_after, label, queue, held, \
             waiting_for) \
             VALUES ($1, $2, $3, 'pending', $4, $5, $5, $6, $7, $8, $9, $10, $11, $12, $13, \
             $14, $15, $16::bigint, $17::bigint) \
             ON CONFLICT DO NOTHING RETURNING operation_id",
            &[
                &id.as_str(),
                &parent,
                &op.kind.as_str(),
                &op.priority,
                &now,
                &op.metadata,
                &op.idempotency_key,
                &phase_start,
                &phase_end,
                &fail_parent,
                &op.gpus,
                &op.max_attempts,
                &op.run_after,
                &opts.label,
                &queue,
                &held,
                &waiting_for,
            ],
        )?;
        if inserted.is_some() {
            everyday::insert_deps(c, &id, &deps)?;
            return Ok((id, Status::Pending, true));
        }
        // A conflict: the key was used meanwhile (by another host), or
        // the id collided.
        if let Some(key) = &op.idempotency_key {
            if let Some(found) = same_key(c, op, key)? {
                return Ok(found);
            }
        }
        id = id.with_new_suffix();
    }
    Err(Error::Internal(
        "could not find a free operation id after 16 tries".into(),
    ))
}

/// The operation that already has `key`, if any: returned when it has
/// the same type and parameters, refused otherwise (as SQLite).
fn same_key<C: GenericClient>(
    c: &mut Db<'_, C>,
    op: &NewOperation,
    key: &str,
) -> Result<Option<(OperationId, Status, bool)>> {
    let Some(r) = c.query_opt(
        "SELECT operation_id, status, operation_type, metadata FROM operations \
         WHERE idempotency_key = $1",
        &[&key],
    )?
    else {
        return Ok(None);
    };
    let id = OperationId(r.get(0));
    let same = r.get::<_, &str>(2) == op.kind.as_str() && r.get::<_, Value>(3) == op.metadata;
    rules::key_reuse(key, &id, same)?;
    Ok(Some((id, parse(r.get::<_, &str>(1))?, false)))
}

/// As in SQLite; the parent's row is share-locked so a concurrent cancel
/// of its tree (which locks the tree first) either sees this child or
/// is seen by it.
fn check_parent_takes_children<C: GenericClient>(
    c: &mut Db<'_, C>,
    parent: &OperationId,
) -> Result<()> {
    let row = c.query_opt(
        "SELECT status, stop_reason FROM operations WHERE operation_id = $1 FOR SHARE",
        &[&parent.as_str()],
    )?;
    let row = match row {
        Some(r) => Some((
            parse(r.get::<_, &str>(0))?,
            r.get::<_, Option<&str>>(1).is_some(),
        )),
        None => None,
    };
    rules::parent_takes_children(parent, row)
}

/// What the user typed for an id (SPEC §12): the full id, its 8-hex tail
/// (or its start), a unique prefix of the full id, or `last`.
pub(super) fn resolve<C: GenericClient>(c: &mut Db<'_, C>, text: &str) -> Result<OperationId> {
    let text = text.trim();
    if text == "last" {
        let rows = c.query(
            "SELECT operation_id FROM operations ORDER BY created_at DESC, operation_id DESC LIMIT 1",
            &[],
        )?;
        return rows
            .first()
            .map(|r| OperationId(r.get(0)))
            .ok_or_else(rules::no_last);
    }
    let exact = c.query(
        "SELECT operation_id FROM operations WHERE operation_id = $1",
        &[&text],
    )?;
    if let Some(r) = exact.first() {
        return Ok(OperationId(r.get(0)));
    }
    let like = format!(
        "{}%",
        text.replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_")
    );
    let mut found: Vec<String> = c
        .query(
            "SELECT operation_id FROM operations WHERE operation_id LIKE $1 ORDER BY operation_id LIMIT 6",
            &[&like],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if found.is_empty() && rules::could_be_tail(text) {
        let tail = format!("{}%", text.to_ascii_lowercase());
        found = c
            .query(
                "SELECT operation_id FROM operations WHERE right(operation_id, 8) LIKE $1 \
                 ORDER BY operation_id LIMIT 6",
                &[&tail],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect();
    }
    rules::pick(text, found)
}

/// One operation.
pub(super) fn get<C: GenericClient>(
    c: &mut Db<'_, C>,
    id: &OperationId,
) -> Result<OperationRecord> {
    let sql = format!("SELECT {OPERATION_COLUMNS} FROM operations WHERE operation_id = $1");
    match c.query_opt(&sql, &[&id.as_str()])? {
        Some(r) => rows::operation(&r),
        None => Err(not_found(id)),
    }
}

/// One operation's status.
pub(super) fn status<C: GenericClient>(c: &mut Db<'_, C>, id: &OperationId) -> Result<Status> {
    match c.query_opt(
        "SELECT status FROM operations WHERE operation_id = $1",
        &[&id.as_str()],
    )? {
        Some(r) => parse(r.get::<_, &str>(0)),
        None => Err(not_found(id)),
    }
}

/// A page of `list`, the total matching, the number active.
pub(super) fn list<C: GenericClient>(
    c: &mut Db<'_, C>,
    filter: &ListFilter,
) -> Result<(Vec<OperationRecord>, i64, i64)> {
    let q = rows::list_query(filter, |n| format!("${n}"));
    let params: Vec<P> = q.args.iter().map(|a| a as P).collect();
    let rows = c
        .query(&q.rows, &params)?
        .iter()
        .map(rows::operation)
        .collect::<Result<Vec<_>>>()?;
    let total: i64 = c.query_one(&q.count, &params)?.get(0);
    let active: i64 = c
        .query_one(
            "SELECT count(*) FROM operations WHERE status IN ('pending','resuming','running')",
            &[],
        )?
        .get(0);
    Ok((rows, total, active))
}

/// Children, oldest first.
pub(super) fn children<C: GenericClient>(
    c: &mut Db<'_, C>,
    id: &OperationId,
) -> Result<Vec<OperationRecord>> {
    let sql = format!(
        "SELECT {OPERATION_COLUMNS} FROM operations WHERE parent_operation_id = $1 \
         ORDER BY created_at, operation_id"
    );
    c.query(&sql, &[&id.as_str()])?
        .iter()
        .map(rows::operation)
        .collect()
}

/// Counts by status.
pub(super) fn counts<C: GenericClient>(c: &mut Db<'_, C>) -> Result<Vec<(Status, i64)>> {
    let rows = c.query(
        "SELECT status, count(*) FROM operations GROUP BY status",
        &[],
    )?;
    let mut out = Vec::new();
    for s in Status::ALL {
        let n = rows
            .iter()
            .find(|r| r.get::<_, &str>(0) == s.as_str())
            .map(|r| r.get::<_, i64>(1))
            .unwrap_or(0);
        out.push((*s, n));
    }
    Ok(out)
}

/// Claim what `ask` asks for, for this host: `resuming` rows first, then
/// `pending` ones by priority then age, skipping rows
/// another host is claiming (`FOR UPDATE SKIP LOCKED`) and resumable rows
/// whose checkpoint files are on another host's local disk.
pub(super) fn claim<C: GenericClient>(
    c: &mut Db<'_, C>,
    me: &Me,
    now: &str,
    ask: claiming::Ask<'_>,
) -> Result<Vec<(String, ClaimedOperation)>> {
    claiming::resuming_then_pending(ask.limit, |from, left| {
        let sql = lease_sql(
            "UPDATE operations SET status = 'running', attempt = attempt + 1, \
                 started_at = $1, updated_at = $1, stop_reason = NULL, error_message = NULL, \
                 claimed_by = $6, lease_expires_at = $LEASE_EXPR \
             WHERE operation_id IN ( \
                 SELECT o.operation_id FROM operations o \
                 WHERE o.status = $8 AND o.operation_type = $2 \
                   AND o.gpus_requested BETWEEN $3 AND $4 \
                   AND (o.run_after IS NULL OR o.run_after <= $1) \
                   AND ($8 = 'resuming' OR (o.held = 0 AND o.waiting_for = 0)) \
                   AND NOT (o.queue = ANY($10::text[])) \
                   AND (o.claimed_by IS NULL OR o.claimed_by = $6 OR NOT EXISTS ( \
                       SELECT 1 FROM operation_checkpoints k \
                       WHERE k.operation_id = o.operation_id AND k.artifacts_path IS NOT NULL \
                         AND ($9::text IS NULL OR NOT starts_with(k.artifacts_path, $9::text)))) \
                 ORDER BY o.priority DESC, o.created_at, o.operation_id LIMIT $5 \
                 FOR UPDATE SKIP LOCKED) \
             RETURNING $RETURNING",
            7,
        )
        .replace("$RETURNING", CLAIM_RETURNING);
        let rows = c.query(
            &sql,
            &[
                &now,
                &ask.kind.as_str(),
                ask.gpus.start(),
                ask.gpus.end(),
                &(left as i64),
                &me.host,
                &me.lease_secs,
                &from,
                &me.shared_prefix,
                &ask.closed,
            ],
        )?;
        rows.iter().map(|r| rows::claimed(r, ask.kind)).collect()
    })
}

/// Record the GPUs assigned to an operation running here.
pub(super) fn set_gpus<C: GenericClient>(
    c: &mut Db<'_, C>,
    me: &Me,
    id: &OperationId,
    gpus: &[String],
) -> Result<()> {
    let v = serde_json::json!(gpus);
    c.execute(
        "UPDATE operations SET gpus_assigned = $2 WHERE operation_id = $1 AND claimed_by = $3",
        &[&id.as_str(), &v, &me.host],
    )?;
    Ok(())
}

/// The highest metric seq of an operation.
pub(super) fn last_seq<C: GenericClient>(c: &mut Db<'_, C>, id: &OperationId) -> Result<i64> {
    Ok(c.query_one(
        "SELECT coalesce(max(seq), 0)::bigint FROM operation_metrics WHERE operation_id = $1",
        &[&id.as_str()],
    )?
    .get(0))
}

/// Append points in one statement; returns the last seq.
pub(super) fn append_metrics<C: GenericClient>(
    c: &mut Db<'_, C>,
    id: &OperationId,
    points: &[(String, Value)],
) -> Result<i64> {
    if points.is_empty() {
        return last_seq(c, id);
    }
    let at: Vec<&str> = points.iter().map(|p| p.0.as_str()).collect();
    let data: Vec<String> = points.iter().map(|p| p.1.to_string()).collect();
    Ok(c.query_one(
        "WITH base AS (SELECT coalesce(max(seq), 0) AS s FROM operation_metrics \
                           WHERE operation_id = $1), \
                  ins AS (INSERT INTO operation_metrics (operation_id, seq, recorded_at, data) \
                          SELECT $1, base.s + u.n, u.at, u.d::jsonb \
                          FROM base, unnest($2::text[], $3::text[]) WITH ORDINALITY AS u(at, d, n) \
                          RETURNING seq) \
             SELECT max(seq)::bigint FROM ins",
        &[&id.as_str(), &at, &data],
    )?
    .get(0))
}

/// Points after `cursor`.
pub(super) fn metrics_after<C: GenericClient>(
    c: &mut Db<'_, C>,
    id: &OperationId,
    cursor: i64,
    limit: i64,
) -> Result<(Vec<MetricPoint>, i64)> {
    let points: Vec<MetricPoint> = c
        .query(
            "SELECT seq, recorded_at, data FROM operation_metrics \
             WHERE operation_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            &[&id.as_str(), &cursor, &limit],
        )?
        .iter()
        .map(|r| MetricPoint {
            seq: r.get(0),
            recorded_at: r.get(1),
            data: r.get(2),
        })
        .collect();
    let next = points.last().map(|p| p.seq).unwrap_or(cursor);
    Ok((points, next))
}

/// Drop points after `seq`.
pub(super) fn truncate_metrics<C: GenericClient>(
    c: &mut Db<'_, C>,
    id: &OperationId,
    seq: i64,
) -> Result<()> {
    c.execute(
        "DELETE FROM operation_metrics WHERE operation_id = $1 AND seq > $2",
        &[&id.as_str(), &seq],
    )?;
    Ok(())
}

/// Live progress of an operation, if this host's run `attempt` still
/// holds it (the fence); false when the claim is lost.
pub(super) fn write_progress<C: GenericClient>(
    c: &mut Db<'_, C>,
    me: &Me,
    attempt: i64,
    id: &OperationId,
    p: &Progress,
) -> Result<bool> {
    let pct = p.percentage.clamp(0.0, 100.0);
    let id = id.as_str();
    let mut args: Vec<P> = vec![&id];
    args.extend(progress_values(p, &pct, true));
    args.extend([&me.host as P, &attempt]);
    let n = c.execute(
        "UPDATE operations SET progress_percent = $2, progress_message = $3, current_step = $4, \
             steps_completed = $5, steps_total = $6, items_processed = $7, items_total = $8, \
             eta_seconds = $9, progress_context = $10 \
         WHERE operation_id = $1 AND status = 'running' AND claimed_by = $11 AND attempt = $12",
        &args,
    )?;
    Ok(n == 1)
}

/// Recompute a running parent's stored percentage from its children.
///
/// The parent's row is locked first (`FOR UPDATE`): at READ COMMITTED two
/// hosts refreshing the same parent for different children would each
/// read the other's child as it was before, and the later UPDATE would
/// store a percentage missing the earlier child's step. Under the lock the
/// second one reads the children after the first has committed. The
/// UPDATE took the same row lock before, so two batches that lock two
/// parents in opposite orders still end in a deadlock error, which the
/// writer retries as busy (SQLSTATE 40P01).
pub(super) fn refresh_parent_progress<C: GenericClient>(
    c: &mut Db<'_, C>,
    parent: &OperationId,
) -> Result<()> {
    let running = c.query_opt(
        "SELECT 1 FROM operations WHERE operation_id = $1 AND status = 'running' FOR UPDATE",
        &[&parent.as_str()],
    )?;
    if running.is_none() {
        return Ok(());
    }
    let kids: Vec<ChildProgress> = c
        .query(
            "SELECT progress_percent, phase_start, phase_end, status FROM operations \
             WHERE parent_operation_id = $1",
            &[&parent.as_str()],
        )?
        .iter()
        .map(|r| {
            let status: &str = r.get(3);
            let pct: f64 = r.get(0);
            let start: Option<f64> = r.get(1);
            let end: Option<f64> = r.get(2);
            ChildProgress {
                percentage: if status == "completed" { 100.0 } else { pct },
                phase: start.zip(end),
            }
        })
        .collect();
    if kids.is_empty() {
        return Ok(());
    }
    let pct = parent_percentage(100.0, &kids);
    c.execute(
        // Locked above and known to be running.
        "UPDATE operations SET progress_percent = $2 WHERE operation_id = $1",
        &[&parent.as_str(), &pct],
    )?;
    Ok(())
}

/// The end of a run, if this host's run `attempt` still holds it (the
/// fence); false (nothing written) when the claim is lost.
pub(super) fn finish<C: GenericClient>(
    c: &mut Db<'_, C>,
    me: &Me,
    attempt: i64,
    id: &OperationId,
    f: &Finish,
    delete_checkpoint: bool,
    now: &str,
) -> Result<bool> {
    let entry = f
        .error
        .as_ref()
        .map(|e| serde_json::json!([{"at": now, "message": e}]));
    let p = f.progress.clone().unwrap_or_default();
    let keep = f.progress.is_none();
    let pct = p.percentage.clamp(0.0, 100.0);
    let result = f.result.clone();
    let (id, status, stop) = (
        id.as_str(),
        f.status.as_str(),
        f.stop_reason.map(|r| r.as_str()),
    );
    let mut args: Vec<P> = vec![&id, &status, &stop, &result, &f.error, &now, &entry, &keep];
    args.extend(progress_values(&p, &pct, false));
    args.extend([&me.host as P, &attempt, &delete_checkpoint]);
    // One statement: the fenced final row and, when asked (`$19`), the
    // checkpoint row of the run that just completed.
    let n: i64 = c.query_one(
        "WITH u AS (UPDATE operations SET status = $2::text, stop_reason = $3, result_summary = $4, \
             error_message = $5, completed_at = $6, updated_at = $6, eta_seconds = NULL, \
             lease_expires_at = NULL, \
             errors = CASE WHEN $7::jsonb IS NULL THEN errors ELSE errors || $7::jsonb END, \
             progress_percent = CASE WHEN $2::text = 'completed' THEN 100 WHEN $8 THEN progress_percent ELSE $9 END, \
             progress_message = CASE WHEN $8 THEN progress_message ELSE $10 END, \
             current_step = CASE WHEN $8 THEN current_step ELSE $11 END, \
             steps_completed = CASE WHEN $8 THEN steps_completed ELSE $12 END, \
             steps_total = CASE WHEN $8 THEN steps_total ELSE $13 END, \
             items_processed = CASE WHEN $8 THEN items_processed ELSE $14 END, \
             items_total = CASE WHEN $8 THEN items_total ELSE $15 END, \
             progress_context = CASE WHEN $8 THEN progress_context ELSE $16 END \
         WHERE operation_id = $1 AND status = 'running' AND claimed_by = $17 AND attempt = $18 \
         RETURNING operation_id), \
         d AS (DELETE FROM operation_checkpoints WHERE $19 \
               AND operation_id IN (SELECT operation_id FROM u)) \
         SELECT count(*) FROM u",
        &args,
    )?
    .get(0);
    Ok(n == 1)
}

/// A failed run with attempts left goes back to the queue (a stop marker
/// turns it into the cancel instead).
pub(super) fn requeue_for_retry<C: GenericClient>(
    c: &mut Db<'_, C>,
    id: &OperationId,
    error: &str,
    run_after: &str,
    now: &str,
) -> Result<bool> {
    let entry = serde_json::json!([{"at": now, "message": error}]);
    let n = c.execute(
        "UPDATE operations SET \
             status = CASE WHEN stop_reason IS NULL THEN 'pending' ELSE 'cancelled' END, \
             completed_at = CASE WHEN stop_reason IS NULL THEN NULL ELSE $3 END, \
             run_after = CASE WHEN stop_reason IS NULL THEN $2 ELSE NULL END, \
             updated_at = $3, eta_seconds = NULL, lease_expires_at = NULL, \
             progress_message = CASE WHEN stop_reason IS NULL \
                 THEN format('attempt %s of %s failed; retrying after %s', attempt, max_attempts, $2::text) \
                 ELSE 'cancelled while its failed attempt was being recorded' END, \
             error_message = $4, errors = errors || $5::jsonb \
         WHERE operation_id = $1 AND status = 'running'",
        &[&id.as_str(), &run_after, &now, &error, &entry],
    )?;
    Ok(n == 1)
}

const TREE: &str = "WITH RECURSIVE tree(id) AS ( \
         SELECT $1::text UNION SELECT o.operation_id FROM operations o \
         JOIN tree t ON o.parent_operation_id = t.id) ";

/// Cancel a tree in one transaction (as in SQLite). Running members get a
/// stop marker; their hosts are told by NOTIFY. Returns the running
/// members this host runs.
pub(super) fn cancel_tree<C: GenericClient>(
    c: &mut Db<'_, C>,
    me: &Me,
    root: &OperationId,
    reason: StopReason,
    message: Option<&str>,
    now: &str,
) -> Result<TreeCancel> {
    // Lock the tree first: a child being inserted under a member commits
    // before this goes on (and is seen below), or waits and is refused.
    let lock = format!(
        "{TREE} SELECT status FROM operations WHERE operation_id IN (SELECT id FROM tree) \
         ORDER BY operation_id FOR UPDATE"
    );
    c.query(&lock, &[&root.as_str()])?;
    let before = status(c, root)?;
    if let Some(e) = rules::cancel_refused(root, before) {
        return Err(e);
    }
    let waiting = format!(
        "{TREE} UPDATE operations SET status = 'cancelled', \
             stop_reason = CASE WHEN operation_id = $1 THEN $2 ELSE 'parent' END, \
             completed_at = $3, updated_at = $3, eta_seconds = NULL, \
             error_message = CASE WHEN operation_id = $1 THEN $4 ELSE NULL END \
         WHERE operation_id IN (SELECT id FROM tree) AND status IN ('pending','resuming') \
         RETURNING operation_id"
    );
    let stopped: Vec<String> = c
        .query(
            &waiting,
            &[&root.as_str(), &reason.as_str(), &now, &message],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect();
    // Their dependents stop waiting (an `--after` one is cancelled too).
    for id in stopped {
        everyday::settle(c, &OperationId(id), Status::Cancelled, now)?;
    }
    let running = format!(
        "{TREE} UPDATE operations SET \
             stop_reason = coalesce(stop_reason, CASE WHEN operation_id = $1 THEN $2 ELSE 'parent' END) \
         WHERE operation_id IN (SELECT id FROM tree) AND status = 'running' \
         RETURNING operation_id, attempt, claimed_by"
    );
    let rows = c.query(&running, &[&root.as_str(), &reason.as_str()])?;
    let mut here = Vec::new();
    let mut elsewhere: Vec<String> = Vec::new();
    for r in rows {
        let id: String = r.get(0);
        let host: Option<String> = r.get(2);
        if host.as_deref() == Some(me.host.as_str()) {
            let is_root = id == root.as_str();
            here.push((OperationId(id), r.get::<_, i64>(1), is_root));
        } else if let Some(h) = host {
            elsewhere.push(h);
        }
    }
    elsewhere.sort();
    elsewhere.dedup();
    for h in elsewhere {
        notify(c, STOP_CHANNEL, &h)?;
    }
    Ok(TreeCancel {
        before,
        running: here,
    })
}

/// NOTIFY listeners: queued on the connection and sent once per batch,
/// just before its COMMIT (delivered when it commits).
pub(super) fn notify<C: GenericClient>(
    c: &mut Db<'_, C>,
    channel: &'static str,
    payload: &str,
) -> Result<()> {
    if !c
        .cache
        .notes
        .iter()
        .any(|(ch, p)| *ch == channel && p == payload)
    {
        c.cache.notes.push((channel, payload.to_string()));
    }
    Ok(())
}

/// try_resume: one atomic UPDATE; the hosts are told there is work.
pub(super) fn try_resume<C: GenericClient>(
    c: &mut Db<'_, C>,
    id: &OperationId,
    now: &str,
) -> Result<()> {
    let won = c.query_opt(
        "UPDATE operations SET status = 'resuming', updated_at = $2, completed_at = NULL, \
             run_after = NULL, lease_expires_at = NULL \
         WHERE operation_id = $1 AND status IN ('cancelled','failed') RETURNING operation_id",
        &[&id.as_str(), &now],
    )?;
    match won {
        Some(_) => notify(c, WORK_CHANNEL, ""),
        None => Err(rules::not_resumable(id, status(c, id)?)),
    }
}

/// Crash recovery of `running` rows: at start this host's own and expired
/// ones, in the rescuer expired ones: `failed`/`crash` — except rows a
/// cancel had already reached (a stop marker), which end `cancelled` as
/// asked instead of being resumed.
pub(super) fn fail_crashed<C: GenericClient>(
    c: &mut Db<'_, C>,
    me: &Me,
    now: &str,
    expired_only: bool,
) -> Result<Vec<OperationId>> {
    let which = if expired_only {
        "lease_expires_at < opsd_ts(clock_timestamp())"
    } else {
        // At start: this host's earlier run, and anyone's expired lease.
        "(claimed_by IS NULL OR claimed_by = $2 OR lease_expires_at IS NULL \
          OR lease_expires_at < opsd_ts(clock_timestamp()))"
    };
    let msg = if expired_only {
        "the host running this operation stopped renewing its lease (crashed, stopped or cut off)"
    } else {
        "the daemon stopped uncleanly while this operation was running"
    };
    let sql = format!(
        "UPDATE operations SET \
             status = CASE WHEN stop_reason IN ('user','parent') THEN 'cancelled' ELSE 'failed' END, \
             stop_reason = CASE WHEN stop_reason IN ('user','parent') THEN stop_reason \
                 ELSE 'crash' END, \
             completed_at = $1, updated_at = $1, eta_seconds = NULL, lease_expires_at = NULL, \
             error_message = $3::text || CASE WHEN claimed_by IS NULL THEN '' \
                 ELSE ' (host ' || claimed_by || ')' END \
         WHERE status = 'running' AND ($2::text IS NOT NULL) AND {which} RETURNING operation_id"
    );
    Ok(c.query(&sql, &[&now, &me.host, &msg])?
        .iter()
        .map(|r| OperationId(r.get(0)))
        .collect())
}

/// Operations to resume by themselves: stopped by a shutdown, or crashed
/// with a checkpoint (`with_crashed`); `only` limits them to these ids.
pub(super) fn recoverable<C: GenericClient>(
    c: &mut Db<'_, C>,
    with_crashed: bool,
    only: Option<&[OperationId]>,
) -> Result<Vec<OperationId>> {
    let ids: Option<Vec<&str>> = only.map(|o| o.iter().map(|i| i.as_str()).collect());
    Ok(c.query(
        "SELECT o.operation_id FROM operations o \
             WHERE o.stop_reason IN ('shutdown','crash') AND o.status IN ('cancelled','failed') \
               AND ($2::text[] IS NULL OR o.operation_id = ANY($2::text[])) \
               AND (o.stop_reason = 'shutdown' OR ($1 AND EXISTS ( \
                   SELECT 1 FROM operation_checkpoints k WHERE k.operation_id = o.operation_id))) \
             ORDER BY o.created_at",
        &[&with_crashed, &ids],
    )?
    .iter()
    .map(|r| OperationId(r.get(0)))
    .collect())
}

/// Operations a clean shutdown stopped on a host that has left `hosts`:
/// another host resumes them (files on that host's disk keep them there,
/// see [`claim`]).
pub(super) fn orphaned_shutdowns<C: GenericClient>(c: &mut Db<'_, C>) -> Result<Vec<OperationId>> {
    Ok(c.query(
        "SELECT o.operation_id FROM operations o \
             WHERE o.stop_reason = 'shutdown' AND o.status = 'cancelled' \
               AND NOT EXISTS (SELECT 1 FROM hosts h WHERE h.host = o.claimed_by) \
             ORDER BY o.created_at LIMIT 1000",
        &[],
    )?
    .iter()
    .map(|r| OperationId(r.get(0)))
    .collect())
}

/// Renew the leases of this host's running operations; returns the ids
/// (with attempts) it still holds.
pub(super) fn renew<C: GenericClient>(
    c: &mut Db<'_, C>,
    me: &Me,
    ids: &[&str],
) -> Result<Vec<(OperationId, i64)>> {
    let sql = lease_sql(
        "UPDATE operations SET lease_expires_at = $LEASE_EXPR \
         WHERE status = 'running' AND claimed_by = $1 AND operation_id = ANY($3::text[]) \
         RETURNING operation_id, attempt",
        2,
    );
    Ok(c.query(&sql, &[&me.host, &me.lease_secs, &ids])?
        .iter()
        .map(|r| (OperationId(r.get(0)), r.get(1)))
        .collect())
}

/// Stop markers on operations running here.
pub(super) fn stop_requests<C: GenericClient>(
    c: &mut Db<'_, C>,
    me: &Me,
) -> Result<Vec<(OperationId, i64, StopReason)>> {
    c.query(
        "SELECT operation_id, attempt, stop_reason FROM operations \
         WHERE status = 'running' AND claimed_by = $1 AND stop_reason IS NOT NULL",
        &[&me.host],
    )?
    .iter()
    .map(|r| {
        Ok((
            OperationId(r.get(0)),
            r.get(1),
            parse::<StopReason>(r.get::<_, &str>(2))?,
        ))
    })
    .collect()
}

/// Append a warning.
pub(super) fn add_warning<C: GenericClient>(
    c: &mut Db<'_, C>,
    id: &OperationId,
    message: &str,
    now: &str,
) -> Result<()> {
    let entry = serde_json::json!([{"at": now, "message": message}]);
    c.execute(
        "UPDATE operations SET warnings = warnings || $2::jsonb WHERE operation_id = $1",
        &[&id.as_str(), &entry],
    )?;
    Ok(())
}

const CP_COLUMNS: &str = "operation_id, checkpoint_type, created_at, state, artifacts_path, \
    state_size_bytes, artifacts_size_bytes, progress_percent, metrics_seq";

fn checkpoint_row(r: &Row) -> Result<Checkpoint> {
    Ok(Checkpoint {
        operation_id: OperationId(r.try_get(0)?),
        checkpoint_type: parse(r.try_get::<_, &str>(1)?)?,
        created_at: r.try_get(2)?,
        state: r.try_get(3)?,
        artifacts_path: r.try_get(4)?,
        state_size_bytes: r.try_get(5)?,
        artifacts_size_bytes: r.try_get(6)?,
        progress_percent: r.try_get(7)?,
        metrics_seq: r.try_get(8)?,
    })
}

/// Insert or replace a checkpoint.
pub(super) fn save_checkpoint<C: GenericClient>(c: &mut Db<'_, C>, cp: &Checkpoint) -> Result<()> {
    let size = cp.state.to_string().len() as i64;
    let sql = format!(
        "INSERT INTO operation_checkpoints ({CP_COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9) \
         ON CONFLICT (operation_id) DO UPDATE SET checkpoint_type = EXCLUDED.checkpoint_type, \
             created_at = EXCLUDED.created_at, state = EXCLUDED.state, \
             artifacts_path = EXCLUDED.artifacts_path, state_size_bytes = EXCLUDED.state_size_bytes, \
             artifacts_size_bytes = EXCLUDED.artifacts_size_bytes, \
             progress_percent = EXCLUDED.progress_percent, metrics_seq = EXCLUDED.metrics_seq"
    );
    c.execute(
        &sql,
        &[
            &cp.operation_id.as_str(),
            &cp.checkpoint_type.as_str(),
            &cp.created_at,
            &cp.state,
            &cp.artifacts_path,
            &size,
            &cp.artifacts_size_bytes,
            &cp.progress_percent,
            &cp.metrics_seq,
        ],
    )?;
    Ok(())
}

/// An operation's checkpoint.
pub(super) fn checkpoint<C: GenericClient>(
    c: &mut Db<'_, C>,
    id: &OperationId,
) -> Result<Option<Checkpoint>> {
    let sql = format!("SELECT {CP_COLUMNS} FROM operation_checkpoints WHERE operation_id = $1");
    c.query_opt(&sql, &[&id.as_str()])?
        .map(|r| checkpoint_row(&r))
        .transpose()
}

/// Every checkpoint, newest first.
pub(super) fn checkpoints<C: GenericClient>(c: &mut Db<'_, C>) -> Result<Vec<Checkpoint>> {
    let sql = format!("SELECT {CP_COLUMNS} FROM operation_checkpoints ORDER BY created_at DESC");
    c.query(&sql, &[])?.iter().map(checkpoint_row).collect()
}

/// Change a checkpoint's type.
pub(super) fn set_checkpoint_type<C: GenericClient>(
    c: &mut Db<'_, C>,
    id: &OperationId,
    kind: crate::model::CheckpointType,
) -> Result<()> {
    c.execute(
        "UPDATE operation_checkpoints SET checkpoint_type = $2 WHERE operation_id = $1",
        &[&id.as_str(), &kind.as_str()],
    )?;
    Ok(())
}

/// Delete a checkpoint (optionally `not_found` when there is none).
pub(super) fn delete_checkpoint<C: GenericClient>(
    c: &mut Db<'_, C>,
    id: &OperationId,
) -> Result<Option<Checkpoint>> {
    let sql =
        format!("DELETE FROM operation_checkpoints WHERE operation_id = $1 RETURNING {CP_COLUMNS}");
    c.query_opt(&sql, &[&id.as_str()])?
        .map(|r| checkpoint_row(&r))
        .transpose()
}

/// The retention sweep.
pub(super) fn sweep_checkpoints<C: GenericClient>(
    c: &mut Db<'_, C>,
    before: &str,
) -> Result<Vec<OperationId>> {
    Ok(c
        .query(
            "DELETE FROM operation_checkpoints WHERE created_at < $1 AND operation_id IN ( \
                 SELECT operation_id FROM operations WHERE status IN ('completed','failed','cancelled')) \
             RETURNING operation_id",
            &[&before],
        )?
        .iter()
        .map(|r| OperationId(r.get(0)))
        .collect())
}

/// Register or refresh a host.
pub(super) fn upsert_host<C: GenericClient>(c: &mut Db<'_, C>, h: &HostRecord) -> Result<()> {
    c.execute(
        "INSERT INTO hosts (host, started_at, last_seen_at, version, workers, gpus, types) \
         VALUES ($1, $2, opsd_ts(clock_timestamp()), $3, $4, $5, $6) \
         ON CONFLICT (host) DO UPDATE SET started_at = EXCLUDED.started_at, \
             last_seen_at = EXCLUDED.last_seen_at, version = EXCLUDED.version, \
             workers = EXCLUDED.workers, gpus = EXCLUDED.gpus, types = EXCLUDED.types",
        &[
            &h.host,
            &h.started_at,
            &h.version,
            &h.workers,
            &h.gpus,
            &h.types,
        ],
    )?;
    Ok(())
}

/// Remove a host.
pub(super) fn delete_host<C: GenericClient>(c: &mut Db<'_, C>, host: &str) -> Result<()> {
    c.execute("DELETE FROM hosts WHERE host = $1", &[&host])?;
    Ok(())
}

/// Every host.
pub(super) fn hosts<C: GenericClient>(c: &mut Db<'_, C>) -> Result<Vec<HostRecord>> {
    Ok(c.query(
        "SELECT host, started_at, last_seen_at, version, workers, gpus, types FROM hosts \
             ORDER BY host",
        &[],
    )?
    .iter()
    .map(|r| HostRecord {
        host: r.get(0),
        started_at: r.get(1),
        last_seen_at: r.get(2),
        version: r.get(3),
        workers: r.get(4),
        gpus: r.get(5),
        types: r.get(6),
    })
    .collect())
}
