//! The local web dashboard (SPEC §13), off unless the config sets
//! `http = "127.0.0.1:PORT"`. It runs on the daemon's tokio runtime with
//! axum, reads only through [`Service`] (the same calls as the socket), and
//! answers only requests carrying the token kept in `<state dir>/http-token`.
//!
//! Pages: `/` (operations, live), `/op/ID` (one operation with SVG metric
//! curves); JSON: `/api/operations`, `/api/operations/ID`,
//! `/api/operations/ID/metrics?cursor=N`, the socket's `list`, `get` and
//! `metrics` answers. What open pages poll (`/live/...`) is shared between
//! tabs for a second, so open tabs cost the daemon little.

mod pages;
pub mod svg;

use crate::error::{Error, Result};
use crate::ids::OperationId;
use crate::protocol::{error_response, Listed, Reply};
use crate::service::Service;
use crate::store::records::ListFilter;
use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The name of the token file in the state directory.
pub const TOKEN_FILE: &str = "http-token";

/// Parse the configured `http` address; only loopback addresses are
/// accepted, since the dashboard shows (and its API returns) everything.
pub fn loopback_addr(addr: &str) -> Result<SocketAddr> {
    let parsed: SocketAddr = addr.parse().map_err(|_| {
        Error::BadRequest(format!(
            "config: http = {addr:?} is not an address with a port; write it as \"127.0.0.1:8470\""
        ))
    })?;
    if !parsed.ip().is_loopback() {
        return Err(Error::BadRequest(format!(
            "config: http = {addr:?} is not a loopback address; the dashboard listens only on \
             127.0.0.1 or [::1] (reach it from another machine through an SSH tunnel)"
        )));
    }
    Ok(parsed)
}

/// The dashboard token: read from `<state dir>/http-token`, or created
/// there (random, mode 0600) at first start.
pub fn ensure_token(state_dir: &Path) -> Result<String> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let path = state_dir.join(TOKEN_FILE);
    if let Ok(text) = std::fs::read_to_string(&path) {
        let token = text.trim().to_string();
        if token.len() >= 16 {
            // Keep it private even if someone loosened it.
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
            return Ok(token);
        }
    }
    let token: String = {
        use rand::Rng;
        let mut rng = rand::thread_rng();
        (0..32)
            .map(|_| format!("{:x}", rng.gen_range(0..16u8)))
            .collect()
    };
    let tmp = state_dir.join(format!("{TOKEN_FILE}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| Error::io(format!("creating the dashboard token {}", tmp.display()), e))?;
    f.write_all(format!("{token}\n").as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
    std::fs::rename(&tmp, &path)
        .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
    Ok(token)
}

/// Bind the dashboard's address (call inside the tokio runtime). Done
/// before any work starts, so a taken port stops the daemon at start.
pub fn bind(addr: &str) -> Result<tokio::net::TcpListener> {
    let a = loopback_addr(addr)?;
    let std = std::net::TcpListener::bind(a).map_err(|e| {
        Error::io(
            format!("binding the dashboard to {a} (is another program using that port? change `http` in the config)"),
            e,
        )
    })?;
    std.set_nonblocking(true)
        .map_err(|e| Error::io("configuring the dashboard socket", e))?;
    tokio::net::TcpListener::from_std(std)
        .map_err(|e| Error::io("registering the dashboard socket", e))
}

/// What every handler shares.
#[derive(Clone)]
struct App {
    svc: Service,
    token: Arc<str>,
    live: Arc<LiveCache>,
}

/// How long a live answer (what open pages poll) is shared between tabs.
const LIVE_FRESH: Duration = Duration::from_millis(900);

/// The answers open pages poll for (`/live/...`), shared for
/// [`LIVE_FRESH`]: ten tabs on the same page cost the daemon one read a
/// second, not ten. One lock, so concurrent polls wait for a single read.
/// The `/api` endpoints are never cached: they answer as the socket does.
#[derive(Default)]
struct LiveCache {
    entries: tokio::sync::Mutex<HashMap<String, (Instant, Arc<str>)>>,
}

impl LiveCache {
    async fn get<F>(&self, key: &str, make: F) -> Result<Arc<str>>
    where
        F: std::future::Future<Output = Result<String>>,
    {
        let mut map = self.entries.lock().await;
        if let Some((at, body)) = map.get(key) {
            if at.elapsed() < LIVE_FRESH {
                return Ok(body.clone());
            }
        }
        let body: Arc<str> = make.await?.into();
        if map.len() >= 64 {
            map.retain(|_, (at, _)| at.elapsed() < LIVE_FRESH);
        }
        map.insert(key.to_string(), (Instant::now(), body.clone()));
        Ok(body)
    }
}

/// Serve the dashboard on `listener` until `stop` turns true.
pub async fn serve(
    listener: tokio::net::TcpListener,
    svc: Service,
    token: String,
    mut stop: watch::Receiver<bool>,
) {
    let app = App {
        svc,
        token: token.into(),
        live: Arc::new(LiveCache::default()),
    };
    let router = Router::new()
        .route("/", get(index))
        .route("/op/:id", get(operation_page))
        .route("/live/operations", get(live_list))
        .route("/live/op/:id", get(live_operation))
        .route("/api/operations", get(api_list))
        .route("/api/operations/:id", get(api_get))
        .route("/api/operations/:id/children", get(api_children))
        .route("/api/operations/:id/metrics", get(api_metrics))
        .layer(axum::middleware::from_fn_with_state(app.clone(), auth))
        .with_state(app);
    let done = async move {
        while !*stop.borrow() {
            if stop.changed().await.is_err() {
                break;
            }
        }
    };
    if let Err(e) = axum::serve(listener, router)
        .with_graceful_shutdown(done)
        .await
    {
        tracing::warn!("the dashboard stopped: {e}");
    }
}

/// `?token=` or `Authorization: Bearer`, else 401.
async fn auth(State(app): State<App>, req: Request, next: Next) -> Response {
    let from_query = req.uri().query().and_then(|q| {
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == "token")
            .map(|(_, v)| v.to_string())
    });
    let from_header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|v| v.trim().to_string());
    let ok = [from_query, from_header]
        .into_iter()
        .flatten()
        .any(|t| same(t.as_bytes(), app.token.as_bytes()));
    if !ok {
        let mut r = (
            StatusCode::UNAUTHORIZED,
            "opsd dashboard: this request has no valid token. Open the URL that `opsd dashboard` \
             prints (it ends in ?token=...), or send `Authorization: Bearer <token>` with the \
             token from <state dir>/http-token.\n",
        )
            .into_response();
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"opsd\""),
        );
        return r;
    }
    next.run(req).await
}

