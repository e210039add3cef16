//! The SQLite backend: one file in WAL mode, one writer thread with group
//! commit ([`writer`]), a pool of read-only connections beside it.
//!
//! Only this module touches rusqlite. The per-table SQL (`operations`,
//! `metrics`, `checkpoints`) is private to it; every change goes through a
//! write type of [`writes`], run by the writer.

mod checkpointer;
mod checkpoints;
mod dependencies;
mod metrics;
pub mod migrate;
mod operations;
mod queues;
mod wal_flush;
pub(crate) mod writer;
mod writes;

use super::records::{
    Checkpoint, CheckpointWrite, ClaimPlan, CleanFilter, ListFilter, Listing, MetricPoint,
    NewOperation, OperationRecord, ProgressWrite, QueueChange, QueueRow, Recovery, RunEnd,
    Submitted, TreeCancel,
};
use super::{AfterCommit, Backend, ClaimDone, Ticket};
use crate::error::{DbError, DbErrorKind, Error, Result};
use crate::ids::OperationId;
use crate::model::{Status, StopReason};
use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::{Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::time::Duration;
pub use writer::Policy;
use writer::Writer;

/// How long a read connection waits on a lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the writer waits on a lock held by another program before it
/// reports the batch as failed and retries it (so `health` can say so).
const WRITER_BUSY_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a client's write waits out a database locked by another
/// program by default (config `write_wait_ms`).
pub const DEFAULT_CALLER_WAIT: Duration = Duration::from_secs(30);

/// Set the pragmas every connection needs. Called on the writer and on each
/// pooled connection (r2d2's init hook), because pragmas are per connection
/// and a misspelt one is silently ignored: `tests` read them back.
pub fn apply_pragmas(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // FULL: an acknowledged submit, cancel or resume survives a power cut
    // (SPEC §5). Group commit keeps it fast. The writer's own connection
    // then commits with NORMAL and flushes the WAL behind each commit
    // before answering, which is the same guarantee (`writer::SqliteEngine`).
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.pragma_update(None, "cache_size", -16_000)?;
    Ok(())
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Error::Database(db_error(e))
    }
}

/// Classify what SQLite said: a lock (wait), the storage (retry the batch)
/// or the request's own fault.
fn db_error(e: rusqlite::Error) -> DbError {
    {
        use rusqlite::ErrorCode as C;
        let kind = match e.sqlite_error_code() {
            Some(C::DatabaseBusy | C::DatabaseLocked) => DbErrorKind::Busy,
            Some(
                C::DiskFull
                | C::SystemIoFailure
                | C::CannotOpen
                | C::ReadOnly
                | C::OutOfMemory
                | C::FileLockingProtocolFailed,
            ) => DbErrorKind::Storage,
            _ => DbErrorKind::Other,
        };
        DbError {
            kind,
            message: e.to_string(),
        }
    }
}

impl From<r2d2::Error> for Error {
    fn from(e: r2d2::Error) -> Self {
        Error::Unavailable(format!("no database connection: {e}"))
    }
}

/// The SQLite store: a writer thread and a read pool over one file.
pub struct SqliteStore {
    /// Path of the SQLite file.
    path: PathBuf,
    /// Read-only connections for queries that must not queue behind writes.
    pool: r2d2::Pool<SqliteConnectionManager>,
    /// Handle to the single writer thread.
    writer: Writer,
    /// Folds the WAL back into the file off the writer thread.
    checkpointer: checkpointer::Checkpointer,
}

