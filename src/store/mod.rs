//! The store: everything the daemon asks of its database, as one typed
//! interface ([`Backend`]).
//!
//! No SQL, no connection and no database closure crosses this interface:
//! callers (runtime, service, jobs) name what they want done (submit,
//! claim, record the end of a run, cancel a tree...) and get typed rows
//! back. The SQLite implementation lives in [`sqlite`]; the PostgreSQL one
//! implements the same trait.
//!
//! Write semantics are the backend's business and are the same for every
//! caller: a write a client waits for either lands durably or fails with a
//! true error; the daemon's own bookkeeping (progress, checkpoints, the
//! final row of a run) is retried until it lands (see [`batch`]).

pub(crate) mod batch;
pub(crate) mod claiming;
pub(crate) mod durable;
pub mod postgres;
pub mod records;
pub(crate) mod rows;
pub(crate) mod rules;
pub mod sqlite;

use crate::error::{Error, Result};
use crate::ids::OperationId;
use crate::model::{Status, StopReason};
use records::{
    Checkpoint, CheckpointWrite, ClaimPlan, ClaimedOperation, CleanFilter, ListFilter, Listing,
    MetricPoint, NewOperation, OperationRecord, ProgressWrite, QueueChange, QueueRow, Recovery,
    RunEnd, Submitted, TreeCancel,
};
use records::{HostRecord, Signals};
use std::sync::Arc;

/// The store the daemon runs on: one backend, shared by every thread.
pub type Store = Arc<dyn Backend>;

/// Receives a claim's result ([`Backend::claim_then`]).
pub type ClaimDone = Box<dyn FnOnce(Result<Vec<ClaimedOperation>>) + Send>;

/// Called on the writer's side once a run's final row is committed (or
/// could not be): frees the operation's slot. Runs on the writer's side
/// (the writer thread, or for SQLite the thread that flushes its commits),
/// so it must be cheap and must not write to the store.
pub type AfterCommit = Box<dyn FnOnce(Result<()>) + Send>;

/// A write's answer, to wait for (threads) or await (async code).
pub struct Ticket<T>(tokio::sync::oneshot::Receiver<Result<T>>);

/// The sending half of a [`Ticket`], kept by the backend.
pub struct Reply<T>(tokio::sync::oneshot::Sender<Result<T>>);

impl<T> Ticket<T> {
    /// A ticket and the reply that answers it.
    pub fn new() -> (Reply<T>, Ticket<T>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (Reply(tx), Ticket(rx))
    }

    /// A ticket already answered (a backend that failed before queueing).
    pub fn ready(r: Result<T>) -> Ticket<T> {
        let (reply, ticket) = Ticket::new();
        reply.send(r);
        ticket
    }

    /// Block until the write is committed (or failed). Not for async code.
    pub fn wait(self) -> Result<T> {
        self.0.blocking_recv().unwrap_or_else(|_| Err(stopped()))
    }

    /// Await the write's commit.
    pub async fn done(self) -> Result<T> {
        self.0.await.unwrap_or_else(|_| Err(stopped()))
    }
}

impl<T> Reply<T> {
    /// Answer the ticket (ignored when nobody waits any more).
    pub fn send(self, r: Result<T>) {
        let _ = self.0.send(r);
    }
}

fn stopped() -> Error {
    Error::Unavailable("the daemon is shutting down and no longer writes to its database".into())
}

/// Everything the daemon asks of its database.
///
/// Writes a caller waits for return a [`Ticket`]; the daemon's own
/// bookkeeping is durable (retried until it lands) and returns a ticket
/// only where the caller must know it has landed (a checkpoint).
pub trait Backend: Send + Sync {
    /// Where the data lives (a path or a URL without secrets), for logs.
    fn location(&self) -> String;
    /// `None` while writes land; otherwise why not and since when.
    fn degraded(&self) -> Option<String>;
    /// Commit what is queued, then stop writing.
    fn close(&self);

    // Writes a client or the start-up waits for.

