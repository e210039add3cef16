//! Raw SQLite: the ceilings opsd is measured against, and the prefill of a
//! large database for the read and memory sections.
//!
//! Both open the file the way the daemon does (WAL, then
//! `opsd::store::sqlite::apply_pragmas`, so `synchronous=FULL`) and write the real
//! `operations` schema with all its indexes and CHECK constraints: a
//! ceiling measured on a bare table would flatter SQLite and make opsd look
//! worse than it is.

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use opsd::ids;
use opsd::model::OperationType;
use opsd::store::sqlite::migrate::SCHEMA_SQL;
use rusqlite::{params, Connection};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Instant;

/// The INSERT the daemon's `store::operations::insert` runs, column for
/// column, so the ceiling writes the same bytes per row.
const INSERT: &str = "INSERT INTO operations (operation_id, parent_operation_id, operation_type, \
     status, priority, created_at, updated_at, metadata, idempotency_key, phase_start, phase_end, \
     fail_parent, gpus_requested, max_attempts, run_after) \
     VALUES (?1, NULL, 'dummy', 'pending', 0, ?2, ?2, ?3, NULL, NULL, NULL, 0, 0, 1, NULL)";

/// The metadata a submitted `{"type":"dummy","params":{"steps":0}}` gets
/// (defaults filled in by the job's validation), so rows match exactly.
pub fn dummy_metadata() -> Value {
    opsd::jobs::job_for(OperationType::Dummy)
        .validate(&json!({ "steps": 0 }))
        .expect("dummy params are valid")
}

/// Open a fresh database file like the daemon does and create the schema.
fn open_fresh(path: &Path) -> Connection {
    let conn = Connection::open(path).expect("open ceiling database");
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .expect("WAL");
    assert_eq!(mode, "wal");
    opsd::store::sqlite::apply_pragmas(&conn).expect("pragmas");
    conn.execute_batch(SCHEMA_SQL).expect("schema");
    let sync: i64 = conn
        .query_row("PRAGMA synchronous", [], |r| r.get(0))
        .expect("synchronous");
    assert_eq!(
        sync, 2,
        "the ceiling must be measured with synchronous=FULL"
    );
    conn
}

/// Insert `rows` operation-shaped rows into a fresh file at `path`, `batch`
/// rows per transaction (1: one commit, so one fsync, per row). Returns
/// rows per second. Ids and timestamps are made before the clock starts:
/// this is SQLite's figure alone.
pub fn insert_ceiling(path: &Path, rows: usize, batch: usize) -> f64 {
    let conn = open_fresh(path);
    let metadata = dummy_metadata().to_string();
    let start = Utc::now();
    let data: Vec<(String, String)> = (0..rows)
        .map(|i| {
            let at = start + ChronoDuration::microseconds(i as i64);
            // The daemon's id shape, with a unique suffix: random 32-bit
            // suffixes collide within one second at these rates.
            let suffix = (i as u32).wrapping_mul(2_654_435_761);
            (
                format!("op_dummy_{}_{suffix:08x}", at.format("%Y%m%d_%H%M%S")),
                ids::timestamp(at),
            )
        })
        .collect();
    let mut stmt = conn.prepare_cached(INSERT).expect("prepare");
    let t = Instant::now();
    for chunk in data.chunks(batch) {
        conn.execute_batch("BEGIN IMMEDIATE").expect("begin");
        for (id, at) in chunk {
            stmt.execute(params![id, at, metadata]).expect("insert");
        }
        conn.execute_batch("COMMIT").expect("commit");
    }
    rows as f64 / t.elapsed().as_secs_f64()
}

/// How the prefilled rows are spread over statuses and types.
pub struct Prefill {
    /// Every 100th id, to sample `get` requests from.
    pub sample_ids: Vec<String>,
    /// Rows written.
    pub rows: usize,
    /// Seconds the prefill took (setup, not a result).
    pub seconds: f64,
}

