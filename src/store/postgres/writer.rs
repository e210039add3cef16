//! The PostgreSQL writer: one thread, one connection, group commit.
//!
//! As in SQLite's writer ([`crate::store::sqlite::writer`]): the thread
//! takes every request already queued (up to [`MAX_BATCH`]), runs them in
//! one transaction, commits once, and only then answers each caller. A
//! request that fails on its own does not undo the others: the batch is
//! rolled back and run again without it (cheaper than a savepoint per
//! request, which costs two round trips each on PostgreSQL).
//! A batch that fails as a whole (the connection dropped, the server
//! restarted, a deadlock with another host's batch) is rolled back and run
//! again from scratch after a backoff, on a new connection when the old one
//! is gone; what each request's caller is owed follows its [`Policy`]
//! exactly as for SQLite.

use super::{connect, pg_error, Cache, Db};
use crate::error::{DbErrorKind, Error, Result};
use crate::store::sqlite::Policy;
use crate::store::Ticket;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use postgres::{Client, Transaction};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Most requests in one transaction.
const MAX_BATCH: usize = 4096;
/// First wait before a failed batch is tried again; doubles up to
/// [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// Longest wait between two tries of a failed batch.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long the writer keeps trying at shutdown before it gives up.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(10);

/// A request's savepoint in the batch transaction, with the connection's
/// prepared statements.
pub(crate) type Tx<'a, 'b> = Db<'a, Transaction<'b>>;

/// A write: runs inside the batch, may run again if the batch is retried.
pub(crate) type WriteFn<T> = Box<dyn FnMut(&mut Tx<'_, '_>) -> Result<T> + Send>;

#[derive(Debug, Clone)]
struct BatchFailure {
    busy: bool,
    message: String,
}

/// What running one request in the batch did.
enum Outcome {
    /// It succeeded.
    Done,
    /// It failed on its own (a constraint, a refused transition): its
    /// error is its answer, and the batch is run again without it (its
    /// partial changes and an aborted transaction must not stay).
    Failed,
    /// It failed in a way that spoils the whole batch (connection, server,
    /// deadlock): the batch is retried.
    Spoiled(BatchFailure),
}

trait Queued: Send {
    /// Run inside the batch transaction and keep the result.
    fn run(&mut self, tx: &mut Transaction<'_>, cache: &mut Cache) -> Outcome;
    /// Its kept result is an error of its own (it sits out reruns).
    fn failed(&self) -> bool;
    /// Forget the kept result (a new try of a failed batch runs it anew).
    fn reset(&mut self);
    fn policy(&self) -> Policy;
    fn deliver(self: Box<Self>, failure: Option<Error>);
}

struct Request<T, D> {
    write: WriteFn<T>,
    deliver: D,
    policy: Policy,
    result: Option<Result<T>>,
}

impl<T: Send, D: FnOnce(Result<T>) + Send> Queued for Request<T, D> {
    fn run(&mut self, tx: &mut Transaction<'_>, cache: &mut Cache) -> Outcome {
        let r = (self.write)(&mut Db {
            c: tx,
            cache: &mut *cache,
        });
        let outcome = match &r {
            Ok(_) => Outcome::Done,
            Err(Error::Database(db)) if db.kind != DbErrorKind::Other => {
                Outcome::Spoiled(BatchFailure {
                    busy: db.kind == DbErrorKind::Busy,
                    message: db.message.clone(),
                })
            }
            Err(_) => Outcome::Failed,
        };
        self.result = Some(r);
        outcome
    }

    fn failed(&self) -> bool {
        matches!(self.result, Some(Err(_)))
    }

    fn reset(&mut self) {
        self.result = None;
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

enum Message {
    Task(Box<dyn Queued>),
    Shutdown,
}

#[derive(Debug, Clone)]
struct Degraded {
    since: String,
    failure: BatchFailure,
}

/// Handle to the writer thread.
#[derive(Clone)]
pub(crate) struct Writer {
    tx: Sender<Message>,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
    degraded: Arc<Mutex<Option<Degraded>>>,
    caller_wait: Duration,
}

impl Writer {
    /// Start the writer on an open, migrated connection; it reconnects to
    /// `config` when the connection is lost.
    pub(crate) fn start(
        client: Client,
        config: postgres::Config,
        caller_wait: Duration,
    ) -> Result<Writer> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let degraded = Arc::new(Mutex::new(None));
        let d = degraded.clone();
        let thread = std::thread::Builder::new()
            .name("opsd-writer".into())
            .spawn(move || {
                Thread {
                    client: Some(client),
                    cache: Cache::default(),
                    config,
                    degraded: d,
                    retry: Vec::new(),
                    backoff: FIRST_BACKOFF,
                }
                .run(rx)
            })
            .map_err(|e| Error::io("starting the writer thread", e))?;
        Ok(Writer {
            tx,
            thread: Arc::new(Mutex::new(Some(thread))),
            degraded,
            caller_wait,
        })
    }

    /// `None` while writes land; otherwise why not and since when.
    pub(crate) fn degraded(&self) -> Option<String> {
        let d = self.degraded.lock().ok()?.clone()?;
        Some(format!(
            "writes to PostgreSQL failing since {}: {}; retrying until they succeed",
            d.since, d.failure.message
        ))
    }

    /// The policy of a request a client waits for.
    pub(crate) fn caller_policy(&self) -> Policy {
        Policy::caller(self.caller_wait)
    }

    /// Queue a write; `deliver` gets its result once committed.
    pub(crate) fn submit<T: Send + 'static>(
        &self,
        policy: Policy,
        write: WriteFn<T>,
        deliver: impl FnOnce(Result<T>) + Send + 'static,
    ) {
        let request = Request {
            write,
            deliver,
            policy,
            result: None,
        };
        let _ = self.tx.send(Message::Task(Box::new(request)));
    }

