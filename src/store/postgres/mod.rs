//! The PostgreSQL backend: several daemons (hosts) share one queue.
//!
//! Same tables, columns and views as SQLite's `schema.sql`
//! (`migrations/`), the same [`Backend`] semantics, plus what sharing
//! needs: claims with `FOR UPDATE SKIP LOCKED` under a lease
//! (`claimed_by`, `lease_expires_at`), every write of a running operation
//! fenced by host and attempt, the rescuer for expired leases, the `hosts`
//! table, and LISTEN/NOTIFY so cancels and new work reach other hosts at
//! once.
//!
//! Driver: the synchronous `postgres` crate. The trait is blocking (the
//! writer is a thread; async callers wait on [`Ticket`]s), so a blocking
//! client fits without a second async runtime or pool crate. One writer
//! thread owns one connection and commits batches (group commit, as for
//! SQLite, [`writer`]); reads use a small pool of connections beside it.

mod everyday;
mod migrate;
mod sql;
mod writer;

use super::records::{
    Checkpoint, CheckpointWrite, ClaimPlan, ClaimedOperation, CleanFilter, HostRecord, ListFilter,
    Listing, MetricPoint, NewOperation, OperationRecord, ProgressWrite, QueueChange, QueueRow,
    Recovery, RunEnd, RunOutcome, Signals, Submitted, TreeCancel,
};
use super::{AfterCommit, Backend, ClaimDone, Ticket};
use crate::error::{DbError, DbErrorKind, Error, Result};
use crate::ids::OperationId;
use crate::model::{CheckpointType, Status, StopReason};
use crate::store::batch::Policy;
pub use migrate::SCHEMA_VERSION;
use postgres::fallible_iterator::FallibleIterator;
use postgres::types::ToSql;
use postgres::{Client, GenericClient, NoTls, Row, Statement};
use sql::Me;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;
use writer::{Tx, WriteFn, Writer};

/// Per connection: prepared statements by SQL text, and the
/// notifications a batch will send just before it commits (each distinct
/// one once per batch, however many requests asked for it).
#[derive(Default)]
pub(crate) struct Cache {
    statements: HashMap<String, Statement>,
    /// `(channel, payload)` to NOTIFY with the batch.
    pub notes: Vec<(&'static str, String)>,
}

/// A connection (or transaction) with its prepared statements: each SQL
/// text is prepared once per connection.
pub(crate) struct Db<'a, C> {
    /// The client or transaction.
    pub c: &'a mut C,
    /// Its prepared statements.
    pub cache: &'a mut Cache,
}

