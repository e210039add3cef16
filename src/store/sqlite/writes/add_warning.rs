//! A warning on an operation (shown by `show`).

use super::super::operations as ops;
use super::super::writer::Write;
use crate::error::Result;
use crate::ids::OperationId;
use rusqlite::Connection;

/// Append the warning.
pub(crate) struct AddWarning {
    pub id: OperationId,
    pub message: String,
}

impl Write for AddWarning {
    type Out = ();
    fn apply(&mut self, c: &Connection) -> Result<()> {
        ops::add_warning(c, &self.id, &self.message, &crate::ids::now())
    }
}
