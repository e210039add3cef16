//! The end of a run: its last points, then its final row (or its return
//! to the queue for a retry), its checkpoint dropped on completion, and
//! its parent's stored progress refreshed.

use super::super::writer::Write;
use super::super::{checkpoints, dependencies, metrics, operations as ops};
use crate::error::Result;
use crate::model::{Status, StopReason};
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
                // A cancel that reached the row first makes it the cancel.
                if ops::requeue_for_retry(c, id, error, at, &now)?
                    && ops::status(c, id)? == Status::Cancelled
                {
                    dependencies::settle(c, id, Status::Cancelled, &now)?;
                }
            }
            RunOutcome::Final(f) => {
                // An operation stopped by a shutdown resumes at the next
                // start: its dependents keep waiting.
                if ops::finish(c, id, f, &now)? && f.stop_reason != Some(StopReason::Shutdown) {
                    dependencies::settle(c, id, f.status, &now)?;
                }
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