impl<C: GenericClient> Db<'_, C> {
    fn prepare(&mut self, sql: &str) -> Result<Statement> {
        if let Some(s) = self.cache.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.c.prepare(sql)?;
        self.cache.statements.insert(sql.to_string(), s.clone());
        Ok(s)
    }

    /// Rows of a statement.
    pub fn query(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>> {
        let st = self.prepare(sql)?;
        Ok(self.c.query(&st, params)?)
    }

    /// At most one row.
    pub fn query_opt(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Option<Row>> {
        let st = self.prepare(sql)?;
        Ok(self.c.query_opt(&st, params)?)
    }

    /// Exactly one row.
    pub fn query_one(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Row> {
        let st = self.prepare(sql)?;
        Ok(self.c.query_one(&st, params)?)
    }

    /// Rows changed.
    pub fn execute(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64> {
        let st = self.prepare(sql)?;
        Ok(self.c.execute(&st, params)?)
    }
}

impl From<postgres::Error> for Error {
    fn from(e: postgres::Error) -> Self {
        Error::Database(pg_error(e))
    }
}

/// Classify what PostgreSQL said: a conflict with another transaction
/// (retry the batch), the connection or server (retry once it is back),
/// or the request's own fault.
pub(crate) fn pg_error(e: postgres::Error) -> DbError {
    let kind = if e.is_closed() {
        DbErrorKind::Storage
    } else if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        match code {
            // serialization failure, deadlock, lock not available
            "40001" | "40P01" | "55P03" => DbErrorKind::Busy,
            // connection, resources, operator intervention, system error
            c if c.starts_with("08")
                || c.starts_with("53")
                || c.starts_with("57")
                || c.starts_with("58") =>
            {
                DbErrorKind::Storage
            }
            _ => DbErrorKind::Other,
        }
    } else if std::error::Error::source(&e)
        .is_some_and(|s| s.downcast_ref::<std::io::Error>().is_some())
    {
        DbErrorKind::Storage
    } else {
        DbErrorKind::Other
    };
    let message = match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => e.to_string(),
    };
    DbError { kind, message }
}

/// Connect with timeouts, so a server that is gone is noticed.
pub(crate) fn connect(config: &postgres::Config) -> Result<Client> {
    config.connect(NoTls).map_err(|e| {
        Error::Unavailable(format!(
            "cannot connect to PostgreSQL at {}: {}",
            describe(config),
            pg_error(e).message
        ))
    })
}

/// `user@host:port/db`, without the password.
fn describe(config: &postgres::Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|h| match h {
            postgres::config::Host::Tcp(s) => s.clone(),
            postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "postgres://{}@{host}:{port}/{}",
        config.get_user().unwrap_or(""),
        config.get_dbname().unwrap_or("")
    )
}

/// What a PostgreSQL store is told besides its URL.
#[derive(Debug, Clone)]
pub struct Settings {
    /// This daemon's host name (`claimed_by`).
    pub host: String,
    /// How long a claim holds without renewal.
    pub lease: Duration,
    /// Config `shared_dir`: checkpoint files under it are readable by
    /// every host; others only by the host that wrote them.
    pub shared_dir: Option<PathBuf>,
    /// How long a client's write waits out a conflict.
    pub caller_wait: Duration,
}

/// The PostgreSQL store.
pub struct PostgresStore {
    location: String,
    config: postgres::Config,
    me: Me,
    writer: Writer,
    /// Idle read connections.
    readers: Mutex<Vec<(Client, Cache)>>,
    /// The LISTEN connection of the host loop.
    listener: Mutex<Option<Client>>,
}

impl PostgresStore {
    /// Connect to `url`, check the database is empty or ours, migrate it,
    /// and start the writer.
    pub fn open(url: &str, settings: Settings) -> Result<PostgresStore> {
        let mut config: postgres::Config = url.parse().map_err(|e| {
            Error::BadRequest(format!(
                "the store URL {:?} is not a PostgreSQL URL ({e}); use \
                 postgres://USER@HOST:PORT/DATABASE",
                redact(url)
            ))
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        config.keepalives_idle(Duration::from_secs(10));
        config.application_name("opsd");
        let location = describe(&config);
        let mut client = connect(&config)?;
        migrate::migrate(&mut client, &location)?;
        let writer_client = connect(&config)?;
        let shared_prefix = settings.shared_dir.as_ref().map(|d| {
            let mut s = d.display().to_string();
            if !s.ends_with('/') {
                s.push('/');
            }
            s
        });
        Ok(PostgresStore {
            location,
            writer: Writer::open(writer_client, config.clone(), settings.caller_wait)?,
            config,
            me: Me {
                host: settings.host,
                lease_secs: settings.lease.as_secs_f64(),
                shared_prefix,
            },
            readers: Mutex::new(vec![(client, Cache::default())]),
            listener: Mutex::new(None),
        })
    }

    /// Run a read on a pooled connection (a fresh one when the pool is
    /// empty; one retry on a new connection when the old one died).
    fn read<T>(&self, f: impl Fn(&mut Db<'_, Client>) -> Result<T>) -> Result<T> {
        for round in 0..2 {
            let taken = self.readers.lock().ok().and_then(|mut p| p.pop());
            let (mut client, mut cache) = match taken {
                Some(c) if !c.0.is_closed() => c,
                _ => (connect(&self.config)?, Cache::default()),
            };
            let r = f(&mut Db {
                c: &mut client,
                cache: &mut cache,
            });
            if !client.is_closed() {
                if let Ok(mut p) = self.readers.lock() {
                    if p.len() < 8 {
                        p.push((client, cache));
                    }
                }
                return r;
            }
            if round == 1 {
                return r;
            }
        }
        unreachable!("the loop returns")
    }

    fn write<T: Send + 'static>(
        &self,
        policy: Policy,
        f: impl FnMut(&mut Tx<'_, '_>, &Me) -> Result<T> + Send + 'static,
    ) -> Ticket<T> {
        let me = self.me.clone();
        let mut f = f;
        let w: WriteFn<T> = Box::new(move |tx| f(tx, &me));
        self.writer.ticket(policy, w)
    }

    fn fire(
        &self,
        what: &'static str,
        f: impl FnMut(&mut Tx<'_, '_>, &Me) -> Result<()> + Send + 'static,
    ) {
        let me = self.me.clone();
        let mut f = f;
        self.writer.fire(Box::new(move |tx| f(tx, &me)), what);
    }

    /// Write one run's progress and points if it still holds its claim;
    /// returns its last metric seq (`None`: the claim is lost). The
    /// fenced UPDATE also locks the row until the batch commits.
    fn apply_live(
        tx: &mut Tx<'_, '_>,
        me: &Me,
        w: &ProgressWrite,
        need_seq: bool,
    ) -> Result<Option<i64>> {
        if !sql::write_progress(tx, me, w.attempt, &w.id, &w.progress)? {
            return Ok(None);
        }
        if w.points.is_empty() && !need_seq {
            return Ok(Some(0));
        }
        Ok(Some(sql::append_metrics(tx, &w.id, &w.points)?))
    }

    fn lost(me: &Me, id: &OperationId, attempt: i64, what: &str) {
        tracing::warn!(
            operation = %id, attempt, host = %me.host,
            "this host no longer holds the operation (its lease ran out and another host \
             took over): {what} not recorded"
        );
    }
}

/// The URL with any password replaced.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

impl Backend for PostgresStore {
    fn location(&self) -> String {
        self.location.clone()
    }

    fn degraded(&self) -> Option<String> {
        self.writer.degraded()
    }

    fn close(&self) {
        self.writer.shutdown();
    }

    fn submit(&self, ops: Vec<NewOperation>) -> Ticket<Vec<Submitted>> {
        self.write(self.writer.caller_policy(), move |tx, _| {
            let now = crate::ids::now();
            let out = ops
                .iter()
                .map(|op| {
                    let (id, status, created) = sql::insert(tx, op, &now)?;
                    Ok(Submitted {
                        id,
                        status,
                        created,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            sql::notify(tx, sql::WORK_CHANNEL, "")?;
            Ok(out)
        })
    }

    fn cancel_tree(
        &self,
        root: &OperationId,
        reason: StopReason,
        message: Option<String>,
    ) -> Ticket<TreeCancel> {
        let root = root.clone();
        self.write(self.writer.caller_policy(), move |tx, me| {
            sql::cancel_tree(
                tx,
                me,
                &root,
                reason,
                message.as_deref(),
                &crate::ids::now(),
            )
        })
    }

    fn try_resume(&self, id: &OperationId) -> Ticket<()> {
        let id = id.clone();
        self.write(self.writer.caller_policy(), move |tx, _| {
            sql::try_resume(tx, &id, &crate::ids::now())
        })
    }

    fn delete_checkpoint(&self, id: &OperationId) -> Ticket<Checkpoint> {
        let id = id.clone();
        self.write(self.writer.caller_policy(), move |tx, _| {
            sql::status(tx, &id)?;
            sql::delete_checkpoint(tx, &id)?
                .ok_or_else(|| Error::NotFound(format!("operation {id} has no checkpoint")))
        })
    }

    fn sweep_checkpoints(&self, before: String) -> Ticket<Vec<OperationId>> {
        self.write(self.writer.caller_policy(), move |tx, _| {
            sql::sweep_checkpoints(tx, &before)
        })
    }

    fn recover(&self, auto_resume: bool) -> Result<Recovery> {
        self.write(self.writer.caller_policy(), move |tx, me| {
            let now = crate::ids::now();
            let crashed = sql::fail_crashed(tx, me, &now, false)?;
            let mut resumed = Vec::new();
            for id in sql::recoverable(tx, auto_resume, None)? {
                match sql::try_resume(tx, &id, &now) {
                    Ok(()) => resumed.push(id),
                    Err(e) => tracing::warn!(operation = %id, "not resumed: {e}"),
                }
            }
            // Crashed operations that stay ended end their dependents' wait.
            everyday::settle_crashed(tx, &crashed, &resumed, &now)?;
            Ok(Recovery { crashed, resumed })
        })
        .wait()
    }

    fn claim_then(&self, plan: ClaimPlan, done: ClaimDone) {
        let me = self.me.clone();
        let w: WriteFn<Vec<ClaimedOperation>> = Box::new(move |tx| {
            let now = crate::ids::now();
            // Paused and capped queues (as SQLite's claim).
            let mut gate = everyday::gate(tx)?;
            crate::store::claiming::walk(&plan, &mut gate, |ask| sql::claim(tx, &me, &now, ask))
        });
        self.writer.submit(Policy::caller(Duration::ZERO), w, done);
    }

    fn record_gpus(&self, id: &OperationId, gpus: Vec<String>) {
        let id = id.clone();
        self.fire("recording assigned GPUs", move |tx, me| {
            sql::set_gpus(tx, me, &id, &gpus)
        });
    }

    fn write_progress(&self, live: Vec<ProgressWrite>, parents: Vec<OperationId>) -> Ticket<()> {
        self.write(Policy::Durable, move |tx, me| {
            for w in &live {
                if Self::apply_live(tx, me, w, false)?.is_none() {
                    Self::lost(me, &w.id, w.attempt, "progress");
                }
            }
            for p in &parents {
                sql::refresh_parent_progress(tx, p)?;
            }
            Ok(())
        })
    }

    fn save_checkpoint(&self, cp: CheckpointWrite) -> Ticket<()> {
        self.write(Policy::Durable, move |tx, me| {
            let mut cp = cp.clone();
            match Self::apply_live(tx, me, &cp.live, true)? {
                Some(seq) => {
                    cp.checkpoint.metrics_seq = seq;
                    sql::save_checkpoint(tx, &cp.checkpoint)?;
                    match &cp.parent {
                        Some(p) => sql::refresh_parent_progress(tx, p),
                        None => Ok(()),
                    }
                }
                None => {
                    Self::lost(me, &cp.live.id, cp.live.attempt, "checkpoint");
                    Ok(())
                }
            }
        })
    }

    fn begin_attempt(&self, id: &OperationId) -> Ticket<Option<Checkpoint>> {
        let id = id.clone();
        self.write(Policy::Durable, move |tx, _| {
            let cp = sql::checkpoint(tx, &id)?;
            let seq = cp.as_ref().map(|c| c.metrics_seq).unwrap_or(0);
            sql::truncate_metrics(tx, &id, seq)?;
            Ok(cp)
        })
    }

    fn finish(&self, end: RunEnd, after: AfterCommit) {
        let me = self.me.clone();
        let w: WriteFn<()> = Box::new(move |tx| {
            let id = &end.id;
            let now = crate::ids::now();
            let last = &end.last;
            let held = match &end.outcome {
                RunOutcome::Retry { error, at } => {
                    sql::write_progress(tx, &me, last.attempt, id, &last.progress)?
                        && sql::requeue_for_retry(tx, id, error, at, &now)?
                }
                RunOutcome::Final(f) => {
                    sql::finish(tx, &me, last.attempt, id, f, end.delete_checkpoint, &now)?
                }
            };
            if !held {
                Self::lost(&me, id, last.attempt, "the end of its run");
                // Not Ok: the caller must not act on an end that was not
                // recorded (its files belong to the host running it now).
                return Err(Error::InvalidTransition(format!(
                    "{id}: this host no longer holds the operation; the end of its run was not recorded"
                )));
            }
            match &end.outcome {
                // A cancel that reached the row first makes it the cancel.
                RunOutcome::Retry { .. } => {
                    if sql::status(tx, id)? == Status::Cancelled {
                        everyday::settle(tx, id, Status::Cancelled, &now)?;
                    }
                }
                // One stopped by a shutdown resumes: its dependents wait.
                RunOutcome::Final(f) => {
                    if f.stop_reason != Some(StopReason::Shutdown) {
                        everyday::settle(tx, id, f.status, &now)?;
                    }
                }
            }
            if !last.points.is_empty() {
                sql::append_metrics(tx, id, &last.points)?;
            }
            if matches!(end.outcome, RunOutcome::Retry { .. }) {
                sql::notify(tx, sql::WORK_CHANNEL, "")?;
            }
            if end.delete_checkpoint && matches!(end.outcome, RunOutcome::Retry { .. }) {
                sql::delete_checkpoint(tx, id)?;
            }
            if let Some(p) = &end.parent {
                sql::refresh_parent_progress(tx, p)?;
            }
            Ok(())
        });
        self.writer.submit(Policy::Durable, w, after);
    }

    fn stopped_at_shutdown(&self, ops: Vec<(OperationId, StopReason)>) {
        self.fire("recording operations stopped at shutdown", move |tx, me| {
            let now = crate::ids::now();
            for (id, why) in &ops {
                let rec = sql::get(tx, id)?;
                if rec.status != Status::Running || rec.claimed_by.as_deref() != Some(&me.host) {
                    continue;
                }
                let ended = sql::finish(
                    tx,
                    me,
                    rec.attempt,
                    id,
                    &super::records::Finish {
                        status: Status::Cancelled,
                        stop_reason: Some(*why),
                        result: None,
                        error: Some(
                            "the daemon stopped before this operation could checkpoint; it \
                             resumes from its latest checkpoint"
                                .into(),
                        ),
                        progress: None,
                    },
                    false,
                    &now,
                )?;
                if *why == StopReason::Shutdown {
                    sql::set_checkpoint_type(tx, id, CheckpointType::Shutdown)?;
                } else if ended {
                    everyday::settle(tx, id, Status::Cancelled, &now)?;
                }
            }
            Ok(())
        });
    }

    fn add_warning(&self, id: &OperationId, message: String) {
        let id = id.clone();
        self.fire("adding a warning", move |tx, _| {
            sql::add_warning(tx, &id, &message, &crate::ids::now())
        });
    }

    fn get(&self, id: &OperationId) -> Result<OperationRecord> {
        self.read(|c| sql::get(c, id))
    }

    fn status(&self, id: &OperationId) -> Result<Status> {
        self.read(|c| sql::status(c, id))
    }

    fn list(&self, filter: &ListFilter) -> Result<Listing> {
        let (rows, total, active) = self.read(|c| sql::list(c, filter))?;
        Ok(Listing {
            rows,
            total,
            active,
        })
    }

    fn children(&self, id: &OperationId) -> Result<Vec<OperationRecord>> {
        self.read(|c| {
            sql::status(c, id)?;
            sql::children(c, id)
        })
    }

    fn metrics(
        &self,
        id: &OperationId,
        cursor: i64,
        limit: i64,
    ) -> Result<(Vec<MetricPoint>, i64)> {
        self.read(|c| {
            sql::status(c, id)?;
            sql::metrics_after(c, id, cursor.max(0), limit.clamp(1, 100_000))
        })
    }

    fn checkpoint(&self, id: &OperationId) -> Result<Option<Checkpoint>> {
        self.read(|c| {
            sql::status(c, id)?;
            sql::checkpoint(c, id)
        })
    }

    fn checkpoints(&self) -> Result<Vec<Checkpoint>> {
        self.read(sql::checkpoints)
    }

    fn counts(&self) -> Result<Vec<(Status, i64)>> {
        self.read(sql::counts)
    }

    fn resolve(&self, text: &str) -> Result<OperationId> {
        self.read(|c| sql::resolve(c, text))
    }

    // SPEC §12: labels, named queues, hold and dependencies
    // ([`everyday`]).

    fn queues(&self) -> Result<Vec<QueueRow>> {
        self.read(everyday::queues)
    }

    fn waiting_on(&self, id: &OperationId) -> Result<Vec<OperationId>> {
        self.read(|c| everyday::waiting_on(c, id))
    }

    fn release(&self, id: &OperationId) -> Ticket<()> {
        let id = id.clone();
        self.write(self.writer.caller_policy(), move |tx, _| {
            everyday::release(tx, &id, &crate::ids::now())
        })
    }

    fn set_queue(&self, change: QueueChange) -> Ticket<QueueRow> {
        self.write(self.writer.caller_policy(), move |tx, _| {
            everyday::set_queue(tx, &change, &crate::ids::now())
        })
    }

    fn clean(&self, filter: CleanFilter) -> Ticket<Vec<OperationId>> {
        self.write(self.writer.caller_policy(), move |tx, _| {
            everyday::clean(tx, &filter)
        })
    }

    fn shared(&self) -> bool {
        true
    }

    fn register_host(&self, host: &HostRecord) -> Result<()> {
        let h = host.clone();
        self.write(self.writer.caller_policy(), move |tx, _| {
            sql::upsert_host(tx, &h)
        })
        .wait()
    }

    fn deregister_host(&self, host: &str) -> Result<()> {
        let h = host.to_string();
        self.write(self.writer.caller_policy(), move |tx, _| {
            sql::delete_host(tx, &h)
        })
        .wait()
    }

    fn hosts(&self) -> Result<Vec<HostRecord>> {
        self.read(sql::hosts)
    }

    fn renew_leases(&self, running: &[(OperationId, i64)]) -> Result<Vec<(OperationId, i64)>> {
        if running.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = running.iter().map(|(i, _)| i.0.clone()).collect();
        let held = self
            .write(self.writer.caller_policy(), move |tx, me| {
                let refs: Vec<&str> = ids.iter().map(|s| s.as_str()).collect();
                sql::renew(tx, me, &refs)
            })
            .wait()?;
        Ok(running
            .iter()
            .filter(|r| !held.contains(r))
            .cloned()
            .collect())
    }

    fn rescue_expired(&self, auto_resume: bool) -> Result<Recovery> {
        self.write(self.writer.caller_policy(), move |tx, me| {
            let now = crate::ids::now();
            let crashed = sql::fail_crashed(tx, me, &now, true)?;
            let mut resumed = Vec::new();
            if !crashed.is_empty() {
                for id in sql::recoverable(tx, auto_resume, Some(&crashed))? {
                    if sql::try_resume(tx, &id, &now).is_ok() {
                        resumed.push(id);
                    }
                }
                everyday::settle_crashed(tx, &crashed, &resumed, &now)?;
            }
            // What a host that stopped cleanly (and left) had running
            // continues elsewhere, as its own next start would resume it.
            for id in sql::orphaned_shutdowns(tx)? {
                if sql::try_resume(tx, &id, &now).is_ok() {
                    resumed.push(id);
                }
            }
            Ok(Recovery { crashed, resumed })
        })
        .wait()
    }

    fn stop_requests(&self) -> Result<Vec<(OperationId, i64, StopReason)>> {
        self.read(|c| sql::stop_requests(c, &self.me))
    }

    fn wait_for_signal(&self, timeout: Duration) -> Signals {
        let mut guard = match self.listener.lock() {
            Ok(g) => g,
            Err(_) => {
                std::thread::sleep(timeout);
                return Signals::default();
            }
        };
        if guard.as_ref().is_none_or(|c| c.is_closed()) {
            *guard = connect(&self.config).ok().and_then(|mut c| {
                c.batch_execute(&format!(
                    "LISTEN {}; LISTEN {}",
                    sql::WORK_CHANNEL,
                    sql::STOP_CHANNEL
                ))
                .ok()?;
                Some(c)
            });
            // Nothing heard while there was no listener: poll.
            let Some(_) = guard.as_ref() else {
                drop(guard);
                std::thread::sleep(timeout);
                return Signals {
                    work: true,
                    stop: true,
                };
            };
        }
        let Some(client) = guard.as_mut() else {
            return Signals::default();
        };
        let mut signals = Signals::default();
        let mut failed = false;
        {
            let mut notes = client.notifications();
            match notes.timeout_iter(timeout).next() {
                Ok(Some(n)) => mark(&mut signals, n.channel()),
                Ok(None) => {}
                Err(_) => failed = true,
            }
            if !failed {
                let mut rest = notes.iter();
                while let Ok(Some(n)) = rest.next() {
                    mark(&mut signals, n.channel());
                }
            }
        }
        if failed {
            *guard = None;
            return Signals {
                work: true,
                stop: true,
            };
        }
        signals
    }
}

fn mark(s: &mut Signals, channel: &str) {
    match channel {
        sql::WORK_CHANNEL => s.work = true,
        sql::STOP_CHANNEL => s.stop = true,
        _ => {}
    }
}