/// Compare without stopping at the first difference.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// `body` framed as the socket frames a successful answer.
fn ok_response<T: serde::Serialize>(body: T) -> Value {
    serde_json::to_value(Reply::ok(body)).unwrap_or_default()
}

/// [`reply`] for an answer of `items` rows or points
/// ([`Service::serialize_answer`]: a large one off the async thread).
async fn reply_large<T: serde::Serialize + Send + 'static>(r: Result<T>, items: usize) -> Response {
    Service::serialize_answer(items, move || reply(r))
        .await
        .unwrap_or_else(|e| reply::<Value>(Err(e)))
}

/// [`reply_large`] for a list of operations.
async fn reply_listed(r: Result<Listed>) -> Response {
    let n = r.as_ref().map_or(0, |l| l.operations.len());
    reply_large(r, n).await
}

/// A JSON answer shaped like the socket's: `ok` plus fields, or `ok:
/// false` with `error.code` and an HTTP status to match.
fn reply<T: serde::Serialize>(r: Result<T>) -> Response {
    match r {
        Ok(v) => axum::Json(ok_response(v)).into_response(),
        Err(e) => {
            let status = match e.code() {
                "bad_request" | "too_large" => StatusCode::BAD_REQUEST,
                "not_found" => StatusCode::NOT_FOUND,
                "invalid_transition" | "not_resumable" => StatusCode::CONFLICT,
                "permission_denied" => StatusCode::FORBIDDEN,
                "unavailable" => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            (status, axum::Json(error_response(e.code(), &e.to_string()))).into_response()
        }
    }
}

/// The `list` filter from a query string: `status` (comma separated or
/// repeated), `type`, `active`, `parent`, `limit`, `offset`.
fn list_filter(query: &[(String, String)]) -> Result<ListFilter> {
    let mut f = serde_json::Map::new();
    let mut statuses = Vec::new();
    for (k, v) in query {
        match k.as_str() {
            "token" => {}
            "status" => statuses.extend(
                v.split(',')
                    .filter(|s| !s.is_empty())
                    .map(|s| json!(s)),
            ),
            "type" | "parent" => {
                f.insert(k.clone(), json!(v));
            }
            "active" => {
                f.insert(k.clone(), json!(matches!(v.as_str(), "1" | "true" | "yes")));
            }
            "limit" | "offset" => {
                let n: i64 = v.parse().map_err(|_| {
                    Error::BadRequest(format!("{k} must be a whole number (got {v:?})"))
                })?;
                f.insert(k.clone(), json!(n));
            }
            other => {
                return Err(Error::BadRequest(format!(
                    "unknown query parameter {other:?}; use status, type, active, parent, limit, offset"
                )))
            }
        }
    }
    f.insert("status".into(), Value::Array(statuses));
    serde_json::from_value(Value::Object(f)).map_err(|e| Error::BadRequest(format!("{e}")))
}

async fn api_list(State(app): State<App>, Query(q): Query<Vec<(String, String)>>) -> Response {
    match list_filter(&q) {
        Ok(f) => reply_listed(app.svc.list_async(f).await).await,
        Err(e) => reply::<Value>(Err(e)),
    }
}

async fn api_get(State(app): State<App>, UrlPath(id): UrlPath<String>) -> Response {
    let id = OperationId::from(id.as_str());
    reply(
        app.svc
            .get_async(&id)
            .await
            .map(|r| json!({ "operation": r })),
    )
}

async fn api_children(State(app): State<App>, UrlPath(id): UrlPath<String>) -> Response {
    reply_listed(
        app.svc
            .children_async(&OperationId::from(id.as_str()))
            .await,
    )
    .await
}

async fn api_metrics(
    State(app): State<App>,
    UrlPath(id): UrlPath<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let num = |k: &str, d: i64| -> Result<i64> {
        match q.get(k) {
            None => Ok(d),
            Some(v) => v
                .parse()
                .map_err(|_| Error::BadRequest(format!("{k} must be a whole number (got {v:?})"))),
        }
    };
    let (cursor, limit) = match (num("cursor", 0), num("limit", 1000)) {
        (Ok(c), Ok(l)) => (c, l),
        (Err(e), _) | (_, Err(e)) => return reply::<Value>(Err(e)),
    };
    let r = app
        .svc
        .metrics_async(&OperationId::from(id.as_str()), cursor, limit)
        .await;
    let n = r.as_ref().map_or(0, |p| p.metrics.len());
    reply_large(r, n).await
}

async fn index(State(app): State<App>) -> Response {
    let filter = ListFilter {
        limit: Some(100),
        ..ListFilter::default()
    };
    match app.svc.list_async(filter).await {
        Ok(list) => {
            let list = serde_json::to_value(&list).unwrap_or_default();
            Html(pages::index(&list, &app.token)).into_response()
        }
        Err(e) => page_error(e),
    }
}

/// What the `/` page polls: the newest 100 operations as the socket's
/// `list` JSON, shared between tabs for a second.
async fn live_list(State(app): State<App>) -> Response {
    let svc = app.svc.clone();
    let body = app
        .live
        .get("list", async move {
            let filter = ListFilter {
                limit: Some(100),
                ..ListFilter::default()
            };
            Ok(ok_response(svc.list_async(filter).await?).to_string())
        })
        .await;
    match body {
        Ok(b) => ([(header::CONTENT_TYPE, "application/json")], b.to_string()).into_response(),
        Err(e) => reply::<Value>(Err(e)),
    }
}

/// What an `/op/ID` page polls: its changing part as HTML, shared between
/// tabs for a second.
async fn live_operation(State(app): State<App>, UrlPath(id): UrlPath<String>) -> Response {
    let id = OperationId::from(id.as_str());
    let key = format!("op {id}");
    let a = app.clone();
    let body = app
        .live
        .get(&key, async move {
            let op = serde_json::to_value(a.svc.get_async(&id).await?).unwrap_or(Value::Null);
            Ok(operation_body(&a, &id, &op).await)
        })
        .await;
    match body {
        Ok(b) => Html(b.to_string()).into_response(),
        Err(e) => page_error(e),
    }
}

/// The changing part of `/op/ID`: children, metrics and log read now.
/// Turning up to 100,000 points into SVG and reading the log run on the
/// blocking pool: the daemon has one async thread, and a page polled
/// every second must not hold up a cancel behind its drawing.
async fn operation_body(app: &App, id: &OperationId, op: &Value) -> String {
    let children = app.svc.children_async(id).await;
    let metrics = app.svc.metrics_async(id, 0, 100_000).await;
    let (svc, id, op, token) = (app.svc.clone(), id.clone(), op.clone(), app.token.clone());
    tokio::task::spawn_blocking(move || {
        let children = children
            .map(|v| serde_json::to_value(&v).unwrap_or_default()["operations"].clone())
            .unwrap_or(Value::Null);
        let metrics = metrics
            .map(|v| {
                serde_json::to_value(&v).unwrap_or_default()["metrics"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .unwrap_or_default();
        let log = log_tail(&svc, &id, 8192);
        pages::operation_main(&op, &children, &metrics, log.as_deref(), &token)
    })
    .await
    .unwrap_or_default()
}

async fn operation_page(State(app): State<App>, UrlPath(id): UrlPath<String>) -> Response {
    let id = OperationId::from(id.as_str());
    let op = match app.svc.get_async(&id).await {
        Ok(op) => serde_json::to_value(op).unwrap_or(Value::Null),
        Err(e) => return page_error(e),
    };
    let body = operation_body(&app, &id, &op).await;
    Html(pages::operation(&op, &body, &app.token)).into_response()
}

/// The last `bytes` of a command's log, when it has one.
fn log_tail(svc: &Service, id: &OperationId, bytes: u64) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let path = svc
        .rt
        .config
        .state_dir
        .join("logs")
        .join(format!("{id}.log"));
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(bytes))).ok()?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf).into_owned())
}

