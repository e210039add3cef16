//! The write path both backends share: one writer thread, group commit,
//! and what happens when a batch cannot be committed.
//!
//! The thread takes the first waiting request, then everything else
//! already queued (up to [`MAX_BATCH`]), hands the batch to its backend's
//! [`Engine`] to run in one transaction, and answers each caller only
//! after the commit. When the batch fails as a whole (a lock held
//! elsewhere, a full disk, a dropped connection) nothing is dropped: the
//! batch is run again from scratch, in order, after a backoff, and what
//! each caller is owed follows its [`Policy`]:
//!
//! - [`Policy::Durable`]: the daemon's own bookkeeping (final rows,
//!   progress, checkpoints), retried for as long as it takes, so an
//!   operation whose job has ended always reaches its final row. Only a
//!   shutdown that cannot write within [`SHUTDOWN_WAIT`] gives up.
//! - [`Policy::Caller`]: a client waits (submit, cancel, resume). It waits
//!   out a busy lock until its deadline, and then, or at once on any other
//!   failure, hears a true error saying nothing was written.
//!
//! While a batch is being retried, [`Writer::degraded`] says why and since
//! when (`opsd health` shows it as `store`). The backends differ only in
//! how a batch is run ([`Engine::try_commit`]), in their wording, and in
//! whether a commit is durable when it returns: when it is not (SQLite,
//! [`Engine::deferred_flush`]), answers go through [`crate::store::durable`],
//! which flushes first; this thread begins its next batch when that flush
//! is done (or after [`GATHER_WAIT`]), with everything queued meanwhile.

use crate::channel::{Receiver, RecvTimeoutError, Sender};
use crate::error::{DbErrorKind, Error, Result};
use crate::store::durable::{self, Deliver, Item, Stage};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Most requests in one transaction; bounds latency under a flood.
const MAX_BATCH: usize = 4096;
/// Longest the writer waits for a running flush before its next batch
/// (a disk that stalls longer gets the batches pipelined behind it).
const GATHER_WAIT: Duration = Duration::from_millis(5);
/// First wait before a failed batch is tried again; doubles up to
/// [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// Longest wait between two tries of a failed batch.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long the writer keeps trying at shutdown before it gives up.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(10);

/// What a request's caller is owed when its batch cannot be committed.
#[derive(Debug, Clone, Copy)]
pub enum Policy {
    /// Retry until committed: the daemon's own bookkeeping, which must not
    /// be lost.
    Durable,
    /// A caller is waiting: retry a busy lock until `deadline`, fail at
    /// once on anything else, and tell the caller nothing was written.
    Caller {
        /// After this, a busy lock is reported instead of waited out.
        deadline: Instant,
    },
}

impl Policy {
    /// A caller that waits up to `wait` for a locked database.
    pub fn caller(wait: Duration) -> Policy {
        Policy::Caller {
            deadline: Instant::now() + wait,
        }
    }
}

/// Why a batch could not be committed.
#[derive(Debug, Clone)]
pub(crate) struct BatchFailure {
    /// Another connection holds a lock (worth waiting for).
    pub(crate) busy: bool,
    /// What the database said, for the log and `health`.
    pub(crate) message: String,
}

/// A request's error that spoils its whole batch: the lock, the disk,
/// the file or the connection, not the request's own logic (a
/// constraint, a missing row), which its savepoint contains.
pub(crate) fn spoils_batch(e: &Error) -> Option<BatchFailure> {
    let Error::Database(db) = e else { return None };
    let busy = db.kind == DbErrorKind::Busy;
    (busy || db.kind == DbErrorKind::Storage).then(|| BatchFailure {
        busy,
        message: db.message.clone(),
    })
}

/// What a request's caller hears: the result it kept when its batch
/// committed (`failure` is `None`), else the batch's failure.
pub(crate) fn answer<T>(result: Option<Result<T>>, failure: Option<Error>) -> Result<T> {
    match failure {
        Some(e) => Err(e),
        None => result
            .unwrap_or_else(|| Err(Error::Internal("a write was answered before it ran".into()))),
    }
}

/// Why writes are not landing, and since when.
#[derive(Debug, Clone)]
pub(crate) struct Degraded {
    /// When the first failed try was.
    pub(crate) since: String,
    /// The latest failure.
    pub(crate) failure: BatchFailure,
}

/// What the shared thread needs of a queued request, whatever the backend:
/// its policy, and ([`Deliver`]) how to answer its caller, with the kept
/// result after a commit (`None`) or with `Some(error)` when the batch
/// could not be committed.
pub(crate) trait Answer: Deliver {
    /// Its policy.
    fn policy(&self) -> Policy;
}

