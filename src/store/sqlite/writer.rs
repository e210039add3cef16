//! The SQLite side of the writer: how a batch runs on one connection.
//!
//! The thread, group commit and failure policy are shared with the other
//! backend ([`crate::store::batch`]). Here one `BEGIN IMMEDIATE ... COMMIT`
//! (one fsync) covers the batch. Requests run first as they are, with no
//! savepoint of their own: in a batch where nothing fails (nearly all of
//! them) that saves SQLite copying every page a request touches into a
//! statement journal. When a request fails by itself (a bad submit, a
//! cancel of a finished operation), the batch is rolled back and run again
//! with each request in its own savepoint, so the failing one does not
//! undo the others and leaves nothing half done. A request
//! that ends the transaction itself (SQLite rolls back on a full disk and
//! some I/O errors) makes the whole batch fail and be retried, instead of
//! letting the later requests commit one by one outside it.

use crate::error::{DbErrorKind, Error, Result};
use crate::store::batch::{self, Answer, BatchFailure, Degraded, Engine};
use crate::store::durable::{Deliver, Flush};
use crate::store::Ticket;
use rusqlite::Connection;

pub use crate::store::batch::Policy;

/// The SQLite writer's handle.
pub(crate) type Writer = batch::Writer<SqliteEngine>;

/// How one request's run went.
pub(crate) enum Ran {
    /// It succeeded.
    Ok,
    /// It failed by itself (its own logic: a constraint, a missing row).
    Failed,
    /// It failed in a way that spoils the whole batch (lock, disk, file).
    Spoiled(BatchFailure),
}

/// One queued request with its result, re-runnable until committed.
pub(crate) trait Queued: Answer {
    /// Run inside the batch transaction and keep the result; in its own
    /// savepoint when `isolated`, so a failure undoes only its own changes.
    fn run(&mut self, conn: &Connection, isolated: bool) -> Ran;
}

/// One kind of change to the database: every implementor is a file in
/// `writes/`, so that directory lists everything that can change it.
/// `apply` may run more than once (a batch that failed as a whole is run
/// again), so it must only touch the database.
pub(crate) trait Write: Send + 'static {
    /// What the caller gets back.
    type Out: Send + 'static;
    /// Make the change on the writer's connection, inside the batch.
    fn apply(&mut self, conn: &Connection) -> Result<Self::Out>;
}

struct Request<W: Write, D> {
    write: W,
    deliver: D,
    policy: Policy,
    result: Option<Result<W::Out>>,
}

impl<W, D> Queued for Request<W, D>
where
    W: Write,
    D: FnOnce(Result<W::Out>) + Send,
{
    fn run(&mut self, conn: &Connection, isolated: bool) -> Ran {
        let w = &mut self.write;
        let r = if isolated {
            run_in_savepoint(conn, |c| w.apply(c))
        } else {
            w.apply(conn)
        };
        let ran = match &r {
            Ok(_) => Ran::Ok,
            Err(e) => batch::spoils_batch(e).map_or(Ran::Failed, Ran::Spoiled),
        };
        self.result = Some(r);
        ran
    }
}

impl<W, D> Answer for Request<W, D>
where
    W: Write,
    D: FnOnce(Result<W::Out>) + Send,
{
    fn policy(&self) -> Policy {
        self.policy
    }
}

impl<W, D> Deliver for Request<W, D>
where
    W: Write,
    D: FnOnce(Result<W::Out>) + Send,
{
    fn deliver(self: Box<Self>, failure: Option<Error>) {
        (self.deliver)(batch::answer(self.result, failure));
    }
}

fn sqlite_failure(e: rusqlite::Error) -> BatchFailure {
    let db = super::db_error(e);
    BatchFailure {
        busy: db.kind == DbErrorKind::Busy,
        message: db.message,
    }
}