    /// Queue a write and get a ticket for its commit.
    pub(crate) fn ticket<T: Send + 'static>(&self, policy: Policy, write: WriteFn<T>) -> Ticket<T> {
        let (reply, ticket) = Ticket::new();
        self.submit(policy, write, move |r| reply.send(r));
        ticket
    }

    /// Queue durable bookkeeping nobody waits for; failures are logged.
    pub(crate) fn fire(&self, write: WriteFn<()>, what: &'static str) {
        self.submit(Policy::Durable, write, move |r| {
            if let Err(e) = r {
                tracing::error!("{what} failed: {e}");
            }
        });
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

struct Thread {
    client: Option<Client>,
    cache: Cache,
    config: postgres::Config,
    degraded: Arc<Mutex<Option<Degraded>>>,
    retry: Vec<Box<dyn Queued>>,
    backoff: Duration,
}

impl Thread {
    fn run(mut self, rx: Receiver<Message>) {
        let mut stopping = false;
        while !stopping {
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
                "stopping with writes that could not be committed; their operations' leases run \
                 out and another host (or the next start) recovers them"
            );
        }
        for t in left {
            t.deliver(Some(Error::Unavailable(
                "the daemon stopped before PostgreSQL could be written; nothing was recorded"
                    .into(),
            )));
        }
    }

    fn commit(&mut self, mut batch: Vec<Box<dyn Queued>>, last_try: bool) {
        if batch.is_empty() {
            return;
        }
        match self.try_commit(&mut batch) {
            None => {
                self.backoff = FIRST_BACKOFF;
                if let Ok(mut d) = self.degraded.lock() {
                    if d.take().is_some() {
                        tracing::info!("PostgreSQL writes land again");
                    }
                }
                for t in batch {
                    t.deliver(None);
                }
            }
            Some(f) => {
                if let Ok(mut d) = self.degraded.lock() {
                    if d.is_none() {
                        tracing::error!("PostgreSQL write failed, retrying: {}", f.message);
                    }
                    *d = Some(Degraded {
                        since: d
                            .as_ref()
                            .map(|d| d.since.clone())
                            .unwrap_or_else(crate::ids::now),
                        failure: f.clone(),
                    });
                }
                let now = Instant::now();
                for t in batch {
                    let keep = match t.policy() {
                        Policy::Durable => !last_try,
                        Policy::Caller { deadline } => f.busy && now < deadline,
                    };
                    if keep {
                        self.retry.push(t);
                    } else {
                        t.deliver(Some(Error::Unavailable(format!(
                            "PostgreSQL could not be written ({}); nothing was recorded. \
                             Check that the server is up and try again",
                            f.message
                        ))));
                    }
                }
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
            }
        }
    }

    fn try_commit(&mut self, batch: &mut [Box<dyn Queued>]) -> Option<BatchFailure> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            self.cache = Cache::default();
            match connect(&self.config) {
                Ok(c) => self.client = Some(c),
                Err(e) => {
                    self.client = None;
                    return Some(BatchFailure {
                        busy: false,
                        message: e.to_string(),
                    });
                }
            }
        }
        let client = self.client.as_mut()?;
        let failure = |e: postgres::Error| {
            let db = pg_error(e);
            BatchFailure {
                busy: db.kind == DbErrorKind::Busy,
                message: db.message,
            }
        };
        // No savepoint per request (two round trips each): the batch runs
        // as one plain transaction, and when a request fails on its own
        // the transaction is rolled back and the batch run again without
        // it, so the others still commit together and its own partial
        // changes never do. Requests that already failed sit out.
        for request in batch.iter_mut() {
            request.reset();
        }
        'rerun: loop {
            self.cache.notes.clear();
            let mut tx = match client.transaction() {
                Ok(tx) => tx,
                Err(e) => return Some(failure(e)),
            };
            for t in batch.iter_mut() {
                if t.failed() {
                    continue;
                }
                match t.run(&mut tx, &mut self.cache) {
                    Outcome::Done => {}
                    Outcome::Failed => {
                        if let Err(e) = tx.rollback() {
                            return Some(failure(e));
                        }
                        continue 'rerun;
                    }
                    Outcome::Spoiled(f) => {
                        let _ = tx.rollback();
                        return Some(f);
                    }
                }
            }
            for (channel, payload) in std::mem::take(&mut self.cache.notes) {
                if let Err(e) = tx.execute("SELECT pg_notify($1, $2)", &[&channel, &payload]) {
                    let _ = tx.rollback();
                    return Some(failure(e));
                }
            }
            return tx.commit().err().map(failure);
        }
    }
}
