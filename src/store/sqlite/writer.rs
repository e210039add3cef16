//! The single writer thread and its group commit.
//!
//! Every mutation is a closure sent over a crossbeam channel. The thread
//! takes the first waiting closure, then drains everything else already
//! queued (up to [`MAX_BATCH`]), runs them all inside one `BEGIN IMMEDIATE`
//! transaction, each in its own savepoint so one failing request does not
//! undo the others, commits once, and only then answers each caller. One
//! fsync so covers every request of the batch, and every answer a caller
//! receives is durable.
//!
//! # When the database cannot be written
//!
//! A batch can fail as a whole: `BEGIN IMMEDIATE` times out because
//! another program (a `sqlite3` shell) holds the write lock, `COMMIT` fails
//! because the disk is full, or a statement's I/O error makes SQLite roll
//! the whole transaction back. Closures are therefore `FnMut`: nothing is
//! dropped, the batch is run again from scratch after a backoff, in the
//! same order (metric points keep their order). What each request gets is
//! its [`Policy`]:
//!
//! - [`Policy::Durable`]: the daemon's own bookkeeping (final rows,
//!   progress and metric flushes, checkpoints). Retried for as long as it
//!   takes, so an operation whose job has ended always reaches its final
//!   row once the database is writable again. Only a shutdown that cannot
//!   write within [`SHUTDOWN_WAIT`] gives up (the rows then stay `running`
//!   and start-up recovery handles them as after a crash).
//! - [`Policy::Caller`]: a client is waiting (submit, cancel, resume). It
//!   waits out a busy lock until its deadline, and then, or at once on any
//!   other failure (disk full), hears a true error saying that nothing was
//!   written and what to do.
//!
//! While a batch is being retried, [`Writer::degraded`] says why and since
//! when (`opsd health` shows it as `store`).

use crate::error::{DbErrorKind, Error, Result};
use crate::store::Ticket;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use rusqlite::Connection;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Most requests in one transaction; bounds latency under a flood.
const MAX_BATCH: usize = 4096;
/// First wait before a failed batch is tried again; doubles up to
/// [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// Longest wait between two tries of a failed batch.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long the writer keeps trying at shutdown before it gives up.
pub const SHUTDOWN_WAIT: Duration = Duration::from_secs(10);

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
struct BatchFailure {
    /// Another connection holds the lock (worth waiting for).
    busy: bool,
    /// What SQLite said, for the log and `health`.
    message: String,
}

/// One queued request with its result, re-runnable until committed.
trait Queued: Send {
    /// Run inside the batch transaction (in a savepoint) and keep the
    /// result. Returns the failure when it is one that spoils the batch.
    fn run(&mut self, conn: &Connection) -> Option<BatchFailure>;
    /// Its policy.
    fn policy(&self) -> Policy;
    /// Answer the caller: with the kept result after a commit (`None`), or
    /// with `Some(error)` when the batch could not be committed.
    fn deliver(self: Box<Self>, failure: Option<Error>);
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
    fn run(&mut self, conn: &Connection) -> Option<BatchFailure> {
        let w = &mut self.write;
        let r = run_in_savepoint(conn, |c| w.apply(c));
        let spoiled = match &r {
            Err(e) => batch_failure(e),
            Ok(_) => None,
        };
        self.result = Some(r);
        spoiled
    }

    fn policy(&self) -> Policy {
        self.policy
    }

    fn deliver(self: Box<Self>, failure: Option<Error>) {
        let r = match failure {
            Some(e) => Err(e),
            None => self.result.unwrap_or_else(|| {
                Err(Error::Internal("a write was answered before it ran".into()))
            }),
        };
        (self.deliver)(r);
    }
}

/// A failure of one request that spoils the whole batch: the lock, the
/// disk or the file, not the request's own logic (a constraint, a missing
/// row), which its savepoint contains.
fn batch_failure(e: &Error) -> Option<BatchFailure> {
    let Error::Database(db) = e else { return None };
    let busy = db.kind == DbErrorKind::Busy;
    (busy || db.kind == DbErrorKind::Storage).then(|| BatchFailure {
        busy,
        message: db.message.clone(),
    })
}

fn sqlite_failure(e: rusqlite::Error) -> BatchFailure {
    let db = super::db_error(e);
    BatchFailure {
        busy: db.kind == DbErrorKind::Busy,
        message: db.message,
    }
}

enum Message {
    Task(Box<dyn Queued>),
    Shutdown,
}

/// Why writes are not landing, and since when.
#[derive(Debug, Clone)]
struct Degraded {
    since: String,
    failure: BatchFailure,
}

/// Handle to the writer thread. Cloning it is cheap.
#[derive(Clone)]
pub struct Writer {
    tx: Sender<Message>,
    /// Joined by `shutdown`; shared so any clone can stop the thread.
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
    /// Set while a batch is being retried.
    degraded: Arc<Mutex<Option<Degraded>>>,
    /// How long a caller waits out a locked database.
    caller_wait: Duration,
}

