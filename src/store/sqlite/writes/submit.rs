//! Insert operations (a submit or a batch of them, one transaction).

use super::super::operations as ops;
use super::super::writer::Write;
use crate::error::Result;
use crate::store::records::{NewOperation, Submitted};
use rusqlite::Connection;

/// Insert these operations, all or none.
pub(crate) struct Submit(pub Vec<NewOperation>);

impl Write for Submit {
    type Out = Vec<Submitted>;
    fn apply(&mut self, c: &Connection) -> Result<Vec<Submitted>> {
        let now = crate::ids::now();
        self.0
            .iter()
            .map(|op| {
                let (id, status, created) = ops::insert(c, op, &now)?;
                Ok(Submitted {
                    id,
                    status,
                    created,
                })
            })
            .collect()
    }
}
