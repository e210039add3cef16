//! Sections 1 and 2: the raw SQLite ceilings and durable submit throughput
//! over the socket, measured in the same run so their ratios are fair.
//!
//! Each run measures, back to back: the one-row-per-commit ceiling, the
//! 1000-row-batch ceiling, then submits from 16 and from 64 concurrent
//! clients against a fresh daemon each. The ratios are taken within a run
//! and their median over runs is reported, so a noisy minute (other
//! engineers compile on this machine) moves both sides of a ratio.
//!
//! The daemon runs with `concurrency.dummy = 0`: submitted operations stay
//! pending, so the figure is the submit path alone (socket, JSON,
//! validation, the writer's group commit) and not the scheduler competing
//! for the same writer. Section 3 measures the whole lifecycle.

use crate::daemon::{line, tempdir, Bench, Conn, Slots};
use crate::sqlite::insert_ceiling;
use crate::stats::{median, spread, thousands, thread_cpu, verdict, Table};
use opsd::protocol::Submit;
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// Sizes of one run.
pub struct Sizes {
    /// Rows for the one-row-per-commit ceiling.
    pub single_rows: usize,
    /// Rows for the 1000-row-batch ceiling.
    pub batch_rows: usize,
    /// Warm-up before counting submits.
    pub warmup: Duration,
    /// How long submits are counted.
    pub measure: Duration,
}

/// One run's figures.
struct Run {
    single: f64,
    batched: f64,
    c16: f64,
    c64: f64,
    /// Daemon CPU microseconds per submit, 16 and 64 clients.
    d16: f64,
    d64: f64,
    /// Client CPU microseconds per submit, 16 and 64 clients.
    k16: f64,
    k64: f64,
}

/// What one submit measurement gives.
pub struct Rate {
    /// Submits per second.
    pub per_s: f64,
    /// CPU microseconds per submit in the daemon's threads (`opsd-*`).
    pub daemon_us: f64,
    /// CPU microseconds per submit in the client threads.
    pub client_us: f64,
}

/// Submits per second from `clients` threads, each on its own
/// connection, sending `submit` back to back (the next request only after
/// the previous answer: every answer is a durable commit).
pub fn submit_rate(clients: usize, sizes: &Sizes) -> Rate {
    let bench = Bench::fresh(Slots {
        workers: 16,
        dummy: 0,
    });
    let request = line(Submit::new("dummy", json!({"steps": 0})));
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let go = Arc::new(Barrier::new(clients + 1));
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (done, stop, go) = (done.clone(), stop.clone(), go.clone());
            let mut conn = Conn::connect(&bench.socket);
            let request = request.clone();
            std::thread::spawn(move || {
                go.wait();
                while !stop.load(Ordering::Relaxed) {
                    conn.raw(&request);
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    go.wait();
    std::thread::sleep(sizes.warmup);
    let (n0, t0, cpu0) = (done.load(Ordering::Relaxed), Instant::now(), thread_cpu());
    std::thread::sleep(sizes.measure);
    let (n1, t1, cpu1) = (done.load(Ordering::Relaxed), Instant::now(), thread_cpu());
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("client thread");
    }
    let n = (n1 - n0) as f64;
    // Daemon threads are named `opsd-*`; client threads are not.
    let cpu = |daemon: bool| {
        let sum = |m: &std::collections::BTreeMap<String, f64>| -> f64 {
            m.iter()
                .filter(|(k, _)| k.starts_with("opsd-") == daemon)
                .map(|(_, v)| v)
                .sum()
        };
        (sum(&cpu1) - sum(&cpu0)) * 1e6 / n
    };
    Rate {
        per_s: n / (t1 - t0).as_secs_f64(),
        daemon_us: cpu(true),
        client_us: cpu(false),
    }
}

/// Run sections 1 and 2 `runs` times and print their tables.
pub fn run(runs: usize, sizes: &Sizes) {
    let mut all = Vec::new();
    for i in 0..runs {
        let dir = tempdir();
        let single = insert_ceiling(&dir.path().join("single.db"), sizes.single_rows, 1);
        let batched = insert_ceiling(&dir.path().join("batch.db"), sizes.batch_rows, 1000);
        drop(dir);
        let r16 = submit_rate(16, sizes);
        let r64 = submit_rate(64, sizes);
        let (c16, c64) = (r16.per_s, r64.per_s);
        eprintln!(
            "  run {}/{runs}: one-row {:.0}/s, batched {:.0}/s, 16 clients {:.0}/s, 64 clients {:.0}/s",
            i + 1,
            single,
            batched,
            c16,
            c64
        );
        all.push(Run {
            single,
            batched,
            c16,
            c64,
            d16: r16.daemon_us,
            d64: r64.daemon_us,
            k16: r16.client_us,
            k64: r64.client_us,
        });
    }
    let col = |f: fn(&Run) -> f64| all.iter().map(f).collect::<Vec<f64>>();
    let (single, batched) = (col(|r| r.single), col(|r| r.batched));
    let mut t = Table::new(
        &format!("1. Raw SQLite ceilings (WAL, synchronous=FULL, operations schema), median of {runs} runs"),
        &["measure", "rows/s (median)", "runs"],
    );
    t.row(vec![
        "one row per commit".into(),
        thousands(median(&single)),
        spread(&single, thousands),
    ]);
    t.row(vec![
        "1000-row batches".into(),
        thousands(median(&batched)),
        spread(&batched, thousands),
    ]);
    t.print();

    let title = format!(
        "2. Durable submit throughput over the socket (pending, not run), median of {runs} runs"
    );
    let mut t = Table::new(
        &title,
        &[
            "clients",
            "submits/s (median)",
            "runs",
            "x one-row ceiling",
            "% of batched ceiling",
            "daemon CPU/submit",
            "client CPU/submit",
            "target",
            "verdict",
        ],
    );
    let r16 = median(&col(|r| r.c16 / r.single));
    let p16 = median(&col(|r| r.c16 / r.batched)) * 100.0;
    let r64 = median(&col(|r| r.c64 / r.single));
    let p64 = median(&col(|r| r.c64 / r.batched)) * 100.0;
    let c16 = col(|r| r.c16);
    let c64 = col(|r| r.c64);
    t.row(vec![
        "16".into(),
        thousands(median(&c16)),
        spread(&c16, thousands),
        format!("{r16:.1}x"),
        format!("{p16:.0} %"),
        format!("{:.0} us", median(&col(|r| r.d16))),
        format!("{:.0} us", median(&col(|r| r.k16))),
        ">= 8x one-row".into(),
        verdict(r16 >= 8.0).into(),
    ]);
    t.row(vec![
        "64".into(),
        thousands(median(&c64)),
        spread(&c64, thousands),
        format!("{r64:.1}x"),
        format!("{p64:.0} %"),
        format!("{:.0} us", median(&col(|r| r.d64))),
        format!("{:.0} us", median(&col(|r| r.k64))),
        ">= 50 % batched".into(),
        verdict(p64 >= 50.0).into(),
    ]);
    t.print();
}
