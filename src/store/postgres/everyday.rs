//! SPEC §12 on PostgreSQL: named queues (and the gate the claim goes
//! through), dependencies between operations, hold/release and `clean`,
//! with the semantics of SQLite's `queues.rs`, `dependencies.rs` and
//! `operations.rs`.
//!
//! What sharing adds: a new operation share-locks the operations it
//! depends on, so a dependency ending on another host either is seen
//! ended by the submit or sees its new dependency row; and while a queue
//! has a parallel cap, the claim locks the capped queue rows, so hosts
//! claiming at once count each other's running work.

use super::sql::{self, WORK_CHANNEL};
use super::Db;
use crate::error::{Error, Result};
use crate::ids::OperationId;
use crate::model::Status;
use crate::store::claiming::Gate;
use crate::store::records::{CleanFilter, QueueChange, QueueRow};
use crate::store::rules::{self, Dep};
use postgres::GenericClient;
use std::collections::{HashMap, HashSet};

/// Create the queue if it does not exist yet (a submit to a new name).
pub(super) fn ensure_queue<C: GenericClient>(
    c: &mut Db<'_, C>,
    name: &str,
    now: &str,
) -> Result<()> {
    if name == "default" {
        return Ok(());
    }
    rules::queue_name(name)?;
    c.execute(
        "INSERT INTO queues (name, created_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        &[&name, &now],
    )?;
    Ok(())
}

/// Every queue with its waiting and running counts, by name.
pub(super) fn queues<C: GenericClient>(c: &mut Db<'_, C>) -> Result<Vec<QueueRow>> {
    Ok(c.query(
        "SELECT q.name, q.paused::bigint, q.parallel::bigint, \
             (SELECT count(*) FROM operations o WHERE o.status IN ('pending','resuming') \
                 AND o.queue = q.name), \
             (SELECT count(*) FROM operations o WHERE o.status = 'running' \
                 AND o.queue = q.name) \
         FROM queues q ORDER BY q.name",
        &[],
    )?
    .iter()
    .map(|r| QueueRow {
        name: r.get(0),
        paused: r.get::<_, i64>(1) != 0,
        parallel: r.get(2),
        waiting: r.get(3),
        running: r.get(4),
    })
    .collect())
}

/// Pause, start or cap a queue (creating it); returns it as it is now.
pub(super) fn set_queue<C: GenericClient>(
    c: &mut Db<'_, C>,
    ch: &QueueChange,
    now: &str,
) -> Result<QueueRow> {
    rules::queue_change(ch)?;
    c.execute(
        "INSERT INTO queues (name, created_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        &[&ch.name, &now],
    )?;
    if let Some(p) = ch.paused {
        c.execute(
            "UPDATE queues SET paused = $2::bigint WHERE name = $1",
            &[&ch.name, &(p as i64)],
        )?;
    }
    let mut opened = ch.paused == Some(false);
    if let Some(n) = ch.parallel {
        c.execute(
            "UPDATE queues SET parallel = $2::bigint WHERE name = $1",
            &[&ch.name, &n],
        )?;
        opened = true;
    }
    if opened {
        // Work may have become startable: tell the hosts.
        sql::notify(c, WORK_CHANNEL, "")?;
    }
    queues(c)?
        .into_iter()
        .find(|q| q.name == ch.name)
        .ok_or_else(|| Error::Internal(format!("queue {} vanished", ch.name)))
}

/// Read the paused and capped queues and count their running work, for
/// a claim round. Capped queue rows are locked until the claim commits, so
/// claims of several hosts take turns and each counts what the others
/// started.
pub(super) fn gate<C: GenericClient>(c: &mut Db<'_, C>) -> Result<Gate> {
    let rows = c.query(
        "SELECT name, paused::bigint, parallel::bigint FROM queues \
         WHERE paused = 1 OR parallel IS NOT NULL ORDER BY name",
        &[],
    )?;
    let mut queues = Vec::new();
    for r in rows {
        let name: String = r.get(0);
        let paused = r.get::<_, i64>(1) != 0;
        let cap: Option<i64> = r.get(2);
        let running = if cap.is_some() && !paused {
            c.query(
                "SELECT name FROM queues WHERE name = $1 FOR UPDATE",
                &[&name],
            )?;
            c.query_one(
                "SELECT count(*) FROM operations WHERE status = 'running' AND queue = $1",
                &[&name],
            )?
            .get(0)
        } else {
            0
        };
        queues.push((name, paused, cap, running));
    }
    Ok(Gate::new(queues))
}