impl SqliteStore {
    /// Open (creating if needed) and migrate the database at `path`, start
    /// the writer thread and the read pool. A client's write waits up to
    /// `caller_wait` for a database locked by another program.
    ///
    /// A file that is not a readable opsd database makes this fail with an
    /// error naming the file; the file is never modified in that case.
    pub fn open(path: &Path, caller_wait: Duration) -> Result<SqliteStore> {
        let conn = migrate::open_and_migrate(path)?;
        conn.busy_timeout(WRITER_BUSY_TIMEOUT.min(caller_wait.max(Duration::from_millis(10))))?;
        // The checkpointer thread folds the WAL back; commits do not.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        let engine = writer::SqliteEngine::new(conn);
        let catch_up = engine.catch_up();
        let writer = Writer::start(engine, caller_wait)?;
        let checkpointer = checkpointer::Checkpointer::start(path, catch_up);
        let manager = SqliteConnectionManager::file(path)
            .with_flags(OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
            .with_init(|c| apply_pragmas(c));
        let pool = r2d2::Pool::builder()
            .max_size(8)
            .min_idle(Some(1))
            .connection_timeout(Duration::from_secs(10))
            .build(manager)
            .map_err(|e| {
                Error::Unavailable(format!(
                    "{}: cannot open read connections: {e}",
                    path.display()
                ))
            })?;
        Ok(SqliteStore {
            path: path.to_path_buf(),
            pool,
            writer,
            checkpointer,
        })
    }

    /// Run a read-only query on a pooled connection.
    fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let conn = self.pool.get()?;
        let out = f(&conn);
        // What it saw may include a commit not flushed yet (the writer
        // commits with NORMAL): answer it only once it is durable.
        self.writer.wait_durable();
        out
    }

    fn caller(&self) -> Policy {
        self.writer.caller_policy()
    }
}

/// A claim round as the writer runs it. A claim that cannot be committed
/// is not retried by the writer: the next round claims afresh.
fn claim_write(plan: ClaimPlan) -> (Policy, writes::claim::Claim) {
    (Policy::caller(Duration::ZERO), writes::claim::Claim(plan))
}

impl Backend for SqliteStore {
    fn location(&self) -> String {
        self.path.display().to_string()
    }

    fn degraded(&self) -> Option<String> {
        self.writer.degraded()
    }

    fn close(&self) {
        self.checkpointer.stop();
        self.writer.shutdown();
    }

    fn submit(&self, ops: Vec<NewOperation>) -> Ticket<Vec<Submitted>> {
        self.writer
            .ticket(self.caller(), writes::submit::Submit::new(ops))
    }

    fn cancel_tree(
        &self,
        root: &OperationId,
        reason: StopReason,
        message: Option<String>,
    ) -> Ticket<TreeCancel> {
        let w = writes::cancel_tree::CancelTree {
            root: root.clone(),
            reason,
            message,
        };
        self.writer.ticket(self.caller(), w)
    }

    fn try_resume(&self, id: &OperationId) -> Ticket<()> {
        self.writer
            .ticket(self.caller(), writes::try_resume::TryResume(id.clone()))
    }

    fn delete_checkpoint(&self, id: &OperationId) -> Ticket<Checkpoint> {
        let w = writes::delete_checkpoint::DeleteCheckpoint(id.clone());
        self.writer.ticket(self.caller(), w)
    }

    fn sweep_checkpoints(&self, before: String) -> Ticket<Vec<OperationId>> {
        let w = writes::sweep_checkpoints::SweepCheckpoints(before);
        self.writer.ticket(self.caller(), w)
    }

    fn recover(&self, auto_resume: bool) -> Result<Recovery> {
        let w = writes::recover::Recover { auto_resume };
        self.writer.ticket(self.caller(), w).wait()
    }

    fn submit_then_claim(
        &self,
        ops: Vec<NewOperation>,
        plan: ClaimPlan,
        done: ClaimDone,
    ) -> Ticket<Vec<Submitted>> {
        // As `submit` and `claim_then`, queued as one message so that the
        // writer takes both into one batch.
        self.writer.ticket_then(
            (self.caller(), writes::submit::Submit::new(ops)),
            claim_write(plan),
            done,
        )
    }

    fn claim_then(&self, plan: ClaimPlan, done: ClaimDone) {
        let (policy, claim) = claim_write(plan);
        self.writer.submit(policy, claim, done);
    }

    fn release(&self, id: &OperationId) -> Ticket<()> {
        self.writer
            .ticket(self.caller(), writes::release::Release(id.clone()))
    }

    fn set_queue(&self, change: QueueChange) -> Ticket<QueueRow> {
        self.writer
            .ticket(self.caller(), writes::set_queue::SetQueue(change))
    }