fn page_error(e: Error) -> Response {
    let status = if e.code() == "not_found" {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    (status, Html(pages::error(&e.to_string()))).into_response()
}

/// The dashboard URL with its token, from the daemon's `health` answer
/// (`http` and `state_dir`); for `opsd dashboard`.
pub fn dashboard_url(health: &Value) -> std::result::Result<String, String> {
    let Some(addr) = health["http"].as_str() else {
        return Err(
            "the daemon has no dashboard; add `http = \"127.0.0.1:8470\"` to its config file \
             and restart it"
                .into(),
        );
    };
    let dir = Path::new(health["state_dir"].as_str().unwrap_or("."));
    let path = dir.join(TOKEN_FILE);
    let token = std::fs::read_to_string(&path).map_err(|e| {
        format!(
            "cannot read the dashboard token {}: {e}; it is readable only by the daemon's user",
            path.display()
        )
    })?;
    Ok(format!("http://{addr}/?token={}", token.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_addresses_are_accepted() {
        assert!(loopback_addr("127.0.0.1:8470").is_ok());
        assert!(loopback_addr("[::1]:8470").is_ok());
        let e = loopback_addr("0.0.0.0:8470").unwrap_err().to_string();
        assert!(e.contains("loopback"), "{e}");
        let e = loopback_addr("localhost").unwrap_err().to_string();
        assert!(e.contains("127.0.0.1:8470"), "{e}");
    }

    #[test]
    fn the_token_is_private_and_kept() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let t = ensure_token(dir.path()).unwrap();
        assert_eq!(t.len(), 32);
        let mode = std::fs::metadata(dir.path().join(TOKEN_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(ensure_token(dir.path()).unwrap(), t);
        assert_ne!(
            ensure_token(tempfile::tempdir().unwrap().path()).unwrap(),
            t
        );
    }

    #[test]
    fn list_filters_come_from_the_query() {
        let q = |s: &[(&str, &str)]| {
            list_filter(
                &s.iter()
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .collect::<Vec<_>>(),
            )
        };
        let f = q(&[("status", "running,failed"), ("limit", "5"), ("token", "x")]).unwrap();
        assert_eq!(f.status.len(), 2);
        assert_eq!(f.limit, Some(5));
        assert!(q(&[("status", "bogus")]).is_err());
        assert!(q(&[("limit", "many")]).is_err());
        assert!(q(&[("colour", "red")]).is_err());
    }
}
