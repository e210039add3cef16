//! Section 3: end-to-end lifecycle of no-op operations.
//!
//! `dummy` with `steps: 0` submitted in bulk (`submit_batch`, one durable
//! commit per batch) to a fresh daemon that runs them: each one is
//! inserted, claimed, run and completed, every step committed durably by
//! the writer. The clock runs from the first submit until `list` reports
//! no active operation; the completed count is then checked in the
//! database, so nothing is counted that did not finish.

use crate::daemon::{line, Bench, Slots};
use crate::stats::{median, spread, thousands, thread_cpu, verdict, Table};
use opsd::protocol::{Request, Submit};
use opsd::store::records::ListFilter;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Operations per `submit_batch` request (well under the 1 MiB line limit).
const BATCH: usize = 5_000;

/// One lifecycle run's figures.
struct Once {
    /// Operations per second, first submit to last completion.
    rate: f64,
    /// Seconds spent in the submit requests.
    submit: f64,
    /// CPU microseconds per operation of the writer thread.
    writer_us: f64,
    /// CPU microseconds per operation of the whole process.
    total_us: f64,
}

/// One lifecycle run.
fn once(ops: usize, slots: Slots) -> Once {
    let bench = Bench::fresh(slots);
    let mut conn = bench.client();
    let one = Submit::new("dummy", json!({"steps": 0}));
    let batches: Vec<Vec<u8>> = (0..ops.div_ceil(BATCH))
        .map(|b| {
            let n = BATCH.min(ops - b * BATCH);
            line(Request::SubmitBatch {
                operations: vec![one.clone(); n],
            })
        })
        .collect();
    let active = line(Request::List(ListFilter {
        active: true,
        limit: Some(0),
        ..ListFilter::default()
    }));
    let cpu0 = thread_cpu();
    let t = Instant::now();
    let mut last = String::new();
    for b in &batches {
        let v: Value = serde_json::from_str(conn.raw(b)).expect("JSON");
        let ids = v["operations"].as_array().expect("operations");
        last = ids.last().expect("one")["operation_id"]
            .as_str()
            .expect("id")
            .to_string();
    }
    let submitted = t.elapsed().as_secs_f64();
    // Wait for the last one submitted with a cheap `get` (claims go by
    // age, so it is among the last to run), then confirm with `list`
    // that nothing is active. Polling `list` alone would count every
    // pending row on each poll and take CPU from the daemon.
    let last = line(Request::get(&last));
    loop {
        let v: Value = serde_json::from_str(conn.raw(&last)).expect("JSON");
        if v["operation"]["status"] == "completed" {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    loop {
        let v: Value = serde_json::from_str(conn.raw(&active)).expect("JSON");
        if v["active"].as_i64() == Some(0) {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let elapsed = t.elapsed().as_secs_f64();
    let cpu1 = thread_cpu();
    let used = |name: Option<&str>| {
        let sum = |m: &std::collections::BTreeMap<String, f64>| -> f64 {
            m.iter()
                .filter(|(k, _)| name.is_none_or(|n| k.as_str() == n))
                .map(|(_, v)| v)
                .sum()
        };
        (sum(&cpu1) - sum(&cpu0)) * 1e6 / ops as f64
    };
    let (writer_us, total_us) = (used(Some("opsd-writer")), used(None));
    let completed = bench
        .daemon
        .as_ref()
        .expect("running")
        .runtime
        .store
        .counts()
        .map(|c| {
            c.iter()
                .find(|(s, _)| *s == opsd::model::Status::Completed)
                .map(|(_, n)| *n)
                .unwrap_or(0)
        })
        .expect("count");
    assert_eq!(completed as usize, ops, "every operation must complete");
    Once {
        rate: ops as f64 / elapsed,
        submit: submitted,
        writer_us,
        total_us,
    }
}

/// Run section 3 for each worker setting, `runs` times each.
pub fn run(runs: usize, ops: usize, workers: &[usize]) {
    let mut t = Table::new(
        &format!(
            "3. End-to-end lifecycle, {} no-op dummies via submit_batch, median of {runs} runs",
            thousands(ops as f64)
        ),
        &[
            "workers = concurrency.dummy",
            "ops/s (median)",
            "runs",
            "submit part (s)",
            "writer CPU/op",
            "process CPU/op",
            "target",
            "verdict",
        ],
    );
    for &w in workers {
        let mut rates = Vec::new();
        let mut submit = Vec::new();
        let mut writer = Vec::new();
        let mut total = Vec::new();
        for i in 0..runs {
            let r = once(
                ops,
                Slots {
                    workers: w,
                    dummy: w,
                },
            );
            eprintln!(
                "  workers {w}, run {}/{runs}: {:.0} ops/s (submitting {:.2} s, writer {:.0} us/op, process {:.0} us/op)",
                i + 1,
                r.rate,
                r.submit,
                r.writer_us,
                r.total_us
            );
            rates.push(r.rate);
            submit.push(r.submit);
            writer.push(r.writer_us);
            total.push(r.total_us);
        }
        let m = median(&rates);
        t.row(vec![
            w.to_string(),
            thousands(m),
            spread(&rates, thousands),
            format!("{:.2} s", median(&submit)),
            format!("{:.0} us", median(&writer)),
            format!("{:.0} us", median(&total)),
            ">= 20,000 ops/s".into(),
            verdict(m >= 20_000.0).into(),
        ]);
    }
    t.print();
}