    fn clean(&self, filter: CleanFilter) -> Ticket<Vec<OperationId>> {
        self.writer
            .ticket(self.caller(), writes::clean::Clean(filter))
    }

    fn record_gpus(&self, id: &OperationId, gpus: Vec<String>) {
        let w = writes::record_gpus::RecordGpus {
            id: id.clone(),
            gpus,
        };
        self.writer.fire(w, "recording assigned GPUs");
    }

    fn write_progress(&self, live: Vec<ProgressWrite>, parents: Vec<OperationId>) -> Ticket<()> {
        let w = writes::write_progress::WriteProgress { live, parents };
        self.writer.ticket(Policy::Durable, w)
    }

    fn save_checkpoint(&self, cp: CheckpointWrite) -> Ticket<()> {
        self.writer
            .ticket(Policy::Durable, writes::save_checkpoint::SaveCheckpoint(cp))
    }

    fn begin_attempt(&self, id: &OperationId) -> Ticket<Option<Checkpoint>> {
        let w = writes::begin_attempt::BeginAttempt(id.clone());
        self.writer.ticket(Policy::Durable, w)
    }

    fn finish(&self, end: RunEnd, after: AfterCommit) {
        self.writer
            .submit(Policy::Durable, writes::finish::Finish(end), after);
    }

    fn stopped_at_shutdown(&self, ops: Vec<(OperationId, StopReason)>) {
        let w = writes::stopped_at_shutdown::StoppedAtShutdown(ops);
        self.writer
            .fire(w, "recording operations stopped at shutdown");
    }

    fn add_warning(&self, id: &OperationId, message: String) {
        let w = writes::add_warning::AddWarning {
            id: id.clone(),
            message,
        };
        self.writer.fire(w, "adding a warning");
    }

    fn get(&self, id: &OperationId) -> Result<OperationRecord> {
        self.read(|c| operations::get(c, id))
    }

    fn status(&self, id: &OperationId) -> Result<Status> {
        self.read(|c| operations::status(c, id))
    }

    fn list(&self, filter: &ListFilter) -> Result<Listing> {
        let (rows, total, active) = self.read(|c| operations::list(c, filter))?;
        Ok(Listing {
            rows,
            total,
            active,
        })
    }

    fn children(&self, id: &OperationId) -> Result<Vec<OperationRecord>> {
        self.read(|c| {
            operations::status(c, id)?;
            operations::children(c, id)
        })
    }

    fn metrics(
        &self,
        id: &OperationId,
        cursor: i64,
        limit: i64,
    ) -> Result<(Vec<MetricPoint>, i64)> {
        self.read(|c| {
            operations::status(c, id)?;
            metrics::read_after(c, id, cursor.max(0), limit.clamp(1, 100_000))
        })
    }

    fn checkpoint(&self, id: &OperationId) -> Result<Option<Checkpoint>> {
        self.read(|c| {
            operations::status(c, id)?;
            checkpoints::get(c, id)
        })
    }

    fn checkpoints(&self) -> Result<Vec<Checkpoint>> {
        self.read(checkpoints::list)
    }

    fn counts(&self) -> Result<Vec<(Status, i64)>> {
        self.read(operations::counts_by_status)
    }

    fn resolve(&self, text: &str) -> Result<OperationId> {
        self.read(|c| operations::resolve(c, text))
    }

    fn queues(&self) -> Result<Vec<QueueRow>> {
        self.read(queues::list)
    }

    fn waiting_on(&self, id: &OperationId) -> Result<Vec<OperationId>> {
        self.read(|c| dependencies::unmet(c, id))
    }
}

#[cfg(test)]
mod tests {
    use super::writer::tests::Closure;
    use super::*;
    use crate::model::OperationType;
    use crate::store::records::NewOperation;

    fn write<T: Send + 'static>(
        store: &SqliteStore,
        f: impl FnMut(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        store.writer.ticket(Policy::Durable, Closure(f)).wait()
    }

