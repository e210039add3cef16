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
mod handoff;
mod hooks;
mod host;
mod janitor;
pub mod live;
pub mod running;
mod scheduler;
mod shutdown;
mod spare_dirs;
mod worker;

use crate::channel::Sender;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::ids::OperationId;
use crate::model::{OperationType, Status};
use crate::store::records::{ClaimPlan, ClaimedOperation, NewOperation, Submitted};
use crate::store::Store;
use crate::store::Ticket;
use live::Live;
use running::{RunningOp, StopRequest};
use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A claimed operation on its way to a worker.
pub(crate) struct Assignment {
    op: ClaimedOperation,
    running: Arc<RunningOp>,
}

/// Set once the daemon stops taking new work; the scheduler and flusher
/// loops end when they see it.
#[derive(Clone, Default)]
pub(crate) struct Stopping(Arc<AtomicBool>);

impl Stopping {
    /// True once shutting down.
    pub(crate) fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
    fn set(&self) {
        self.0.store(true, Ordering::Release);
    }
}

/// The daemon's engine room. Shared by the socket server and the workers.
pub struct Runtime {
    /// The database.
    pub store: Store,
    /// Settings.
    pub config: Arc<Config>,
    /// Running operations, stop requests, GPUs, metric order.
    live: Arc<Live>,
    /// Nudges the scheduler (new work, a free slot).
    wake_tx: Sender<()>,
    /// Set when the daemon stops taking new work.
    stopping: Stopping,
    /// Bumped whenever an operation finishes or is cancelled; waiters
    /// (pipelines waiting for a child) sleep on the condvar.
    changes: (Mutex<u64>, Condvar),
    /// Flusher and worker threads.
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// The scheduler thread, joined first by the shutdown drain so no claim
    /// lands after it has looked at what is running.
    scheduler: Mutex<Option<JoinHandle<()>>>,
    /// The claim rounds, for submits to carry one ([`Runtime::submit`]);
    /// let go of by the shutdown drain once the scheduler has ended, so
    /// the workers' hand-off closes when the last round has landed.
    claims: Mutex<Option<Arc<scheduler::Claims>>>,
    /// When the runtime started, for `health`.
    pub started_at: Instant,
    /// What start-up recovery did, for `health`.
    pub recovery: Mutex<Value>,
    /// When the runtime started, as stored in `hosts`.
    started_at_text: String,
    /// Ends the host loop (shared stores), and its thread.
    host_loop: (Arc<AtomicBool>, Mutex<Option<JoinHandle<()>>>),
    /// Empty checkpoint directories of finished runs, handed to new ones.
    spare_dirs: spare_dirs::SpareDirs,
    /// Tidies finished runs' checkpoint directories off the thread that
    /// answers commits.
    janitor: janitor::Janitor,
}

impl Runtime {
    /// Recover from the last run, then start the scheduler, flusher and
    /// workers.
    pub fn start(store: Store, config: Arc<Config>) -> Result<Arc<Runtime>> {
        let (wake_tx, wake_rx) = crate::channel::bounded(1);
        let nudge = wake_tx.clone();
        let (job_tx, job_rx) = handoff::handoff();
        let gpu_pool = gpus::GpuPool::new(
            config
                .gpus
                .clone()
                .unwrap_or_else(|| gpus::discover(&config.nvidia_smi)),
        );
        let live = Arc::new(Live::new(gpu_pool));
        let stopping = Stopping::default();
        let rt = Arc::new(Runtime {
            store: store.clone(),
            config: config.clone(),
            live: live.clone(),
            wake_tx,
            stopping: stopping.clone(),
            changes: (Mutex::new(0), Condvar::new()),
            threads: Mutex::new(Vec::new()),
            scheduler: Mutex::new(None),
            claims: Mutex::new(None),
            started_at: Instant::now(),
            recovery: Mutex::new(Value::Null),
            started_at_text: crate::ids::now(),
            host_loop: (Arc::new(AtomicBool::new(false)), Mutex::new(None)),
            spare_dirs: spare_dirs::SpareDirs::new(
                &config.paths().checkpoints_root(),
                &config.host_name(),
            ),
            janitor: janitor::Janitor::start(),
        });
        rt.recover()?;
        let mut threads = Vec::new();
        for i in 0..config.workers {
            let w = worker::Worker::new(rt.clone(), job_rx.clone());
            threads.push(spawn(&format!("opsd-worker-{i}"), move || w.run())?);
        }
        let claims = scheduler::Claims::new(
            store.clone(),
            live.clone(),
            config.clone(),
            job_tx,
            nudge,
            stopping.clone(),
        );
        if let Ok(mut c) = rt.claims.lock() {
            *c = Some(claims.clone());
        }
        let s = scheduler::Scheduler {
            claims,
            wake: wake_rx,
            stopping: stopping.clone(),
        };
        let scheduler = spawn("opsd-scheduler", move || s.run())?;
        if let Ok(mut s) = rt.scheduler.lock() {
            *s = Some(scheduler);
        }
        let f = flusher::Flusher {
            store,
            live,
            config,
            stopping,
        };
        threads.push(spawn("opsd-flusher", move || f.run())?);
        if store_shared(&rt) {
            let h = host::HostLoop {
                rt: rt.clone(),
                stop: rt.host_loop.0.clone(),
            };
            let t = spawn("opsd-host", move || h.run())?;
            if let Ok(mut slot) = rt.host_loop.1.lock() {
                *slot = Some(t);
            }
        }
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
        !self.stopping.is_set()
    }

