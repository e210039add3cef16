//! Insert operations (a submit or a batch of them, one transaction).

use super::super::operations as ops;
use super::super::writer::Write;
use crate::error::Result;
use crate::store::records::{NewOperation, Submitted};
use rusqlite::Connection;

/// Insert these operations, all or none.
pub(crate) struct Submit {
    ops: Vec<NewOperation>,
    /// Each one's `metadata` as JSON text, written where the submit was
    /// made: the single writer thread only binds it.
    metadata: Vec<String>,
}

impl Submit {
    /// The insert of `ops`, serialized for the writer.
    pub(crate) fn new(ops: Vec<NewOperation>) -> Submit {
        let metadata = ops.iter().map(|op| op.metadata.to_string()).collect();
        Submit { ops, metadata }
    }
}

impl Write for Submit {
    type Out = Vec<Submitted>;
    fn apply(&mut self, c: &Connection) -> Result<Vec<Submitted>> {
        let now = crate::ids::now();
        self.ops
            .iter()
            .zip(&self.metadata)
            .map(|(op, metadata)| {
                let (id, status, created) = ops::insert(c, op, metadata, &now)?;
                Ok(Submitted {
                    id,
                    status,
                    created,
                })
            })
            .collect()
    }
}