    /// SQLite's plan for `sql`, its steps joined by ` | `.
    fn query_plan(store: &SqliteStore, sql: &str, params: impl rusqlite::Params) -> String {
        store
            .read(|c| {
                let mut stmt = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
                let rows = stmt
                    .query_map(params, |r| r.get::<_, String>(3))?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                Ok(rows.join(" | "))
            })
            .unwrap()
    }

    /// Insert `op` as a submit does (its metadata serialized here).
    fn insert(c: &Connection, op: &NewOperation, now: &str) -> Result<(OperationId, Status, bool)> {
        operations::insert(c, op, &op.metadata.to_string(), now)
    }

    fn new_op(kind: OperationType) -> NewOperation {
        NewOperation::new(kind, serde_json::json!({}))
    }

    #[test]
    fn pragmas_read_back_on_writer_and_pool() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("t.db"), DEFAULT_CALLER_WAIT).unwrap();
        let (mode, sync, fk) = write(&store, |c| {
            Ok((
                c.query_row("PRAGMA journal_mode", [], |r| r.get::<_, String>(0))?,
                c.query_row("PRAGMA synchronous", [], |r| r.get::<_, i64>(0))?,
                c.query_row("PRAGMA foreign_keys", [], |r| r.get::<_, i64>(0))?,
            ))
        })
        .unwrap();
        // NORMAL (1) on the writer: its commits are flushed behind it by
        // `store::durable` before anyone is answered (see `wal_flush`).
        assert_eq!((mode.as_str(), sync, fk), ("wal", 1, 1));
        let (mode, fk, timeout) = store
            .read(|c| {
                Ok((
                    c.query_row("PRAGMA journal_mode", [], |r| r.get::<_, String>(0))?,
                    c.query_row("PRAGMA foreign_keys", [], |r| r.get::<_, i64>(0))?,
                    c.query_row("PRAGMA busy_timeout", [], |r| r.get::<_, i64>(0))?,
                ))
            })
            .unwrap();
        assert_eq!((mode.as_str(), fk, timeout), ("wal", 1, 10_000));
        store.close();
    }

    #[test]
    fn claim_walks_the_partial_index_without_sorting() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("t.db"), DEFAULT_CALLER_WAIT).unwrap();
        let text = query_plan(
            &store,
            "SELECT operation_id FROM operations \
             WHERE status = 'pending' AND held = 0 AND waiting_for = 0 AND operation_type = ?1 \
               AND gpus_requested BETWEEN 0 AND 0 AND (run_after IS NULL OR run_after <= ?2) \
             ORDER BY priority DESC, created_at, operation_id LIMIT ?3 + 0",
            rusqlite::params!["dummy", "x", 10],
        );
        assert!(text.contains("idx_operations_runnable"), "{text}");
        assert!(!text.contains("TEMP B-TREE"), "{text}");
        store.close();
    }

    #[test]
    fn claiming_resuming_rows_does_not_walk_the_whole_type() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("t.db"), DEFAULT_CALLER_WAIT).unwrap();
        let text = query_plan(
            &store,
            "SELECT operation_id FROM operations \
             WHERE status = 'resuming' AND +operation_type = ?1 \
               AND gpus_requested BETWEEN 0 AND 0 AND (run_after IS NULL OR run_after <= ?2) \
             ORDER BY priority DESC, created_at, operation_id LIMIT 10",
            rusqlite::params!["dummy", "x"],
        );
        assert!(
            text.contains("idx_operations_status_created (status=?)"),
            "{text}"
        );
        store.close();
    }

    #[test]
    fn claim_orders_by_priority_then_age_and_counts_attempts() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("t.db"), DEFAULT_CALLER_WAIT).unwrap();
        let low = new_op(OperationType::Dummy);
        let mut high = new_op(OperationType::Dummy);
        high.priority = 5;
        let other = new_op(OperationType::Backtest);
        for op in [low.clone(), high.clone(), other.clone()] {
            write(&store, move |c| insert(c, &op, &crate::ids::now())).unwrap();
        }
        let claim_dummies = || {
            write(&store, |c| {
                let ask = crate::store::claiming::Ask {
                    kind: OperationType::Dummy,
                    gpus: 0..=0,
                    limit: 10,
                    closed: &[],
                };
                operations::claim(c, &crate::ids::now(), ask)
            })
            .unwrap()
        };
        let claimed = claim_dummies();
        let ids: Vec<_> = claimed.iter().map(|c| c.1.id.clone()).collect();
        assert_eq!(ids, vec![high.id, low.id]);
        assert!(claimed.iter().all(|c| c.1.attempt == 1));
        // Claimed rows are no longer claimable; other types untouched.
        let again = claim_dummies();
        assert!(again.is_empty());
        let status = store
            .read(move |c| operations::status(c, &other.id))
            .unwrap();
        assert_eq!(status, crate::model::Status::Pending);
        store.close();
    }

    #[test]
    fn a_cancel_that_reaches_a_failing_run_first_wins_over_its_retry() {
        use crate::store::records::{ProgressWrite, RunEnd, RunOutcome};
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("t.db"), DEFAULT_CALLER_WAIT).unwrap();
        let mut op = new_op(OperationType::Dummy);
        op.max_attempts = 3;
        let id = op.id.clone();
        store.submit(vec![op]).wait().unwrap();
        let plan = ClaimPlan {
            per_type: vec![(OperationType::Dummy, 1)],
            total: 1,
            free_gpus: 0,
        };
        assert_eq!(store.claim(plan).unwrap().len(), 1);
        // The cancel lands while the worker is recording a failure with
        // attempts left: its stop marker must turn the retry into the cancel.
        let tc = store
            .cancel_tree(&id, crate::model::StopReason::User, None)
            .wait()
            .unwrap();
        assert_eq!(tc.before, Status::Running);
        let (tx, rx) = std::sync::mpsc::channel();
        store.finish(
            RunEnd {
                id: id.clone(),
                parent: None,
                last: ProgressWrite {
                    id: id.clone(),
                    attempt: 1,
                    progress: Default::default(),
                    points: Vec::new(),
                },
                outcome: RunOutcome::Retry {
                    error: "boom".into(),
                    at: "2099-01-01T00:00:00.000000Z".into(),
                },
                delete_checkpoint: false,
            },
            Box::new(move |r| tx.send(r.is_ok()).unwrap()),
        );
        assert!(rx.recv().unwrap());
        let rec = store.get(&id).unwrap();
        assert_eq!(
            rec.status,
            Status::Cancelled,
            "the retry swallowed the cancel"
        );
        assert_eq!(rec.stop_reason, Some(crate::model::StopReason::User));
        store.close();
    }

    #[test]
    fn a_colliding_id_gets_a_new_suffix_instead_of_failing() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("t.db"), DEFAULT_CALLER_WAIT).unwrap();
        let first = new_op(OperationType::Dummy);
        let twin = first.clone();
        let (a, b) = write(&store, move |c| {
            let now = crate::ids::now();
            Ok((insert(c, &first, &now)?, insert(c, &twin, &now)?))
        })
        .unwrap();
        assert!(a.2 && b.2, "both inserted");
        assert_ne!(a.0, b.0);
        assert_eq!(a.0.as_str().len(), b.0.as_str().len());
        let n: i64 = store
            .read(|c| Ok(c.query_row("SELECT count(*) FROM operations", [], |r| r.get(0))?))
            .unwrap();
        assert_eq!(n, 2);
        store.close();
    }

    #[test]
    fn a_failing_request_in_a_batch_does_not_undo_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("t.db"), DEFAULT_CALLER_WAIT).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        for i in 0..20 {
            let mut op = new_op(OperationType::Dummy);
            if i % 2 == 1 {
                // Invalid JSON metadata trips the CHECK constraint.
                op.metadata = serde_json::Value::Null;
            }
            let tx = tx.clone();
            store.writer.submit(
                Policy::Durable,
                Closure(move |c: &Connection| {
                    if i % 2 == 1 {
                        c.execute(
                            "INSERT INTO operations (operation_id, operation_type, created_at, updated_at, metadata) VALUES (?1, 'dummy', 'x', 'x', 'not json')",
                            [op.id.as_str()],
                        )?;
                        Ok(())
                    } else {
                        insert(c, &op, &crate::ids::now()).map(|_| ())
                    }
                }),
                move |r| tx.send(r.is_ok()).unwrap(),
            );
        }
        drop(tx);
        let oks = rx.iter().filter(|ok| *ok).count();
        assert_eq!(oks, 10);
        let n: i64 = store
            .read(|c| Ok(c.query_row("SELECT count(*) FROM operations", [], |r| r.get(0))?))
            .unwrap();
        assert_eq!(n, 10);
        store.close();
    }

    #[test]
    fn retention_sweep_keeps_active_and_recent_checkpoints() {
        use crate::model::CheckpointType;
        use crate::store::records::Checkpoint;
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("t.db"), DEFAULT_CALLER_WAIT).unwrap();
        let old = new_op(OperationType::Dummy);
        let active = new_op(OperationType::Dummy);
        let recent = new_op(OperationType::Dummy);
        for (op, created, status) in [
            (&old, "2020-01-01T00:00:00.000000Z", "cancelled"),
            (&active, "2020-01-01T00:00:00.000000Z", "pending"),
            (&recent, "2099-01-01T00:00:00.000000Z", "failed"),
        ] {
            let (op, created, status) = (op.clone(), created.to_string(), status.to_string());
            write(&store, move |c| {
                insert(c, &op, &crate::ids::now())?;
                c.execute(
                    "UPDATE operations SET status = ?2 WHERE operation_id = ?1",
                    [op.id.as_str(), &status],
                )?;
                checkpoints::save(
                    c,
                    &Checkpoint {
                        operation_id: op.id.clone(),
                        checkpoint_type: CheckpointType::Periodic,
                        created_at: created.clone(),
                        state: serde_json::json!({"step": 1}),
                        artifacts_path: None,
                        state_size_bytes: 0,
                        artifacts_size_bytes: 0,
                        progress_percent: None,
                        metrics_seq: 0,
                    },
                )
            })
            .unwrap();
        }
        let gone = write(&store, |c| {
            checkpoints::sweep_older_than(c, "2026-01-01T00:00:00.000000Z")
        })
        .unwrap();
        assert_eq!(gone, vec![old.id]);
        let left = store.read(checkpoints::list).unwrap();
        assert_eq!(left.len(), 2);
        store.close();
    }

    #[test]
    fn the_migrated_schema_takes_the_dependency_stop_reason_on_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("t.db"), DEFAULT_CALLER_WAIT).unwrap();
        let id = store
            .submit(vec![new_op(OperationType::Dummy)])
            .wait()
            .unwrap()[0]
            .id
            .clone();
        let i = id.clone();
        write(&store, move |c| {
            c.execute(
                "UPDATE operations SET status = 'cancelled', stop_reason = 'dependency' \
                 WHERE operation_id = ?1",
                [i.as_str()],
            )?;
            Ok(())
        })
        .unwrap();
        assert_eq!(
            store.get(&id).unwrap().stop_reason,
            Some(StopReason::Dependency)
        );
        // Still refused: a value outside the vocabulary.
        let i = id.clone();
        let bad = write(&store, move |c| {
            c.execute(
                "UPDATE operations SET stop_reason = 'bogus' WHERE operation_id = ?1",
                [i.as_str()],
            )?;
            Ok(())
        });
        assert!(bad.is_err());
        store.close();
    }

    #[test]
    fn writes_build_no_table_for_their_checks_and_the_checks_still_refuse() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        SqliteStore::open(&path, DEFAULT_CALLER_WAIT)
            .unwrap()
            .close();
        let c = Connection::open(&path).unwrap();
        let ephemeral = |sql: &str| -> usize {
            c.prepare(&format!("EXPLAIN {sql}"))
                .unwrap()
                .query_map([], |r| r.get::<_, String>(1))
                .unwrap()
                .filter(|op| op.as_ref().unwrap() == "OpenEphemeral")
                .count()
        };
        let insert = "INSERT INTO operations (operation_id, operation_type, status, created_at, \
                      updated_at) VALUES ('a', 'dummy', 'pending', 't', 't')";
        assert_eq!(ephemeral(insert), 0, "the insert's checks");
        assert_eq!(
            ephemeral("UPDATE operations SET status = 'running', stop_reason = NULL WHERE operation_id = 'a'"),
            0,
            "the status update's checks"
        );
        c.execute_batch(insert).unwrap();
        for bad in [
            "UPDATE operations SET operation_type = 'bogus'",
            "UPDATE operations SET status = 'bogus'",
            "UPDATE operations SET stop_reason = 'bogus'",
            "INSERT INTO operation_checkpoints (operation_id, checkpoint_type, created_at, state) \
             VALUES ('a', 'bogus', 't', '{}')",
            "INSERT INTO operation_dependencies (operation_id, depends_on, state) VALUES ('a', 'a', 'bogus')",
        ] {
            let err = c.execute_batch(bad).unwrap_err().to_string();
            assert!(err.contains("CHECK constraint failed"), "{bad}: {err}");
        }
        for good in [
            "completed",
            "failed",
            "cancelled",
            "resuming",
            "running",
            "pending",
        ] {
            c.execute("UPDATE operations SET status = ?1", [good])
                .unwrap();
        }
    }

    #[test]
    fn short_ids_resolve_by_tail_prefix_and_last() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("t.db"), DEFAULT_CALLER_WAIT).unwrap();
        let mut a = new_op(OperationType::Dummy);
        a.id = OperationId("op_dummy_20260101_000000_abcd0001".into());
        let mut b = new_op(OperationType::Dummy);
        b.id = OperationId("op_dummy_20260101_000001_abcd0002".into());
        store.submit(vec![a, b]).wait().unwrap();
        let r = |t: &str| store.resolve(t).map(|i| i.0);
        assert_eq!(r("abcd0001").unwrap(), "op_dummy_20260101_000000_abcd0001");
        assert_eq!(
            r("op_dummy_20260101_000001").unwrap(),
            "op_dummy_20260101_000001_abcd0002"
        );
        assert_eq!(r("last").unwrap(), "op_dummy_20260101_000001_abcd0002");
        let amb = r("abcd").unwrap_err().to_string();
        assert!(
            amb.contains("abcd0001") && amb.contains("abcd0002"),
            "{amb}"
        );
        assert!(matches!(store.resolve("ffff"), Err(Error::NotFound(_))));
        store.close();
    }

    /// The WAL's checkpoint sequence number (its header's bytes 12-15),
    /// which SQLite raises each time it restarts the file from its start.
    fn wal_restarts(db: &Path) -> u32 {
        let mut wal = std::path::PathBuf::from(db);
        wal.as_mut_os_string().push("-wal");
        let head = std::fs::read(&wal).unwrap_or_default();
        head.get(12..16)
            .map_or(0, |b| u32::from_be_bytes(b.try_into().unwrap()))
    }

    #[test]
    fn the_wal_is_restarted_while_commits_keep_coming() {
        // Four callers submitting one operation at a time leave the writer
        // no quiet moment for the checkpointer's passes to catch up in.
        // Without the writer's catch-up the WAL was restarted about once
        // in three seconds and grew all along; with it, after every pass
        // (200 ms).
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.db");
        let store = std::sync::Arc::new(SqliteStore::open(&db, DEFAULT_CALLER_WAIT).unwrap());
        let before = wal_restarts(&db);
        let until = std::time::Instant::now() + Duration::from_millis(1600);
        let callers: Vec<_> = (0..4)
            .map(|_| {
                let store = store.clone();
                std::thread::spawn(move || {
                    let mut n = 0;
                    while std::time::Instant::now() < until {
                        store
                            .submit(vec![new_op(OperationType::Dummy)])
                            .wait()
                            .unwrap();
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        let submitted: usize = callers.into_iter().map(|c| c.join().unwrap()).sum();
        let restarts = wal_restarts(&db) - before;
        assert!(
            restarts >= 4,
            "{restarts} WAL restarts in 1.6 s of {submitted} submits"
        );
        store.close();
    }
}
