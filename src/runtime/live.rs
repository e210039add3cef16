//! The one owner of live state: which operations are running, stop
//! requests that reached an operation before its registration, GPU
//! reservations, and the order in which metric points reach the store.
//!
//! Everything here is behind private locks; callers (scheduler, workers,
//! flusher, drain, cancel, reads) use the methods, never the locks. That
//! is what keeps the central invariant in one place:
//!
//! - An operation is registered from its claim until its final row is
//!   committed ([`Live::register`] .. [`Live::release`]); readers see the
//!   live slot or the final row, never a gap.
//! - Metric points leave an operation's queue only through
//!   [`Live::write_progress`], [`Live::save_checkpoint`] and
//!   [`Live::finish`], which take the points and queue their write under
//!   one lock: the store's writer is FIFO, so points are stored in the
//!   order they were reported.
//! - A stop request for an attempt not yet registered is kept for that
//!   attempt only ([`Live::stop_claimed`]), so a late one cannot stop a
//!   later run.

use super::gpus::GpuPool;
use super::running::{RunningOp, StopRequest};
use crate::error::Result;
use crate::ids::OperationId;
use crate::model::OperationType;
use crate::store::records::{Checkpoint, CheckpointWrite, ClaimedOperation, ProgressWrite, RunEnd};
use crate::store::{AfterCommit, Store, Ticket};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// A stop request waiting for its operation's registration: the attempt
/// it is for, why, and the message.
type EarlyStop = (i64, StopRequest, Option<String>);

/// The live state of the daemon's running operations.
pub struct Live {
    running: Mutex<HashMap<OperationId, Arc<RunningOp>>>,
    /// Guarded by the `running` lock's ordering: [`Live::register`] and
    /// [`Live::stop_claimed`] look at each other under it.
    early_stops: Mutex<HashMap<OperationId, EarlyStop>>,
    gpus: Mutex<GpuPool>,
    /// Held from taking an operation's queued points until their write is
    /// queued.
    metrics_order: Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind
    // (maps, a pool); carrying on is safer than stopping every thread.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Live {
    /// No operation running; `gpus` to hand out.
    pub fn new(gpus: GpuPool) -> Live {
        Live {
            running: Mutex::new(HashMap::new()),
            early_stops: Mutex::new(HashMap::new()),
            gpus: Mutex::new(gpus),
            metrics_order: Mutex::new(()),
        }
    }

    /// The live slot of a running operation.
    pub fn get(&self, id: &OperationId) -> Option<Arc<RunningOp>> {
        lock(&self.running).get(id).cloned()
    }

    /// Ids of the operations running now.
    pub fn ids(&self) -> Vec<OperationId> {
        lock(&self.running).keys().cloned().collect()
    }

    /// Every running operation's slot.
    pub fn all(&self) -> Vec<Arc<RunningOp>> {
        lock(&self.running).values().cloned().collect()
    }

    /// How many are running.
    pub fn count(&self) -> usize {
        lock(&self.running).len()
    }

    /// Free slots: in all (of `workers`), and per type under `limit`
    /// (types with no free slot left out). An operation whose job has
    /// ended and whose final row is queued ([`RunningOp::is_finishing`])
    /// no longer holds its slot: the writer's queue is first in, first
    /// out, so a claim queued now commits with or after that final row,
    /// and the freed slot is refilled in the same commit instead of one
    /// commit later. (Its GPUs stay reserved until the row is committed.)
    pub fn free_slots(
        &self,
        workers: usize,
        limit: impl Fn(OperationType) -> usize,
    ) -> (usize, Vec<(OperationType, usize)>) {
        let running = lock(&self.running);
        let mut counts: HashMap<OperationType, usize> = HashMap::new();
        let mut busy = 0;
        for op in running.values().filter(|op| !op.is_finishing()) {
            *counts.entry(op.kind).or_default() += 1;
            busy += 1;
        }
        let per_type = OperationType::ALL
            .iter()
            .map(|k| {
                let used = counts.get(k).copied().unwrap_or(0);
                (*k, limit(*k).saturating_sub(used))
            })
            .filter(|(_, free)| *free > 0)
            .collect();
        (workers.saturating_sub(busy), per_type)
    }

    /// GPUs not reserved by anyone.
    pub fn free_gpus(&self) -> i64 {
        lock(&self.gpus).free_count() as i64
    }

    /// How many GPUs the daemon can hand out.
    pub fn gpu_count(&self) -> usize {
        lock(&self.gpus).len()
    }

    /// GPU ids and which operation holds each.
    pub fn gpu_status(&self) -> Value {
        lock(&self.gpus).status()
    }