    /// Insert operations in one transaction (an idempotency key already
    /// used returns the first operation); a child of a parent that is
    /// finished or being cancelled is refused.
    fn submit(&self, ops: Vec<NewOperation>) -> Ticket<Vec<Submitted>>;
    /// [`Backend::submit`], with a claim round queued right behind it so
    /// that, where the backend batches its writes, both commit together:
    /// a submitted operation with a free slot then starts without a commit
    /// of its own. The claim is the same as [`Backend::claim_then`]'s.
    fn submit_then_claim(
        &self,
        ops: Vec<NewOperation>,
        plan: ClaimPlan,
        done: ClaimDone,
    ) -> Ticket<Vec<Submitted>> {
        let ticket = self.submit(ops);
        self.claim_then(plan, done);
        ticket
    }
    /// Cancel `root` and its active descendants in one transaction.
    fn cancel_tree(
        &self,
        root: &OperationId,
        reason: StopReason,
        message: Option<String>,
    ) -> Ticket<TreeCancel>;
    /// try_resume (SPEC §2): of concurrent resumes exactly one wins.
    fn try_resume(&self, id: &OperationId) -> Ticket<()>;
    /// Delete an operation's checkpoint row; returns it.
    fn delete_checkpoint(&self, id: &OperationId) -> Ticket<Checkpoint>;
    /// Delete checkpoints of stopped operations created before `before`;
    /// returns whose went.
    fn sweep_checkpoints(&self, before: String) -> Ticket<Vec<OperationId>>;
    /// Start-up: `running` rows become `failed`/`crash`; operations stopped
    /// by a shutdown (and crashed ones with a checkpoint when
    /// `auto_resume`) are resumed.
    fn recover(&self, auto_resume: bool) -> Result<Recovery>;
    /// Claim runnable operations within `plan`; each becomes `running`
    /// with its attempt counted. Not retried: the next round claims anew.
    /// Held operations, ones whose dependencies are not met, and ones in
    /// paused or full queues are left waiting. `done` gets the claimed
    /// operations once their claim is committed (on the writer's side: it
    /// must not block), so the scheduler can have several rounds in flight.
    fn claim_then(&self, plan: ClaimPlan, done: ClaimDone);
    /// [`Backend::claim_then`], waiting for the answer.
    fn claim(&self, plan: ClaimPlan) -> Result<Vec<ClaimedOperation>> {
        let (reply, ticket) = Ticket::new();
        self.claim_then(plan, Box::new(move |r| reply.send(r)));
        ticket.wait()
    }
    /// `opsd release`: a held pending operation may start.
    fn release(&self, id: &OperationId) -> Ticket<()>;
    /// Pause, start or cap a named queue (created if new).
    fn set_queue(&self, change: QueueChange) -> Ticket<QueueRow>;
    /// Delete finished operations matching `filter` (never active ones),
    /// with their metrics and checkpoints; returns their ids (with
    /// `dry_run`, the ids that would go, deleting nothing).
    fn clean(&self, filter: CleanFilter) -> Ticket<Vec<OperationId>>;

    // The daemon's own bookkeeping: durable, retried until it lands.

    /// Record the GPUs assigned to a running operation.
    fn record_gpus(&self, id: &OperationId, gpus: Vec<String>);
    /// Write live progress and queued metric points, then refresh the
    /// stored aggregate progress of `parents`.
    fn write_progress(&self, live: Vec<ProgressWrite>, parents: Vec<OperationId>) -> Ticket<()>;
    /// Save a checkpoint with the progress and points reported before it.
    fn save_checkpoint(&self, cp: CheckpointWrite) -> Ticket<()>;
    /// A new attempt starts: its checkpoint, with the metric points
    /// recorded after it dropped (the job regenerates them).
    fn begin_attempt(&self, id: &OperationId) -> Ticket<Option<Checkpoint>>;
    /// Record the end of a run; `after` runs once it is committed.
    fn finish(&self, end: RunEnd, after: AfterCommit);
    /// Shutdown: operations that did not stop within the grace are
    /// recorded `cancelled` with the reason each was given (their last
    /// checkpoint becomes a shutdown checkpoint where the reason is
    /// shutdown).
    fn stopped_at_shutdown(&self, ops: Vec<(OperationId, StopReason)>);
    /// Append a warning to an operation.
    fn add_warning(&self, id: &OperationId, message: String);

    // Reads: never wait for writes.

