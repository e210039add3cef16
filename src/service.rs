//! The operations API behind the socket: validates requests, calls the
//! runtime and the store, and overlays live progress on what it reads.
//! One function per request; the server only frames lines.

use crate::aggregate::{self, ChildProgress};
use crate::error::{Error, Result};
use crate::ids::{self, OperationId};
use crate::jobs::job_for;
use crate::model::{OperationType, Status};
use crate::protocol::{
    Cancelled, CheckpointList, Cleaned, Deleted, Health, Listed, MetricsPage, OperationView,
    QueueChanged, QueueList, Released, Rerun, Resumed, Submit, Submitted, SubmittedBatch,
};
use crate::runtime::Runtime;
use crate::store::records::{CleanFilter, ListFilter, NewOperation, QueueChange, SubmitOptions};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// The API, shared by every connection.
#[derive(Clone)]
pub struct Service {
    /// The runtime it drives.
    pub rt: Arc<Runtime>,
}

/// Rows or points from which an answer is serialized on the blocking
/// pool ([`Service::serialize_answer`]).
const LARGE_ANSWER: usize = 1000;

impl Service {
    /// Check a submit and turn it into a row to insert.
    pub fn prepare(&self, s: &Submit) -> Result<NewOperation> {
        let kind = s.kind().map_err(Error::BadRequest)?;
        let metadata = job_for(kind)
            .validate(&s.params)
            .map_err(|e| Error::BadRequest(format!("{kind}: {e}")))?;
        self.prepare_checked(s, kind, metadata)
    }

    /// [`Service::prepare`] without touching the file system or the
    /// store, when the submit allows it: no ids to resolve (parent,
    /// dependencies) and parameters its job type checks from memory
    /// ([`crate::jobs::Job::validate_without_io`]). So the common submit
    /// is checked on the async thread that read it, without a hop to the
    /// blocking pool and back (about 0.1-0.2 ms of its answer on an idle
    /// 2-core VM: BENCHMARKS.md §23). `None`: use `prepare` off the async
    /// threads.
    pub fn prepare_without_io(&self, s: &Submit) -> Option<Result<NewOperation>> {
        if s.parent.is_some() || !s.after.is_empty() || !s.after_any.is_empty() {
            return None;
        }
        let kind = s.kind().ok()?;
        let metadata = job_for(kind).validate_without_io(&s.params)?;
        Some(
            metadata
                .map_err(|e| Error::BadRequest(format!("{kind}: {e}")))
                .and_then(|m| self.prepare_checked(s, kind, m)),
        )
    }

    /// The rest of `prepare`, once the job type has checked the parameters.
    fn prepare_checked(
        &self,
        s: &Submit,
        kind: OperationType,
        metadata: Value,
    ) -> Result<NewOperation> {
        if s.gpus < 0 {
            return Err(Error::BadRequest("gpus must be >= 0".into()));
        }
        let known = self.rt.gpu_count() as i64;
        if s.gpus > known {
            return Err(Error::BadRequest(format!(
                "gpus: {} requested but this daemon has {known} GPU(s); set `gpus` in the config or ask for fewer",
                s.gpus
            )));
        }
        let max_attempts = s.max_attempts.unwrap_or(1);
        if !(1..=100).contains(&max_attempts) {
            return Err(Error::BadRequest(
                "max_attempts must be between 1 and 100".into(),
            ));
        }
        if let Some((a, b)) = s.phase {
            if !(0.0..=100.0).contains(&a) || !(0.0..=100.0).contains(&b) || a > b {
                return Err(Error::BadRequest(
                    "phase must be [start, end] with 0 <= start <= end <= 100".into(),
                ));
            }
        }
        if let Some(k) = &s.key {
            if k.is_empty() || k.len() > 256 {
                return Err(Error::BadRequest("key must be 1 to 256 characters".into()));
            }
        }
        let run_after = s.run_after.as_deref().map(parse_run_after).transpose()?;
        if let Some(l) = &s.label {
            if l.is_empty() || l.chars().count() > 200 || l.chars().any(char::is_control) {
                return Err(Error::BadRequest(
                    "label must be 1 to 200 characters without control characters".into(),
                ));
            }
        }
        Ok(NewOperation {
            id: OperationId::generate(kind, chrono::Utc::now()),
            kind,
            metadata,
            parent: s.parent.clone(),
            priority: s.priority,
            idempotency_key: s.key.clone(),
            phase: s.phase,
            fail_parent: s.fail_parent,
            gpus: s.gpus,
            max_attempts,
            run_after,
            options: SubmitOptions {
                label: s.label.clone(),
                queue: s.queue.clone(),
                hold: s.hold,
                after: s.after.clone(),
                after_any: s.after_any.clone(),
            },
        })
    }