impl Writer {
    /// Start the writer thread on an open, migrated connection. Callers
    /// wait up to `caller_wait` for a database locked by another program.
    pub fn start(conn: Connection, caller_wait: Duration) -> Result<Writer> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let degraded = Arc::new(Mutex::new(None));
        let d = degraded.clone();
        let thread = std::thread::Builder::new()
            .name("opsd-writer".into())
            .spawn(move || Thread::new(conn, d).run(rx))
            .map_err(|e| Error::io("starting the writer thread", e))?;
        Ok(Writer {
            tx,
            thread: Arc::new(Mutex::new(Some(thread))),
            degraded,
            caller_wait,
        })
    }

    /// `None` while writes land; otherwise a sentence saying why they do
    /// not and since when (for `opsd health`).
    pub fn degraded(&self) -> Option<String> {
        let d = self.degraded.lock().ok()?.clone()?;
        Some(if d.failure.busy {
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
        })
    }

    /// The policy of a request a client waits for.
    pub fn caller_policy(&self) -> Policy {
        Policy::caller(self.caller_wait)
    }

    /// Queue a write; `deliver` receives its result once it is committed
    /// (or the error that stopped it). Runs `deliver` on the writer thread.
    pub(crate) fn submit<W: Write>(
        &self,
        policy: Policy,
        write: W,
        deliver: impl FnOnce(Result<W::Out>) + Send + 'static,
    ) {
        let request = Request {
            write,
            deliver,
            policy,
            result: None,
        };
        // If the writer is gone the request is dropped with its sender, and
        // the caller's ticket reports `unavailable` instead of hanging.
        let _ = self.tx.send(Message::Task(Box::new(request)));
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

    /// Commit what is queued, then stop the thread and close the connection.
    pub fn shutdown(&self) {
        let _ = self.tx.send(Message::Shutdown);
        let handle = self.thread.lock().ok().and_then(|mut h| h.take());
        if let Some(handle) = handle {
            let _ = handle.join();
        }
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

/// The writer thread's state.
struct Thread {
    conn: Connection,
    degraded: Arc<Mutex<Option<Degraded>>>,
    /// Requests of a batch that failed as a whole, oldest first.
    retry: Vec<Box<dyn Queued>>,
    backoff: Duration,
}

impl Thread {
    fn new(conn: Connection, degraded: Arc<Mutex<Option<Degraded>>>) -> Thread {
        Thread {
            conn,
            degraded,
            retry: Vec::new(),
            backoff: FIRST_BACKOFF,
        }
    }

    fn run(mut self, rx: Receiver<Message>) {
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
        let left = std::mem::take(&mut self.retry);
        if !left.is_empty() {
            tracing::error!(
                requests = left.len(),
                "stopping with writes that could not be committed; operations left running are \
                 recovered at the next start"
            );
        }
        for t in left {
            t.deliver(Some(Error::Unavailable(
                "the daemon stopped before the database could be written; nothing was recorded"
                    .into(),
            )));
        }
        // Fold the WAL back into the main file so sqlite3 users see one file.
        let _ = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
    }

    /// Run and commit one batch. On success every request is answered; on
    /// a failure of the whole batch, callers whose policy allows it are
    /// answered with a true error and the rest are kept for the next try.
    fn commit(&mut self, mut batch: Vec<Box<dyn Queued>>, last_try: bool) {
        if batch.is_empty() {
            return;
        }
        let failure = self.try_commit(&mut batch);
        match failure {
            None => {
                self.backoff = FIRST_BACKOFF;
                if let Ok(mut d) = self.degraded.lock() {
                    if d.take().is_some() {
                        tracing::info!("database writes land again");
                    }
                }
                for t in batch {
                    t.deliver(None);
                }
            }
            Some(f) => {
                self.note_degraded(&f);
                let now = Instant::now();
                for t in batch {
                    let keep = match t.policy() {
                        Policy::Durable => !last_try,
                        Policy::Caller { deadline } => f.busy && now < deadline,
                    };
                    if keep {
                        self.retry.push(t);
                    } else {
                        t.deliver(Some(caller_error(&f)));
                    }
                }
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
            }
        }
    }

    /// One try: BEGIN, every request in its savepoint, COMMIT. Returns why
    /// the batch as a whole failed (and leaves no transaction open).
    fn try_commit(&self, batch: &mut [Box<dyn Queued>]) -> Option<BatchFailure> {
        if let Err(e) = self.conn.execute_batch("BEGIN IMMEDIATE") {
            return Some(sqlite_failure(e));
        }
        for t in batch.iter_mut() {
            let spoiled = t.run(&self.conn);
            // An error that ended the transaction (SQLite rolls back by
            // itself on some I/O errors and on a full disk): the rest
            // would commit one by one outside it, so stop here.
            if self.conn.is_autocommit() || spoiled.is_some() {
                let _ = self.conn.execute_batch("ROLLBACK");
                return Some(spoiled.unwrap_or_else(|| BatchFailure {
                    busy: false,
                    message: "the transaction was rolled back by SQLite".into(),
                }));
            }
        }
        if let Err(e) = self.conn.execute_batch("COMMIT") {
            let _ = self.conn.execute_batch("ROLLBACK");
            return Some(sqlite_failure(e));
        }
        None
    }

    fn note_degraded(&self, f: &BatchFailure) {
        if let Ok(mut d) = self.degraded.lock() {
            match d.as_mut() {
                Some(d) => d.failure = f.clone(),
                None => {
                    tracing::error!("database write failed, retrying: {}", f.message);
                    *d = Some(Degraded {
                        since: crate::ids::now(),
                        failure: f.clone(),
                    });
                }
            }
        }
    }
}

/// What a caller hears when its request could not be committed.
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

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
        let w = Writer::start(open(&dir), Duration::from_millis(100)).unwrap();
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
        let w = Writer::start(open(&dir), Duration::from_secs(5)).unwrap();
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
    fn a_request_error_is_contained_by_its_savepoint() {
        let dir = tempfile::tempdir().unwrap();
        let w = Writer::start(open(&dir), Duration::from_secs(5)).unwrap();
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
