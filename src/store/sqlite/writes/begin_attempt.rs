//! A second or later attempt starts: load its checkpoint and drop metric
//! points recorded after it (the job regenerates them).

use super::super::writer::Write;
use super::super::{checkpoints, metrics};
use crate::error::Result;
use crate::ids::OperationId;
use crate::store::records::Checkpoint;
use rusqlite::Connection;

/// Prepare this operation's new attempt.
pub(crate) struct BeginAttempt(pub OperationId);

impl Write for BeginAttempt {
    type Out = Option<Checkpoint>;
    fn apply(&mut self, c: &Connection) -> Result<Option<Checkpoint>> {
        let cp = checkpoints::get(c, &self.0)?;
        let seq = cp.as_ref().map(|c| c.metrics_seq).unwrap_or(0);
        metrics::truncate_after(c, &self.0, seq)?;
        Ok(cp)
    }
}
