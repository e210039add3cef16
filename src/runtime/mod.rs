//! The runtime: scheduler, worker pool, progress flusher, cancellation and
//! the shutdown drain.
//!
//! ```text
//! scheduler ──claims (writer)──▶ crossbeam channel ──▶ workers ──▶ Job::run(ctx)
//! flusher ──every interval──▶ dirty progress slots + metric points ──▶ writer
//! ```
//!
//! Invariant: an operation is in `running` (the map) from its claim until
//! its final status is committed; readers therefore see either the live
//! slot or the final row, never a gap.

pub mod context;
pub mod files;
mod flusher;
pub mod gpus;
pub mod running;
mod scheduler;
mod shutdown;
mod worker;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::ids::OperationId;
use crate::model::{OperationType, Status};
use crate::store::records::{ClaimedOperation, NewOperation};
use crate::store::Store;
use crossbeam_channel::{Receiver, Sender};
use running::{RunningOp, StopRequest};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A stop request waiting for its operation's registration: the attempt
/// it is for, why, and the message.
type EarlyStop = (i64, StopRequest, Option<String>);

/// A claimed operation on its way to a worker.
pub(crate) struct Assignment {
    op: ClaimedOperation,
    running: Arc<RunningOp>,
}

/// The daemon's engine room. Shared by the socket server and the workers.
pub struct Runtime {
    /// The database.
    pub store: Store,
    /// Settings.
    pub config: Arc<Config>,
    /// Operations claimed and not yet finished, by id.
    running: Mutex<HashMap<OperationId, Arc<RunningOp>>>,
    /// Stop requests for operations claimed but not yet in `running` (a
    /// cancel that lands between the claim's commit and the map insert).
    /// Guarded by the `running` lock's ordering: both sides look at each
    /// other under it, so no request is lost.
    /// Keyed by attempt, so one that arrives after its run ended cannot
    /// stop a later run.
    early_stops: Mutex<HashMap<OperationId, EarlyStop>>,
    /// Nudges the scheduler (new work, a free slot).
    wake_tx: Sender<()>,
    wake_rx: Receiver<()>,
    /// To the workers; `None` once shutting down.
    job_tx: Mutex<Option<Sender<Assignment>>>,
    job_rx: Receiver<Assignment>,
    /// False once the daemon stops taking new work.
    accepting: AtomicBool,
    /// Bumped whenever an operation finishes or is cancelled; waiters
    /// (pipelines waiting for a child) sleep on the condvar.
    changes: (Mutex<u64>, Condvar),
    /// GPUs and who holds them.
    gpus: Mutex<gpus::GpuPool>,
    /// Held from taking an operation's queued metric points until their
    /// write is enqueued (flusher, checkpoints, final rows), so points
    /// reach the FIFO writer in the order they were reported.
    pub(crate) metrics_order: Mutex<()>,
    /// Flusher and worker threads.
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// The scheduler thread, joined first by the shutdown drain so no claim
    /// lands after it has looked at what is running.
    scheduler: Mutex<Option<JoinHandle<()>>>,
    /// When the runtime started, for `health`.
    pub started_at: Instant,
    /// What start-up recovery did, for `health`.
    pub recovery: Mutex<Value>,
}

impl Runtime {
    /// Recover from the last run, then start the scheduler, flusher and
    /// workers.
    pub fn start(store: Store, config: Arc<Config>) -> Result<Arc<Runtime>> {
        let (wake_tx, wake_rx) = crossbeam_channel::bounded(1);
        let (job_tx, job_rx) = crossbeam_channel::unbounded();
        let gpu_pool = gpus::GpuPool::new(
            config
                .gpus
                .clone()
                .unwrap_or_else(|| gpus::discover(&config.nvidia_smi)),
        );
        let rt = Arc::new(Runtime {
            store,
            config: config.clone(),
            running: Mutex::new(HashMap::new()),
            early_stops: Mutex::new(HashMap::new()),
            wake_tx,
            wake_rx,
            job_tx: Mutex::new(Some(job_tx)),
            job_rx,
            accepting: AtomicBool::new(true),
            changes: (Mutex::new(0), Condvar::new()),
            gpus: Mutex::new(gpu_pool),
            threads: Mutex::new(Vec::new()),
            metrics_order: Mutex::new(()),
            scheduler: Mutex::new(None),
            started_at: Instant::now(),
            recovery: Mutex::new(Value::Null),
        });
        rt.recover()?;
        let mut threads = Vec::new();
        for i in 0..config.workers {
            let r = rt.clone();
            threads.push(spawn(&format!("opsd-worker-{i}"), move || worker::run(r))?);
        }
        let r = rt.clone();
        let scheduler = spawn("opsd-scheduler", move || r.schedule_loop())?;
        if let Ok(mut s) = rt.scheduler.lock() {
            *s = Some(scheduler);
        }
        let r = rt.clone();
        threads.push(spawn("opsd-flusher", move || r.flush_loop())?);
        if let Ok(mut t) = rt.threads.lock() {
            *t = threads;
        }
        Ok(rt)
    }

    /// Start-up recovery (SPEC §2): operations left `running`/`resuming`
    /// by an unclean exit become `failed`/`crash`; those stopped by a
    /// shutdown (and crashed ones with a checkpoint) resume by try_resume.
    fn recover(&self) -> Result<()> {
        let rec = self.store.recover(self.config.auto_resume)?;
        for id in &rec.crashed {
            tracing::warn!(operation = %id, "found running after an unclean exit: marked failed (crash)");
        }
        if !rec.resumed.is_empty() {
            tracing::info!(
                count = rec.resumed.len(),
                "resuming operations stopped by the last shutdown or crash"
            );
        }
        if let Ok(mut r) = self.recovery.lock() {
            *r = serde_json::json!(rec);
        }
        Ok(())
    }

