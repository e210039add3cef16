//! `opsd release`: a held operation may start.

use super::super::operations as ops;
use super::super::writer::Write;
use crate::error::Result;
use crate::ids::OperationId;
use rusqlite::Connection;

/// Release a held operation.
pub(crate) struct Release(pub OperationId);

impl Write for Release {
    type Out = ();
    fn apply(&mut self, c: &Connection) -> Result<()> {
        ops::release(c, &self.0, &crate::ids::now())
    }
}