/// Check the dependencies of a new operation (as SQLite): each must
/// exist; an `--after` one must not have failed or been cancelled. Each
/// is share-locked until the submit commits (see the module comment).
pub(super) fn check_deps<C: GenericClient>(
    c: &mut Db<'_, C>,
    after: &[OperationId],
    after_any: &[OperationId],
) -> Result<Vec<Dep>> {
    let mut out = Vec::new();
    for (id, any) in rules::dependencies(after, after_any) {
        let row = c.query_opt(
            "SELECT status FROM operations WHERE operation_id = $1 FOR SHARE",
            &[&id.as_str()],
        )?;
        let status = match row {
            Some(r) => Some(r.get::<_, &str>(0).parse().map_err(Error::Internal)?),
            None => None,
        };
        out.push(rules::dependency(id, any, status)?);
    }
    Ok(out)
}

/// Store the checked dependencies of a new operation.
pub(super) fn insert_deps<C: GenericClient>(
    c: &mut Db<'_, C>,
    id: &OperationId,
    deps: &[Dep],
) -> Result<()> {
    for d in deps {
        c.execute(
            "INSERT INTO operation_dependencies (operation_id, depends_on, any_outcome, state) \
             VALUES ($1, $2, $3::bigint, $4)",
            &[
                &id.as_str(),
                &d.id.as_str(),
                &(d.any as i64),
                &if d.met { "met" } else { "waiting" },
            ],
        )?;
    }
    Ok(())
}

/// `id` ended with `status`: its dependents are settled (see
/// [`rules::settle`]); when one stopped waiting, the hosts are told
/// there is work. Returns the operations cancelled that way.
pub(super) fn settle<C: GenericClient>(
    c: &mut Db<'_, C>,
    id: &OperationId,
    status: Status,
    now: &str,
) -> Result<Vec<OperationId>> {
    let (cancelled, freed) = rules::settle(c, id, status, now)?;
    if freed {
        sql::notify(c, WORK_CHANNEL, "")?;
    }
    Ok(cancelled)
}

/// The dependency statements on PostgreSQL; dependents in id order, so
/// hosts settling at once lock their rows in one order.
impl<C: GenericClient> rules::DependencyRows for Db<'_, C> {
    fn waiting_dependents(&mut self, done: &OperationId) -> Result<Vec<(OperationId, bool)>> {
        Ok(self
            .query(
                "SELECT operation_id, any_outcome::bigint FROM operation_dependencies \
                 WHERE depends_on = $1 AND state = 'waiting' ORDER BY operation_id",
                &[&done.as_str()],
            )?
            .iter()
            .map(|r| (OperationId(r.get(0)), r.get::<_, i64>(1) != 0))
            .collect())
    }

    fn resolve_dependency(&mut self, row: rules::Settled<'_>) -> Result<()> {
        let (dep, done, met) = (row.dependent, row.on, row.met);
        self.execute(
            "UPDATE operation_dependencies SET state = $3 \
             WHERE operation_id = $1 AND depends_on = $2",
            &[
                &dep.as_str(),
                &done.as_str(),
                &if met { "met" } else { "broken" },
            ],
        )?;
        self.execute(
            "UPDATE operations SET waiting_for = waiting_for - 1 \
             WHERE operation_id = $1 AND waiting_for > 0",
            &[&dep.as_str()],
        )?;
        Ok(())
    }

    fn cancel_dependent(&mut self, dep: &OperationId, message: &str, now: &str) -> Result<bool> {
        let n = self.execute(
            "UPDATE operations SET status = 'cancelled', stop_reason = 'dependency', \
                 completed_at = $2, updated_at = $2, eta_seconds = NULL, error_message = $3 \
             WHERE operation_id = $1 AND status = 'pending'",
            &[&dep.as_str(), &now, &message],
        )?;
        Ok(n == 1)
    }
}

