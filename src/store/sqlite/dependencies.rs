//! SQL over `operation_dependencies` (SPEC §12): `--after` (needs the
//! other operation `completed`) and `--after-any` (needs it ended). An
//! operation's `waiting_for` counts its dependencies in state `waiting`;
//! the claim takes only rows with none, through its partial index.

use super::operations as ops;
use crate::error::{Error, Result};
use crate::ids::OperationId;
use crate::model::Status;
use crate::store::rules::{self, Dep};
use rusqlite::{params, Connection};

/// Check the dependencies of a new operation: each must exist; an
/// `--after` one must not have failed or been cancelled already.
pub(crate) fn check(
    conn: &Connection,
    after: &[OperationId],
    after_any: &[OperationId],
) -> Result<Vec<Dep>> {
    let mut out = Vec::new();
    for (id, any) in rules::dependencies(after, after_any) {
        let status = match ops::status(conn, id) {
            Ok(s) => Some(s),
            Err(Error::NotFound(_)) => None,
            Err(e) => return Err(e),
        };
        out.push(rules::dependency(id, any, status)?);
    }
    Ok(out)
}

/// Store the checked dependencies of a new operation.
pub(crate) fn insert(conn: &Connection, id: &OperationId, deps: &[Dep]) -> Result<()> {
    for d in deps {
        conn.prepare_cached(
            "INSERT INTO operation_dependencies (operation_id, depends_on, any_outcome, state) \
             VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![
            id.as_str(),
            d.id.as_str(),
            d.any as i64,
            if d.met { "met" } else { "waiting" }
        ])?;
    }
    Ok(())
}

/// `id` ended with `status`: its dependents are settled (see
/// [`rules::settle`]). Returns the operations cancelled that way.
pub(crate) fn settle(
    conn: &Connection,
    id: &OperationId,
    status: Status,
    now: &str,
) -> Result<Vec<OperationId>> {
    Ok(rules::settle(&mut Rows(conn), id, status, now)?.0)
}

/// The dependency statements on one connection.
struct Rows<'a>(&'a Connection);

impl rules::DependencyRows for Rows<'_> {
    fn waiting_dependents(&mut self, done: &OperationId) -> Result<Vec<(OperationId, bool)>> {
        Ok(self
            .0
            .prepare_cached(
                "SELECT operation_id, any_outcome FROM operation_dependencies \
                 WHERE depends_on = ?1 AND state = 'waiting'",
            )?
            .query_map([done.as_str()], |r| {
                Ok((OperationId(r.get(0)?), r.get::<_, i64>(1)? != 0))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?)
    }

    fn resolve_dependency(&mut self, row: rules::Settled<'_>) -> Result<()> {
        let (dep, done, met) = (row.dependent, row.on, row.met);
        self.0
            .prepare_cached(
                "UPDATE operation_dependencies SET state = ?3 \
                 WHERE operation_id = ?1 AND depends_on = ?2",
            )?
            .execute(params![
                dep.as_str(),
                done.as_str(),
                if met { "met" } else { "broken" }
            ])?;
        self.0
            .prepare_cached(
                "UPDATE operations SET waiting_for = waiting_for - 1 \
                 WHERE operation_id = ?1 AND waiting_for > 0",
            )?
            .execute([dep.as_str()])?;
        Ok(())
    }

    fn cancel_dependent(&mut self, dep: &OperationId, message: &str, now: &str) -> Result<bool> {
        let n = self
            .0
            .prepare_cached(
                "UPDATE operations SET status = 'cancelled', stop_reason = 'dependency', \
                     completed_at = ?2, updated_at = ?2, eta_seconds = NULL, error_message = ?3 \
                 WHERE operation_id = ?1 AND status = 'pending'",
            )?
            .execute(params![dep.as_str(), now, message])?;
        Ok(n == 1)
    }
}

/// The operations `id` still waits for.
pub(crate) fn unmet(conn: &Connection, id: &OperationId) -> Result<Vec<OperationId>> {
    Ok(conn
        .prepare_cached(
            "SELECT depends_on FROM operation_dependencies \
             WHERE operation_id = ?1 AND state = 'waiting' ORDER BY depends_on",
        )?
        .query_map([id.as_str()], |r| Ok(OperationId(r.get(0)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?)
}
