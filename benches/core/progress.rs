//! Section 4: the progress hot path.
//!
//! `RunningOp::report` is what a job's `ctx.progress(..)` does (the
//! context only forwards to it), so it is called directly here, on an
//! uncontended slot as inside a job between flushes. Two figures:
//!
//! - ns per call, median over runs of millions of calls;
//! - a job-like loop (a dependent chain of floating-point work per
//!   iteration, so the compiler cannot overlap or drop it) with and
//!   without one report per iteration. Runs alternate with and without
//!   in short blocks and the ratio is taken per pair, so machine noise
//!   hits both sides; the median ratio is reported for several amounts of
//!   work per iteration.

use crate::stats::{median, verdict, Table};
use opsd::control::ProgressUpdate;
use opsd::ids::OperationId;
use opsd::model::OperationType;
use opsd::runtime::running::RunningOp;
use std::hint::black_box;
use std::time::Instant;

/// The update a training loop sends each batch: percentage and a counter.
fn update(i: u64, total: u64) -> ProgressUpdate {
    ProgressUpdate {
        percentage: Some(i as f64 * 100.0 / total as f64),
        steps_completed: Some(i as i64),
        steps_total: Some(total as i64),
        ..Default::default()
    }
}

/// Nanoseconds per `report` call over `calls` calls.
fn ns_per_call(op: &RunningOp, calls: u64) -> f64 {
    let t = Instant::now();
    for i in 0..calls {
        op.report(black_box(update(i, calls)));
    }
    t.elapsed().as_nanos() as f64 / calls as f64
}

/// `work` multiply-adds in a dependent chain: about `4 * work` cycles.
#[inline(always)]
fn work(x: f64, work: u32) -> f64 {
    let mut x = x;
    for _ in 0..work {
        x = black_box(x).mul_add(1.000_000_1, 1e-9);
    }
    x
}

/// Seconds for `iters` iterations of the job loop, reporting each
/// iteration when `op` is given.
fn job_loop(op: Option<&RunningOp>, iters: u64, w: u32) -> f64 {
    let t = Instant::now();
    let mut x = 1.0;
    for i in 0..iters {
        x = work(x, w);
        if let Some(op) = op {
            op.report(update(i, iters));
        }
    }
    black_box(x);
    t.elapsed().as_secs_f64()
}

/// Run section 4.
pub fn run(runs: usize, calls: u64, quick: bool) {
    let op = RunningOp::new(
        OperationId::from("op_dummy_20260101_000000_bench000"),
        1,
        OperationType::Dummy,
        None,
        0.0,
        Vec::new(),
    );
    // Warm up caches and the CPU's frequency before timing.
    ns_per_call(&op, calls / 10);
    let per_call: Vec<f64> = (0..runs.max(5)).map(|_| ns_per_call(&op, calls)).collect();
    let m = median(&per_call);
    let mut t = Table::new(
        "4a. Progress hot path: RunningOp::report (percentage, steps_completed, steps_total)",
        &["measure", "median", "min", "max", "target", "verdict"],
    );
    let (lo, hi) = per_call
        .iter()
        .fold((f64::MAX, 0.0f64), |(a, b), x| (a.min(*x), b.max(*x)));
    t.row(vec![
        format!("ns per call ({} runs of {} calls)", per_call.len(), calls),
        format!("{m:.1} ns"),
        format!("{lo:.1} ns"),
        format!("{hi:.1} ns"),
        "<= 100 ns".into(),
        verdict(m <= 100.0).into(),
    ]);
    t.print();

    let mut t = Table::new(
        "4b. Job loop with vs without a report every iteration (median of paired ratios)",
        &[
            "work per iteration",
            "iteration without report",
            "overhead (median)",
            "pairs",
            "target",
            "verdict",
        ],
    );
    let pairs = if quick { 15 } else { 41 };
    for w in [250u32, 2_500, 25_000] {
        // About 20 ms per block: short enough that a burst of noise
        // rarely covers one side of a pair and not the other.
        let base = job_loop(None, 1_000, w) / 1_000.0;
        let iters = ((0.02 / base) as u64).max(100);
        let mut ratios = Vec::new();
        let mut without = Vec::new();
        for p in 0..pairs {
            // Alternate which side goes first, so drift cancels out.
            let (a, b) = if p % 2 == 0 {
                let a = job_loop(None, iters, w);
                (a, job_loop(Some(&op), iters, w))
            } else {
                let b = job_loop(Some(&op), iters, w);
                (job_loop(None, iters, w), b)
            };
            ratios.push(b / a);
            without.push(a / iters as f64);
        }
        let over = (median(&ratios) - 1.0) * 100.0;
        t.row(vec![
            format!("{w} dependent FMAs"),
            format!("{:.2} us", median(&without) * 1e6),
            format!("{over:+.2} %"),
            pairs.to_string(),
            "within 1 %".into(),
            verdict(over.abs() <= 1.0).into(),
        ]);
    }
    t.print();
}