    /// One operation.
    fn get(&self, id: &OperationId) -> Result<OperationRecord>;
    /// One operation's status.
    fn status(&self, id: &OperationId) -> Result<Status>;
    /// A page of operations matching `filter`, newest first.
    fn list(&self, filter: &ListFilter) -> Result<Listing>;
    /// Children of an operation, oldest first (`not_found` if it is not).
    fn children(&self, id: &OperationId) -> Result<Vec<OperationRecord>>;
    /// Metric points after `cursor` (`not_found` for an unknown id) and
    /// the cursor to continue from.
    fn metrics(&self, id: &OperationId, cursor: i64, limit: i64)
        -> Result<(Vec<MetricPoint>, i64)>;
    /// An operation's checkpoint (`not_found` for an unknown id).
    fn checkpoint(&self, id: &OperationId) -> Result<Option<Checkpoint>>;
    /// Every checkpoint, newest first.
    fn checkpoints(&self) -> Result<Vec<Checkpoint>>;
    /// Operations per status.
    fn counts(&self) -> Result<Vec<(Status, i64)>>;
    /// The id a user means (SPEC §12): a full id, its 8-hex tail, a
    /// unique prefix, or `last`; ambiguous text is an error naming the
    /// candidates.
    fn resolve(&self, text: &str) -> Result<OperationId>;
    /// Every named queue with its waiting and running counts.
    fn queues(&self) -> Result<Vec<QueueRow>>;
    /// The operations `id` still waits for (`--after`, `--after-any`).
    fn waiting_on(&self, id: &OperationId) -> Result<Vec<OperationId>>;

    // Several hosts on one store (SPEC §11). The defaults are those of a
    // store only one daemon uses (SQLite): nothing to share, nothing to
    // rescue.

    /// True when several daemons may share this store (claims, leases and
    /// stop requests then cross hosts).
    fn shared(&self) -> bool {
        false
    }
    /// Register this daemon in `hosts` (or refresh its row: a heartbeat).
    fn register_host(&self, _host: &HostRecord) -> Result<()> {
        Ok(())
    }
    /// Remove this daemon's `hosts` row (a clean stop).
    fn deregister_host(&self, _host: &str) -> Result<()> {
        Ok(())
    }
    /// The registered hosts, by name.
    fn hosts(&self) -> Result<Vec<HostRecord>> {
        Ok(Vec::new())
    }
    /// Renew the leases of this host's running operations (each with the
    /// attempt it runs); returns those whose claim this host no longer
    /// holds (rescued by another host): their jobs must stop.
    fn renew_leases(&self, _running: &[(OperationId, i64)]) -> Result<Vec<(OperationId, i64)>> {
        Ok(Vec::new())
    }
    /// The rescuer: operations whose lease ran out are recovered exactly as
    /// after a crash (`failed`/`crash`, resumed from their checkpoint with
    /// `auto_resume`); those a cleanly stopped host left behind (stopped
    /// by its shutdown, the host gone from `hosts`) are resumed.
    fn rescue_expired(&self, _auto_resume: bool) -> Result<Recovery> {
        Ok(Recovery::default())
    }
    /// Stop requests other hosts wrote for operations running here: each
    /// with its attempt and the reason on its stop marker.
    fn stop_requests(&self) -> Result<Vec<(OperationId, i64, StopReason)>> {
        Ok(Vec::new())
    }
    /// Wait up to `timeout` for a signal from other hosts (LISTEN/NOTIFY);
    /// a store without them just waits.
    fn wait_for_signal(&self, timeout: std::time::Duration) -> Signals {
        std::thread::sleep(timeout);
        Signals::default()
    }
}

/// Open the SQLite store at `path` with default settings (tests, tools).
pub fn open(path: &std::path::Path) -> Result<Store> {
    Ok(Arc::new(sqlite::SqliteStore::open(
        path,
        sqlite::DEFAULT_CALLER_WAIT,
    )?))
}

/// Open the store the configuration names: PostgreSQL for a
/// `postgres://` URL in `store`, else the SQLite file.
pub fn open_configured(config: &crate::config::Config) -> Result<Store> {
    let wait = std::time::Duration::from_millis(config.write_wait_ms);
    match config.postgres_url() {
        Some(url) => Ok(Arc::new(postgres::PostgresStore::open(
            url,
            postgres::Settings {
                host: config.host_name(),
                lease: std::time::Duration::from_secs(config.lease_seconds),
                shared_dir: config.shared_dir.clone(),
                caller_wait: wait,
            },
        )?)),
        None => Ok(Arc::new(sqlite::SqliteStore::open(
            &config.db_path(),
            wait,
        )?)),
    }
}
