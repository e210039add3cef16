//! A durable checkpoint, with the progress and points reported before it
//! in the same transaction, so its metric cursor is exact, and its parent's
//! stored percentage recomputed with it.

use super::super::writer::Write;
use super::super::{checkpoints, operations as ops};
use super::write_progress::apply_live;
use crate::error::Result;
use crate::store::records::CheckpointWrite;
use rusqlite::Connection;

/// Save the checkpoint.
pub(crate) struct SaveCheckpoint(pub CheckpointWrite);

impl Write for SaveCheckpoint {
    type Out = ();
    fn apply(&mut self, c: &Connection) -> Result<()> {
        let w = &mut self.0;
        w.checkpoint.metrics_seq = apply_live(c, &w.live)?;
        checkpoints::save(c, &w.checkpoint)?;
        match &w.parent {
            Some(p) => ops::refresh_parent_progress(c, p),
            None => Ok(()),
        }
    }
}
