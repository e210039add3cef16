//! The web dashboard (SPEC §13): token, loopback only, the JSON API as the
//! socket's, and what a real browser (headless Chromium) is shown.

use crate::common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

fn start_with_http() -> (Daemon, u16) {
    let port = free_port();
    let d = Daemon::start_with(&format!(
        "flush_interval_ms = 50\nshutdown_grace_seconds = 10\nhttp = \"127.0.0.1:{port}\"\n"
    ));
    (d, port)
}

/// A plain HTTP/1.1 GET: (status, body).
fn get(port: u16, path: &str, bearer: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let status = raw.split(' ').nth(1).unwrap().parse().unwrap();
    let body = raw.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    (status, body.to_string())
}

fn token(d: &Daemon) -> String {
    std::fs::read_to_string(d.state().join("http-token"))
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn every_request_needs_the_token_and_the_api_answers_as_the_socket() {
    use std::os::unix::fs::PermissionsExt;
    let (d, port) = start_with_http();
    let mode = std::fs::metadata(d.state().join("http-token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let t = token(&d);
    assert!(t.len() >= 32);
    let id = d.submit("dummy", json!({ "steps": 5, "step_ms": 1 }));
    d.wait_status(&id, "completed", 30);
    for path in [
        "/",
        &format!("/op/{id}"),
        "/api/operations",
        "/api/operations?token=wrong",
        "/live/operations",
        &format!("/live/op/{id}"),
    ] {
        assert_eq!(get(port, path, None).0, 401, "{path}");
    }
    assert_eq!(get(port, "/api/operations", Some("wrong")).0, 401);
    // The same JSON as the socket's get, list and metrics.
    let (st, body) = get(port, &format!("/api/operations/{id}"), Some(&t));
    assert_eq!(st, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v, d.ok(Request::get(&id)));
    let (st, body) = get(port, &format!("/api/operations?token={t}"), None);
    assert_eq!(st, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v, d.ok(Request::List(ListFilter::default())));
    // What the `/` page polls is the same list (its first 100).
    let (st, body) = get(port, "/live/operations", Some(&t));
    assert_eq!(st, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v,
        d.ok(Request::List(ListFilter {
            limit: Some(100),
            ..ListFilter::default()
        }))
    );
    let (_, body) = get(
        port,
        &format!("/api/operations/{id}/metrics?cursor=2"),
        Some(&t),
    );
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v, d.ok(Request::metrics(&id, 2)));
    assert_eq!(v["metrics"].as_array().unwrap().len(), 3);
    // Errors carry the socket's codes.
    let (st, body) = get(port, "/api/operations/op_dummy_nope", Some(&t));
    assert_eq!(st, 404);
    assert!(body.contains("not_found"), "{body}");
    let (st, _) = get(port, "/api/operations?status=bogus", Some(&t));
    assert_eq!(st, 400);
    // `opsd dashboard` prints the URL with the token; it opens the page.
    let out = d.cli(&["dashboard"]);
    assert!(out.status.success());
    let url = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(url, format!("http://127.0.0.1:{port}/?token={t}"));
    let (st, page) = get(
        port,
        url.trim_start_matches(&format!("http://127.0.0.1:{port}")),
        None,
    );
    assert_eq!(st, 200);
    assert!(page.contains(&id));
    // The token stays across restarts.
    let mut d = d;
    d.terminate();
    d.spawn();
    assert_eq!(token(&d), t);
    assert_eq!(get(port, "/api/operations", Some(&t)).0, 200);
}

#[test]
fn a_non_loopback_address_is_refused_at_start_and_unset_starts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "http = \"0.0.0.0:8470\"\n").unwrap();
    let out = Command::new(bin())
        .arg("serve")
        .arg("--state-dir")
        .arg(dir.path())
        .arg("--socket")
        .arg(dir.path().join("s"))
        .arg("--config")
        .arg(&cfg)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("loopback") && err.contains("0.0.0.0:8470"),
        "{err}"
    );
    assert!(!dir.path().join("opsd.db").exists());
    // No `http`: no token, no listener, and `opsd dashboard` says what to set.
    let d = Daemon::start();
    assert!(!d.state().join("http-token").exists());
    assert!(d.ok(Request::Health)["http"].is_null());
    let out = d.cli(&["dashboard"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("http = "));
}

