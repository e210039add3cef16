//! Section 6: reads over the socket with a large database.
//!
//! The database is prefilled directly with rusqlite (see
//! `sqlite::prefill`), then a daemon starts on it (its start-up recovery
//! marks the prefilled `running` rows failed/crash, as after a crash) and
//! 20 long dummies are submitted so `list --status running` has live rows
//! to overlay. One client then sends requests one after another and each
//! round trip is timed: `get` of random completed operations, `list` of
//! running ones (limit 50) and the default `list` (newest 50 of all, with
//! the total count).

use crate::daemon::{line, Bench, Slots};
use crate::stats::{ms, percentile, verdict, Table};
use opsd::protocol::{Request, Submit};
use opsd::store::records::ListFilter;
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

/// Long-running dummies kept running during the reads.
const RUNNING: usize = 20;

/// Per-request latencies in ms of `n` sends of `request(i)`.
fn latencies(
    conn: &mut crate::daemon::Conn,
    n: usize,
    request: impl Fn(usize) -> Vec<u8>,
) -> Vec<f64> {
    (0..n)
        .map(|i| {
            let r = request(i);
            let t = Instant::now();
            conn.raw(&r);
            ms(t.elapsed())
        })
        .collect()
}

/// Run section 6 on the prefilled state directory `dir`.
pub fn run(dir: &Path, rows: usize, sample_ids: &[String], gets: usize, lists: usize) {
    let t = Instant::now();
    let bench = Bench::start_in(
        dir,
        Slots {
            workers: 32,
            dummy: RUNNING,
        },
    );
    let startup = t.elapsed();
    let mut conn = bench.client();
    for _ in 0..RUNNING {
        conn.call(Submit::new(
            "dummy",
            json!({"steps": 100_000, "step_ms": 1_000, "checkpoint_every": 100_000}),
        ));
    }
    let running = line(Request::List(ListFilter {
        status: vec![opsd::model::Status::Running],
        limit: Some(50),
        ..ListFilter::default()
    }));
    loop {
        let v: Value = serde_json::from_str(conn.raw(&running)).expect("JSON");
        if v["total"].as_u64() == Some(RUNNING as u64) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let get = |i: usize| {
        // Spread over the whole id range, in a scattered order.
        let k = (i.wrapping_mul(7_919)) % sample_ids.len();
        line(Request::get(&sample_ids[k]))
    };
    let default_list = line(Request::List(ListFilter::default()));
    // Warm up: the first requests pay for opening pooled connections.
    latencies(&mut conn, 200, get);
    latencies(&mut conn, 5, |_| running.clone());
    latencies(&mut conn, 2, |_| default_list.clone());
    let g = latencies(&mut conn, gets, |i| get(i + 1_000));
    let l = latencies(&mut conn, lists, |_| running.clone());
    let d = latencies(&mut conn, lists.div_ceil(4), |_| default_list.clone());
    let mut t = Table::new(
        &format!(
            "6. Reads over the socket, {} operations in the database ({RUNNING} running), one client",
            crate::stats::thousands(rows as f64)
        ),
        &["request", "samples", "p50", "p99", "max", "target", "verdict"],
    );
    let row = |name: &str, xs: &[f64], target: Option<(f64, f64)>| {
        let p99 = percentile(xs, 99.0);
        vec![
            name.to_string(),
            xs.len().to_string(),
            format!("{:.3} ms", percentile(xs, 50.0)),
            format!("{p99:.3} ms"),
            format!("{:.3} ms", percentile(xs, 100.0)),
            target
                .map(|(p, x)| format!("p{p} <= {x} ms"))
                .unwrap_or_default(),
            target
                .map(|(p, x)| verdict(percentile(xs, p) <= x).to_string())
                .unwrap_or_default(),
        ]
    };
    t.row(row("get (random completed id)", &g, Some((99.0, 1.0))));
    t.row(row(
        "list status=[running] limit 50",
        &l,
        Some((99.0, 10.0)),
    ));
    t.row(row("list (default: all, newest 50, total)", &d, None));
    t.print();
    eprintln!(
        "  daemon start-up on the prefilled database took {:.2} s",
        startup.as_secs_f64()
    );
}
