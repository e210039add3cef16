//! opsd against effectum on the same no-op lifecycle, interleaved in one
//! run: N operations submitted in batches, drained to completion; the
//! clock runs from the first submit to the last completion. Medians of
//! several pairs, and their ratio; and each side's bytes written to
//! storage per operation (`/proc/<pid>/io`), which does not move with the
//! VM's speed the way the rates do.
//!
//! ```sh
//! cargo build --release                      # the opsd binary
//! cd benches/peers && cargo run --release -- --ops 50000 --slots 16,64,200 --pairs 3
//! cargo run --release -- --prefill 1000000 --slots 200   # on 1M finished rows
//! ```

#[path = "../../support/prefill.rs"]
mod prefill;
#[path = "../../support/serve.rs"]
mod serve;

use effectum::{Job, JobRegistry, JobRunner, Queue, Worker};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Args {
    ops: usize,
    batch: usize,
    slots: Vec<usize>,
    pairs: usize,
    prefill: usize,
    opsd: PathBuf,
}

fn args() -> Args {
    let mut a = Args {
        ops: 50_000,
        batch: 1_000,
        slots: vec![200],
        pairs: 3,
        prefill: 0,
        opsd: Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/release/opsd"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--ops" => a.ops = v().parse().expect("--ops N"),
            "--batch" => a.batch = v().parse().expect("--batch N"),
            "--slots" => {
                a.slots = v()
                    .split(',')
                    .map(|s| s.parse().expect("--slots N,M"))
                    .collect()
            }
            "--pairs" => a.pairs = v().parse().expect("--pairs N"),
            "--prefill" => a.prefill = v().parse().expect("--prefill N"),
            "--opsd" => a.opsd = v().into(),
            other => panic!("unknown argument {other}"),
        }
    }
    assert!(
        a.opsd.exists(),
        "{} not found: run `cargo build --release` first",
        a.opsd.display()
    );
    a
}

fn bench_dir() -> tempfile::TempDir {
    // The real disk (target/), not tmpfs: fsync is what is being measured.
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tmp");
    std::fs::create_dir_all(&base).unwrap();
    tempfile::tempdir_in(base).unwrap()
}

// ---- opsd: the real binary, over its socket ----------------------------

