//! The retention sweep: old checkpoints of stopped operations.

use super::super::checkpoints;
use super::super::writer::Write;
use crate::error::Result;
use crate::ids::OperationId;
use rusqlite::Connection;

/// Delete checkpoints of stopped operations created before the timestamp.
pub(crate) struct SweepCheckpoints(pub String);

impl Write for SweepCheckpoints {
    type Out = Vec<OperationId>;
    fn apply(&mut self, c: &Connection) -> Result<Vec<OperationId>> {
        checkpoints::sweep_older_than(c, &self.0)
    }
}
