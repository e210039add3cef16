//! How a claim round walks its plan, the same on every backend: per type,
//! GPU operations one at a time while GPUs are free, then GPU-free ones,
//! within the named queues' pauses and parallel caps ([`Gate`]). A backend
//! supplies only the statement that claims (`claim` below) and how it
//! reads the queues.

use crate::error::Result;
use crate::model::OperationType;
use crate::store::records::{ClaimPlan, ClaimedOperation};
use crate::store::rows::Claimed;
use std::collections::HashMap;
use std::ops::RangeInclusive;

/// The queues a claim round must respect: paused ones, and capped ones
/// with how many of theirs run. Empty when no queue is paused or capped,
/// which costs the claim one lookup on a tiny table.
pub(crate) struct Gate {
    /// name -> (paused, cap, running)
    queues: HashMap<String, (bool, Option<i64>, i64)>,
    closed: Vec<String>,
}

impl Gate {
    /// The gate from each paused or capped queue's `(name, paused, cap,
    /// running)`.
    pub(crate) fn new(rows: impl IntoIterator<Item = (String, bool, Option<i64>, i64)>) -> Gate {
        let mut g = Gate {
            queues: rows
                .into_iter()
                .map(|(name, paused, cap, running)| (name, (paused, cap, running)))
                .collect(),
            closed: Vec::new(),
        };
        g.recompute();
        g
    }

    fn recompute(&mut self) {
        let mut closed: Vec<String> = self
            .queues
            .iter()
            .filter(|(_, (paused, cap, running))| *paused || cap.is_some_and(|c| *running >= c))
            .map(|(n, _)| n.clone())
            .collect();
        closed.sort();
        self.closed = closed;
    }

    /// Queues nothing may be claimed from now.
    pub(crate) fn closed(&self) -> &[String] {
        &self.closed
    }

    /// True while an open queue has a cap (claims go one at a time).
    pub(crate) fn capped(&self) -> bool {
        self.queues
            .values()
            .any(|(paused, cap, running)| !paused && cap.is_some_and(|c| *running < c))
    }

    /// An operation of `queue` was claimed.
    pub(crate) fn took(&mut self, queue: &str) {
        if let Some(q) = self.queues.get_mut(queue) {
            q.2 += 1;
            self.recompute();
        }
    }
}

/// One statement's worth of a claim round: up to `limit` operations of
/// `kind` asking for GPUs within `gpus` (`0..=0` for none), from queues
/// not in `closed`.
pub(crate) struct Ask<'a> {
    /// The type claimed.
    pub kind: OperationType,
    /// How many GPUs a claimed operation may ask for.
    pub gpus: RangeInclusive<i64>,
    /// At most this many.
    pub limit: usize,
    /// Queues nothing may be claimed from (paused, or at their cap).
    pub closed: &'a [String],
}

/// Walk `plan` through `gate`. `claim(ask)` runs the backend's claim
/// statement for one [`Ask`], returning each operation with its queue.
pub(crate) fn walk(
    plan: &ClaimPlan,
    gate: &mut Gate,
    mut claim: impl FnMut(Ask<'_>) -> Result<Vec<(String, ClaimedOperation)>>,
) -> Result<Vec<ClaimedOperation>> {
    let mut out = Vec::new();
    let mut budget = plan.total;
    let mut gpus_left = plan.free_gpus;
    for &(kind, free) in &plan.per_type {
        let mut n = free.min(budget);
        // GPU operations one at a time, while GPUs are free.
        while n > 0 && gpus_left > 0 {
            let got = claim(Ask {
                kind,
                gpus: 1..=gpus_left,
                limit: 1,
                closed: gate.closed(),
            })?;
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
            let got = claim(Ask {
                kind,
                gpus: 0..=0,
                limit: step,
                closed: gate.closed(),
            })?;
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

/// One claim of up to `limit` operations of a type, the same order on
/// every backend: `resuming` rows first (they ran before), then `pending`
/// ones. `claim_from(status, n)` runs the backend's statement for rows
/// of `status`, at most `n`; since `UPDATE ... RETURNING` does not keep
/// its subquery's order, each batch is put back in claim order (priority
/// first, then age, then id) so workers start the most urgent first.
pub(crate) fn resuming_then_pending(
    limit: usize,
    mut claim_from: impl FnMut(&'static str, usize) -> Result<Vec<Claimed>>,
) -> Result<Vec<(String, ClaimedOperation)>> {
    let mut claimed = Vec::new();
    for from in ["resuming", "pending"] {
        let left = limit - claimed.len();
        if left == 0 {
            break;
        }
        let mut batch = claim_from(from, left)?;
        batch.sort_by(|(a, _, x), (b, _, y)| {
            b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(x.id.cmp(&y.id))
        });
        claimed.extend(batch.into_iter().map(|(_, q, op)| (q, op)));
    }
    Ok(claimed)
}