/// Run `f` in a savepoint: its changes stay only if it succeeds.
fn run_in_savepoint<T>(conn: &Connection, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
    // Cached statements: two of these run for every request.
    conn.prepare_cached("SAVEPOINT task")?.execute([])?;
    match f(conn) {
        Ok(v) => {
            conn.prepare_cached("RELEASE task")?.execute([])?;
            Ok(v)
        }
        Err(e) => {
            // After an error that rolled the whole transaction back (disk
            // full, I/O) the savepoint is gone too; the batch notices
            // (autocommit) and is retried whole.
            if !conn.is_autocommit() {
                conn.execute_batch("ROLLBACK TO task; RELEASE task")?;
            }
            Err(e)
        }
    }
}

/// Runs batches on the writer's connection.
pub(crate) struct SqliteEngine {
    conn: Connection,
    /// The WAL to flush after commits, when they do not flush it
    /// themselves (taken by [`Engine::deferred_flush`]).
    wal: Option<super::wal_flush::WalFile>,
    /// Raised by the checkpointer after a pass over a WAL with frames
    /// (see `checkpointer`): the writer copies what came in during it
    /// after its next commit.
    catch_up: super::checkpointer::CatchUp,
}

impl SqliteEngine {
    /// The engine over an open, migrated connection. On a database in WAL
    /// mode its commits stop waiting for the disk (`synchronous=NORMAL`)
    /// and the writer flushes the WAL behind them before answering
    /// ([`crate::store::durable`]); otherwise they stay `FULL`.
    pub(crate) fn new(conn: Connection) -> SqliteEngine {
        let wal = super::wal_flush::WalFile::of(&conn)
            .filter(|_| conn.pragma_update(None, "synchronous", "NORMAL").is_ok());
        SqliteEngine {
            conn,
            wal,
            catch_up: Default::default(),
        }
    }

    /// The flag the checkpointer raises for this writer.
    pub(crate) fn catch_up(&self) -> super::checkpointer::CatchUp {
        self.catch_up.clone()
    }
}

