//! Claim runnable operations for the free slots and GPUs of one round.

use super::super::operations as ops;
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
        for &(kind, free) in &plan.per_type {
            let mut n = free.min(budget);
            // GPU operations one at a time, while GPUs are free.
            while n > 0 && gpus_left > 0 {
                let got = ops::claim(c, &now, kind, 1..=gpus_left, 1)?;
                let Some(op) = got.into_iter().next() else {
                    break;
                };
                gpus_left -= op.gpus_requested;
                n -= 1;
                budget -= 1;
                out.push(op);
            }
            if n > 0 {
                let got = ops::claim(c, &now, kind, 0..=0, n)?;
                budget -= got.len();
                out.extend(got);
            }
            if budget == 0 {
                break;
            }
        }
        Ok(out)
    }
}
