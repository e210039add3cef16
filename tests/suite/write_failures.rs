//! When the database cannot be written (another program holds the write
//! lock, the disk is full): nothing acknowledged is lost, no operation is
//! left `running`, clients hear a true error, reads keep answering.

use crate::common::*;
use serde_json::{json, Value};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Hold the database's write lock from another connection (as a `sqlite3`
/// shell with an open `BEGIN IMMEDIATE` would) until dropped.
struct WriteLock(rusqlite::Connection);

impl WriteLock {
    fn take(db: &std::path::Path) -> WriteLock {
        let c = rusqlite::Connection::open(db).unwrap();
        c.busy_timeout(Duration::from_secs(10)).unwrap();
        c.execute_batch("BEGIN IMMEDIATE").unwrap();
        WriteLock(c)
    }
    fn release(self) {
        self.0.execute_batch("COMMIT").unwrap();
    }
}

fn health(d: &Daemon) -> Value {
    d.ok(Request::Health)
}

#[test]
fn a_locked_database_strands_nothing_and_reads_keep_answering() {
    let d = Daemon::start_with("flush_interval_ms = 50\nwrite_wait_ms = 1500\n");
    let finishing = d.submit(
        "dummy",
        json!({ "steps": 8, "step_ms": 100, "checkpoint_every": 100 }),
    );
    let to_cancel = d.submit(
        "dummy",
        json!({ "steps": 400, "step_ms": 25, "checkpoint_every": 1000 }),
    );
    d.wait_status(&finishing, "running", 20);
    d.wait_status(&to_cancel, "running", 20);
    let waiting = d.ok(Submit {
        run_after: Some("1h".into()),
        ..Submit::new("dummy", json!({}))
    })["operation_id"]
        .as_str()
        .unwrap()
        .to_string();

    let lock = WriteLock::take(&d.db());
    // Writes that wait for the lock, more of them than the server has
    // async threads: cancels and resumes.
    let (tx, rx) = mpsc::channel();
    for id in [&waiting, &waiting, &to_cancel, &waiting] {
        let (sock, id, tx) = (d.socket.clone(), id.clone(), tx.clone());
        std::thread::spawn(move || {
            let t = Instant::now();
            let r = request(
                &sock,
                Request::Cancel {
                    id: id_of(&id),
                    reason: None,
                    wait_ms: Some(0),
                },
            );
            tx.send((r, t.elapsed())).unwrap();
        });
    }
    std::thread::sleep(Duration::from_millis(300));
    // Reads answer at once while those writes wait.
    for _ in 0..5 {
        let t = Instant::now();
        d.get(&finishing);
        d.ok(Request::List(ListFilter::default()));
        let h = health(&d);
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "reads took {:?} while writes waited",
            t.elapsed()
        );
        let _ = h;
        std::thread::sleep(Duration::from_millis(100));
    }
    // The job ends while the lock is held; health says why nothing lands.
    assert!(
        wait_until(Duration::from_secs(10), || {
            health(&d)["store"]
                .as_str()
                .unwrap_or("")
                .contains("waiting for the write lock since")
        }),
        "health never reported the lock: {}",
        health(&d)
    );
    // Each waiting client hears a true error, not "the writer has stopped".
    for _ in 0..4 {
        let (r, took) = rx.recv_timeout(Duration::from_secs(20)).unwrap();
        assert_eq!(r["ok"], false, "a write succeeded under the lock: {r}");
        let msg = r["error"]["message"].as_str().unwrap();
        assert!(msg.contains("locked by another program"), "{msg}");
        assert!(msg.contains("nothing was written"), "{msg}");
        assert!(
            took >= Duration::from_millis(1000),
            "answered after {took:?}"
        );
    }
    std::thread::sleep(Duration::from_millis(1500));
    lock.release();

    // Once writable again: the finished job reaches its final row, the
    // refused cancels changed nothing, and a cancel now works.
    d.wait_status(&finishing, "completed", 20);
    assert_eq!(d.status(&waiting), "pending");
    let r = d.ok(Request::cancel(&to_cancel));
    assert_eq!(r["previous_status"], "running", "{r}");
    d.wait_status(&to_cancel, "cancelled", 20);
    assert!(wait_until(Duration::from_secs(10), || health(&d)["store"] == "ok"));
    assert_sound(&d.db());
}

