//! The single writer thread and its group commit.
//!
//! Every mutation is a closure sent over a crossbeam channel. The thread
//! takes the first waiting closure, then drains everything else already
//! queued (up to [`MAX_BATCH`]), runs them all inside one `BEGIN IMMEDIATE`
//! transaction, each in its own savepoint so one failing request does not
//! undo the others, commits once, and only then answers each caller. One
//! fsync so covers every request of the batch, and every answer a caller
//! receives is durable.

use crate::error::{Error, Result};
use crossbeam_channel::{Receiver, Sender};
use rusqlite::Connection;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Most requests in one transaction; bounds latency under a flood.
const MAX_BATCH: usize = 4096;

/// What a task hands back to run after the commit: delivers the answer.
type Finish = Box<dyn FnOnce(Result<()>) + Send>;
/// A mutation: runs inside the batch transaction, returns its finisher.
type Task = Box<dyn FnOnce(&Connection) -> Finish + Send>;

enum Message {
    Task(Task),
    Shutdown,
}

/// Handle to the writer thread. Cloning it is cheap.
#[derive(Clone)]
pub struct Writer {
    tx: Sender<Message>,
    /// Joined by `shutdown`; shared so any clone can stop the thread.
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl Writer {
    /// Start the writer thread on an open, migrated connection.
    pub fn start(conn: Connection) -> Result<Writer> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let thread = std::thread::Builder::new()
            .name("opsd-writer".into())
            .spawn(move || run(conn, rx))
            .map_err(|e| Error::io("starting the writer thread", e))?;
        Ok(Writer {
            tx,
            thread: Arc::new(Mutex::new(Some(thread))),
        })
    }

    /// Queue a mutation; `deliver` receives its result once it is committed
    /// (or the error that stopped it).
    pub fn submit<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
        deliver: impl FnOnce(Result<T>) + Send + 'static,
    ) {
        let task: Task = Box::new(move |conn: &Connection| {
            let outcome = run_in_savepoint(conn, f);
            Box::new(move |commit: Result<()>| {
                deliver(match commit {
                    Ok(()) => outcome,
                    Err(e) => Err(e),
                })
            }) as Finish
        });
        // If the writer is gone the task is dropped with its sender, and the
        // caller's receiver reports `unavailable` instead of hanging.
        let _ = self.tx.send(Message::Task(task));
    }

    /// Run a mutation and block until it is committed. Not for async code.
    pub fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.enqueue(f).wait()
    }

    /// Queue a mutation now and wait for its commit later: the queue is
    /// FIFO, so what is enqueued first is applied first.
    pub fn enqueue<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Pending<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.submit(f, move |r| {
            let _ = tx.send(r);
        });
        Pending(rx)
    }

    /// Run a mutation and await its commit.
    pub async fn write_async<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(f, move |r| {
            let _ = tx.send(r);
        });
        rx.await
            .unwrap_or_else(|_| Err(Error::Unavailable("the database writer has stopped".into())))
    }

    /// Commit what is queued, then stop the thread and close the connection.
    pub fn shutdown(&self) {
        let _ = self.tx.send(Message::Shutdown);
        let handle = self.thread.lock().ok().and_then(|mut h| h.take());
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

/// A queued mutation's result, to wait for.
pub struct Pending<T>(std::sync::mpsc::Receiver<Result<T>>);

impl<T> Pending<T> {
    /// Block until the mutation is committed (or failed).
    pub fn wait(self) -> Result<T> {
        self.0
            .recv()
            .unwrap_or_else(|_| Err(Error::Unavailable("the database writer has stopped".into())))
    }
}

/// Run `f` in a savepoint: its changes stay only if it succeeds.
fn run_in_savepoint<T>(conn: &Connection, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
    // Cached statements: two of these run for every request.
    conn.prepare_cached("SAVEPOINT task")?.execute([])?;
    match f(conn) {
        Ok(v) => {
            conn.prepare_cached("RELEASE task")?.execute([])?;
            Ok(v)
        }
        Err(e) => {
            conn.execute_batch("ROLLBACK TO task; RELEASE task")?;
            Err(e)
        }
    }
}

fn run(conn: Connection, rx: Receiver<Message>) {
    let mut batch: Vec<Task> = Vec::with_capacity(MAX_BATCH);
    let mut stopping = false;
    while !stopping {
        match rx.recv() {
            Ok(Message::Task(t)) => batch.push(t),
            Ok(Message::Shutdown) | Err(_) => break,
        }
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(Message::Task(t)) => batch.push(t),
                Ok(Message::Shutdown) => {
                    stopping = true;
                    break;
                }
                Err(_) => break,
            }
        }
        commit_batch(&conn, &mut batch);
    }
    // Answer whatever is still queued so no caller waits forever.
    while let Ok(Message::Task(t)) = rx.try_recv() {
        batch.push(t);
    }
    commit_batch(&conn, &mut batch);
    // Fold the WAL back into the main file so sqlite3 users see one file.
    let _ = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
    drop(conn);
}

fn commit_batch(conn: &Connection, batch: &mut Vec<Task>) {
    if batch.is_empty() {
        return;
    }
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        tracing::error!("cannot begin a transaction: {e}");
        // Without a transaction each task would commit alone; drop them
        // instead, so every caller gets `unavailable`.
        batch.clear();
        return;
    }
    let finishers: Vec<Finish> = batch.drain(..).map(|t| t(conn)).collect();
    let commit = conn.execute_batch("COMMIT").map_err(|e| {
        tracing::error!("commit failed: {e}");
        let _ = conn.execute_batch("ROLLBACK");
        Error::Database(e)
    });
    match commit {
        Ok(()) => finishers.into_iter().for_each(|f| f(Ok(()))),
        Err(e) => {
            let msg = e.to_string();
            finishers
                .into_iter()
                .for_each(|f| f(Err(Error::Unavailable(msg.clone()))));
        }
    }
}