/// Fill a new opsd database at `path` with `rows` operations, written
/// directly with rusqlite in large transactions (setup, not measured), in
/// the shape a long-lived daemon accumulates: about a year of history,
/// 98 % completed, 1 % failed, 1 % cancelled, 2,000 `backtest` operations
/// still pending at the end (the read section's daemon has no backtest
/// slots, so they stay pending) and a few `running` rows left by a
/// "crash" (the daemon marks them failed/crash when it starts, as it
/// would after a real crash).
pub fn prefill(path: &Path, rows: usize) -> Prefill {
    let t = Instant::now();
    // Create it through the daemon's own migration so the schema version
    // is set and `opsd serve` accepts the file.
    let conn = opsd::store::sqlite::migrate::open_and_migrate(path).expect("migrate");
    let kinds = ["dummy", "command", "training", "backtest"];
    let metadata = dummy_metadata().to_string();
    let step = ChronoDuration::seconds(30);
    let base: DateTime<Utc> = Utc::now() - step * rows as i32 - ChronoDuration::hours(1);
    let pending_from = rows.saturating_sub(2_000);
    let mut sample_ids = Vec::with_capacity(rows / 100 + 1);
    let mut stmt = conn
        .prepare(
            "INSERT INTO operations (operation_id, operation_type, status, stop_reason, attempt, \
             created_at, started_at, completed_at, updated_at, progress_percent, progress_message, \
             steps_completed, steps_total, metadata, result_summary, error_message) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, 10, ?13, ?14, ?15)",
        )
        .expect("prepare prefill");
    conn.execute_batch("BEGIN").expect("begin");
    for i in 0..rows {
        if i > 0 && i.is_multiple_of(50_000) {
            conn.execute_batch("COMMIT; BEGIN").expect("commit");
        }
        let created = base + step * i as i32;
        let kind = if i >= pending_from {
            "backtest"
        } else {
            kinds[i % 10 % kinds.len()]
        };
        // A bijection on u32 (odd multiplier), so ids are unique and the
        // suffix looks random like the daemon's.
        let suffix = (i as u32).wrapping_mul(2_654_435_761);
        let id = format!("op_{kind}_{}_{suffix:08x}", created.format("%Y%m%d_%H%M%S"));
        let r = row_shape(i, rows, pending_from);
        let status = r.status;
        let started =
            (status != "pending").then(|| ids::timestamp(created + ChronoDuration::seconds(1)));
        let open = matches!(status, "pending" | "running");
        let completed_at = (!open).then(|| ids::timestamp(created + ChronoDuration::seconds(11)));
        let updated_at = completed_at
            .clone()
            .unwrap_or_else(|| ids::timestamp(created));
        stmt.execute(params![
            id,
            kind,
            status,
            r.stop,
            (status != "pending") as i64,
            ids::timestamp(created),
            started,
            completed_at,
            updated_at,
            r.percent,
            r.steps.map(|s| format!("Step {s}/10")),
            r.steps,
            metadata,
            r.result,
            r.error,
        ])
        .expect("prefill insert");
        if i % 100 == 7 && status == "completed" {
            sample_ids.push(id);
        }
    }
    // No ANALYZE: the daemon never runs it, so the planner must do
    // without statistics here too.
    conn.execute_batch("COMMIT; PRAGMA wal_checkpoint(TRUNCATE);")
        .expect("commit");
    drop(stmt);
    drop(conn);
    Prefill {
        sample_ids,
        rows,
        seconds: t.elapsed().as_secs_f64(),
    }
}

/// The status-dependent columns of one prefilled row.
struct RowShape {
    status: &'static str,
    stop: Option<&'static str>,
    percent: f64,
    steps: Option<i64>,
    result: Option<&'static str>,
    error: Option<&'static str>,
}

/// Row `i` of `rows`: pending from `pending_from` on, a few running near
/// the end, 1 % failed, 1 % cancelled, the rest completed.
fn row_shape(i: usize, rows: usize, pending_from: usize) -> RowShape {
    let shape = |status, stop, percent, steps| RowShape {
        status,
        stop,
        percent,
        steps,
        result: None,
        error: None,
    };
    if i >= pending_from {
        shape("pending", None, 0.0, None)
    } else if i.is_multiple_of(997) && i + 100_000 > rows {
        shape("running", None, 40.0, Some(4))
    } else if i.is_multiple_of(100) {
        RowShape {
            error: Some("dummy failed at step 3 as asked (fail_at_step)"),
            ..shape("failed", Some("error"), 30.0, Some(3))
        }
    } else if i % 100 == 1 {
        shape("cancelled", Some("user"), 60.0, Some(6))
    } else {
        RowShape {
            result: Some(r#"{"steps":10}"#),
            ..shape("completed", None, 100.0, Some(10))
        }
    }
}
