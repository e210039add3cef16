//! `opsd clean`: delete finished operations with their metrics,
//! checkpoints and dependency rows (never active ones), in one
//! transaction. With `dry_run`, only say which would go.

use super::super::operations as ops;
use super::super::writer::Write;
use crate::error::Result;
use crate::ids::OperationId;
use crate::store::records::CleanFilter;
use rusqlite::Connection;

/// Delete what the filter matches.
pub(crate) struct Clean(pub CleanFilter);

impl Write for Clean {
    type Out = Vec<OperationId>;
    fn apply(&mut self, c: &Connection) -> Result<Vec<OperationId>> {
        let ids = ops::cleanable(c, &self.0)?;
        if !self.0.dry_run {
            // Children first: a parent row is referenced by its children's.
            let mut ordered = ids.clone();
            ordered.sort_by_key(|id| std::cmp::Reverse(depth(c, id)));
            for id in &ordered {
                ops::delete(c, id)?;
            }
        }
        Ok(ids)
    }
}

/// How many ancestors an operation has.
fn depth(c: &Connection, id: &OperationId) -> i64 {
    c.query_row(
        "WITH RECURSIVE up(id, d) AS (SELECT ?1, 0 UNION ALL \
             SELECT o.parent_operation_id, up.d + 1 FROM operations o JOIN up ON o.operation_id = up.id \
             WHERE o.parent_operation_id IS NOT NULL) SELECT max(d) FROM up",
        [id.as_str()],
        |r| r.get(0),
    )
    .unwrap_or(0)
}
