//! The PostgreSQL side of the writer: how a batch runs on one connection.
//!
//! The thread, group commit and failure policy are shared with SQLite
//! ([`crate::store::batch`]). A request that fails on its own does not
//! undo the others: the batch is rolled back and run again without it
//! (cheaper than a savepoint per request, which costs two round trips each
//! on PostgreSQL). A batch that fails as a whole (the connection dropped,
//! the server restarted, a deadlock with another host's batch) is retried
//! by the shared thread, here on a new connection when the old one is gone.

use super::{connect, pg_error, Cache, Db};
use crate::error::{DbErrorKind, Error, Result};
use crate::store::batch::{self, Answer, BatchFailure, Degraded, Engine, Policy};
use crate::store::Ticket;
use postgres::{Client, Transaction};
use std::time::Duration;

/// The PostgreSQL writer's handle.
pub(crate) type Writer = batch::Writer<PgEngine>;

/// A request's savepoint in the batch transaction, with the connection's
/// prepared statements.
pub(crate) type Tx<'a, 'b> = Db<'a, Transaction<'b>>;

/// A write: runs inside the batch, may run again if the batch is retried.
pub(crate) type WriteFn<T> = Box<dyn FnMut(&mut Tx<'_, '_>) -> Result<T> + Send>;

/// What running one request in the batch did.
pub(crate) enum Outcome {
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

pub(crate) trait Queued: Answer {
    /// Run inside the batch transaction and keep the result.
    fn run(&mut self, tx: &mut Transaction<'_>, cache: &mut Cache) -> Outcome;
    /// Its kept result is an error of its own (it sits out reruns).
    fn failed(&self) -> bool;
    /// Forget the kept result (a new try of a failed batch runs it anew).
    fn reset(&mut self);
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
            Err(e) => batch::spoils_batch(e).map_or(Outcome::Failed, Outcome::Spoiled),
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
}

impl<T: Send, D: FnOnce(Result<T>) + Send> Answer for Request<T, D> {
    fn policy(&self) -> Policy {
        self.policy
    }
}

impl<T: Send, D: FnOnce(Result<T>) + Send> crate::store::durable::Deliver for Request<T, D> {
    fn deliver(self: Box<Self>, failure: Option<Error>) {
        (self.deliver)(batch::answer(self.result, failure));
    }
}
/// Runs batches on the writer's connection, reconnecting when it is lost.
pub(crate) struct PgEngine {
    client: Option<Client>,
    cache: Cache,
    config: postgres::Config,
}

impl Writer {
    /// Start the writer on an open, migrated connection; it reconnects to
    /// `config` when the connection is lost.
    pub(crate) fn open(
        client: Client,
        config: postgres::Config,
        caller_wait: Duration,
    ) -> Result<Writer> {
        let engine = PgEngine {
            client: Some(client),
            cache: Cache::default(),
            config,
        };
        Writer::start(engine, caller_wait)
    }

    /// Queue a write; `deliver` gets its result once committed.
    pub(crate) fn submit<T: Send + 'static>(
        &self,
        policy: Policy,
        write: WriteFn<T>,
        deliver: impl FnOnce(Result<T>) + Send + 'static,
    ) {
        self.send(Box::new(Request {
            write,
            deliver,
            policy,
            result: None,
        }));
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
}

impl Engine for PgEngine {
    type Job = dyn Queued;
    const NAME: &'static str = "PostgreSQL";
    const LEFT_AT_SHUTDOWN: &'static str = "stopping with writes that could not be committed; \
        their operations' leases run out and another host (or the next start) recovers them";

    fn degraded_text(d: &Degraded) -> String {
        format!(
            "writes to PostgreSQL failing since {}: {}; retrying until they succeed",
            d.since, d.failure.message
        )
    }

    fn caller_error(f: &BatchFailure) -> Error {
        Error::Unavailable(format!(
            "PostgreSQL could not be written ({}); nothing was recorded. \
             Check that the server is up and try again",
            f.message
        ))
    }

    fn stopped_error() -> Error {
        Error::Unavailable(
            "the daemon stopped before PostgreSQL could be written; nothing was recorded".into(),
        )
    }

    /// `at_commit` is not called: a PostgreSQL commit is durable when it
    /// returns, and no reader waits on a flush behind it.
    fn try_commit(
        &mut self,
        batch: &mut [Box<dyn Queued>],
        _at_commit: &mut dyn FnMut(),
    ) -> std::result::Result<bool, BatchFailure> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            self.cache = Cache::default();
            match connect(&self.config) {
                Ok(c) => self.client = Some(c),
                Err(e) => {
                    self.client = None;
                    return Err(BatchFailure {
                        busy: false,
                        message: e.to_string(),
                    });
                }
            }
        }
        let Some(client) = self.client.as_mut() else {
            return Err(BatchFailure {
                busy: false,
                message: "no connection to PostgreSQL".into(),
            });
        };
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
                Err(e) => return Err(failure(e)),
            };
            for t in batch.iter_mut() {
                if t.failed() {
                    continue;
                }
                match t.run(&mut tx, &mut self.cache) {
                    Outcome::Done => {}
                    Outcome::Failed => {
                        if let Err(e) = tx.rollback() {
                            return Err(failure(e));
                        }
                        continue 'rerun;
                    }
                    Outcome::Spoiled(f) => {
                        let _ = tx.rollback();
                        return Err(f);
                    }
                }
            }
            for (channel, payload) in std::mem::take(&mut self.cache.notes) {
                if let Err(e) = tx.execute("SELECT pg_notify($1, $2)", &[&channel, &payload]) {
                    let _ = tx.rollback();
                    return Err(failure(e));
                }
            }
            // Commits are durable when they return: "changed" only matters
            // for a deferred flush, which PostgreSQL does not have.
            return tx.commit().map(|()| true).map_err(failure);
        }
    }
}
