//! Claim runnable operations for the free slots and GPUs of one round,
//! within the named queues' pauses and parallel caps.

use super::super::operations as ops;
use super::super::queues::Gate;
use super::super::writer::Write;
use crate::error::Result;
use crate::store::records::{ClaimPlan, ClaimedOperation};
use rusqlite::Connection;

/// One claim round.
pub(crate) struct Claim(pub ClaimPlan);

impl Write for Claim {
    type Out = Vec<ClaimedOperation>;
    fn apply(&mut self, c: &Connection) -> Result<Vec<ClaimedOperation>> {
        let now = crate::ids::now();
        let plan = &self.0;
        let mut out = Vec::new();
        let mut budget = plan.total;
        let mut gpus_left = plan.free_gpus;
        // Paused and capped queues; empty (and free) when none is.
        let mut gate = Gate::load(c)?;
        for &(kind, free) in &plan.per_type {
            let mut n = free.min(budget);
            // GPU operations one at a time, while GPUs are free.
            while n > 0 && gpus_left > 0 {
                let got = ops::claim(c, &now, kind, 1..=gpus_left, 1, gate.closed())?;
                let Some((queue, op)) = got.into_iter().next() else {
                    break;
                };
                gate.took(&queue);
                gpus_left -= op.gpus_requested;
                n -= 1;
                budget -= 1;
                out.push(op);
            }
            // With a capped queue open, one at a time so the cap holds;
            // otherwise the whole batch in one statement.
            while n > 0 {
                let step = if gate.capped() { 1 } else { n };
                let got = ops::claim(c, &now, kind, 0..=0, step, gate.closed())?;
                let short = got.len() < step;
                n -= got.len();
                budget -= got.len();
                for (queue, op) in got {
                    gate.took(&queue);
                    out.push(op);
                }
                if short {
                    // Nothing more of this type is runnable now.
                    break;
                }
            }
            if budget == 0 {
                break;
            }
        }
        Ok(out)
    }
}