impl SqliteEngine {
    /// BEGIN and run every request, isolated in savepoints or not. Ok(false):
    /// a request failed by itself and, not being isolated, may have left
    /// half its changes: the caller rolls back and runs the batch isolated.
    /// On Err no transaction is left open.
    fn run_all(&self, batch: &mut [Box<dyn Queued>], isolated: bool) -> Result<bool, BatchFailure> {
        self.conn
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(sqlite_failure)?;
        for t in batch.iter_mut() {
            let ran = t.run(&self.conn, isolated);
            // An error that ended the transaction (SQLite rolls back by
            // itself on some I/O errors and on a full disk): the rest
            // would commit one by one outside it, so stop here.
            if self.conn.is_autocommit() || matches!(ran, Ran::Spoiled(_)) {
                let _ = self.conn.execute_batch("ROLLBACK");
                return Err(match ran {
                    Ran::Spoiled(f) => f,
                    _ => BatchFailure {
                        busy: false,
                        message: "the transaction was rolled back by SQLite".into(),
                    },
                });
            }
            if matches!(ran, Ran::Failed) && !isolated {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

impl Engine for SqliteEngine {
    type Job = dyn Queued;
    const NAME: &'static str = "database";
    const LEFT_AT_SHUTDOWN: &'static str = "stopping with writes that could not be committed; \
        operations left running are recovered at the next start";

    /// One try: BEGIN, every request, COMMIT; if a request failed by
    /// itself, the batch again with every request in its savepoint.
    /// Returns why the batch as a whole failed (and leaves no transaction
    /// open).
    fn try_commit(
        &mut self,
        batch: &mut [Box<dyn Queued>],
        at_commit: &mut dyn FnMut(),
    ) -> std::result::Result<bool, BatchFailure> {
        let changes_before = self.conn.total_changes();
        match self.run_all(batch, false) {
            Ok(true) => {}
            Ok(false) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                self.run_all(batch, true)?;
            }
            Err(f) => return Err(f),
        }
        at_commit();
        if let Err(e) = self.conn.execute_batch("COMMIT") {
            let _ = self.conn.execute_batch("ROLLBACK");
            return Err(sqlite_failure(e));
        }
        // A commit that changed no row wrote no WAL frame: the writer's
        // requests change the database only through INSERT, UPDATE and
        // DELETE, which `total_changes` counts (a rolled-back first pass
        // counts too, which errs on the side of flushing).
        Ok(self.conn.total_changes() != changes_before)
    }

    fn degraded_text(d: &Degraded) -> String {
        if d.failure.busy {
            format!(
                "waiting for the write lock since {}: another program holds a write \
                 transaction on the database ({})",
                d.since, d.failure.message
            )
        } else {
            format!(
                "writes failing since {}: {}; retrying until they succeed",
                d.since, d.failure.message
            )
        }
    }

    fn caller_error(f: &BatchFailure) -> Error {
        if f.busy {
            Error::Unavailable(format!(
                "the database is locked by another program (a sqlite3 shell or a backup holding a \
             write transaction?): {}; nothing was written. End that transaction and try again",
                f.message
            ))
        } else {
            Error::Unavailable(format!(
                "the database could not be written: {}; nothing was written. If the disk is full, \
             free space and try again: the daemon recovers by itself",
                f.message
            ))
        }
    }

    fn stopped_error() -> Error {
        Error::Unavailable(
            "the daemon stopped before the database could be written; nothing was recorded".into(),
        )
    }

    /// Copy what came into the WAL during the checkpointer's last pass,
    /// so that the next transaction restarts it (see `checkpointer`): the
    /// frames of a few commits and two fsyncs, about every 200 ms under
    /// load.
    fn after_commit(&mut self) {
        use std::sync::atomic::Ordering;
        if self.catch_up.swap(false, Ordering::AcqRel) {
            match super::checkpointer::pass(&self.conn) {
                // The checkpointer's next pass is running: after the next
                // commit, then.
                Ok(p) if p.busy => self.catch_up.store(true, Ordering::Release),
                Ok(_) => {}
                Err(e) => tracing::debug!("WAL checkpoint on the writer: {e}"),
            }
        }
    }

    fn at_exit(&mut self) {
        // Fold the WAL back into the main file so sqlite3 users see one file.
        let _ = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
    }

    fn deferred_flush(&mut self) -> Option<Flush> {
        let mut wal = self.wal.take()?;
        Some(Box::new(move || wal.flush()))
    }
}

/// A write and whom to answer, as the writer queues it.
fn request<W: Write>(
    policy: Policy,
    write: W,
    deliver: impl FnOnce(Result<W::Out>) + Send + 'static,
) -> Box<dyn Queued> {
    Box::new(Request {
        write,
        deliver,
        policy,
        result: None,
    })
}

impl Writer {
    /// Queue a write; `deliver` receives its result once it is committed
    /// (or the error that stopped it). Runs `deliver` on the thread that
    /// flushes the commits (`store::durable`), or on the writer thread for
    /// a database that is not in WAL mode.
    pub(crate) fn submit<W: Write>(
        &self,
        policy: Policy,
        write: W,
        deliver: impl FnOnce(Result<W::Out>) + Send + 'static,
    ) {
        self.send(request(policy, write, deliver));
    }

    /// Queue a write for a caller's ticket and, right behind it in the
    /// same batch, a second write answered to `then` (both with their own
    /// policy and savepoint rules, as if queued one after the other).
    pub(crate) fn ticket_then<A: Write, B: Write>(
        &self,
        first: (Policy, A),
        second: (Policy, B),
        then: impl FnOnce(Result<B::Out>) + Send + 'static,
    ) -> Ticket<A::Out> {
        let (reply, ticket) = Ticket::new();
        self.send_together(vec![
            request(first.0, first.1, move |r| reply.send(r)),
            request(second.0, second.1, then),
        ]);
        ticket
    }

    /// Queue a write and get a ticket for its commit: the queue is FIFO, so
    /// what is queued first is applied first.
    pub(crate) fn ticket<W: Write>(&self, policy: Policy, write: W) -> Ticket<W::Out> {
        let (reply, ticket) = Ticket::new();
        self.submit(policy, write, move |r| reply.send(r));
        ticket
    }

    /// Queue a write that nobody waits for (durable bookkeeping); a failure
    /// that is not retried is logged.
    pub(crate) fn fire<W: Write>(&self, write: W, what: &'static str) {
        self.submit(Policy::Durable, write, move |r| {
            if let Err(e) = r {
                tracing::error!("{what} failed: {e}");
            }
        });
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    /// A write made of a closure, for tests of the writer's machinery.
    pub(crate) struct Closure<F>(pub F);

    impl<T, F> Write for Closure<F>
    where
        T: Send + 'static,
        F: FnMut(&Connection) -> Result<T> + Send + 'static,
    {
        type Out = T;
        fn apply(&mut self, conn: &Connection) -> Result<T> {
            (self.0)(conn)
        }
    }

    fn open(dir: &tempfile::TempDir) -> Connection {
        let c = Connection::open(dir.path().join("w.db")).unwrap();
        c.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t (v INTEGER);")
            .unwrap();
        c.busy_timeout(Duration::from_millis(20)).unwrap();
        c
    }

    fn count(dir: &tempfile::TempDir) -> i64 {
        Connection::open(dir.path().join("w.db"))
            .unwrap()
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn a_locked_database_delays_durable_writes_and_fails_callers_truthfully() {
        let dir = tempfile::tempdir().unwrap();
        let w = Writer::start(SqliteEngine::new(open(&dir)), Duration::from_millis(100)).unwrap();
        let other = Connection::open(dir.path().join("w.db")).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        let durable = w.ticket(
            Policy::Durable,
            Closure(|c: &Connection| {
                c.execute("INSERT INTO t VALUES (1)", [])?;
                Ok(())
            }),
        );
        let caller = w.ticket(
            w.caller_policy(),
            Closure(|c: &Connection| {
                c.execute("INSERT INTO t VALUES (2)", [])?;
                Ok(())
            }),
        );
        let err = caller.wait().unwrap_err().to_string();
        assert!(err.contains("locked by another program"), "{err}");
        assert!(err.contains("nothing was written"), "{err}");
        let health = w.degraded().expect("degraded while locked");
        assert!(
            health.contains("waiting for the write lock since"),
            "{health}"
        );
        other.execute_batch("COMMIT").unwrap();
        durable.wait().unwrap();
        assert_eq!(
            count(&dir),
            1,
            "the durable write landed, the caller's did not"
        );
        assert!(w.degraded().is_none());
        w.shutdown();
    }

    #[test]
    fn a_request_that_ends_the_transaction_does_not_let_later_ones_commit_alone() {
        let dir = tempfile::tempdir().unwrap();
        let w = Writer::start(SqliteEngine::new(open(&dir)), Duration::from_secs(5)).unwrap();
        let runs = Arc::new(Mutex::new(0));
        let r = runs.clone();
        // The first run of this request ends the transaction the way a
        // full disk does; the next run succeeds.
        let first = w.ticket(
            Policy::Durable,
            Closure(move |c: &Connection| {
                let mut n = r.lock().unwrap();
                *n += 1;
                if *n == 1 {
                    c.execute_batch("ROLLBACK")?;
                    return Err(Error::Internal("simulated abort".into()));
                }
                c.execute("INSERT INTO t VALUES (1)", [])?;
                Ok(())
            }),
        );
        let second = w.ticket(
            Policy::Durable,
            Closure(|c: &Connection| {
                c.execute("INSERT INTO t VALUES (2)", [])?;
                Ok(())
            }),
        );
        first.wait().unwrap();
        second.wait().unwrap();
        assert_eq!(*runs.lock().unwrap(), 2, "the batch was run again");
        assert_eq!(count(&dir), 2, "each row exactly once");
        w.shutdown();
    }

    #[test]
    fn a_commit_that_changed_nothing_is_answered_without_a_flush() {
        // An idle daemon's claim rounds find nothing; they must not flush
        // the disk several times a second. A change is still flushed
        // before it is answered.
        use std::sync::atomic::Ordering::Relaxed;
        let dir = tempfile::tempdir().unwrap();
        let engine = SqliteEngine::new(open(&dir));
        let flushes = engine.wal.as_ref().expect("a WAL database").flush_count();
        let w = Writer::start(engine, Duration::from_secs(5)).unwrap();
        for _ in 0..5 {
            w.ticket(
                Policy::Durable,
                Closure(|c: &Connection| {
                    c.query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0))?;
                    c.execute("UPDATE t SET v = 0 WHERE v < 0", [])?;
                    Ok(())
                }),
            )
            .wait()
            .unwrap();
        }
        assert_eq!(flushes.load(Relaxed), 0, "nothing changed, nothing flushed");
        w.ticket(
            Policy::Durable,
            Closure(|c: &Connection| {
                c.execute("INSERT INTO t VALUES (1)", [])?;
                Ok(())
            }),
        )
        .wait()
        .unwrap();
        assert_eq!(
            flushes.load(Relaxed),
            1,
            "the change was flushed before its answer"
        );
        w.shutdown();
    }

    #[test]
    fn a_failing_request_in_a_clean_first_pass_is_undone_and_the_batch_rerun_isolated() {
        let dir = tempfile::tempdir().unwrap();
        let w = Writer::start(SqliteEngine::new(open(&dir)), Duration::from_secs(5)).unwrap();
        // Hold the writer inside a first batch, so the next three requests
        // are queued together and land in one batch.
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let wait = Mutex::new(wait);
        let blocker = w.ticket(
            Policy::Durable,
            Closure(move |_c: &Connection| {
                let _ = wait.lock().unwrap().recv_timeout(Duration::from_secs(5));
                Ok(())
            }),
        );
        std::thread::sleep(Duration::from_millis(50));
        let runs = Arc::new(Mutex::new(0));
        let r = runs.clone();
        let before = w.ticket(
            Policy::Durable,
            Closure(move |c: &Connection| {
                *r.lock().unwrap() += 1;
                c.execute("INSERT INTO t VALUES (1)", [])?;
                Ok(())
            }),
        );
        let bad = w.ticket(
            Policy::Durable,
            Closure(|c: &Connection| {
                c.execute("INSERT INTO t VALUES (100)", [])?;
                Err::<(), _>(Error::BadRequest("half done, then refused".into()))
            }),
        );
        let after = w.ticket(
            Policy::Durable,
            Closure(|c: &Connection| {
                c.execute("INSERT INTO t VALUES (2)", [])?;
                Ok(())
            }),
        );
        go.send(()).unwrap();
        blocker.wait().unwrap();
        before.wait().unwrap();
        assert!(matches!(bad.wait(), Err(Error::BadRequest(_))));
        after.wait().unwrap();
        assert_eq!(
            *runs.lock().unwrap(),
            2,
            "the batch ran once plain, then again isolated"
        );
        let c = Connection::open(dir.path().join("w.db")).unwrap();
        let rows: Vec<i64> = c
            .prepare("SELECT v FROM t ORDER BY v")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(
            rows,
            vec![1, 2],
            "the refused request left nothing; the others once each"
        );
        w.shutdown();
    }

    #[test]
    fn a_request_error_is_contained_by_its_savepoint() {
        let dir = tempfile::tempdir().unwrap();
        let w = Writer::start(SqliteEngine::new(open(&dir)), Duration::from_secs(5)).unwrap();
        let bad = w.ticket(
            Policy::Durable,
            Closure(|c: &Connection| {
                c.execute("INSERT INTO t VALUES (1)", [])?;
                Err::<(), _>(Error::BadRequest("no".into()))
            }),
        );
        let good = w.ticket(
            Policy::Durable,
            Closure(|c: &Connection| {
                c.execute("INSERT INTO t VALUES (2)", [])?;
                Ok(())
            }),
        );
        assert!(matches!(bad.wait(), Err(Error::BadRequest(_))));
        good.wait().unwrap();
        assert_eq!(count(&dir), 1);
        w.shutdown();
    }
}
