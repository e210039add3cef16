//! Live progress and queued metric points of running operations (the
//! flusher, and a job whose metric queue is full).

use super::super::writer::Write;
use super::super::{metrics, operations as ops};
use crate::error::Result;
use crate::ids::OperationId;
use crate::store::records::ProgressWrite;
use rusqlite::Connection;

/// Write each operation's progress and points, then refresh parents.
pub(crate) struct WriteProgress {
    pub live: Vec<ProgressWrite>,
    pub parents: Vec<OperationId>,
}

impl Write for WriteProgress {
    type Out = ();
    fn apply(&mut self, c: &Connection) -> Result<()> {
        for w in &self.live {
            apply_live(c, w)?;
        }
        for p in &self.parents {
            ops::refresh_parent_progress(c, p)?;
        }
        Ok(())
    }
}

/// One operation's progress and points; returns its last metric seq.
pub(super) fn apply_live(c: &Connection, w: &ProgressWrite) -> Result<i64> {
    let seq = if w.points.is_empty() {
        metrics::last_seq(c, &w.id)?
    } else {
        metrics::append(c, &w.id, &w.points)?
    };
    ops::write_progress(c, &w.id, &w.progress)?;
    Ok(seq)
}