/// Recovery: the dependents of crashed operations that stay ended (not
/// among `resumed`) stop waiting, each by the status it has now.
pub(super) fn settle_crashed<C: GenericClient>(
    c: &mut Db<'_, C>,
    crashed: &[OperationId],
    resumed: &[OperationId],
    now: &str,
) -> Result<()> {
    for id in crashed.iter().filter(|id| !resumed.contains(id)) {
        let st = sql::status(c, id)?;
        if !st.is_active() {
            settle(c, id, st, now)?;
        }
    }
    Ok(())
}

/// The operations `id` still waits for.
pub(super) fn waiting_on<C: GenericClient>(
    c: &mut Db<'_, C>,
    id: &OperationId,
) -> Result<Vec<OperationId>> {
    Ok(c.query(
        "SELECT depends_on FROM operation_dependencies \
         WHERE operation_id = $1 AND state = 'waiting' ORDER BY depends_on",
        &[&id.as_str()],
    )?
    .iter()
    .map(|r| OperationId(r.get(0)))
    .collect())
}

/// `opsd release`: a held pending operation may start.
pub(super) fn release<C: GenericClient>(
    c: &mut Db<'_, C>,
    id: &OperationId,
    now: &str,
) -> Result<()> {
    let n = c.execute(
        "UPDATE operations SET held = 0, updated_at = $2 \
         WHERE operation_id = $1 AND held = 1 AND status = 'pending'",
        &[&id.as_str(), &now],
    )?;
    if n == 1 {
        return sql::notify(c, WORK_CHANNEL, "");
    }
    Err(rules::release_refused(&sql::get(c, id)?))
}

/// `opsd clean` (as SQLite): finished operations matching `filter`, a
/// parent only together with all its children; deleted (children first)
/// unless `dry_run`, with their metrics, checkpoints and dependency rows
/// (by cascade).
pub(super) fn clean<C: GenericClient>(
    c: &mut Db<'_, C>,
    filter: &CleanFilter,
) -> Result<Vec<OperationId>> {
    let statuses = rules::clean_statuses(filter)?;
    let names: Vec<&str> = statuses.iter().map(|s| s.as_str()).collect();
    let before = filter.ended_before.clone().unwrap_or_else(|| "9999".into());
    let rows = c.query(
        "SELECT operation_id, parent_operation_id FROM operations \
         WHERE completed_at IS NOT NULL AND completed_at < $1 AND status = ANY($2::text[])",
        &[&before, &names],
    )?;
    let set: HashSet<String> = rows.iter().map(|r| r.get::<_, String>(0)).collect();
    let out = rules::whole_trees(set, |id| {
        let kids = c.query(
            "SELECT operation_id FROM operations WHERE parent_operation_id = $1",
            &[&id],
        )?;
        Ok(kids.iter().map(|k| k.get(0)).collect())
    })?;
    if !filter.dry_run {
        // Children first: a parent row is referenced by its children's.
        let parents: HashMap<String, Option<String>> = rows
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, Option<String>>(1)))
            .collect();
        let depth = |id: &OperationId| {
            let mut d = 0;
            let mut at = parents.get(&id.0).cloned().flatten();
            while let Some(p) = at {
                d += 1;
                at = parents.get(&p).cloned().flatten();
            }
            d
        };
        let mut ordered = out.clone();
        ordered.sort_by_key(|id| std::cmp::Reverse(depth(id)));
        for id in &ordered {
            c.execute(
                "DELETE FROM operations WHERE operation_id = $1 \
                 AND status IN ('completed','failed','cancelled')",
                &[&id.as_str()],
            )?;
        }
    }
    Ok(out)
}