    /// Make an operation's checkpoint directory exist and say where it is:
    /// an empty spare moved there when there is one (see [`spare_dirs`]).
    pub(crate) fn checkpoint_dir(&self, id: &OperationId) -> std::io::Result<std::path::PathBuf> {
        let dir = self.config.paths().checkpoints(id);
        self.spare_dirs.place(&dir)?;
        Ok(dir)
    }

    /// Remove an operation's checkpoint files at the end of its last run.
    /// A directory the run left empty is kept for a later run instead
    /// ([`spare_dirs`]) when `reusable` (no process of the run may still
    /// write into it): no inode is freed only to be made again.
    /// Runs on the janitor thread ([`janitor`]), not the caller's.
    pub(crate) fn remove_checkpoint_dir(self: &Arc<Self>, id: &OperationId, reusable: bool) {
        let rt = self.clone();
        let id = id.clone();
        self.janitor.run(move || {
            let paths = rt.config.paths();
            if !(reusable && rt.spare_dirs.take_back(&paths.checkpoints(&id))) {
                paths.remove_checkpoints(&id);
            }
        });
    }

    /// The live state of a running operation.
    pub fn live(&self, id: &OperationId) -> Option<Arc<RunningOp>> {
        self.live.get(id)
    }

    /// Ids of the operations running now.
    pub fn running_ids(&self) -> Vec<OperationId> {
        self.live.ids()
    }

    /// How many GPUs the daemon can hand out.
    pub fn gpu_count(&self) -> usize {
        self.live.gpu_count()
    }

    /// GPU ids known to the daemon and which operation holds each.
    pub fn gpu_status(&self) -> Value {
        self.live.gpu_status()
    }

    /// Write every running operation's dirty progress and queued points
    /// now, and wait for the commit.
    pub fn flush(&self) {
        if let Err(e) = self.live.flush_all(&self.store) {
            tracing::error!("flushing progress failed: {e}");
        }
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

    /// Queue the insert of validated operations (one transaction) and
    /// start them as soon as they may: a claim round is queued right
    /// behind the insert when there is room ([`scheduler::Claims::carry`]),
    /// so it usually commits, and is flushed, in the same batch, and the
    /// operations start without a scheduler round and a commit of their
    /// own; otherwise the scheduler is nudged: its next round, when it
    /// has room, lands behind the insert in the writer's queue (with no
    /// room, or all of it held by rounds in flight, the operation waits
    /// for a freed slot's round or the scheduler's idle round, as before). Which operations a round
    /// claims is decided by the store's claim exactly as for the
    /// scheduler's rounds (priorities, queues, holds, dependencies, GPUs).
    /// The caller waits on the returned ticket for the insert's answer.
    pub fn submit(&self, ops: Vec<NewOperation>) -> Ticket<Vec<Submitted>> {
        match self.carry() {
            Some((plan, done)) => self.store.submit_then_claim(ops, plan, done),
            None => {
                let ticket = self.store.submit(ops);
                self.wake();
                ticket
            }
        }
    }

    /// Claim for the room a run just left (its final row queued): a round
    /// planned as the scheduler would ([`scheduler::Claims::carry`]) and
    /// queued behind that row, so it usually commits with it and no
    /// scheduler round is needed; else the scheduler is nudged.
    pub(super) fn claim_or_wake(&self) {
        match self.carry() {
            Some((plan, done)) => self.store.claim_then(plan, done),
            None => self.wake(),
        }
    }

    /// A claim round to queue with a write ([`scheduler::Claims::carry`]);
    /// `None` once the shutdown drain has let go of the rounds.
    fn carry(&self) -> Option<(ClaimPlan, crate::store::ClaimDone)> {
        let claims = self.claims.lock().ok().and_then(|c| c.clone());
        claims.and_then(|c| c.carry())
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
        let op = NewOperation {
            parent: Some(parent.clone()),
            phase,
            fail_parent,
            ..NewOperation::new(kind, metadata)
        };
        Ok(self.insert(op)?.0)
    }

    /// Cancel an operation and all its active descendants (SPEC §3), in
    /// one transaction ([`ops::cancel_tree`]): waiting ones are cancelled
    /// at once; running ones are asked to stop and end `cancelled` when
    /// their job returns. Returns the status before. Blocks on the writer:
    /// async callers run it on a blocking thread.
    pub fn cancel(&self, id: &OperationId, reason: Option<String>) -> Result<Status> {
        let before = self.cancel_tree(id, StopRequest::User, reason)?;
        // A waiting one ends here; a running one ends in its worker.
        if before != Status::Running {
            hooks::on_finish(self, id);
        }
        Ok(before)
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
            self.live.stop_claimed(&member, attempt, w, m);
        }
        self.notify_change();
        self.wake();
        Ok(done.before)
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

fn store_shared(rt: &Runtime) -> bool {
    rt.store.shared()
}

impl Runtime {
    /// End the host loop (after the drain: it renews leases while jobs
    /// checkpoint) and remove this daemon from `hosts`.
    pub(crate) fn stop_host_loop(&self) {
        self.host_loop.0.store(true, Ordering::Release);
        let t = self.host_loop.1.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = t {
            let _ = t.join();
            if let Err(e) = self.store.deregister_host(&self.config.host_name()) {
                tracing::warn!("removing this host from the hosts table failed: {e}");
            }
        }
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(f)
        .map_err(|e| Error::io(format!("starting thread {name}"), e))
}