/// One backend's way of running a batch, and its wording.
pub(crate) trait Engine: Send + 'static {
    /// A queued request of this backend.
    type Job: ?Sized + Answer;
    /// What the logs call the store ("database", "PostgreSQL").
    const NAME: &'static str;
    /// One try: run every request in one transaction and commit, calling
    /// `at_commit` just before the commit (from then on readers may see
    /// it). `Ok(changed)`: committed, and whether it changed anything (a
    /// commit that changed nothing needs no flush; `true` when unsure).
    /// `Err`: why the batch as a whole failed (leaving no transaction
    /// open).
    fn try_commit(
        &mut self,
        batch: &mut [Box<Self::Job>],
        at_commit: &mut dyn FnMut(),
    ) -> std::result::Result<bool, BatchFailure>;
    /// The `health` sentence while writes are not landing.
    fn degraded_text(d: &Degraded) -> String;
    /// What a caller hears when its request could not be committed.
    fn caller_error(f: &BatchFailure) -> Error;
    /// What the requests still unwritten at shutdown hear.
    fn stopped_error() -> Error;
    /// The log line for them.
    const LEFT_AT_SHUTDOWN: &'static str;
    /// Last words before the thread ends (SQLite folds its WAL back).
    fn at_exit(&mut self) {}
    /// Upkeep between batches, right after a commit was handed over (its
    /// callers are not kept waiting for it): SQLite copies what its
    /// checkpointer could not.
    fn after_commit(&mut self) {}
    /// `Some(flush)` when [`Engine::try_commit`] returns before the commit
    /// is on disk: `flush` makes every commit so far durable, and callers
    /// are answered only after it (on a thread of its own, so the next
    /// batch runs meanwhile). Asked once, at start. `None`: each commit is
    /// durable when it returns.
    fn deferred_flush(&mut self) -> Option<durable::Flush> {
        None
    }
}

enum Message<J: ?Sized> {
    Task(Box<J>),
    Shutdown,
}

/// Handle to a writer thread. Cloning it is cheap.
pub(crate) struct Writer<E: Engine> {
    tx: Sender<Message<E::Job>>,
    /// Joined by `shutdown`; shared so any clone can stop the thread.
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
    /// Set while a batch is being retried.
    degraded: Arc<Mutex<Option<Degraded>>>,
    /// How long a caller waits out a locked database.
    caller_wait: Duration,
    /// How far commits are flushed, when the flush follows the commit.
    watermark: Option<Arc<durable::Watermark>>,
}

impl<E: Engine> Clone for Writer<E> {
    fn clone(&self) -> Self {
        Writer {
            tx: self.tx.clone(),
            thread: self.thread.clone(),
            degraded: self.degraded.clone(),
            caller_wait: self.caller_wait,
            watermark: self.watermark.clone(),
        }
    }
}

impl<E: Engine> Writer<E> {
    /// Start the writer thread on `engine`. Callers wait up to
    /// `caller_wait` for a database locked by another program.
    pub(crate) fn start(mut engine: E, caller_wait: Duration) -> Result<Writer<E>> {
        let (tx, rx) = crate::channel::unbounded();
        let degraded = Arc::new(Mutex::new(None));
        let d = degraded.clone();
        let stage = match engine.deferred_flush() {
            Some(flush) => Some(
                Stage::start(flush, durable::abort)
                    .map_err(|e| Error::io("starting the fsync thread", e))?,
            ),
            None => None,
        };
        let watermark = stage.as_ref().map(|s| s.watermark().clone());
        let thread = std::thread::Builder::new()
            .name("opsd-writer".into())
            .spawn(move || {
                Thread {
                    engine,
                    degraded: d,
                    retry: Vec::new(),
                    backoff: FIRST_BACKOFF,
                    stage,
                }
                .run(rx)
            })
            .map_err(|e| Error::io("starting the writer thread", e))?;
        Ok(Writer {
            tx,
            thread: Arc::new(Mutex::new(Some(thread))),
            degraded,
            caller_wait,
            watermark,
        })
    }

    /// Return once every commit made so far is durable: a read calls it
    /// after its query, so it never answers what a power cut could undo.
    /// At once when each commit is durable when it returns.
    pub(crate) fn wait_durable(&self) {
        if let Some(w) = &self.watermark {
            w.wait_durable();
        }
    }

    /// `None` while writes land; otherwise a sentence saying why they do
    /// not and since when (for `opsd health`).
    pub(crate) fn degraded(&self) -> Option<String> {
        let d = self.degraded.lock().ok()?.clone()?;
        Some(E::degraded_text(&d))
    }

    /// The policy of a request a client waits for.
    pub(crate) fn caller_policy(&self) -> Policy {
        Policy::caller(self.caller_wait)
    }

    /// Queue a request. If the writer is gone it is dropped with its
    /// sender, and the caller's ticket reports `unavailable`.
    pub(crate) fn send(&self, job: Box<E::Job>) {
        let _ = self.tx.send(Message::Task(job));
    }

    /// Queue requests together: the writer takes them into the same
    /// batch (unless it is full), so they commit, and are flushed, as one.
    pub(crate) fn send_together(&self, jobs: Vec<Box<E::Job>>) {
        let _ = self
            .tx
            .send_all(jobs.into_iter().map(Message::Task).collect());
    }

