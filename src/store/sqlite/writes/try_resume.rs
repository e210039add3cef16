//! try_resume: `cancelled`/`failed` → `resuming`, one atomic statement.

use super::super::operations as ops;
use super::super::writer::Write;
use crate::error::Result;
use crate::ids::OperationId;
use rusqlite::Connection;

/// Resume this operation.
pub(crate) struct TryResume(pub OperationId);

impl Write for TryResume {
    type Out = ();
    fn apply(&mut self, c: &Connection) -> Result<()> {
        ops::try_resume(c, &self.0, &crate::ids::now())
    }
}
