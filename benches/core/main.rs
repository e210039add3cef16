//! The core benchmark of opsd (issue 2, "Benchmark"; results in
//! BENCHMARKS.md).
//!
//! ```text
//! cargo bench --bench core                      # everything (< 10 min)
//! cargo bench --bench core -- --quick           # smaller sizes (< 2 min)
//! cargo bench --bench core -- cancel reads      # some sections
//! cargo bench --bench core -- --runs 7 --rows 1000000 --workers 16,64
//! ```
//!
//! Sections: `throughput` (1: raw SQLite ceilings and 2: durable submits
//! over the socket, measured together so their ratios come from one run),
//! `lifecycle` (3), `progress` (4), `cancel` (5), `reads` (6), `memory`
//! (7). Every table prints as Markdown. Progress notes go to stderr.
//!
//! Everything runs against the real daemon (`opsd::daemon::Daemon`, or
//! the `opsd` binary for memory) on fresh directories under
//! `target/tmp` (or `$OPSD_BENCH_DIR`): a real disk, since fsync cost is
//! the point of half the figures.

mod cancel;
mod daemon;
mod lifecycle;
mod memory;
mod progress;
mod reads;
#[path = "../support/serve.rs"]
mod serve;
mod sqlite;
mod stats;
mod throughput;

use std::time::{Duration, Instant};

/// Every section, in run order.
const SECTIONS: &[&str] = &[
    "throughput",
    "lifecycle",
    "progress",
    "cancel",
    "reads",
    "memory",
];

/// Command-line options.
struct Args {
    /// Smaller sizes for a run under two minutes.
    quick: bool,
    /// Repetitions of each throughput measurement (medians are reported).
    runs: usize,
    /// Operations prefilled for the read and memory sections.
    rows: usize,
    /// Operations per lifecycle run.
    lifecycle_ops: usize,
    /// `workers` (= `concurrency.dummy`) settings tried for the lifecycle.
    workers: Vec<usize>,
    /// Sections to run.
    sections: Vec<String>,
}

fn parse_args() -> Args {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let quick = raw.iter().any(|a| a == "--quick");
    let mut a = Args {
        quick,
        runs: if quick { 3 } else { 5 },
        rows: if quick { 200_000 } else { 1_000_000 },
        lifecycle_ops: if quick { 20_000 } else { 50_000 },
        workers: if quick { vec![32] } else { vec![16, 32, 64] },
        sections: Vec::new(),
    };
    let mut it = raw.into_iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().unwrap_or_else(|| panic!("{name} needs a value"));
        match arg.as_str() {
            "--quick" => {}
            // `cargo bench` passes `--bench` to every bench binary.
            "--bench" => {}
            "--runs" => a.runs = value("--runs").parse().expect("--runs N"),
            "--rows" => a.rows = value("--rows").parse().expect("--rows N"),
            "--lifecycle-ops" => {
                a.lifecycle_ops = value("--lifecycle-ops").parse().expect("--lifecycle-ops N")
            }
            "--workers" => {
                a.workers = value("--workers")
                    .split(',')
                    .map(|w| w.parse().expect("--workers N,M"))
                    .collect()
            }
            s if SECTIONS.contains(&s) => a.sections.push(s.to_string()),
            other => panic!(
                "unknown argument {other:?}; sections: {}",
                SECTIONS.join(" ")
            ),
        }
    }
    if a.sections.is_empty() {
        a.sections = SECTIONS.iter().map(|s| s.to_string()).collect();
    }
    a
}

fn main() {
    let args = parse_args();
    let want = |s: &str| args.sections.iter().any(|x| x == s);
    let started = Instant::now();
    println!(
        "# opsd core benchmark ({} mode, {} CPUs, sections: {})",
        if args.quick { "quick" } else { "full" },
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        args.sections.join(" ")
    );
    if let Ok(load) = std::fs::read_to_string("/proc/loadavg") {
        println!("load average at start: {}", load.trim());
    }
    if want("throughput") {
        eprintln!("sections 1+2: ceilings and submit throughput");
        throughput::run(
            args.runs,
            &throughput::Sizes {
                single_rows: if args.quick { 2_000 } else { 5_000 },
                batch_rows: if args.quick { 100_000 } else { 200_000 },
                warmup: Duration::from_millis(500),
                measure: Duration::from_secs(if args.quick { 2 } else { 3 }),
            },
        );
    }
    if want("lifecycle") {
        eprintln!("section 3: lifecycle");
        lifecycle::run(args.runs.min(3), args.lifecycle_ops, &args.workers);
    }
    if want("progress") {
        eprintln!("section 4: progress hot path");
        progress::run(
            args.runs,
            if args.quick { 2_000_000 } else { 10_000_000 },
            args.quick,
        );
    }
    if want("cancel") {
        eprintln!("section 5: cancel latency");
        cancel::run(if args.quick { 30 } else { 100 });
    }
    if want("reads") || want("memory") {
        let dir = daemon::tempdir();
        eprintln!("prefilling {} operations", args.rows);
        let fill = sqlite::prefill(&dir.path().join("opsd.db"), args.rows);
        eprintln!("  prefill took {:.1} s (setup, not a result)", fill.seconds);
        if want("reads") {
            eprintln!("section 6: reads at scale");
            reads::run(
                dir.path(),
                fill.rows,
                &fill.sample_ids,
                if args.quick { 2_000 } else { 10_000 },
                if args.quick { 100 } else { 400 },
            );
        }
        if want("memory") {
            eprintln!("section 7: memory");
            let empty = daemon::tempdir();
            memory::run(empty.path(), dir.path(), fill.rows, &fill.sample_ids);
        }
    }
    if let Ok(load) = std::fs::read_to_string("/proc/loadavg") {
        println!("load average at end: {}", load.trim());
    }
    println!("total time: {:.0} s", started.elapsed().as_secs_f64());
}