    /// Commit what is queued, then stop the thread.
    pub(crate) fn shutdown(&self) {
        let _ = self.tx.send(Message::Shutdown);
        let handle = self.thread.lock().ok().and_then(|mut h| h.take());
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

/// The writer thread's state.
struct Thread<E: Engine> {
    engine: E,
    degraded: Arc<Mutex<Option<Degraded>>>,
    /// Requests of a batch that failed as a whole, oldest first.
    retry: Vec<Box<E::Job>>,
    backoff: Duration,
    /// Answers commits after flushing them, when commits do not wait for
    /// the disk themselves.
    stage: Option<Stage<E::Job>>,
}

impl<E: Engine> Thread<E> {
    fn run(mut self, rx: Receiver<Message<E::Job>>) {
        let mut stopping = false;
        while !stopping {
            // With nothing to retry, sleep until a request comes; with a
            // failed batch, wait at most the backoff before trying again.
            let first = if self.retry.is_empty() {
                match rx.recv() {
                    Ok(m) => Some(m),
                    Err(_) => break,
                }
            } else {
                match rx.recv_timeout(self.backoff) {
                    Ok(m) => Some(m),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            };
            if let Some(stage) = &self.stage {
                stage.watermark().wait_no_flush(GATHER_WAIT);
            }
            let mut batch = std::mem::take(&mut self.retry);
            match first {
                Some(Message::Task(t)) => batch.push(t),
                Some(Message::Shutdown) => stopping = true,
                None => {}
            }
            while !stopping && batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(Message::Task(t)) => batch.push(t),
                    Ok(Message::Shutdown) => stopping = true,
                    Err(_) => break,
                }
            }
            self.commit(batch, false);
        }
        // Answer whatever is still queued so no caller waits forever, and
        // keep trying a failed batch for a while before giving up.
        let mut batch = std::mem::take(&mut self.retry);
        while let Ok(Message::Task(t)) = rx.try_recv() {
            batch.push(t);
        }
        let give_up = Instant::now() + SHUTDOWN_WAIT;
        self.commit(batch, false);
        while !self.retry.is_empty() && Instant::now() < give_up {
            std::thread::sleep(self.backoff);
            let batch = std::mem::take(&mut self.retry);
            self.commit(batch, Instant::now() >= give_up);
        }
        // Every committed request is answered (after its flush) before the
        // ones left over hear that they were not written.
        if let Some(stage) = self.stage.take() {
            stage.finish();
        }
        let left = std::mem::take(&mut self.retry);
        if !left.is_empty() {
            tracing::error!(requests = left.len(), "{}", E::LEFT_AT_SHUTDOWN);
        }
        for t in left {
            t.deliver(Some(E::stopped_error()));
        }
        self.engine.at_exit();
    }

    /// Run and commit one batch. On success every request is answered; on
    /// a failure of the whole batch, callers whose policy allows it are
    /// answered with a true error and the rest are kept for the next try.
    fn commit(&mut self, mut batch: Vec<Box<E::Job>>, last_try: bool) {
        if batch.is_empty() {
            return;
        }
        // Numbered just before it can become visible: a reader that may
        // have seen it waits for its flush.
        let mut number = 0;
        let stage = self.stage.as_ref();
        let mut at_commit = || {
            if let Some(s) = stage {
                number = s.watermark().begin();
            }
        };
        match self.engine.try_commit(&mut batch, &mut at_commit) {
            Ok(changed) => {
                self.backoff = FIRST_BACKOFF;
                if let Ok(mut d) = self.degraded.lock() {
                    if d.take().is_some() {
                        tracing::info!("{} writes land again", E::NAME);
                    }
                }
                // In queue order, on one thread (this one, or the flushing
                // stage's, which keeps the order of commits): a final row's
                // `after` (which releases its slot) runs before a claim
                // queued behind it is answered. `runtime::live` relies on it
                // when it lets a finishing slot be claimed for again.
                self.hand_over(if changed {
                    Item::Committed(batch, number)
                } else {
                    Item::Unchanged(batch, number)
                });
                self.engine.after_commit();
            }
            Err(f) => {
                self.note_degraded(&f);
                let now = Instant::now();
                let mut refused = Vec::new();
                for t in batch {
                    let keep = match t.policy() {
                        Policy::Durable => !last_try,
                        Policy::Caller { deadline } => f.busy && now < deadline,
                    };
                    if keep {
                        self.retry.push(t);
                    } else {
                        refused.push((t, E::caller_error(&f)));
                    }
                }
                // Behind the answers of earlier commits, in order (and,
                // even with none, so that readers stop waiting for it).
                self.hand_over(Item::Answered(refused, number));
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
            }
        }
    }

    /// Answer `item`'s callers: through the flushing stage when there is
    /// one, else here and now (each commit was durable when it returned).
    fn hand_over(&self, item: Item<E::Job>) {
        match &self.stage {
            Some(stage) => stage.push(item),
            None => item.answer(None),
        }
    }

    fn note_degraded(&self, f: &BatchFailure) {
        if let Ok(mut d) = self.degraded.lock() {
            match d.as_mut() {
                Some(d) => d.failure = f.clone(),
                None => {
                    tracing::error!("{} write failed, retrying: {}", E::NAME, f.message);
                    *d = Some(Degraded {
                        since: crate::ids::now(),
                        failure: f.clone(),
                    });
                }
            }
        }
    }
}