struct Opsd {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Opsd {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

fn start_opsd(bin: &Path, dir: tempfile::TempDir, slots: usize) -> Opsd {
    let config = format!("workers = {slots}\n[concurrency]\ndummy = {slots}\n");
    let (mut child, socket) = serve::spawn(bin, dir.path(), &config);
    serve::wait_ready(&mut child, &socket, Duration::from_secs(60));
    Opsd {
        child,
        socket,
        _dir: dir,
    }
}

/// opsd's database with `rows` finished operations (written directly,
/// setup only), for the database-size curve.
fn prefill_opsd(bin: &Path, rows: usize) -> tempfile::TempDir {
    let dir = bench_dir();
    if rows == 0 {
        return dir;
    }
    // Create the schema with the daemon itself, then fill it directly.
    let db = dir.path().join("opsd.db");
    let sock = dir.path().join("init.sock");
    let mut child = Command::new(bin)
        .args(["serve", "--state-dir"])
        .arg(dir.path())
        .arg("--socket")
        .arg(&sock)
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while UnixStream::connect(&sock).is_err() {
        assert!(t.elapsed() < Duration::from_secs(60), "opsd did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();
    let mut c = rusqlite::Connection::open(&db).unwrap();
    c.pragma_update(None, "synchronous", "OFF").unwrap();
    let tx = c.transaction().unwrap();
    {
        let mut ins = tx
            .prepare(
                "INSERT INTO operations (operation_id, operation_type, status, created_at, updated_at, \
                 completed_at, progress_percent, metadata, attempt) \
                 VALUES (?1, 'dummy', 'completed', ?2, ?2, ?2, 100, '{\"steps\":0}', 1)",
            )
            .unwrap();
        for i in 0..rows {
            ins.execute(rusqlite::params![prefill::id(i), prefill::at(i)])
                .unwrap();
        }
    }
    tx.commit().unwrap();
    c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    dir
}

fn request(conn: &mut BufReader<UnixStream>, line: &str) -> Value {
    conn.get_mut().write_all(line.as_bytes()).unwrap();
    let mut out = String::new();
    conn.read_line(&mut out).unwrap();
    serde_json::from_str(&out).unwrap()
}

/// Bytes a process has caused to be written to storage so far
/// (`write_bytes` of `/proc/<pid>/io`: the WAL, checkpoints into the
/// database file, journals). Steadier than a rate on a noisy machine: it
/// counts what the work costs the disk, not how fast the VM was.
fn written(pid: &str) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// One opsd run: operations per second and bytes written per operation.
fn opsd_once(bin: &Path, ops: usize, batch: usize, slots: usize, prefill: usize) -> (f64, f64) {
    let d = start_opsd(bin, prefill_opsd(bin, prefill), slots);
    let pid = d.child.id().to_string();
    let before = written(&pid);
    let mut conn = BufReader::new(UnixStream::connect(&d.socket).unwrap());
    let one = json!({"type": "dummy", "params": {"steps": 0}});
    let batches: Vec<String> = (0..ops.div_ceil(batch))
        .map(|b| {
            let n = batch.min(ops - b * batch);
            let mut l =
                json!({"cmd": "submit_batch", "operations": vec![one.clone(); n]}).to_string();
            l.push('\n');
            l
        })
        .collect();
    let t = Instant::now();
    let mut last = String::new();
    for b in &batches {
        let v = request(&mut conn, b);
        last = v["operations"]
            .as_array()
            .expect("operations")
            .last()
            .unwrap()["operation_id"]
            .as_str()
            .unwrap()
            .to_string();
    }
    let get = format!("{}\n", json!({"cmd": "get", "id": last}));
    let active = format!("{}\n", json!({"cmd": "list", "active": true, "limit": 0}));
    while request(&mut conn, &get)["operation"]["status"] != "completed" {
        std::thread::sleep(Duration::from_millis(2));
    }
    while request(&mut conn, &active)["active"].as_i64() != Some(0) {
        std::thread::sleep(Duration::from_millis(2));
    }
    let rate = ops as f64 / t.elapsed().as_secs_f64();
    (rate, (written(&pid) - before) as f64 / ops as f64)
}

// ---- effectum: in process, as its stress test runs it --------------------

async fn noop(_job: effectum::RunningJob, _ctx: ()) -> Result<(), String> {
    Ok(())
}

fn prefill_effectum(db: &Path, rows: usize) {
    if rows == 0 {
        return;
    }
    let mut c = rusqlite::Connection::open(db).unwrap();
    c.pragma_update(None, "synchronous", "OFF").unwrap();
    let tx = c.transaction().unwrap();
    {
        let mut ins = tx
            .prepare(
                "INSERT INTO jobs (external_id, job_type, priority, weight, status, orig_run_at, \
                 current_try, max_retries, backoff_multiplier, backoff_randomization, \
                 backoff_initial_interval, added_at, default_timeout, heartbeat_increment, \
                 started_at, finished_at) \
                 VALUES (?1, 'noop', 0, 1, 'success', 0, 1, 0, 1.0, 0.0, 1, 0, 60, 60, ?2, ?2)",
            )
            .unwrap();
        for i in 0..rows as i64 {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&i.to_le_bytes());
            ins.execute(rusqlite::params![id.to_vec(), i]).unwrap();
        }
    }
    tx.commit().unwrap();
}

/// One effectum run (in this process): jobs per second and bytes written
/// per job (this process's `write_bytes` over the run; nothing else here
/// writes meanwhile).
async fn effectum_once(ops: usize, batch: usize, slots: usize, prefill: usize) -> (f64, f64) {
    let dir = bench_dir();
    let path = dir.path().join("effectum.db");
    let queue = Arc::new(Queue::new(&path).await.unwrap());
    prefill_effectum(&path, prefill);
    let registry = JobRegistry::new(&[JobRunner::builder("noop", noop).build()]);
    // Its stress test's shape: workers of 20 slots each.
    let per = 20.min(slots) as u16;
    let n_workers = slots.div_ceil(per as usize);
    let mut workers = Vec::new();
    for _ in 0..n_workers {
        workers.push(
            Worker::builder(&queue, ())
                .registry(&registry)
                .min_concurrency(per)
                .max_concurrency(per)
                .build()
                .await
                .unwrap(),
        );
    }
    let before = written("self");
    let t = Instant::now();
    for b in 0..ops.div_ceil(batch) {
        let n = batch.min(ops - b * batch);
        let jobs: Vec<Job> = (0..n).map(|_| Job::builder("noop").build()).collect();
        queue.add_jobs(jobs).await.unwrap();
    }
    loop {
        let done: u64 = workers.iter().map(|w| w.counts().finished as u64).sum();
        if done >= ops as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let rate = ops as f64 / t.elapsed().as_secs_f64();
    let bytes = (written("self") - before) as f64 / ops as f64;
    for w in workers {
        let _ = w.unregister(Some(Duration::from_secs(5))).await;
    }
    let _ = queue.close(Duration::from_secs(5)).await;
    (rate, bytes)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let a = args();
    println!(
        "| slots | rows before | opsd ops/s (runs) | effectum jobs/s (runs) | opsd / effectum \
         | KB written per op, opsd / effectum |"
    );
    println!("|---:|---:|---|---|---:|---|");
    for &slots in &a.slots {
        let (mut o, mut e, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        let (mut ob, mut eb) = (Vec::new(), Vec::new());
        for _ in 0..a.pairs {
            let (bin, ops, batch, prefill) = (a.opsd.clone(), a.ops, a.batch, a.prefill);
            let (x, xb) =
                tokio::task::spawn_blocking(move || opsd_once(&bin, ops, batch, slots, prefill))
                    .await
                    .unwrap();
            let (y, yb) = effectum_once(a.ops, a.batch, slots, a.prefill).await;
            eprintln!(
                "  slots {slots}: opsd {x:.0}/s ({:.1} KB/op), effectum {y:.0}/s ({:.1} KB/op)",
                xb / 1024.0,
                yb / 1024.0
            );
            ob.push(xb);
            eb.push(yb);
            o.push(x);
            e.push(y);
            ratios.push(x / y);
        }
        let runs = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{x:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "| {slots} | {} | {:.0} ({}) | {:.0} ({}) | **{:.2}×** | {:.1} / {:.1} |",
            a.prefill,
            median(o.clone()),
            runs(&o),
            median(e.clone()),
            runs(&e),
            median(ratios),
            median(ob) / 1024.0,
            median(eb) / 1024.0
        );
    }
}
