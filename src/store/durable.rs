//! The stage behind the writer that makes commits durable and only then
//! answers their callers, for a backend whose commit returns before the
//! disk has it (SQLite's writer commits with `synchronous=NORMAL`).
//!
//! Why: with `synchronous=FULL` the writer thread waits in `fsync` at
//! every commit and runs nothing meanwhile. Here the writer commits and
//! moves on to the next batch at once, while this thread flushes the file
//! (one flush covers every commit made since the last) and then answers,
//! in commit order. What a caller is told is exactly as durable as before:
//! no answer (a submit's id, a claim that starts a job, a cancel) leaves
//! before the flush that covers its commit has returned (SPEC §5,
//! "`synchronous=FULL` or an equivalent durable commit"). The difference is
//! only for readers, which may see a commit a few hundred microseconds
//! before it is on disk; nothing the daemon does on it (starting a job,
//! answering a client) happens before.
//!
//! A flush that fails means the kernel may have dropped the data it could
//! not write, and a second flush would report success without it. So the
//! callers waiting on it hear an error, and the daemon stops (aborts), to
//! start again from what the disk really holds, as after a crash.

use crate::error::Error;
use crossbeam_channel::{Receiver, Sender};
use std::thread::JoinHandle;

/// Flushes what the backend has committed so far to disk.
pub(crate) type Flush = Box<dyn FnMut() -> std::io::Result<()> + Send>;

/// What to do after a flush failed and its callers were told: in the
/// daemon, abort.
pub(crate) type OnFailure = fn(&std::io::Error);

/// Something to answer once the commits before it are on disk.
pub(crate) trait Deliver: Send {
    /// Answer the caller: `None` after its commit is durable, else the
    /// error it hears.
    fn deliver(self: Box<Self>, failure: Option<Error>);
}

/// One item of the stage's queue, in commit order.
pub(crate) enum Item<J: ?Sized> {
    /// A committed batch: answered after the next flush.
    Committed(Vec<Box<J>>),
    /// Requests that already have their answer (their batch failed):
    /// answered in order, no flush needed.
    Answered(Vec<(Box<J>, Error)>),
}

/// The running stage; dropping [`Stage::finish`] joins it after every
/// queued answer is delivered.
pub(crate) struct Stage<J: ?Sized + Deliver + 'static> {
    tx: Option<Sender<Item<J>>>,
    thread: Option<JoinHandle<()>>,
}