    /// Wake the scheduler (new or resumable work, a freed slot).
    pub fn wake(&self) {
        let _ = self.wake_tx.try_send(());
    }

    /// True while the daemon takes new work.
    pub fn accepting(&self) -> bool {
        self.accepting.load(Ordering::Acquire)
    }

    /// The live state of a running operation.
    pub fn live(&self, id: &OperationId) -> Option<Arc<RunningOp>> {
        self.running.lock().ok()?.get(id).cloned()
    }

    /// Ids of the operations running now.
    pub fn running_ids(&self) -> Vec<OperationId> {
        self.running
            .lock()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// How many GPUs the daemon can hand out.
    pub fn gpu_count(&self) -> usize {
        self.gpus.lock().map(|g| g.len()).unwrap_or(0)
    }

    /// GPU ids known to the daemon and which operation holds each.
    pub fn gpu_status(&self) -> Value {
        self.gpus.lock().map(|g| g.status()).unwrap_or(Value::Null)
    }

    /// Signal waiters that some operation changed status.
    pub(crate) fn notify_change(&self) {
        let (m, cv) = &self.changes;
        if let Ok(mut g) = m.lock() {
            *g += 1;
        }
        cv.notify_all();
    }

    /// Block until some operation changes status, or `timeout`.
    pub fn wait_for_change(&self, timeout: Duration) {
        let (m, cv) = &self.changes;
        if let Ok(g) = m.lock() {
            let _ = cv.wait_timeout(g, timeout);
        }
    }

    /// Insert a validated operation and wake the scheduler. With an
    /// idempotency key already used, returns the first operation.
    pub fn insert(&self, op: NewOperation) -> Result<(OperationId, Status, bool)> {
        if !self.accepting() {
            return Err(Error::Unavailable(
                "the daemon is shutting down; submit again after it restarts".into(),
            ));
        }
        let s = self
            .store
            .submit(vec![op])
            .wait()?
            .pop()
            .ok_or_else(|| Error::Internal("a submit returned no operation".into()))?;
        self.wake();
        Ok((s.id, s.status, s.created))
    }

    /// Submit a child of `parent` (validated like any submit).
    pub fn submit_child(
        &self,
        parent: &OperationId,
        kind: OperationType,
        params: Value,
        phase: Option<(f64, f64)>,
        fail_parent: bool,
    ) -> Result<OperationId> {
        let metadata = crate::jobs::job_for(kind)
            .validate(&params)
            .map_err(|e| Error::BadRequest(format!("{kind}: {e}")))?;
        let now = chrono::Utc::now();
        let op = NewOperation {
            id: OperationId::generate(kind, now),
            kind,
            metadata,
            parent: Some(parent.clone()),
            priority: 0,
            idempotency_key: None,
            phase,
            fail_parent,
            gpus: 0,
            max_attempts: 1,
            run_after: None,
        };
        Ok(self.insert(op)?.0)
    }

    /// Cancel an operation and all its active descendants (SPEC §3), in
    /// one transaction ([`ops::cancel_tree`]): waiting ones are cancelled
    /// at once; running ones are asked to stop and end `cancelled` when
    /// their job returns. Returns the status before. Blocks on the writer:
    /// async callers run it on a blocking thread.
    pub fn cancel(&self, id: &OperationId, reason: Option<String>) -> Result<Status> {
        self.cancel_tree(id, StopRequest::User, reason)
    }

    /// Stop one operation and its descendants for `why`, whatever its
    /// state; errors ignored (a pipeline stopping its child, which may
    /// have just finished).
    pub fn stop_tree_member(&self, id: &OperationId, why: StopRequest) {
        let _ = self.cancel_tree(id, why, None);
    }

    fn cancel_tree(
        &self,
        id: &OperationId,
        why: StopRequest,
        message: Option<String>,
    ) -> Result<Status> {
        // The transaction first: when the database cannot be written the
        // caller is told, and nothing has been asked to stop.
        let done = self
            .store
            .cancel_tree(id, why.stop_reason(), message.clone())
            .wait()?;
        for (member, attempt, is_root) in done.running {
            let (w, m) = if is_root {
                (why, message.clone())
            } else {
                (StopRequest::Parent, None)
            };
            self.stop_claimed(&member, attempt, w, m);
        }
        self.notify_change();
        self.wake();
        Ok(done.before)
    }

    /// Ask a claimed operation's job to stop: through its live slot, or,
    /// when the claim has committed but the scheduler has not registered
    /// it yet, through an early stop the scheduler applies to that attempt.
    fn stop_claimed(&self, id: &OperationId, attempt: i64, why: StopRequest, msg: Option<String>) {
        let Ok(running) = self.running.lock() else {
            return;
        };
        match running.get(id) {
            Some(live) => live.request_stop(why, msg),
            None => {
                if let Ok(mut early) = self.early_stops.lock() {
                    early.insert(id.clone(), (attempt, why, msg));
                }
            }
        }
    }

    /// try_resume through the API (`opsd resume`).
    pub fn resume(&self, id: &OperationId) -> Result<()> {
        if !self.accepting() {
            return Err(Error::Unavailable("the daemon is shutting down".into()));
        }
        self.store.try_resume(id).wait()?;
        self.wake();
        Ok(())
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(f)
        .map_err(|e| Error::io(format!("starting thread {name}"), e))
}