    /// The ids in a submit as the user typed them, resolved (SPEC §12).
    fn resolve_submit(&self, mut s: Submit) -> Result<Submit> {
        if let Some(p) = &s.parent {
            s.parent = Some(self.resolve(p)?);
        }
        for id in s.after.iter_mut().chain(s.after_any.iter_mut()) {
            *id = self.resolve(id)?;
        }
        Ok(s)
    }

    /// Which operation the user means by `id` (full id, 8-hex tail,
    /// unique prefix, or `last`).
    pub fn resolve(&self, id: &OperationId) -> Result<OperationId> {
        self.rt.store.resolve(id.as_str())
    }

    /// [`Service::resolve`], off the async threads.
    pub async fn resolve_async(&self, id: &OperationId) -> Result<OperationId> {
        let id = id.clone();
        self.blocking(move |s| s.resolve(&id)).await
    }

    /// `submit`.
    pub async fn submit(&self, s: Submit) -> Result<Submitted> {
        let op = match self.prepare_without_io(&s) {
            Some(op) => op?,
            None => {
                self.blocking(move |svc| svc.resolve_submit(s).and_then(|s| svc.prepare(&s)))
                    .await?
            }
        };
        self.ensure_accepting()?;
        let s = self
            .rt
            .submit(vec![op])
            .done()
            .await?
            .pop()
            .ok_or_else(|| Error::Internal("a submit returned no operation".into()))?;
        Ok(s.into())
    }