    /// Register a claimed operation as running: reserve its GPUs and apply
    /// a stop request that reached it first. Returns its slot.
    pub fn register(&self, op: &ClaimedOperation) -> Arc<RunningOp> {
        let assigned = if op.gpus_requested > 0 {
            lock(&self.gpus).take(&op.id, op.gpus_requested as usize)
        } else {
            Vec::new()
        };
        let slot = Arc::new(RunningOp::new(
            op.id.clone(),
            op.attempt,
            op.kind,
            op.parent.clone(),
            op.progress_percent,
            assigned,
        ));
        let mut running = lock(&self.running);
        running.insert(op.id.clone(), slot.clone());
        if let Some((attempt, why, msg)) = lock(&self.early_stops).remove(&op.id) {
            if attempt == op.attempt {
                slot.request_stop(why, msg);
            }
        }
        slot
    }

    /// The operation's final row is committed: free its GPUs and slot.
    pub fn release(&self, id: &OperationId, slot: &RunningOp) {
        lock(&self.gpus).release(id);
        {
            let mut running = lock(&self.running);
            running.remove(id);
            // A cancel that raced this run's end must not stop a later run.
            lock(&self.early_stops).remove(id);
        }
        slot.mark_done();
    }

    /// Ask a claimed operation's job to stop: through its live slot, or,
    /// when the claim has committed but the operation is not registered
    /// yet, through an early stop applied to that attempt.
    pub fn stop_claimed(
        &self,
        id: &OperationId,
        attempt: i64,
        why: StopRequest,
        msg: Option<String>,
    ) {
        let running = lock(&self.running);
        match running.get(id) {
            Some(slot) => slot.request_stop(why, msg),
            None => {
                lock(&self.early_stops).insert(id.clone(), (attempt, why, msg));
            }
        }
    }

    /// Ask every running operation to stop for `why`; returns how many.
    pub fn stop_all(&self, why: StopRequest) -> usize {
        let all = self.all();
        for op in &all {
            op.request_stop(why, None);
        }
        all.len()
    }

    /// Queue the write of these operations' dirty progress and queued
    /// points (and refresh their parents); `None` when nothing was dirty.
    pub fn write_progress(&self, store: &Store, ops: &[Arc<RunningOp>]) -> Option<Ticket<()>> {
        let _order = lock(&self.metrics_order);
        let mut live = Vec::new();
        let mut parents = Vec::new();
        for op in ops {
            if let Some((progress, points)) = op.take_dirty() {
                if let Some(p) = &op.parent {
                    parents.push(p.clone());
                }
                live.push(ProgressWrite {
                    id: op.id.clone(),
                    attempt: op.attempt,
                    progress,
                    points,
                });
            }
        }
        if live.is_empty() {
            return None;
        }
        parents.sort();
        parents.dedup();
        Some(store.write_progress(live, parents))
    }

    /// Write every running operation's dirty progress and queued points
    /// and wait for the commit (the flusher's round, and the drain's last).
    pub fn flush_all(&self, store: &Store) -> Result<()> {
        wait(self.write_progress(store, &self.all()))
    }

    /// Queue a checkpoint of `slot`'s operation together with the progress
    /// and points reported before it.
    pub fn save_checkpoint(
        &self,
        store: &Store,
        slot: &RunningOp,
        mut cp: Checkpoint,
    ) -> Ticket<()> {
        let _order = lock(&self.metrics_order);
        slot.mark_checkpointed();
        let (progress, points) = take_all(slot);
        cp.progress_percent = Some(progress.percentage);
        store.save_checkpoint(CheckpointWrite {
            checkpoint: cp,
            live: ProgressWrite {
                id: slot.id.clone(),
                attempt: slot.attempt,
                progress,
                points,
            },
            parent: slot.parent.clone(),
        })
    }

    /// Queue the end of `slot`'s run: `end` gets the last progress and
    /// points and returns the row to record; `after` runs once committed.
    pub fn finish(
        &self,
        store: &Store,
        slot: &RunningOp,
        end: impl FnOnce(ProgressWrite) -> RunEnd,
        after: AfterCommit,
    ) {
        let _order = lock(&self.metrics_order);
        let (progress, points) = take_all(slot);
        store.finish(
            end(ProgressWrite {
                id: slot.id.clone(),
                attempt: slot.attempt,
                progress,
                points,
            }),
            after,
        );
        slot.mark_finishing();
    }
}

/// The slot's progress and queued points (its progress alone when clean).
fn take_all(slot: &RunningOp) -> (crate::store::records::Progress, Vec<(String, Value)>) {
    slot.take_dirty()
        .unwrap_or_else(|| (slot.progress(), Vec::new()))
}

/// Wait for a ticket from [`Live::write_progress`] (nothing to wait for
/// when it was `None`).
pub fn wait(t: Option<Ticket<()>>) -> Result<()> {
    t.map(|t| t.wait()).unwrap_or(Ok(()))
}