#[test]
fn a_submit_under_a_short_lock_waits_and_lands() {
    let d = Daemon::start_with("flush_interval_ms = 50\nwrite_wait_ms = 20000\n");
    let lock = WriteLock::take(&d.db());
    let sock = d.socket.clone();
    let t = std::thread::spawn(move || {
        request(
            &sock,
            Submit::new("dummy", json!({ "steps": 1, "step_ms": 1 })),
        )
    });
    std::thread::sleep(Duration::from_millis(2500));
    lock.release();
    let r = t.join().unwrap();
    assert_eq!(r["ok"], true, "{r}");
    d.wait_status(r["operation_id"].as_str().unwrap(), "completed", 20);
}

/// A small tmpfs for the state directory; `None` (with a note) where this
/// machine does not allow mounting.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            eprintln!("note: skipping the disk-full test: cannot mount a tmpfs here (needs root)");
            return None;
        }
        Some(SmallDisk { dir })
    }
    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Write a file until the disk is full.
fn fill(path: &std::path::Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let block = vec![0u8; 64 * 1024];
    while f.write_all(&block).is_ok() {}
    let _ = f.write_all(&block[..4096]);
    while f.write_all(&[0u8; 512]).is_ok() {}
    let _ = f.sync_all();
}

#[test]
fn a_full_disk_is_reported_and_recovered_from_by_itself() {
    let Some(disk) = SmallDisk::mount("6m") else {
        return;
    };
    let state = disk.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let cfg = disk.path().join("opsd.toml");
    std::fs::write(&cfg, "flush_interval_ms = 50\nwrite_wait_ms = 2000\n").unwrap();
    let socket = disk.path().join("opsd.sock");
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut child = Guard(
        Command::new(bin())
            .args(["serve", "--state-dir"])
            .arg(&state)
            .arg("--socket")
            .arg(&socket)
            .arg("--config")
            .arg(&cfg)
            .env_remove("NOTIFY_SOCKET")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap(),
    );
    assert!(wait_until(Duration::from_secs(30), || {
        std::os::unix::net::UnixStream::connect(&socket).is_ok()
    }));
    let req = |r: Request| request(&socket, r);
    let submit = |steps: i64| {
        req(Request::from(Submit::new(
            "dummy",
            json!({ "steps": steps, "step_ms": 50, "checkpoint_every": 1000 }),
        )))
    };
    let running = submit(60)["operation_id"].as_str().unwrap().to_string();
    assert!(wait_until(Duration::from_secs(20), || {
        req(Request::get(&running))["operation"]["status"] == "running"
    }));

    let filler = disk.path().join("filler");
    fill(&filler);
    // Submits are refused with a clear error once the WAL must grow.
    let big: Vec<Submit> = (0..500)
        .map(|i| Submit {
            key: Some(format!("{i:0>200}")),
            ..Submit::new("dummy", json!({}))
        })
        .collect();
    let mut refused = None;
    for _ in 0..50 {
        let r = req(Request::SubmitBatch {
            operations: big.clone(),
        });
        if r["ok"] == false {
            refused = Some(r);
            break;
        }
    }
    let r = refused.expect("no write failed on a full disk");
    let msg = r["error"]["message"].as_str().unwrap().to_string();
    assert!(msg.contains("could not be written"), "{msg}");
    assert!(msg.contains("free space"), "{msg}");
    // The daemon keeps serving reads.
    assert_eq!(req(Request::Health)["ok"], true);

    std::fs::remove_file(&filler).unwrap();
    // It recovers by itself: the running job ends with its final row,
    // submits land again, the file is intact.
    assert!(
        wait_until(Duration::from_secs(30), || {
            req(Request::get(&running))["operation"]["status"] == "completed"
        }),
        "never completed: {}\n{}",
        req(Request::get(&running)),
        std::fs::read_to_string(log.path()).unwrap_or_default()
    );
    let after = submit(1);
    assert_eq!(after["ok"], true, "{after}");
    assert!(wait_until(Duration::from_secs(20), || {
        req(Request::get(after["operation_id"].as_str().unwrap()))["operation"]["status"]
            == "completed"
    }));
    assert!(wait_until(Duration::from_secs(10), || req(Request::Health)
        ["store"]
        == "ok"));
    nix::sys::signal::kill(child.pid(), nix::sys::signal::Signal::SIGTERM).unwrap();
    wait_child(&mut child.0, Duration::from_secs(30));
    assert_sound(&state.join("opsd.db"));
}
