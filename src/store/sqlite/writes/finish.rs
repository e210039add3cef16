//! The end of a run: its last points, then its final row (or its return
//! to the queue for a retry), its checkpoint dropped on completion, and
//! its parent's stored progress refreshed.

use super::super::writer::Write;
use super::super::{checkpoints, metrics, operations as ops};
use crate::error::Result;
use crate::store::records::{RunEnd, RunOutcome};
use rusqlite::Connection;

/// Record how a run ended.
pub(crate) struct Finish(pub RunEnd);

impl Write for Finish {
    type Out = ();
    fn apply(&mut self, c: &Connection) -> Result<()> {
        let end = &self.0;
        let id = &end.id;
        let now = crate::ids::now();
        if !end.last.points.is_empty() {
            metrics::append(c, id, &end.last.points)?;
        }
        match &end.outcome {
            RunOutcome::Retry { error, at } => {
                ops::write_progress(c, id, &end.last.progress)?;
                ops::requeue_for_retry(c, id, error, at, &now)?;
            }
            RunOutcome::Final(f) => {
                ops::finish(c, id, f, &now)?;
            }
        }
        if end.delete_checkpoint {
            checkpoints::delete_if_any(c, id)?;
        }
        if let Some(p) = &end.parent {
            ops::refresh_parent_progress(c, p)?;
        }
        Ok(())
    }
}
