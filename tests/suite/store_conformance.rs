//! The store conformance suite: the same scenarios against every backend,
//! driving `opsd::store::Backend` directly (River's driver tests). SQLite
//! always runs; PostgreSQL runs when `OPSD_TEST_POSTGRES` holds a server
//! URL (e.g. `postgres://postgres@127.0.0.1:5432/postgres`), each test in
//! a database of its own that it creates and drops. Without it the
//! PostgreSQL half is skipped with a note on stderr.

use opsd::error::Error;
use opsd::ids::OperationId;
use opsd::model::{CheckpointType, OperationType, Status, StopReason};
use opsd::store::postgres::{PostgresStore, Settings};
use opsd::store::records::{
    Checkpoint, CheckpointWrite, ClaimPlan, CleanFilter, Finish, ListFilter, NewOperation,
    Progress, ProgressWrite, QueueChange, RunEnd, RunOutcome,
};
use opsd::store::Store;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// A PostgreSQL database made for one test and dropped after it.
pub struct PgDb {
    admin: String,
    /// Its name.
    pub name: String,
    /// Its URL.
    pub url: String,
}

impl PgDb {
    /// A fresh database, or `None` (with a note) when no server is
    /// configured.
    pub fn create(test: &str) -> Option<PgDb> {
        let Ok(admin) = std::env::var("OPSD_TEST_POSTGRES") else {
            eprintln!(
                "SKIPPED (PostgreSQL half of {test}): OPSD_TEST_POSTGRES is unset; set it to a \
                 server URL such as postgres://postgres@127.0.0.1:5432/postgres to run it"
            );
            return None;
        };
        let name = format!("opsd_t_{}", rand_suffix());
        let mut c = postgres::Client::connect(&admin, postgres::NoTls)
            .unwrap_or_else(|e| panic!("OPSD_TEST_POSTGRES={admin}: cannot connect: {e}"));
        c.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
        let url = with_db(&admin, &name);
        Some(PgDb { admin, name, url })
    }

    /// A plain client on the test database.
    pub fn client(&self) -> postgres::Client {
        postgres::Client::connect(&self.url, postgres::NoTls).unwrap()
    }

