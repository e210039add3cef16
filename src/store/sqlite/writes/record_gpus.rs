//! The GPUs assigned to a running operation.

use super::super::operations as ops;
use super::super::writer::Write;
use crate::error::Result;
use crate::ids::OperationId;
use rusqlite::Connection;

/// Store the assignment.
pub(crate) struct RecordGpus {
    pub id: OperationId,
    pub gpus: Vec<String>,
}

impl Write for RecordGpus {
    type Out = ();
    fn apply(&mut self, c: &Connection) -> Result<()> {
        ops::set_gpus(c, &self.id, &self.gpus)
    }
}
