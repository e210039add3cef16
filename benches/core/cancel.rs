//! Section 5: cancel latency.
//!
//! One `dummy` at a time with `step_ms: 10` (and its default checkpoint on
//! every step, so the cancel lands on a job that writes durably all the
//! time). Once it is running, after a random part of a step, a `cancel`
//! with `wait_ms: 0` is sent: its answer is the acknowledgement. Then
//! `get` is polled until the status reads `cancelled`. Reported: the ack
//! latency, and ack → `cancelled` visible (the figure the target is
//! about), p50/p99 over the samples. A cancel with the default wait (the
//! daemon answers once the job has stopped) is measured too: that is
//! what `opsd cancel` shows a user.

use crate::daemon::{Bench, Conn, Slots};
use crate::stats::{ms, percentile, verdict, Table};
use opsd::ids::OperationId;
use opsd::protocol::{Request, Submit};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Submit a long dummy and wait until it runs; returns its id.
fn start_one(conn: &mut Conn) -> String {
    let v = conn.call(Submit::new(
        "dummy",
        json!({"steps": 100_000, "step_ms": 10}),
    ));
    let id = v["operation_id"].as_str().expect("id").to_string();
    loop {
        let g = conn.call(Request::get(&id));
        if g["operation"]["status"] == "running" {
            return id;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

/// Run section 5 with `samples` cancels of each kind.
pub fn run(samples: usize) {
    let bench = Bench::fresh(Slots {
        workers: 4,
        dummy: 4,
    });
    let mut conn = bench.client();
    let mut ack = Vec::new();
    let mut visible = Vec::new();
    let mut total = Vec::new();
    let mut waited = Vec::new();
    for i in 0..samples * 2 {
        let id = start_one(&mut conn);
        // Land anywhere within a step.
        std::thread::sleep(Duration::from_micros(
            10_000 + rand::random::<u64>() % 10_000,
        ));
        if i % 2 == 0 {
            let t0 = Instant::now();
            conn.call(Request::Cancel {
                id: OperationId::from(id.as_str()),
                reason: None,
                wait_ms: Some(0),
            });
            let t1 = Instant::now();
            loop {
                let g: Value = conn.call(Request::get(&id));
                if g["operation"]["status"] == "cancelled" {
                    break;
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            let t2 = Instant::now();
            ack.push(ms(t1 - t0));
            visible.push(ms(t2 - t1));
            total.push(ms(t2 - t0));
        } else {
            let t0 = Instant::now();
            let v = conn.call(Request::cancel(&id));
            waited.push(ms(t0.elapsed()));
            assert_eq!(v["status"], "cancelled", "{v}");
        }
    }
    let mut t = Table::new(
        &format!("5. Cancel latency, dummy step_ms=10, {samples} cancels of each kind"),
        &["measure", "p50", "p99", "max", "target", "verdict"],
    );
    let row = |name: &str, xs: &[f64], target: Option<f64>| {
        let p99 = percentile(xs, 99.0);
        vec![
            name.to_string(),
            format!("{:.2} ms", percentile(xs, 50.0)),
            format!("{p99:.2} ms"),
            format!("{:.2} ms", percentile(xs, 100.0)),
            target.map(|x| format!("p99 <= {x} ms")).unwrap_or_default(),
            target
                .map(|x| verdict(p99 <= x).to_string())
                .unwrap_or_default(),
        ]
    };
    t.row(row("cancel ack (wait_ms 0)", &ack, None));
    t.row(row(
        "ack -> `cancelled` visible via get",
        &visible,
        Some(20.0),
    ));
    t.row(row(
        "send -> `cancelled` visible via get",
        &total,
        Some(20.0),
    ));
    t.row(row(
        "cancel with default wait (answers `cancelled`)",
        &waited,
        Some(20.0),
    ));
    t.print();
}