fn chromium() -> Option<PathBuf> {
    [
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        "/usr/bin/google-chrome",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

/// The DOM after Chromium loaded `url` and ran its scripts.
fn dump_dom(browser: &PathBuf, url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--virtual-time-budget=3000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(url)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "chromium failed on {url}");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// How many `points` the curve (the polyline in the curve colour) of an
/// SVG document or a page fragment has.
fn polyline_points(svg: &str) -> usize {
    let line = svg
        .split("<polyline")
        .skip(1)
        .find(|s| s.to_ascii_lowercase().contains("stroke=\"#1f77b4\""))
        .unwrap_or_else(|| panic!("no curve in {svg}"));
    let pts = line
        .split("points=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    pts.split_whitespace().count()
}

/// The points of the curve inside `<figure data-metric="KEY">`.
fn curve_points(dom: &str, key: &str) -> usize {
    let fig = dom
        .split(&format!("<figure data-metric=\"{key}\""))
        .nth(1)
        .unwrap_or_else(|| panic!("no figure for {key}"));
    polyline_points(fig.split("</figure>").next().unwrap())
}

/// The server draws one polyline point per metric point (no browser
/// needed: the SVG as the page embeds it).
#[test]
fn one_polyline_point_per_metric_point() {
    use opsd::http::svg::{chart, curves};
    let pts: Vec<Value> = (1..=17)
        .map(|i| json!({"seq": i, "data": {"epoch": i, "loss": 1.0 / i as f64, "acc": 0.5}}))
        .collect();
    let c = curves(&pts);
    assert_eq!(c.keys().collect::<Vec<_>>(), vec!["acc", "loss"]);
    let svg = chart("loss", &c["loss"], &pts, 480, 240);
    assert_eq!(polyline_points(&svg), 17, "{svg}");
}

#[test]
fn a_browser_sees_the_operations_and_one_curve_point_per_metric_point() {
    let Some(browser) = chromium() else {
        eprintln!(
            "NOTE: chromium is not installed; the browser part of the dashboard test is \
             skipped (`apt-get install chromium chromium-driver`; .ci/run installs it)"
        );
        return;
    };
    let (d, port) = start_with_http();
    let t = token(&d);
    let id = d.submit(
        "training",
        json!({ "data": data("GOOG.csv"), "epochs": 7, "seed": 3 }),
    );
    d.wait_status(&id, "completed", 120);
    let points = d.metrics(&id).len();
    assert_eq!(points, 7);
    let dom = dump_dom(
        &browser,
        &format!("http://127.0.0.1:{port}/op/{id}?token={t}"),
    );
    for key in ["train_loss", "val_loss", "train_accuracy", "val_accuracy"] {
        assert_eq!(curve_points(&dom, key), points, "{key}");
    }
    assert!(
        dom.contains("id=\"status\" class=\"completed\">completed"),
        "{dom}"
    );
    assert!(dom.contains("\"epochs\": 7"), "the parameters are shown");
    assert!(dom.contains("<h2>Result</h2>"));
    // The list page, after its script has polled the API at least once.
    let other = d.submit("dummy", json!({ "steps": 1, "step_ms": 1 }));
    let dom = dump_dom(&browser, &format!("http://127.0.0.1:{port}/?token={t}"));
    assert!(dom.contains(&format!("data-id=\"{id}\"")), "{dom}");
    assert!(dom.contains(&format!("data-id=\"{other}\"")), "{dom}");
    assert!(dom.contains("<progress"));
    // Without the token the browser gets the 401 text, not the page.
    let dom = dump_dom(&browser, &format!("http://127.0.0.1:{port}/op/{id}"));
    assert!(
        dom.contains("no valid token") && !dom.contains("<figure"),
        "{dom}"
    );
}

#[test]
fn the_pages_refresh_a_running_operation_without_a_reload() {
    let Some(browser) = chromium() else {
        eprintln!("NOTE: chromium is not installed; the live refresh test is skipped");
        return;
    };
    let (d, port) = start_with_http();
    let t = token(&d);
    let id = d.submit("dummy", json!({ "steps": 100, "step_ms": 100 }));
    d.wait_status(&id, "running", 30);
    // The browser's virtual-time budget lets the page's poll run: the part
    // of the page that changes is fetched again and redrawn in place.
    for url in [format!("/op/{id}?token={t}"), format!("/?token={t}")] {
        let dom = dump_dom(&browser, &format!("http://127.0.0.1:{port}{url}"));
        let polls: u32 = dom
            .split("data-polls=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert!(polls >= 1, "{url} did not refresh: {dom}");
        assert!(dom.contains("running"), "{dom}");
    }
    // A finished operation's page stops polling.
    d.ok(Request::cancel(&id));
    d.wait_status(&id, "cancelled", 30);
    let dom = dump_dom(
        &browser,
        &format!("http://127.0.0.1:{port}/op/{id}?token={t}"),
    );
    assert!(dom.contains("data-polls=\"0\""), "{dom}");
}
