//! Claim runnable operations for the free slots and GPUs of one round,
//! within the named queues' pauses and parallel caps.

use super::super::operations as ops;
use super::super::queues;
use super::super::writer::Write;
use crate::error::Result;
use crate::store::claiming;
use crate::store::records::{ClaimPlan, ClaimedOperation};
use rusqlite::Connection;

/// One claim round.
pub(crate) struct Claim(pub ClaimPlan);

impl Write for Claim {
    type Out = Vec<ClaimedOperation>;
    fn apply(&mut self, c: &Connection) -> Result<Vec<ClaimedOperation>> {
        let now = crate::ids::now();
        // Paused and capped queues; empty (and free) when none is.
        let mut gate = queues::gate(c)?;
        claiming::walk(&self.0, &mut gate, |ask| ops::claim(c, &now, ask))
    }
}
