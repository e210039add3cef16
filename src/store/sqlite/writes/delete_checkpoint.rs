//! Delete one operation's checkpoint row (`opsd checkpoints delete`).

use super::super::checkpoints;
use super::super::writer::Write;
use crate::error::Result;
use crate::ids::OperationId;
use crate::store::records::Checkpoint;
use rusqlite::Connection;

/// Delete the checkpoint of this operation; `not_found` when none.
pub(crate) struct DeleteCheckpoint(pub OperationId);

impl Write for DeleteCheckpoint {
    type Out = Checkpoint;
    fn apply(&mut self, c: &Connection) -> Result<Checkpoint> {
        checkpoints::delete(c, &self.0)
    }
}