    /// `submit_batch`: all rows in one transaction (each validated first).
    pub async fn submit_batch(&self, list: Vec<Submit>) -> Result<SubmittedBatch> {
        let rows = self
            .blocking(move |svc| {
                list.into_iter()
                    .enumerate()
                    .map(|(i, s)| {
                        svc.resolve_submit(s)
                            .and_then(|s| svc.prepare(&s))
                            .map_err(|e| Error::BadRequest(format!("operations[{i}]: {e}")))
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .await?;
        self.ensure_accepting()?;
        let out = self.rt.submit(rows).done().await?;
        Ok(SubmittedBatch {
            operations: out.into_iter().map(Submitted::from).collect(),
        })
    }

    fn ensure_accepting(&self) -> Result<()> {
        if self.rt.accepting() {
            Ok(())
        } else {
            Err(Error::Unavailable(
                "the daemon is shutting down; submit again after it restarts".into(),
            ))
        }
    }

    /// Serialize an answer of `items` rows or points with `serialize`:
    /// here when it is small, else on tokio's blocking pool, since an
    /// answer of megabytes (100,000 points are about 10 MB) made on the
    /// daemon's one async thread holds every other client up meanwhile.
    pub async fn serialize_answer<R: Send + 'static>(
        items: usize,
        serialize: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R> {
        if items < LARGE_ANSWER {
            return Ok(serialize());
        }
        tokio::task::spawn_blocking(serialize)
            .await
            .map_err(|e| Error::Internal(format!("answering failed: {e}")))
    }

    /// Run `f` on tokio's blocking pool: no request handler blocks an async
    /// thread on SQLite or on the writer, so reads keep answering while a
    /// write waits for a locked database.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Service) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let svc = self.clone();
        tokio::task::spawn_blocking(move || f(&svc))
            .await
            .map_err(|e| Error::Internal(format!("a request handler failed: {e}")))?
    }

    /// `get`, off the async threads.
    pub async fn get_async(&self, id: &OperationId) -> Result<OperationView> {
        let id = id.clone();
        self.blocking(move |s| s.get(&id)).await
    }

    /// `list`, off the async threads.
    pub async fn list_async(&self, filter: ListFilter) -> Result<Listed> {
        self.blocking(move |s| s.list(&filter)).await
    }

    /// `children`, off the async threads.
    pub async fn children_async(&self, id: &OperationId) -> Result<Listed> {
        let id = id.clone();
        self.blocking(move |s| s.children(&id)).await
    }

    /// `metrics`, off the async threads.
    pub async fn metrics_async(
        &self,
        id: &OperationId,
        cursor: i64,
        limit: i64,
    ) -> Result<MetricsPage> {
        let id = id.clone();
        self.blocking(move |s| s.metrics(&id, cursor, limit)).await
    }

    /// `checkpoints`, off the async threads.
    pub async fn checkpoints_async(&self, id: Option<OperationId>) -> Result<CheckpointList> {
        self.blocking(move |s| s.checkpoints(id.as_ref())).await
    }

    /// `health`, off the async threads.
    pub async fn health_async(&self) -> Result<Health> {
        self.blocking(|s| s.health()).await
    }

    /// `hosts`, off the async threads.
    pub async fn hosts_async(&self) -> Result<crate::protocol::HostList> {
        self.blocking(|s| s.hosts()).await
    }

    /// `hosts`: the daemons sharing the store. A store only this daemon
    /// uses (SQLite) lists this daemon alone.
    pub fn hosts(&self) -> Result<crate::protocol::HostList> {
        let mut hosts = self.rt.store.hosts()?;
        if hosts.is_empty() && !self.rt.store.shared() {
            hosts.push(self.rt.host_record());
        }
        Ok(crate::protocol::HostList { hosts })
    }

    /// `get`: one operation with live progress.
    pub fn get(&self, id: &OperationId) -> Result<OperationView> {
        self.view(self.rt.store.get(id)?)
    }

    /// The wire view of a stored row: a running operation's stored
    /// progress replaced by its live value, a running parent's percentage
    /// by its children's aggregate, and, on a shared store, a warning when
    /// its checkpoint can resume only on its own host.
    fn view(&self, mut rec: crate::store::records::OperationRecord) -> Result<OperationView> {
        self.warn_host_local_checkpoint(&mut rec)?;
        let mut v = OperationView::from(rec);
        if v.waiting_for > 0 && v.status == Status::Pending {
            v.waiting_on = self.rt.store.waiting_on(&v.operation_id)?;
        }
        if v.status != Status::Running {
            return Ok(v);
        }
        if let Some(live) = self.rt.live(&v.operation_id) {
            v.set_progress(live.progress());
        }
        let kids = self.rt.store.children(&v.operation_id)?;
        let parts: Vec<ChildProgress> = kids
            .iter()
            .map(|k| {
                let live = (k.status == Status::Running)
                    .then(|| self.rt.live(&k.operation_id))
                    .flatten()
                    .map(|l| l.progress().percentage);
                ChildProgress::of(
                    k.status,
                    live.unwrap_or(k.progress.percentage),
                    k.phase_start.zip(k.phase_end),
                )
            })
            .collect();
        if let Some(pct) = aggregate::running_parent(&parts) {
            v.progress_percent = pct;
        }
        Ok(v)
    }

    fn views(
        &self,
        rows: Vec<crate::store::records::OperationRecord>,
    ) -> Result<Vec<OperationView>> {
        rows.into_iter().map(|r| self.view(r)).collect()
    }

    /// On a shared store, a checkpoint whose files are not under
    /// `shared_dir` resumes only on the host that wrote them: `show` says
    /// so (a warning in the answer, not stored).
    fn warn_host_local_checkpoint(
        &self,
        rec: &mut crate::store::records::OperationRecord,
    ) -> Result<()> {
        // Only what may still resume: never run, running or completed
        // operations are left alone (and cost no read).
        let resumable = match rec.status {
            Status::Failed | Status::Cancelled | Status::Resuming => true,
            Status::Pending => rec.attempt > 0,
            Status::Running | Status::Completed => false,
        };
        if !resumable || !self.rt.store.shared() {
            return Ok(());
        }
        let Some(cp) = self.rt.store.checkpoint(&rec.operation_id)? else {
            return Ok(());
        };
        let Some(path) = cp.artifacts_path else {
            return Ok(());
        };
        let shared = self
            .rt
            .config
            .shared_dir
            .as_ref()
            .is_some_and(|d| std::path::Path::new(&path).starts_with(d));
        if shared {
            return Ok(());
        }
        let host = rec.claimed_by.clone().unwrap_or_else(|| "its host".into());
        let note = serde_json::json!({
            "at": cp.created_at,
            "message": format!(
                "its checkpoint files ({path}) are not under shared_dir, so only {host} can read \
                 them: it resumes only on {host}. Set shared_dir to a directory every host mounts \
                 (NFS) to resume anywhere"
            ),
        });
        if let Value::Array(w) = &mut rec.warnings {
            w.push(note);
        }
        Ok(())
    }

    /// `list`.
    pub fn list(&self, filter: &ListFilter) -> Result<Listed> {
        let page = self.rt.store.list(filter)?;
        Ok(Listed {
            operations: self.views(page.rows)?,
            total: Some(page.total),
            active: Some(page.active),
        })
    }

    /// `children`.
    pub fn children(&self, id: &OperationId) -> Result<Listed> {
        Ok(Listed {
            operations: self.views(self.rt.store.children(id)?)?,
            total: None,
            active: None,
        })
    }

    /// `cancel`: waits (up to `wait`) for a running operation to stop.
    pub async fn cancel(
        &self,
        id: &OperationId,
        reason: Option<String>,
        wait: Duration,
    ) -> Result<Cancelled> {
        let (rt, i) = (self.rt.clone(), id.clone());
        let before = self.blocking(move |_| rt.cancel(&i, reason)).await?;
        // No wait asked: answer at once. A zero tokio timeout still
        // sleeps until the timer's next millisecond tick.
        if before == Status::Running && !wait.is_zero() {
            if let Some(live) = self.rt.live(id) {
                live.wait_done(wait).await;
            } else if self.rt.store.shared() {
                // Running on another host: its host loop hears the stop
                // request; wait for the row to say it stopped.
                let end = tokio::time::Instant::now() + wait;
                while tokio::time::Instant::now() < end
                    && self.get_async(id).await?.status == Status::Running
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        let rec = self.get_async(id).await?;
        Ok(Cancelled {
            operation_id: id.clone(),
            previous_status: before,
            status: rec.status,
            stop_reason: rec.stop_reason,
        })
    }

    /// `resume`, off the async threads (it waits for the writer).
    pub async fn resume(&self, id: &OperationId) -> Result<Resumed> {
        let (rt, i) = (self.rt.clone(), id.clone());
        self.blocking(move |_| rt.resume(&i)).await?;
        Ok(Resumed {
            operation_id: id.clone(),
            status: Status::Resuming,
        })
    }

    /// `metrics`: points after `cursor`.
    pub fn metrics(&self, id: &OperationId, cursor: i64, limit: i64) -> Result<MetricsPage> {
        let (points, next) = self.rt.store.metrics(id, cursor, limit)?;
        Ok(MetricsPage {
            metrics: points,
            cursor: next,
            event: None,
        })
    }

    /// `checkpoints`.
    pub fn checkpoints(&self, id: Option<&OperationId>) -> Result<CheckpointList> {
        let list = match id {
            Some(id) => self.rt.store.checkpoint(id)?.into_iter().collect(),
            None => self.rt.store.checkpoints()?,
        };
        Ok(CheckpointList { checkpoints: list })
    }

    /// `delete_checkpoint`: the row, then its files.
    pub async fn delete_checkpoint(&self, id: &OperationId) -> Result<Deleted> {
        if self.rt.live(id).is_some() {
            return Err(Error::InvalidTransition(format!(
                "operation {id} is running; cancel it before deleting its checkpoint"
            )));
        }
        let cp = self.rt.store.delete_checkpoint(id).done().await?;
        self.rt.config.paths().remove_checkpoints(id);
        Ok(Deleted {
            deleted: cp.operation_id,
        })
    }

    /// `release`: a held operation may start.
    pub async fn release(&self, id: &OperationId) -> Result<Released> {
        self.rt.store.release(id).done().await?;
        self.rt.wake();
        Ok(Released {
            operation_id: id.clone(),
        })
    }

    /// `rerun`: a new operation with the same type, parameters (with
    /// `edits` applied), label, queue, priority, GPUs and attempts.
    pub async fn rerun(&self, id: &OperationId, edits: Value) -> Result<Rerun> {
        let old = self.get_async(id).await?;
        let mut params = match old.metadata.clone() {
            Value::Object(m) => m,
            _ => serde_json::Map::new(),
        };
        match edits {
            Value::Null => {}
            Value::Object(e) => params.extend(e),
            _ => {
                return Err(Error::BadRequest(
                    "rerun: params must be an object of parameter edits (-p KEY=VALUE)".into(),
                ))
            }
        }
        let s = Submit {
            kind: old.operation_type.as_str().to_string(),
            params: Value::Object(params),
            parent: None,
            priority: old.priority,
            gpus: old.gpus_requested,
            key: None,
            max_attempts: Some(old.max_attempts),
            run_after: None,
            phase: None,
            fail_parent: false,
            label: old.label.clone(),
            queue: Some(old.queue.clone()),
            hold: false,
            after: Vec::new(),
            after_any: Vec::new(),
        };
        Ok(Rerun {
            submitted: self.submit(s).await?,
            rerun_of: id.clone(),
        })
    }

    /// `clean`: delete finished operations, then their files.
    pub async fn clean(
        &self,
        older_than: Option<String>,
        status: Vec<String>,
        dry_run: bool,
    ) -> Result<Cleaned> {
        let ended_before = match older_than {
            None => None,
            Some(d) => {
                let dur = humantime::parse_duration(&d).map_err(|_| {
                    Error::BadRequest(format!(
                        "--older-than {d:?} is not a duration; write it like 7d, 12h or 30m"
                    ))
                })?;
                let cut = chrono::Duration::from_std(dur)
                    .ok()
                    .and_then(|d| chrono::Utc::now().checked_sub_signed(d))
                    .ok_or_else(|| {
                        Error::BadRequest(format!("--older-than {d:?} is too long ago"))
                    })?;
                Some(ids::timestamp(cut))
            }
        };
        let statuses = status
            .iter()
            .map(|s| parse_status(s))
            .collect::<Result<Vec<_>>>()?;
        let filter = CleanFilter {
            statuses,
            ended_before,
            dry_run,
        };
        let gone = self.rt.store.clean(filter).done().await?;
        if !dry_run {
            let paths = self.rt.config.paths();
            for id in &gone {
                paths.remove_checkpoints(id);
                paths.remove_operation_files(id);
            }
        }
        Ok(Cleaned {
            deleted: gone.len(),
            operations: gone,
            dry_run,
        })
    }

    /// `queues`: every named queue with its counts.
    pub async fn queues(&self) -> Result<QueueList> {
        let queues = self.blocking(|s| s.rt.store.queues()).await?;
        Ok(QueueList { queues })
    }

    /// `queue_set`: pause, start or cap a queue.
    pub async fn queue_set(
        &self,
        name: String,
        paused: Option<bool>,
        parallel: Option<i64>,
    ) -> Result<QueueChanged> {
        let change = QueueChange {
            name,
            paused,
            parallel: parallel.map(Some),
        };
        let queue = self.rt.store.set_queue(change).done().await?;
        self.rt.wake();
        Ok(QueueChanged { queue })
    }

    /// `health`.
    pub fn health(&self) -> Result<Health> {
        let counts = self.rt.store.counts()?;
        let cfg = &self.rt.config;
        Ok(Health {
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            uptime_seconds: self.rt.started_at.elapsed().as_secs_f64(),
            accepting: self.rt.accepting(),
            state_dir: cfg.state_dir.clone(),
            db: self.rt.store.location(),
            socket: cfg.socket_path(),
            http: cfg.http.clone(),
            workers: cfg.workers,
            concurrency: cfg.concurrency.clone(),
            running: self.rt.running_ids(),
            counts: counts
                .into_iter()
                .map(|(s, n)| (s.as_str().to_string(), n))
                .collect(),
            gpus: self.rt.gpu_status(),
            recovery: self
                .rt
                .recovery
                .lock()
                .map(|r| r.clone())
                .unwrap_or(Value::Null),
            store: self.rt.store.degraded().unwrap_or_else(|| "ok".into()),
        })
    }
}

/// `run_after`: an RFC 3339 time, or a duration from now (`90s`, `10m`).
pub fn parse_run_after(s: &str) -> Result<String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(ids::timestamp(t.with_timezone(&chrono::Utc)));
    }
    match humantime::parse_duration(s) {
        Ok(d) => chrono::Duration::from_std(d)
            .ok()
            .and_then(|d| chrono::Utc::now().checked_add_signed(d))
            .map(ids::timestamp)
            .ok_or_else(|| Error::BadRequest(format!("run_after: {s:?} is too far in the future"))),
        Err(_) => Err(Error::BadRequest(format!(
            "run_after: {s:?} is neither an RFC 3339 time (2026-11-22T18:00:00Z) nor a duration (10m, 2h)"
        ))),
    }
}

/// A status as the user typed it, or a sentence listing the valid ones.
pub fn parse_status(s: &str) -> Result<Status> {
    s.parse().map_err(|_| {
        Error::BadRequest(format!(
            "{s:?} is not a status; use one of {}",
            Status::ALL
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })
}
