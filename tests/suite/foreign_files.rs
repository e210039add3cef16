//! Files that are not ours are never modified: a foreign SQLite database
//! is refused before any write, WAL switch included.

use crate::common::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

fn sha(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

/// `opsd serve --db db`: must exit with an error naming the file.
fn serve_refuses(db: &Path) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(bin())
        .args(["serve", "--state-dir"])
        .arg(dir.path())
        .arg("--db")
        .arg(db)
        .arg("--socket")
        .arg(dir.path().join("s.sock"))
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (status, err) = wait_stderr(&mut child, Duration::from_secs(20));
    assert!(!status.success(), "serve accepted {}: {err}", db.display());
    assert!(
        err.contains(&db.display().to_string()),
        "error does not name the file: {err}"
    );
    err
}

fn foreign(setup: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("theirs.db");
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch(setup).unwrap();
    drop(c);
    (dir, db)
}

fn assert_untouched(db: &Path, before: &[u8]) {
    assert_eq!(sha(db), before, "the file changed");
    let wal = db.with_extension("db-wal");
    assert!(!wal.exists(), "a WAL file was created beside it");
    let c = open_db(db);
    let mode: String = c
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "delete", "its journal mode was changed");
    let ours: i64 = c
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = 'operations'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(ours, 0, "our schema was written into it");
}

#[test]
fn a_foreign_database_with_user_version_1_is_refused_untouched() {
    let (_d, db) = foreign(
        "CREATE TABLE notes (body TEXT); INSERT INTO notes VALUES ('x'); PRAGMA user_version = 1;",
    );
    let before = sha(&db);
    let err = serve_refuses(&db);
    assert!(err.contains("not an opsd database"), "{err}");
    assert_untouched(&db, &before);
}

#[test]
fn a_foreign_database_with_a_negative_user_version_is_refused_untouched() {
    let (_d, db) = foreign("CREATE TABLE notes (body TEXT); PRAGMA user_version = -3;");
    let before = sha(&db);
    serve_refuses(&db);
    assert_untouched(&db, &before);
    // Even an empty one that another program has marked as its own.
    let (_d2, db2) = foreign("PRAGMA user_version = -1;");
    let before = sha(&db2);
    serve_refuses(&db2);
    assert_untouched(&db2, &before);
}

#[test]
fn another_applications_id_is_refused_and_ours_still_opens() {
    let (_d, db) = foreign("PRAGMA application_id = 1234; CREATE TABLE t (x);");
    let before = sha(&db);
    let err = serve_refuses(&db);
    assert!(err.contains("another application"), "{err}");
    assert_untouched(&db, &before);

    // A database opsd made (before it wrote an application_id) opens.
    let mut d = Daemon::start();
    let id = d.submit("dummy", serde_json::json!({ "steps": 1, "step_ms": 1 }));
    d.wait_status(&id, "completed", 20);
    assert!(d.terminate().success());
    let app: i64 = open_db(&d.db())
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .unwrap();
    assert_eq!(app, 0x6F70_7364, "opsd marks its database as its own");
    rusqlite::Connection::open(d.db())
        .unwrap()
        .execute_batch("PRAGMA application_id = 0")
        .unwrap();
    d.spawn();
    assert_eq!(d.status(&id), "completed");
}
