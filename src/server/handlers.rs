//! One function per request: call the service, frame the answer. Streams
//! (`watch`, `metrics` with follow, `logs` with follow) poll at a short
//! interval and end when the operation reaches a final or stopped status.

use super::connection::Responder;
use crate::error::Error;
use crate::ids::OperationId;
use crate::protocol::{
    error_response, Got, Listed, LogChunk, MetricsPage, OperationView, Reply, Request, Resolved,
    StreamEvent, WatchUpdate,
};
use crate::service::Service;
use serde::Serialize;
use std::time::Duration;

/// The response line of a failure.
fn err(e: &Error) -> String {
    error_response(e.code(), &e.to_string()).to_string()
}

/// The response line of a successful body.
fn ok<T: Serialize>(body: T) -> String {
    serde_json::to_string(&Reply::ok(body)).unwrap_or_else(|e| {
        err(&Error::Internal(format!(
            "the response could not be encoded: {e}"
        )))
    })
}

fn reply<T: Serialize>(r: Result<T, Error>) -> String {
    match r {
        Ok(v) => ok(v),
        Err(e) => err(&e),
    }
}

/// [`reply`] for an answer of `items` rows or points
/// ([`Service::serialize_answer`]: a large one off the async thread).
async fn reply_large<T: Serialize + Send + 'static>(r: Result<T, Error>, items: usize) -> String {
    Service::serialize_answer(items, move || reply(r))
        .await
        .unwrap_or_else(|e| err(&e))
}

/// [`reply_large`] for a list of operations.
async fn reply_listed(r: Result<Listed, Error>) -> String {
    let n = r.as_ref().map_or(0, |l| l.operations.len());
    reply_large(r, n).await
}

/// Replace every id in a request by the operation it means (SPEC §12:
/// full id, 8-hex tail, unique prefix, `last`), so each client gets short
/// ids for free. Submits resolve theirs in the service.
async fn resolve_ids(req: &mut Request, svc: &Service) -> Result<(), Error> {
    let id = match req {
        Request::Get { id }
        | Request::Children { id }
        | Request::Cancel { id, .. }
        | Request::Resume { id }
        | Request::Metrics { id, .. }
        | Request::Watch { id, .. }
        | Request::DeleteCheckpoint { id }
        | Request::Logs { id, .. }
        | Request::Release { id }
        | Request::Rerun { id, .. }
        | Request::Resolve { id } => Some(id),
        Request::Checkpoints { id } => id.as_mut(),
        Request::List(filter) => filter.parent.as_mut(),
        _ => None,
    };
    if let Some(id) = id {
        *id = svc.resolve_async(id).await?;
    }
    Ok(())
}

/// Answer one request. False when the client has gone.
pub async fn dispatch(mut req: Request, svc: &Service, out: &mut Responder) -> bool {
    if let Err(e) = resolve_ids(&mut req, svc).await {
        return out.send(&err(&e)).await;
    }
    let response = match req {
        Request::Submit(s) => reply(svc.submit(s).await),
        Request::SubmitBatch { operations } => reply(svc.submit_batch(operations).await),
        Request::Get { id } => reply(svc.get_async(&id).await.map(|operation| Got { operation })),
        Request::List(filter) => reply_listed(svc.list_async(filter).await).await,
        Request::Children { id } => reply_listed(svc.children_async(&id).await).await,
        Request::Cancel {
            id,
            reason,
            wait_ms,
        } => {
            let wait = Duration::from_millis(wait_ms.unwrap_or(2000).min(60_000));
            reply(svc.cancel(&id, reason, wait).await)
        }
        Request::Resume { id } => reply(svc.resume(&id).await),
        Request::Metrics {
            id,
            cursor,
            limit,
            follow,
        } => {
            // Clamped here as well as in the service: the follow loop
            // compares against it, and 0 would spin without yielding.
            let limit = limit.unwrap_or(1000).clamp(1, 100_000);
            if follow {
                return follow_metrics(svc, &id, cursor, limit, out).await;
            }
            let page = svc.metrics_async(&id, cursor, limit).await;
            let n = page.as_ref().map_or(0, |p| p.metrics.len());
            reply_large(page, n).await
        }
        Request::Watch { id, interval_ms } => {
            let every = Duration::from_millis(interval_ms.unwrap_or(200).clamp(10, 10_000));
            return watch(svc, &id, every, out).await;
        }
        Request::Checkpoints { id } => reply(svc.checkpoints_async(id).await),
        Request::DeleteCheckpoint { id } => reply(svc.delete_checkpoint(&id).await),
        Request::Logs {
            id,
            tail_bytes,
            follow,
        } => {
            return logs(svc, &id, tail_bytes.unwrap_or(65536), follow, out).await;
        }
        Request::Health => reply(svc.health_async().await),
        Request::Release { id } => reply(svc.release(&id).await),
        Request::Rerun { id, params } => reply(svc.rerun(&id, params).await),
        Request::Clean {
            older_than,
            status,
            dry_run,
        } => reply(svc.clean(older_than, status, dry_run).await),
        Request::Queues => reply(svc.queues().await),
        Request::QueueSet {
            name,
            paused,
            parallel,
        } => reply(svc.queue_set(name, paused, parallel).await),
        Request::Resolve { id } => reply(Ok::<_, Error>(Resolved { operation_id: id })),
        Request::Hosts => reply(svc.hosts_async().await),
    };
    out.send(&response).await
}

