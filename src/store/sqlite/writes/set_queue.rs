//! `opsd queue pause|start|set`: change a named queue (creating it).

use super::super::queues;
use super::super::writer::Write;
use crate::error::Result;
use crate::store::records::{QueueChange, QueueRow};
use rusqlite::Connection;

/// Change one queue.
pub(crate) struct SetQueue(pub QueueChange);

impl Write for SetQueue {
    type Out = QueueRow;
    fn apply(&mut self, c: &Connection) -> Result<QueueRow> {
        queues::change(c, &self.0, &crate::ids::now())
    }
}