impl<J: ?Sized + Deliver + 'static> Stage<J> {
    /// Start the stage's thread with the backend's `flush`.
    pub(crate) fn start(flush: Flush, on_failure: OnFailure) -> std::io::Result<Stage<J>> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let thread = std::thread::Builder::new()
            .name("opsd-fsync".into())
            .spawn(move || run(rx, flush, on_failure))?;
        Ok(Stage {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Queue an item; it is answered after everything queued before it.
    pub(crate) fn push(&self, item: Item<J>) {
        if let Some(tx) = &self.tx {
            // The thread ends only when this sender is dropped, or when a
            // flush failed (and the daemon is stopping).
            let _ = tx.send(item);
        }
    }

    /// Answer everything queued, then stop the thread.
    pub(crate) fn finish(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl<J: ?Sized + Deliver + 'static> Drop for Stage<J> {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run<J: ?Sized + Deliver>(rx: Receiver<Item<J>>, mut flush: Flush, on_failure: OnFailure) {
    while let Ok(first) = rx.recv() {
        // Everything committed by now is covered by one flush.
        let mut items = vec![first];
        items.extend(rx.try_iter());
        let failed = if items.iter().any(|i| matches!(i, Item::Committed(_))) {
            flush().err()
        } else {
            None
        };
        for item in items {
            match item {
                Item::Committed(batch) => {
                    for job in batch {
                        job.deliver(failed.as_ref().map(flush_error));
                    }
                }
                Item::Answered(jobs) => {
                    for (job, e) in jobs {
                        job.deliver(Some(e));
                    }
                }
            }
        }
        if let Some(e) = failed {
            tracing::error!(
                "the disk failed to save committed writes ({e}); opsd stops so that it starts \
                 again from what the disk holds"
            );
            on_failure(&e);
            // Nothing after a failed flush may be answered as durable.
            for item in rx.try_iter() {
                let jobs: Vec<Box<J>> = match item {
                    Item::Committed(b) => b,
                    Item::Answered(a) => a.into_iter().map(|(j, _)| j).collect(),
                };
                for job in jobs {
                    job.deliver(Some(flush_error(&e)));
                }
            }
            return;
        }
    }
}

fn flush_error(e: &std::io::Error) -> Error {
    Error::Unavailable(format!(
        "the disk failed to save this write ({e}); it may not have been recorded. opsd is \
         stopping: check the disk (`dmesg`), then start it again"
    ))
}

/// The daemon's reaction to a failed flush: stop at once, leaving the
/// database as the disk holds it for the next start's recovery.
pub(crate) fn abort(_: &std::io::Error) {
    std::process::abort();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    /// Records its answer in a shared log.
    struct Probe {
        name: &'static str,
        log: Arc<Mutex<Vec<(&'static str, bool)>>>,
    }

    impl Deliver for Probe {
        fn deliver(self: Box<Self>, failure: Option<Error>) {
            self.log
                .lock()
                .unwrap()
                .push((self.name, failure.is_none()));
        }
    }

    fn probe(name: &'static str, log: &Arc<Mutex<Vec<(&'static str, bool)>>>) -> Box<Probe> {
        Box::new(Probe {
            name,
            log: log.clone(),
        })
    }

    #[test]
    fn nothing_is_answered_before_the_flush_returns_and_answers_keep_commit_order() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let (release, gate) = crossbeam_channel::unbounded::<()>();
        let flushes = Arc::new(AtomicUsize::new(0));
        let f = flushes.clone();
        let stage: Stage<Probe> = Stage::start(
            Box::new(move || {
                gate.recv_timeout(Duration::from_secs(5)).unwrap();
                f.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }),
            |_| panic!("no failure here"),
        )
        .unwrap();
        stage.push(Item::Committed(vec![probe("a", &log), probe("b", &log)]));
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            log.lock().unwrap().is_empty(),
            "answered before its commit was flushed"
        );
        stage.push(Item::Answered(vec![(
            probe("refused", &log),
            Error::BadRequest("no".into()),
        )]));
        stage.push(Item::Committed(vec![probe("c", &log)]));
        release.send(()).unwrap();
        release.send(()).unwrap();
        stage.finish();
        assert_eq!(
            *log.lock().unwrap(),
            vec![("a", true), ("b", true), ("refused", false), ("c", true)]
        );
        assert!(flushes.load(Ordering::SeqCst) >= 1);
    }

    #[test]
    fn one_flush_covers_every_commit_queued_while_the_last_one_ran() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let (release, gate) = crossbeam_channel::unbounded::<()>();
        let flushes = Arc::new(AtomicUsize::new(0));
        let f = flushes.clone();
        let stage: Stage<Probe> = Stage::start(
            Box::new(move || {
                gate.recv_timeout(Duration::from_secs(5)).unwrap();
                f.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }),
            |_| panic!("no failure here"),
        )
        .unwrap();
        stage.push(Item::Committed(vec![probe("first", &log)]));
        std::thread::sleep(Duration::from_millis(50));
        for name in ["x", "y", "z"] {
            stage.push(Item::Committed(vec![probe(name, &log)]));
        }
        release.send(()).unwrap();
        release.send(()).unwrap();
        stage.finish();
        assert_eq!(flushes.load(Ordering::SeqCst), 2, "first, then x+y+z");
        assert_eq!(log.lock().unwrap().len(), 4);
    }

    #[test]
    fn a_failed_flush_answers_every_waiting_caller_with_an_error_and_stops() {
        static FAILURES: AtomicUsize = AtomicUsize::new(0);
        let log = Arc::new(Mutex::new(Vec::new()));
        let stage: Stage<Probe> =
            Stage::start(Box::new(|| Err(std::io::Error::other("EIO"))), |_| {
                FAILURES.fetch_add(1, Ordering::SeqCst);
            })
            .unwrap();
        stage.push(Item::Committed(vec![probe("a", &log), probe("b", &log)]));
        stage.finish();
        assert_eq!(*log.lock().unwrap(), vec![("a", false), ("b", false)]);
        assert_eq!(FAILURES.load(Ordering::SeqCst), 1);
    }
}