/// Stream `{"event":"update","operation":..,"children":[..]}` whenever
/// something changes, then `{"event":"end",...}`.
async fn watch(svc: &Service, id: &OperationId, every: Duration, out: &mut Responder) -> bool {
    let mut last: Option<(OperationView, Vec<OperationView>)> = None;
    loop {
        let op = match svc.get_async(id).await {
            Ok(op) => op,
            Err(e) => return out.send(&err(&e)).await,
        };
        let children = svc
            .children_async(id)
            .await
            .map(|c| c.operations)
            .unwrap_or_default();
        let over = !op.status.is_active();
        let now = (op, children);
        if last.as_ref() != Some(&now) || over {
            let msg = WatchUpdate {
                event: if over {
                    StreamEvent::End
                } else {
                    StreamEvent::Update
                },
                operation: now.0.clone(),
                children: now.1.clone(),
            };
            if !out.send(&ok(msg)).await {
                return false;
            }
            last = Some(now);
        }
        if over {
            return true;
        }
        if !out.pause(every).await {
            return false;
        }
    }
}

async fn follow_metrics(
    svc: &Service,
    id: &OperationId,
    mut cursor: i64,
    limit: i64,
    out: &mut Responder,
) -> bool {
    loop {
        // Read the status before the points, so points written just before
        // the end are still sent.
        let over = match svc.get_async(id).await {
            Ok(op) => !op.status.is_active(),
            Err(e) => return out.send(&err(&e)).await,
        };
        match svc.metrics_async(id, cursor, limit).await {
            Ok(page) => {
                let n = page.metrics.len();
                cursor = page.cursor;
                if n > 0 && !out.send(&reply_large(Ok::<_, Error>(page), n).await).await {
                    return false;
                }
                if n as i64 >= limit {
                    continue;
                }
            }
            Err(e) => return out.send(&err(&e)).await,
        }
        if over {
            let end = MetricsPage {
                metrics: Vec::new(),
                cursor,
                event: Some(StreamEvent::End),
            };
            return out.send(&ok(end)).await;
        }
        if !out.pause(Duration::from_millis(200)).await {
            return false;
        }
    }
}

async fn logs(
    svc: &Service,
    id: &OperationId,
    tail: u64,
    follow: bool,
    out: &mut Responder,
) -> bool {
    let path = svc.rt.config.paths().log(id);
    match svc.get_async(id).await {
        Err(e) => return out.send(&err(&e)).await,
        Ok(op) if op.operation_type != crate::model::OperationType::Command => {
            let e = Error::BadRequest(format!(
                "operation {id} is a {} operation, and only command operations have logs; \
                 `opsd show {id}` has its progress and result, `opsd metrics {id}` its series",
                op.operation_type
            ));
            return out.send(&err(&e)).await;
        }
        Ok(_) => {}
    }
    // The log's reads run off the async thread (the daemon has one), as
    // every handler's file and database work does.
    let mut offset = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || match std::fs::metadata(&path) {
            Ok(m) => m.len().saturating_sub(tail),
            Err(_) => 0,
        })
        .await
        .unwrap_or(0)
    };
    loop {
        let over = svc
            .get_async(id)
            .await
            .map(|o| !o.status.is_active())
            .unwrap_or(true);
        let (text, next) = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || read_from(&path, offset))
                .await
                .unwrap_or((String::new(), offset))
        };
        offset = next;
        if (!text.is_empty() || !follow)
            && !out
                .send(&ok(LogChunk {
                    text,
                    offset,
                    event: None,
                }))
                .await
        {
            return false;
        }
        if !follow {
            return true;
        }
        if over {
            let end = LogChunk {
                text: String::new(),
                offset,
                event: Some(StreamEvent::End),
            };
            return out.send(&ok(end)).await;
        }
        if !out.pause(Duration::from_millis(200)).await {
            return false;
        }
    }
}

/// Text of `path` from `offset` (at most 1 MiB), and the next offset. A
/// rotated (shorter) file is read from its start.
fn read_from(path: &std::path::Path, offset: u64) -> (String, u64) {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return (String::new(), offset);
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = if len < offset { 0 } else { offset };
    if f.seek(SeekFrom::Start(start)).is_err() {
        return (String::new(), offset);
    }
    let mut buf = Vec::new();
    let _ = f.take(1024 * 1024).read_to_end(&mut buf);
    (
        String::from_utf8_lossy(&buf).to_string(),
        start + buf.len() as u64,
    )
}