    /// Open the store as host `host`.
    pub fn store(&self, host: &str, lease: Duration) -> Store {
        Arc::new(PostgresStore::open(&self.url, settings(host, lease)).unwrap())
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        if let Ok(mut c) = postgres::Client::connect(&self.admin, postgres::NoTls) {
            let _ = c.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

/// Settings of a test store.
pub fn settings(host: &str, lease: Duration) -> Settings {
    Settings {
        host: host.into(),
        lease,
        shared_dir: None,
        caller_wait: Duration::from_secs(5),
    }
}

fn rand_suffix() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{}_{:x}", std::process::id(), t & 0xffff_ffff)
}

/// `url` with its database replaced by `db`.
pub fn with_db(url: &str, db: &str) -> String {
    let (base, query) = match url.find('?') {
        Some(q) => (&url[..q], &url[q..]),
        None => (url, ""),
    };
    let after_scheme = base.find("://").map(|i| i + 3).unwrap_or(0);
    let root = match base[after_scheme..].find('/') {
        Some(i) => &base[..after_scheme + i],
        None => base,
    };
    format!("{root}/{db}{query}")
}

/// Run `scenario` on SQLite, then on PostgreSQL when configured.
fn on_both(test: &str, scenario: impl Fn(&Store)) {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = opsd::store::open(&dir.path().join("opsd.db")).unwrap();
    scenario(&sqlite);
    sqlite.close();
    if let Some(db) = PgDb::create(test) {
        let pg = db.store("host-a", Duration::from_secs(30));
        scenario(&pg);
        pg.close();
    }
}

fn new_op(kind: OperationType) -> NewOperation {
    NewOperation::new(
        kind,
        json!({"steps": 3, "x": 0.30000000000000004, "name": "é ✓"}),
    )
}

fn submit(s: &Store, op: NewOperation) -> OperationId {
    s.submit(vec![op]).wait().unwrap().pop().unwrap().id
}

fn plan(kind: OperationType, n: usize) -> ClaimPlan {
    ClaimPlan {
        per_type: vec![(kind, n)],
        total: n,
        free_gpus: 0,
    }
}

fn live(id: &OperationId, attempt: i64, pct: f64, points: usize) -> ProgressWrite {
    ProgressWrite {
        id: id.clone(),
        attempt,
        progress: Progress {
            percentage: pct,
            message: Some(format!("at {pct}")),
            ..Progress::default()
        },
        points: (0..points)
            .map(|i| {
                (
                    opsd::ids::now(),
                    json!({"i": i, "loss": 1.0 / (i as f64 + 3.0)}),
                )
            })
            .collect(),
    }
}

fn finish(s: &Store, id: &OperationId, attempt: i64, status: Status, delete_cp: bool) {
    assert!(
        try_finish(s, id, attempt, status, delete_cp),
        "the end was recorded"
    );
}

/// Record the end of a run; whether its `after` heard that it was recorded.
fn try_finish(s: &Store, id: &OperationId, attempt: i64, status: Status, delete_cp: bool) -> bool {
    let (tx, rx) = std::sync::mpsc::channel();
    s.finish(
        RunEnd {
            id: id.clone(),
            parent: None,
            last: live(id, attempt, 100.0, 0),
            outcome: RunOutcome::Final(Finish {
                status,
                stop_reason: None,
                result: Some(json!({"ok": true, "value": 1.5})),
                error: None,
                progress: None,
            }),
            delete_checkpoint: delete_cp,
        },
        Box::new(move |r| tx.send(r.is_ok()).unwrap()),
    );
    rx.recv_timeout(Duration::from_secs(10)).unwrap()
}

fn checkpoint_write(id: &OperationId, attempt: i64, points: usize) -> CheckpointWrite {
    CheckpointWrite {
        checkpoint: Checkpoint {
            operation_id: id.clone(),
            checkpoint_type: CheckpointType::Periodic,
            created_at: opsd::ids::now(),
            state: json!({"step": 2}),
            artifacts_path: None,
            state_size_bytes: 0,
            artifacts_size_bytes: 0,
            progress_percent: Some(40.0),
            metrics_seq: 0,
        },
        live: live(id, attempt, 40.0, points),
        parent: None,
    }
}

#[test]
fn submit_read_back_every_column_and_idempotency() {
    on_both("submit_read_back", |s| {
        let mut op = new_op(OperationType::Dummy);
        op.idempotency_key = Some("k-1".into());
        op.priority = 3;
        op.phase = Some((10.0, 60.0));
        let first = s.submit(vec![op.clone()]).wait().unwrap().pop().unwrap();
        assert!(first.created);
        let mut again = new_op(OperationType::Dummy);
        again.idempotency_key = Some("k-1".into());
        let second = s.submit(vec![again]).wait().unwrap().pop().unwrap();
        assert!(!second.created);
        assert_eq!(second.id, first.id);
        let rec = s.get(&first.id).unwrap();
        assert_eq!(rec.status, Status::Pending);
        assert_eq!(rec.priority, 3);
        assert_eq!(rec.metadata, op.metadata, "JSON round-trips exactly");
        assert_eq!((rec.phase_start, rec.phase_end), (Some(10.0), Some(60.0)));
        assert_eq!(rec.warnings, json!([]));
        assert_eq!(rec.claimed_by, None);
        assert!(matches!(
            s.get(&OperationId("op_dummy_nope".into())),
            Err(Error::NotFound(_))
        ));
        let other = submit(s, new_op(OperationType::Backtest));
        let page = s
            .list(&ListFilter {
                kind: Some(OperationType::Backtest),
                ..ListFilter::default()
            })
            .unwrap();
        assert_eq!(page.total, 1);
        assert_eq!(page.rows[0].operation_id, other);
        assert_eq!(page.active, 2);
        let counts = s.counts().unwrap();
        assert!(counts.contains(&(Status::Pending, 2)), "{counts:?}");
    });
}

#[test]
fn claims_follow_priority_then_age_and_count_attempts() {
    on_both("claims", |s| {
        let low = submit(s, new_op(OperationType::Dummy));
        let mut h = new_op(OperationType::Dummy);
        h.priority = 5;
        let high = submit(s, h);
        let other = submit(s, new_op(OperationType::Backtest));
        let got = s.claim(plan(OperationType::Dummy, 10)).unwrap();
        let ids: Vec<_> = got.iter().map(|c| c.id.clone()).collect();
        assert_eq!(ids, vec![high, low.clone()]);
        assert!(got.iter().all(|c| c.attempt == 1));
        assert!(s.claim(plan(OperationType::Dummy, 10)).unwrap().is_empty());
        assert_eq!(s.status(&other).unwrap(), Status::Pending);
        assert_eq!(s.status(&low).unwrap(), Status::Running);
    });
}

#[test]
fn progress_metrics_checkpoint_and_a_new_attempt() {
    on_both("progress_metrics_checkpoint", |s| {
        let id = submit(s, new_op(OperationType::Dummy));
        let c = s.claim(plan(OperationType::Dummy, 1)).unwrap().remove(0);
        s.write_progress(vec![live(&id, c.attempt, 20.0, 3)], vec![])
            .wait()
            .unwrap();
        s.save_checkpoint(checkpoint_write(&id, c.attempt, 2))
            .wait()
            .unwrap();
        s.write_progress(vec![live(&id, c.attempt, 60.0, 2)], vec![])
            .wait()
            .unwrap();
        let (points, cursor) = s.metrics(&id, 0, 100).unwrap();
        assert_eq!(cursor, 7);
        let seqs: Vec<i64> = points.iter().map(|p| p.seq).collect();
        assert_eq!(seqs, (1..=7).collect::<Vec<_>>());
        assert_eq!(points[0].data, json!({"i": 0, "loss": 1.0 / 3.0}));
        let cp = s.checkpoint(&id).unwrap().unwrap();
        assert_eq!(cp.metrics_seq, 5);
        assert_eq!(cp.state, json!({"step": 2}));
        assert_eq!(s.get(&id).unwrap().progress.percentage, 60.0);
        // A crash and a new attempt: points after the checkpoint go.
        let rec = s.recover(true).unwrap();
        assert_eq!(rec.crashed, vec![id.clone()]);
        assert_eq!(rec.resumed, vec![id.clone()]);
        let again = s.claim(plan(OperationType::Dummy, 1)).unwrap().remove(0);
        assert_eq!(again.attempt, 2);
        let cp = s.begin_attempt(&id).wait().unwrap().unwrap();
        assert_eq!(cp.metrics_seq, 5);
        assert_eq!(s.metrics(&id, 0, 100).unwrap().1, 5);
        finish(s, &id, again.attempt, Status::Completed, true);
        let done = s.get(&id).unwrap();
        assert_eq!(done.status, Status::Completed);
        assert_eq!(done.progress.percentage, 100.0);
        assert_eq!(done.result_summary, Some(json!({"ok": true, "value": 1.5})));
        assert!(s.checkpoint(&id).unwrap().is_none());
    });
}

#[test]
fn a_childs_checkpoint_moves_its_parents_stored_percentage_with_it() {
    // A reader of the database (sqlite3, a dashboard) must never see a
    // running child ahead of its parent: the checkpoint carries the child's
    // progress, so it recomputes the parent in the same transaction, as
    // the flusher's progress writes do.
    on_both("child_checkpoint_parent", |s| {
        let parent = submit(s, new_op(OperationType::Pipeline));
        s.claim(plan(OperationType::Pipeline, 1)).unwrap();
        let mut child = new_op(OperationType::Dummy);
        child.parent = Some(parent.clone());
        let child = submit(s, child);
        let c = s.claim(plan(OperationType::Dummy, 1)).unwrap().remove(0);
        assert_eq!(s.get(&parent).unwrap().progress.percentage, 0.0);
        let mut cp = checkpoint_write(&child, c.attempt, 0);
        cp.parent = Some(parent.clone());
        s.save_checkpoint(cp).wait().unwrap();
        assert_eq!(s.get(&child).unwrap().progress.percentage, 40.0);
        assert_eq!(s.get(&parent).unwrap().progress.percentage, 40.0);
    });
}

#[test]
fn cancel_trees_and_exactly_one_resume_wins() {
    on_both("cancel_trees", |s| {
        let parent = submit(s, new_op(OperationType::Pipeline));
        let mut child = new_op(OperationType::Dummy);
        child.parent = Some(parent.clone());
        let child = submit(s, child);
        let done = s
            .cancel_tree(&parent, StopReason::User, Some("no".into()))
            .wait()
            .unwrap();
        assert_eq!(done.before, Status::Pending);
        assert!(done.running.is_empty());
        let p = s.get(&parent).unwrap();
        assert_eq!(
            (p.status, p.stop_reason),
            (Status::Cancelled, Some(StopReason::User))
        );
        let c = s.get(&child).unwrap();
        assert_eq!(
            (c.status, c.stop_reason),
            (Status::Cancelled, Some(StopReason::Parent))
        );
        let mut late = new_op(OperationType::Dummy);
        late.parent = Some(parent.clone());
        assert!(matches!(
            s.submit(vec![late]).wait(),
            Err(Error::InvalidTransition(_))
        ));
        // Two resumes: exactly one wins.
        let a = s.try_resume(&parent);
        let b = s.try_resume(&parent);
        let wins = [a.wait(), b.wait()].iter().filter(|r| r.is_ok()).count();
        assert_eq!(wins, 1);
        assert_eq!(s.status(&parent).unwrap(), Status::Resuming);
        // A running member gets a stop marker and is named.
        let running = s.claim(plan(OperationType::Pipeline, 1)).unwrap().remove(0);
        let done = s
            .cancel_tree(&parent, StopReason::User, None)
            .wait()
            .unwrap();
        assert_eq!(done.before, Status::Running);
        assert_eq!(done.running, vec![(parent.clone(), running.attempt, true)]);
        assert_eq!(s.get(&parent).unwrap().stop_reason, Some(StopReason::User));
        assert!(matches!(
            s.cancel_tree(&child, StopReason::User, None).wait(),
            Err(Error::InvalidTransition(_))
        ));
    });
}

#[test]
fn warnings_checkpoints_listing_and_the_sweep() {
    on_both("warnings_checkpoints", |s| {
        let id = submit(s, new_op(OperationType::Dummy));
        let c = s.claim(plan(OperationType::Dummy, 1)).unwrap().remove(0);
        s.save_checkpoint(checkpoint_write(&id, c.attempt, 0))
            .wait()
            .unwrap();
        s.add_warning(&id, "careful".into());
        finish(s, &id, c.attempt, Status::Failed, false);
        let rec = s.get(&id).unwrap();
        assert_eq!(rec.warnings[0]["message"], "careful");
        assert_eq!(s.checkpoints().unwrap().len(), 1);
        let gone = s
            .sweep_checkpoints("2999-01-01T00:00:00.000000Z".into())
            .wait()
            .unwrap();
        assert_eq!(gone, vec![id.clone()]);
        assert!(matches!(
            s.delete_checkpoint(&id).wait(),
            Err(Error::NotFound(_))
        ));
    });
}

// PostgreSQL only: what several hosts sharing one database rely on.

#[test]
fn two_hosts_claim_disjoint_sets_with_skip_locked() {
    let Some(db) = PgDb::create("two_hosts_claim_disjoint_sets") else {
        return;
    };
    let a = db.store("a", Duration::from_secs(30));
    let b = db.store("b", Duration::from_secs(30));
    let ops: Vec<NewOperation> = (0..60).map(|_| new_op(OperationType::Dummy)).collect();
    a.submit(ops).wait().unwrap();
    let claimers: Vec<_> = [a.clone(), b.clone()]
        .into_iter()
        .map(|s| {
            std::thread::spawn(move || {
                let mut mine = Vec::new();
                loop {
                    let got = s.claim(plan(OperationType::Dummy, 4)).unwrap();
                    if got.is_empty() {
                        break;
                    }
                    mine.extend(got.into_iter().map(|c| c.id));
                }
                mine
            })
        })
        .collect();
    let mut all: Vec<OperationId> = Vec::new();
    for t in claimers {
        all.extend(t.join().unwrap());
    }
    let n = all.len();
    all.sort();
    all.dedup();
    assert_eq!(
        (n, all.len()),
        (60, 60),
        "each operation claimed exactly once"
    );
    let by_host: Vec<(String, i64)> = db
        .client()
        .query(
            "SELECT claimed_by, count(*) FROM operations GROUP BY claimed_by ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(by_host.iter().map(|h| h.1).sum::<i64>(), 60);
    a.close();
    b.close();
}

#[test]
fn two_hosts_refreshing_one_parent_at_once_both_count() {
    // Two children of one pipeline run on two hosts. Each host's progress
    // write recomputes the parent in its own transaction. At READ COMMITTED
    // the second one must read the children after the first has
    // committed, or it stores a percentage without the other child's step.
    let Some(db) = PgDb::create("two_hosts_refresh_one_parent") else {
        return;
    };
    let s = db.store("a", Duration::from_secs(30));
    let parent = submit(&s, new_op(OperationType::Pipeline));
    s.claim(plan(OperationType::Pipeline, 1)).unwrap();
    let kids: Vec<OperationId> = (0..2)
        .map(|_| {
            let mut child = new_op(OperationType::Dummy);
            child.parent = Some(parent.clone());
            submit(&s, child)
        })
        .collect();
    let claimed = s.claim(plan(OperationType::Dummy, 2)).unwrap();
    assert_eq!(claimed.len(), 2);
    // The "other host": child 0 at 50 % and the parent refreshed to 25 %,
    // not yet committed, so it holds the parent's row.
    let mut other = db.client();
    let mut tx = other.transaction().unwrap();
    tx.execute(
        "UPDATE operations SET progress_percent = 50 WHERE operation_id = $1",
        &[&kids[0].as_str()],
    )
    .unwrap();
    tx.execute(
        "UPDATE operations SET progress_percent = 25 WHERE operation_id = $1",
        &[&parent.as_str()],
    )
    .unwrap();
    // This host: child 1 at 50 %, with the parent to refresh.
    let attempt = claimed
        .iter()
        .find(|c| c.id == kids[1])
        .map(|c| c.attempt)
        .unwrap();
    let ticket = s.write_progress(vec![live(&kids[1], attempt, 50.0, 0)], vec![parent.clone()]);
    let waiter = std::thread::spawn(move || ticket.wait());
    // Our write must be waiting on the parent's row before the other
    // commits, or the test would pass without any lock.
    let mut watcher = db.client();
    opsd_wait(Duration::from_secs(20), || {
        let n: i64 = watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
                &[],
            )
            .unwrap()
            .get(0);
        (n > 0).then_some(())
    });
    tx.commit().unwrap();
    waiter.join().unwrap().unwrap();
    assert_eq!(
        s.get(&parent).unwrap().progress.percentage,
        50.0,
        "both children's 50 % count in the parent"
    );
    s.close();
}

#[test]
fn a_host_that_lost_its_lease_writes_nothing_over_the_rescuer() {
    let Some(db) = PgDb::create("lost_lease_is_fenced") else {
        return;
    };
    let a = db.store("a", Duration::from_secs(1));
    let b = db.store("b", Duration::from_secs(30));
    let id = submit(&a, new_op(OperationType::Dummy));
    let run_a = a.claim(plan(OperationType::Dummy, 1)).unwrap().remove(0);
    a.save_checkpoint(checkpoint_write(&id, run_a.attempt, 2))
        .wait()
        .unwrap();
    // A is silent past its lease: B's rescuer recovers the operation as
    // after a crash and resumes it from its checkpoint, on B.
    let rescued = opsd_wait(Duration::from_secs(10), || {
        let r = b.rescue_expired(true).unwrap();
        (!r.crashed.is_empty()).then_some(r)
    });
    assert_eq!(rescued.crashed, vec![id.clone()]);
    assert_eq!(rescued.resumed, vec![id.clone()]);
    let run_b = b.claim(plan(OperationType::Dummy, 1)).unwrap().remove(0);
    assert_eq!(run_b.attempt, run_a.attempt + 1);
    b.begin_attempt(&id).wait().unwrap();
    b.write_progress(vec![live(&id, run_b.attempt, 70.0, 1)], vec![])
        .wait()
        .unwrap();
    // A wakes up: its progress, checkpoint and final row are all refused.
    a.write_progress(vec![live(&id, run_a.attempt, 99.0, 5)], vec![])
        .wait()
        .unwrap();
    a.save_checkpoint(checkpoint_write(&id, run_a.attempt, 5))
        .wait()
        .unwrap();
    // Its `after` hears that the end was not recorded, so the daemon
    // leaves the checkpoint files to B, which runs the operation now.
    assert!(!try_finish(&a, &id, run_a.attempt, Status::Completed, true));
    let lost = a.renew_leases(&[(id.clone(), run_a.attempt)]).unwrap();
    assert_eq!(lost, vec![(id.clone(), run_a.attempt)]);
    let rec = a.get(&id).unwrap();
    assert_eq!(rec.status, Status::Running);
    assert_eq!(rec.claimed_by.as_deref(), Some("b"));
    assert_eq!(rec.progress.percentage, 70.0);
    assert_eq!(
        a.metrics(&id, 0, 100).unwrap().1,
        3,
        "2 before the checkpoint + 1 of B's"
    );
    assert_eq!(a.checkpoint(&id).unwrap().unwrap().metrics_seq, 2);
    assert!(b
        .renew_leases(&[(id.clone(), run_b.attempt)])
        .unwrap()
        .is_empty());
    finish(&b, &id, run_b.attempt, Status::Completed, true);
    assert_eq!(a.status(&id).unwrap(), Status::Completed);
    a.close();
    b.close();
}

#[test]
fn a_cancel_on_one_host_is_a_stop_request_for_the_host_running_it() {
    let Some(db) = PgDb::create("cross_host_cancel") else {
        return;
    };
    let a = db.store("a", Duration::from_secs(30));
    let b = db.store("b", Duration::from_secs(30));
    let id = submit(&a, new_op(OperationType::Dummy));
    let run = b.claim(plan(OperationType::Dummy, 1)).unwrap().remove(0);
    // B listens; A cancels: B hears it and finds the stop request.
    b.wait_for_signal(Duration::from_millis(10));
    let done = a.cancel_tree(&id, StopReason::User, None).wait().unwrap();
    assert!(done.running.is_empty(), "not A's to stop");
    // The NOTIFY reaches B (the poll is the fallback, not tested here).
    opsd_wait(Duration::from_secs(5), || {
        b.wait_for_signal(Duration::from_millis(200))
            .stop
            .then_some(())
    });
    assert_eq!(
        b.stop_requests().unwrap(),
        vec![(id.clone(), run.attempt, StopReason::User)]
    );
    assert!(a.stop_requests().unwrap().is_empty());
    a.close();
    b.close();
}

#[test]
fn hosts_register_heartbeat_and_leave() {
    let Some(db) = PgDb::create("hosts_table") else {
        return;
    };
    let a = db.store("a", Duration::from_secs(30));
    let mut h = opsd::store::records::HostRecord {
        host: "a".into(),
        started_at: opsd::ids::now(),
        last_seen_at: String::new(),
        version: "0.1.0".into(),
        workers: 4,
        gpus: json!(["0", "1"]),
        types: json!(["dummy"]),
    };
    a.register_host(&h).unwrap();
    let first = a.hosts().unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!((first[0].workers, &first[0].gpus), (4, &json!(["0", "1"])));
    h.workers = 8;
    a.register_host(&h).unwrap();
    let again = a.hosts().unwrap();
    assert_eq!(again[0].workers, 8);
    assert!(again[0].last_seen_at >= first[0].last_seen_at);
    a.deregister_host("a").unwrap();
    assert!(a.hosts().unwrap().is_empty());
    a.close();
}

#[test]
fn a_database_of_another_application_is_refused_untouched() {
    let Some(db) = PgDb::create("foreign_database") else {
        return;
    };
    db.client()
        .batch_execute("CREATE TABLE customers (id int); INSERT INTO customers VALUES (1)")
        .unwrap();
    let err = PostgresStore::open(&db.url, settings("a", Duration::from_secs(30)))
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("another application") && err.contains("customers"),
        "{err}"
    );
    let tables: Vec<String> = db
        .client()
        .query(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(tables, vec!["customers".to_string()], "nothing was written");
}

#[test]
fn an_unreachable_server_is_a_clear_error() {
    let err = PostgresStore::open(
        "postgres://postgres@127.0.0.1:1/opsd",
        settings("a", Duration::from_secs(30)),
    )
    .err()
    .expect("refused")
    .to_string();
    assert!(
        err.contains("cannot connect to PostgreSQL at postgres://postgres@127.0.0.1:1/opsd"),
        "{err}"
    );
    let err = PostgresStore::open(
        "postgres://u:secret@[bad",
        settings("a", Duration::from_secs(1)),
    )
    .err()
    .expect("refused")
    .to_string();
    assert!(!err.contains("secret"), "{err}");
}

#[test]
fn both_backends_show_the_same_tables_columns_and_views() {
    let Some(db) = PgDb::create("same_schema") else {
        return;
    };
    let pg = db.store("a", Duration::from_secs(30));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("opsd.db");
    opsd::store::open(&path).unwrap().close();
    let lite = rusqlite::Connection::open(&path).unwrap();
    let mut sqlite_cols: Vec<String> = Vec::new();
    let names: Vec<String> = lite
        .prepare("SELECT name FROM sqlite_master WHERE type IN ('table','view') ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    for n in &names {
        let cols: Vec<String> = lite
            .prepare(&format!("SELECT name FROM pragma_table_info('{n}')"))
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        for c in cols {
            sqlite_cols.push(format!("{n}.{c}"));
        }
    }
    let mut pg_cols: Vec<String> = db
        .client()
        .query(
            "SELECT table_name::text || '.' || column_name::text FROM information_schema.columns \
             WHERE table_schema = 'public' AND table_name <> 'opsd_migrations'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    sqlite_cols.sort();
    pg_cols.sort();
    assert_eq!(sqlite_cols, pg_cols);
    pg.close();
}

fn opsd_wait<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = std::time::Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(std::time::Instant::now() < end, "timed out");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_file_checkpoint_off_shared_dir_resumes_only_on_its_own_host() {
    let Some(db) = PgDb::create("host_local_checkpoint_claims") else {
        return;
    };
    let a = db.store("a", Duration::from_secs(30));
    let b = db.store("b", Duration::from_secs(30));
    let mut nfs = settings("c", Duration::from_secs(30));
    nfs.shared_dir = Some("/mnt/nfs/opsd".into());
    let c: Store = Arc::new(PostgresStore::open(&db.url, nfs).unwrap());
    for (dir, who) in [("/var/lib/opsd", "a"), ("/mnt/nfs/opsd", "c")] {
        let id = submit(&a, new_op(OperationType::Dummy));
        let run = a.claim(plan(OperationType::Dummy, 1)).unwrap().remove(0);
        let mut cp = checkpoint_write(&id, run.attempt, 0);
        cp.checkpoint.artifacts_path = Some(format!("{dir}/checkpoints/{id}"));
        a.save_checkpoint(cp).wait().unwrap();
        a.cancel_tree(&id, StopReason::User, None).wait().unwrap();
        finish(&a, &id, run.attempt, Status::Cancelled, false);
        a.try_resume(&id).wait().unwrap();
        assert!(
            b.claim(plan(OperationType::Dummy, 1)).unwrap().is_empty(),
            "{dir}"
        );
        let s = if who == "a" { &a } else { &c };
        assert_eq!(
            s.claim(plan(OperationType::Dummy, 1)).unwrap()[0].id,
            id,
            "{dir}"
        );
    }
    for s in [a, b, c] {
        s.close();
    }
}

#[test]
fn a_cancel_that_reached_a_dead_host_s_operation_is_kept_by_the_rescuer() {
    let Some(db) = PgDb::create("rescue_keeps_cancel") else {
        return;
    };
    let a = db.store("a", Duration::from_secs(1));
    let b = db.store("b", Duration::from_secs(30));
    let id = submit(&a, new_op(OperationType::Dummy));
    let run = a.claim(plan(OperationType::Dummy, 1)).unwrap().remove(0);
    a.save_checkpoint(checkpoint_write(&id, run.attempt, 0))
        .wait()
        .unwrap();
    // B cancels; A is gone before it could stop the job.
    b.cancel_tree(&id, StopReason::User, None).wait().unwrap();
    let rec = opsd_wait(Duration::from_secs(10), || {
        let r = b.rescue_expired(true).unwrap();
        (!r.crashed.is_empty()).then_some(r)
    });
    assert!(rec.resumed.is_empty(), "{rec:?}");
    let row = b.get(&id).unwrap();
    assert_eq!(
        (row.status, row.stop_reason),
        (Status::Cancelled, Some(StopReason::User))
    );
    a.close();
    b.close();
}

#[test]
fn a_failing_write_in_a_batch_does_not_undo_the_others() {
    on_both("failing_write_in_a_batch", |s| {
        // Queued together, so they share a batch (group commit).
        let tickets: Vec<_> = (0..20)
            .map(|i| {
                let mut op = new_op(OperationType::Dummy);
                if i % 2 == 1 {
                    op.parent = Some(OperationId("op_pipeline_missing".into()));
                }
                s.submit(vec![op])
            })
            .collect();
        let results: Vec<_> = tickets.into_iter().map(|t| t.wait()).collect();
        for (i, r) in results.iter().enumerate() {
            assert_eq!(r.is_ok(), i % 2 == 0, "{i}: {r:?}");
        }
        let page = s.list(&ListFilter::default()).unwrap();
        assert_eq!(page.total, 10);
    });
}

// SPEC §12 on both backends: labels, named queues, hold/release,
// dependencies, clean and the key-reuse check.

fn op_in(queue: &str) -> NewOperation {
    let mut op = new_op(OperationType::Dummy);
    op.options.queue = Some(queue.into());
    op
}

fn ids(got: &[opsd::store::records::ClaimedOperation]) -> Vec<OperationId> {
    got.iter().map(|c| c.id.clone()).collect()
}

#[test]
fn labels_and_named_queues_gate_the_claim() {
    on_both("labels_queues", |s| {
        let mut labelled = op_in("q1");
        labelled.options.label = Some("nightly run".into());
        let a = submit(s, labelled);
        let b = submit(s, op_in("q1"));
        let rec = s.get(&a).unwrap();
        assert_eq!(rec.label.as_deref(), Some("nightly run"));
        assert_eq!(rec.queue, "q1");
        let page = s
            .list(&ListFilter {
                label: Some("nightly run".into()),
                ..ListFilter::default()
            })
            .unwrap();
        assert_eq!(page.total, 1);
        assert_eq!(page.rows[0].operation_id, a);
        let page = s
            .list(&ListFilter {
                queue: Some("q1".into()),
                ..ListFilter::default()
            })
            .unwrap();
        assert_eq!(page.total, 2);
        assert!(matches!(
            s.submit(vec![op_in("bad name!")]).wait(),
            Err(Error::BadRequest(_))
        ));
        // Paused: nothing of it starts.
        let q = s
            .set_queue(QueueChange {
                name: "q1".into(),
                paused: Some(true),
                parallel: None,
            })
            .wait()
            .unwrap();
        assert!(q.paused);
        assert_eq!(q.waiting, 2);
        assert!(s.claim(plan(OperationType::Dummy, 10)).unwrap().is_empty());
        // Started with a cap of one: one starts, the second waits.
        let q = s
            .set_queue(QueueChange {
                name: "q1".into(),
                paused: Some(false),
                parallel: Some(Some(1)),
            })
            .wait()
            .unwrap();
        assert_eq!((q.paused, q.parallel), (false, Some(1)));
        let other = submit(s, new_op(OperationType::Dummy));
        let got = s.claim(plan(OperationType::Dummy, 10)).unwrap();
        assert_eq!(got.len(), 2, "one of q1 and the default one");
        assert!(ids(&got).contains(&other));
        assert!(s.claim(plan(OperationType::Dummy, 10)).unwrap().is_empty());
        assert!(matches!(
            s.set_queue(QueueChange {
                name: "q1".into(),
                paused: None,
                parallel: Some(Some(0)),
            })
            .wait(),
            Err(Error::BadRequest(_))
        ));
        let queues = s.queues().unwrap();
        let names: Vec<_> = queues.iter().map(|q| q.name.as_str()).collect();
        assert_eq!(names, vec!["default", "q1"]);
        let q1 = &queues[1];
        assert_eq!((q1.waiting, q1.running), (1, 1));
        // The cap lifted: the second starts.
        s.set_queue(QueueChange {
            name: "q1".into(),
            paused: None,
            parallel: Some(None),
        })
        .wait()
        .unwrap();
        let got = s.claim(plan(OperationType::Dummy, 10)).unwrap();
        assert_eq!(got.len(), 1);
        assert!([a, b].contains(&got[0].id));
    });
}

#[test]
fn held_operations_wait_for_release() {
    on_both("hold_release", |s| {
        let mut op = new_op(OperationType::Dummy);
        op.options.hold = true;
        let held = submit(s, op);
        assert!(s.get(&held).unwrap().held);
        assert!(s.claim(plan(OperationType::Dummy, 10)).unwrap().is_empty());
        s.release(&held).wait().unwrap();
        assert!(!s.get(&held).unwrap().held);
        assert!(matches!(
            s.release(&held).wait(),
            Err(Error::InvalidTransition(_))
        ));
        let got = s.claim(plan(OperationType::Dummy, 10)).unwrap();
        assert_eq!(ids(&got), vec![held]);
        assert!(matches!(
            s.release(&OperationId("op_dummy_nope".into())).wait(),
            Err(Error::NotFound(_))
        ));
    });
}

#[test]
fn dependencies_wait_then_start_or_cancel_down_the_chain() {
    on_both("dependencies", |s| {
        let a = submit(s, new_op(OperationType::Dummy));
        let mut op = new_op(OperationType::Dummy);
        op.options.after = vec![a.clone()];
        let b = submit(s, op);
        let mut op = new_op(OperationType::Dummy);
        op.options.after = vec![b.clone()];
        let c = submit(s, op);
        let mut op = new_op(OperationType::Dummy);
        op.options.after_any = vec![a.clone()];
        let d = submit(s, op);
        assert_eq!(s.get(&b).unwrap().waiting_for, 1);
        assert_eq!(s.waiting_on(&b).unwrap(), vec![a.clone()]);
        assert!(matches!(
            s.submit(vec![{
                let mut op = new_op(OperationType::Dummy);
                op.options.after = vec![OperationId("op_dummy_nope".into())];
                op
            }])
            .wait(),
            Err(Error::NotFound(_))
        ));
        // Only `a` may start.
        let got = s.claim(plan(OperationType::Dummy, 10)).unwrap();
        assert_eq!(ids(&got), vec![a.clone()]);
        finish(s, &a, got[0].attempt, Status::Failed, false);
        for id in [&b, &c] {
            let r = s.get(id).unwrap();
            assert_eq!(
                (r.status, r.stop_reason),
                (Status::Cancelled, Some(StopReason::Dependency)),
                "{id}"
            );
        }
        assert!(s.waiting_on(&b).unwrap().is_empty());
        // `--after-any` starts whatever the outcome.
        assert_eq!(s.get(&d).unwrap().waiting_for, 0);
        let got = s.claim(plan(OperationType::Dummy, 10)).unwrap();
        assert_eq!(ids(&got), vec![d.clone()]);
        finish(s, &d, got[0].attempt, Status::Completed, false);
        // `--after` a failed one is refused; a completed one is met at once.
        let mut op = new_op(OperationType::Dummy);
        op.options.after = vec![a.clone()];
        assert!(matches!(
            s.submit(vec![op]).wait(),
            Err(Error::InvalidTransition(_))
        ));
        let mut op = new_op(OperationType::Dummy);
        op.options.after = vec![d.clone()];
        let e = submit(s, op);
        assert_eq!(s.get(&e).unwrap().waiting_for, 0);
        // Cancelling a waiting dependency cancels its `--after` dependents.
        let mut op = new_op(OperationType::Dummy);
        op.options.after = vec![e.clone()];
        let f = submit(s, op);
        s.cancel_tree(&e, StopReason::User, None).wait().unwrap();
        let r = s.get(&f).unwrap();
        assert_eq!(
            (r.status, r.stop_reason),
            (Status::Cancelled, Some(StopReason::Dependency))
        );
    });
}

#[test]
fn a_crashed_dependency_found_at_recovery_cancels_its_dependents() {
    on_both("dependency_recovery", |s| {
        let a = submit(s, new_op(OperationType::Dummy));
        let mut op = new_op(OperationType::Dummy);
        op.options.after = vec![a.clone()];
        let b = submit(s, op);
        let mut op = new_op(OperationType::Dummy);
        op.options.after_any = vec![a.clone()];
        let c = submit(s, op);
        assert_eq!(s.claim(plan(OperationType::Dummy, 10)).unwrap().len(), 1);
        let rec = s.recover(false).unwrap();
        assert_eq!(rec.crashed, vec![a.clone()]);
        let r = s.get(&b).unwrap();
        assert_eq!(
            (r.status, r.stop_reason),
            (Status::Cancelled, Some(StopReason::Dependency))
        );
        let got = s.claim(plan(OperationType::Dummy, 10)).unwrap();
        assert_eq!(ids(&got), vec![c]);
    });
}

#[test]
fn a_run_stopped_by_the_user_at_shutdown_settles_its_dependents() {
    on_both("dependency_shutdown", |s| {
        let a = submit(s, new_op(OperationType::Dummy));
        let b = submit(s, new_op(OperationType::Dummy));
        let mut op = new_op(OperationType::Dummy);
        op.options.after = vec![a.clone()];
        let after_a = submit(s, op);
        let mut op = new_op(OperationType::Dummy);
        op.options.after = vec![b.clone()];
        let after_b = submit(s, op);
        assert_eq!(s.claim(plan(OperationType::Dummy, 10)).unwrap().len(), 2);
        s.stopped_at_shutdown(vec![
            (a.clone(), StopReason::User),
            (b.clone(), StopReason::Shutdown),
        ]);
        // The fire-and-forget write lands with the next one.
        s.sweep_checkpoints("0000".into()).wait().unwrap();
        assert_eq!(s.status(&a).unwrap(), Status::Cancelled);
        let r = s.get(&after_a).unwrap();
        assert_eq!(r.stop_reason, Some(StopReason::Dependency));
        // A shutdown resumes at the next start: its dependent keeps waiting.
        let r = s.get(&after_b).unwrap();
        assert_eq!((r.status, r.waiting_for), (Status::Pending, 1));
    });
}

#[test]
fn clean_deletes_finished_trees_and_keys_are_checked() {
    on_both("clean_and_keys", |s| {
        let parent = submit(s, new_op(OperationType::Pipeline));
        let mut child = new_op(OperationType::Dummy);
        child.parent = Some(parent.clone());
        let child = submit(s, child);
        let active = submit(s, new_op(OperationType::Backtest));
        s.cancel_tree(&parent, StopReason::User, None)
            .wait()
            .unwrap();
        let all = CleanFilter::default();
        let dry = s
            .clean(CleanFilter {
                dry_run: true,
                ..all.clone()
            })
            .wait()
            .unwrap();
        let mut both = vec![parent.clone(), child.clone()];
        both.sort();
        assert_eq!(dry, both);
        assert_eq!(s.status(&parent).unwrap(), Status::Cancelled);
        assert!(matches!(
            s.clean(CleanFilter {
                statuses: vec![Status::Pending],
                ..all.clone()
            })
            .wait(),
            Err(Error::BadRequest(_))
        ));
        assert_eq!(s.clean(all).wait().unwrap(), both);
        assert!(matches!(s.get(&parent), Err(Error::NotFound(_))));
        assert!(matches!(s.get(&child), Err(Error::NotFound(_))));
        assert_eq!(s.status(&active).unwrap(), Status::Pending);
        // A key is the same operation only with the same type and parameters.
        let mut op = new_op(OperationType::Dummy);
        op.idempotency_key = Some("nightly".into());
        let first = submit(s, op.clone());
        let mut same = op.clone();
        same.id = OperationId::generate(OperationType::Dummy, chrono::Utc::now());
        assert_eq!(submit(s, same), first);
        let mut changed = op.clone();
        changed.metadata = json!({"steps": 4});
        assert!(matches!(
            s.submit(vec![changed]).wait(),
            Err(Error::BadRequest(m)) if m.contains("already used")
        ));
        let mut other_kind = op;
        other_kind.kind = OperationType::Backtest;
        assert!(matches!(
            s.submit(vec![other_kind]).wait(),
            Err(Error::BadRequest(_))
        ));
    });
}

#[test]
fn a_queue_s_parallel_cap_holds_across_hosts_claiming_at_once() {
    let Some(db) = PgDb::create("parallel_cap_across_hosts") else {
        return;
    };
    let a = db.store("a", Duration::from_secs(30));
    let b = db.store("b", Duration::from_secs(30));
    a.set_queue(QueueChange {
        name: "gpu".into(),
        paused: None,
        parallel: Some(Some(3)),
    })
    .wait()
    .unwrap();
    for round in 0..5 {
        let ops: Vec<NewOperation> = (0..12).map(|_| op_in("gpu")).collect();
        a.submit(ops).wait().unwrap();
        let start = Arc::new(std::sync::Barrier::new(2));
        let claimers: Vec<_> = [a.clone(), b.clone()]
            .into_iter()
            .map(|s| {
                let start = start.clone();
                std::thread::spawn(move || {
                    start.wait();
                    let mut mine = Vec::new();
                    for _ in 0..3 {
                        mine.extend(s.claim(plan(OperationType::Dummy, 4)).unwrap());
                    }
                    mine
                })
            })
            .collect();
        let mut got = Vec::new();
        for t in claimers {
            got.extend(t.join().unwrap());
        }
        assert_eq!(
            got.len(),
            3,
            "round {round}: the cap of 3 holds across hosts"
        );
        // End them (each on the host that claimed it) for the next round.
        for c in &got {
            let host = db
                .client()
                .query_one(
                    "SELECT claimed_by FROM operations WHERE operation_id = $1",
                    &[&c.id.as_str()],
                )
                .unwrap()
                .get::<_, String>(0);
            let s = if host == "a" { &a } else { &b };
            finish(s, &c.id, c.attempt, Status::Completed, false);
        }
        // Start the next round from an empty table.
        db.client().execute("DELETE FROM operations", &[]).unwrap();
    }
    a.close();
    b.close();
}
