//! The stage behind the writer that makes commits durable and only then
//! answers their callers, for a backend whose commit returns before the
//! disk has it (SQLite's writer commits with `synchronous=NORMAL`).
//!
//! Why: with `synchronous=FULL` the writer thread waits in `fsync` at
//! every commit and runs nothing meanwhile. Here the writer commits and
//! hands the batch over, while this thread flushes the file (one flush
//! covers every commit made since the last) and then answers, in commit
//! order. The writer begins its next batch once the running flush is done
//! ([`Watermark::wait_no_flush`], bounded), so that batch holds every
//! request that came in meanwhile: under load, one commit and one flush
//! serve them all instead of a commit per request and a flush per round
//! (BENCHMARKS.md §24). What a caller is told is exactly as durable as before:
//! no answer (a submit's id, a claim that starts a job, a cancel) leaves
//! before the flush that covers its commit has returned (SPEC §5,
//! "`synchronous=FULL` or an equivalent durable commit"). Readers could see
//! a commit before it is on disk; so a read made through the daemon waits,
//! once it has run, until every commit it could have seen is flushed
//! ([`Watermark`]), and answers only what would survive a power cut, as
//! with `FULL`. (A `sqlite3` shell reading the file meanwhile may see a
//! commit up to one flush early.)
//!
//! A flush that fails means the kernel may have dropped the data it could
//! not write, and a second flush would report success without it. So the
//! callers waiting on it hear an error, and the daemon stops (aborts), to
//! start again from what the disk really holds, as after a crash.

use crate::channel::{Receiver, Sender};
use crate::error::Error;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How far commits are durable. The writer numbers each commit attempt
/// before it starts ([`Watermark::begin`]); the stage marks numbers flushed.
/// A reader that waits, after its query, until everything begun so far is
/// flushed has seen only durable commits: a commit is visible only after
/// its number was taken.
#[derive(Default)]
pub(crate) struct Watermark {
    begun: AtomicU64,
    flushed: AtomicU64,
    /// A flush is running (the writer waits for it before its next batch).
    flushing: AtomicBool,
    /// Held while `flushed` advances, so a waiting reader cannot miss it.
    lock: Mutex<()>,
    advanced: Condvar,
}

/// The longest a read waits for a flush; past it (a disk that stalls for
/// that long) it answers anyway, with a warning, rather than hang.
const READ_WAIT: Duration = Duration::from_secs(10);

impl Watermark {
    /// The number of the commit about to be tried.
    pub(crate) fn begin(&self) -> u64 {
        self.begun.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Wait until every commit begun so far is flushed (or failed).
    pub(crate) fn wait_durable(&self) {
        let target = self.begun.load(Ordering::SeqCst);
        let unflushed = || self.flushed.load(Ordering::SeqCst) < target;
        if !self.wait_while(unflushed, READ_WAIT) {
            tracing::warn!("a read waited {READ_WAIT:?} for the disk; answering anyway");
        }
    }

    /// Wait, up to `most`, until no flush is running: a batch begun after
    /// it gathers every request that came during it, so one commit and one
    /// flush serve them all, as in a single-threaded queue's loop.
    pub(crate) fn wait_no_flush(&self, most: Duration) {
        self.wait_while(|| self.flushing.load(Ordering::SeqCst), most);
    }

    /// Wait while `blocked` holds, at most `most`; false when it still held
    /// then. No lock when it does not hold to begin with (nearly every call
    /// when the writer is idle). `blocked` must read state that changes
    /// only under `lock`, followed by a notify of `advanced`.
    fn wait_while(&self, blocked: impl Fn() -> bool, most: Duration) -> bool {
        if !blocked() {
            return true;
        }
        let mut guard = lock(&self.lock);
        let deadline = std::time::Instant::now() + most;
        while blocked() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            guard = self
                .advanced
                .wait_timeout(guard, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }

    fn set_flushing(&self, on: bool) {
        let _guard = lock(&self.lock);
        self.flushing.store(on, Ordering::SeqCst);
        if !on {
            self.advanced.notify_all();
        }
    }

    fn mark(&self, upto: u64) {
        let _guard = lock(&self.lock);
        if self.flushed.fetch_max(upto, Ordering::SeqCst) < upto {
            self.advanced.notify_all();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

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

/// One item of the stage's queue, in commit order, with the number its
/// commit attempt took ([`Watermark::begin`]).
pub(crate) enum Item<J: ?Sized> {
    /// A committed batch: answered after the next flush.
    Committed(Vec<Box<J>>, u64),
    /// Requests that already have their answer (their batch failed; maybe
    /// none): answered in order, no flush needed.
    Answered(Vec<(Box<J>, Error)>, u64),
    /// A committed batch that changed nothing (an idle claim round that
    /// found no work): answered in order, but it needs no flush of its own,
    /// so an idle daemon does not flush the disk several times a second.
    Unchanged(Vec<Box<J>>, u64),
}

impl<J: ?Sized + Deliver> Item<J> {
    fn number(&self) -> u64 {
        match self {
            Item::Committed(_, n) | Item::Answered(_, n) | Item::Unchanged(_, n) => *n,
        }
    }

    /// Answer everyone in it: a committed batch with `flush_failed`'s
    /// error, if any, else its results.
    pub(crate) fn answer(self, flush_failed: Option<&std::io::Error>) {
        match self {
            Item::Committed(batch, _) | Item::Unchanged(batch, _) => {
                for job in batch {
                    deliver(job, flush_failed.map(flush_error));
                }
            }
            Item::Answered(jobs, _) => {
                for (job, e) in jobs {
                    deliver(job, Some(e));
                }
            }
        }
    }
}

/// The running stage; dropping [`Stage::finish`] joins it after every
/// queued answer is delivered.
pub(crate) struct Stage<J: ?Sized + Deliver + 'static> {
    tx: Option<Sender<Item<J>>>,
    thread: Option<JoinHandle<()>>,
    watermark: Arc<Watermark>,
}

impl<J: ?Sized + Deliver + 'static> Stage<J> {
    /// Start the stage's thread with the backend's `flush`.
    pub(crate) fn start(flush: Flush, on_failure: OnFailure) -> std::io::Result<Stage<J>> {
        let (tx, rx) = crate::channel::unbounded();
        let watermark = Arc::new(Watermark::default());
        let w = watermark.clone();
        let thread = std::thread::Builder::new()
            .name("opsd-fsync".into())
            .spawn(move || run(rx, flush, on_failure, &w))?;
        Ok(Stage {
            tx: Some(tx),
            thread: Some(thread),
            watermark,
        })
    }

    /// How far commits are durable: the writer numbers its commits with it
    /// and readers wait on it.
    pub(crate) fn watermark(&self) -> &Arc<Watermark> {
        &self.watermark
    }

    /// Queue an item; it is answered after everything queued before it.
    pub(crate) fn push(&self, item: Item<J>) {
        if let Some(tx) = &self.tx {
            // The thread ends only when this sender is dropped, or after a
            // failed flush (the daemon is aborting). Commits nobody would
            // answer must not go on: stop here too.
            if tx.send(item).is_err() {
                tracing::error!("the fsync thread is gone; opsd stops");
                std::process::abort();
            }
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

fn run<J: ?Sized + Deliver>(
    rx: Receiver<Item<J>>,
    mut flush: Flush,
    on_failure: OnFailure,
    watermark: &Watermark,
) {
    while let Ok(first) = rx.recv() {
        // Everything committed by now is covered by one flush.
        let mut items = vec![first];
        items.extend(rx.try_iter());
        let failed = if items.iter().any(|i| matches!(i, Item::Committed(..))) {
            watermark.set_flushing(true);
            let r = flush().err();
            watermark.set_flushing(false);
            r
        } else {
            None
        };
        if failed.is_none() {
            watermark.mark(items.iter().map(Item::number).max().unwrap_or(0));
        }
        for item in items {
            item.answer(failed.as_ref());
        }
        if let Some(e) = failed {
            tracing::error!(
                "the disk failed to save committed writes ({e}); opsd stops so that it starts \
                 again from what the disk holds"
            );
            on_failure(&e);
            // Nothing after a failed flush may be answered as durable.
            for item in rx.try_iter() {
                item.answer(Some(&e));
            }
            return;
        }
    }
}

/// Answer one caller. A callback that panics must not take the thread
/// (and every later answer) with it: it is logged and the next one runs.
fn deliver<J: ?Sized + Deliver>(job: Box<J>, failure: Option<Error>) {
    let answered =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || job.deliver(failure)));
    if answered.is_err() {
        tracing::error!("answering a committed write panicked; going on with the next");
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

    /// A stage whose each flush waits for a message on the returned sender,
    /// and the count of flushes done.
    fn gated_stage() -> (
        Stage<Probe>,
        crossbeam_channel::Sender<()>,
        Arc<AtomicUsize>,
    ) {
        let (release, gate) = crossbeam_channel::unbounded::<()>();
        let flushes = Arc::new(AtomicUsize::new(0));
        let f = flushes.clone();
        let stage = Stage::start(
            Box::new(move || {
                gate.recv_timeout(Duration::from_secs(5)).unwrap();
                f.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }),
            |_| panic!("no failure here"),
        )
        .unwrap();
        (stage, release, flushes)
    }

    #[test]
    fn nothing_is_answered_before_the_flush_returns_and_answers_keep_commit_order() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let (stage, release, flushes) = gated_stage();
        stage.push(Item::Committed(vec![probe("a", &log), probe("b", &log)], 1));
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            log.lock().unwrap().is_empty(),
            "answered before its commit was flushed"
        );
        stage.push(Item::Answered(
            vec![(probe("refused", &log), Error::BadRequest("no".into()))],
            2,
        ));
        stage.push(Item::Committed(vec![probe("c", &log)], 3));
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
        let (stage, release, flushes) = gated_stage();
        stage.push(Item::Committed(vec![probe("first", &log)], 1));
        std::thread::sleep(Duration::from_millis(50));
        for (n, name) in ["x", "y", "z"].into_iter().enumerate() {
            stage.push(Item::Committed(vec![probe(name, &log)], 2 + n as u64));
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
        stage.push(Item::Committed(vec![probe("a", &log), probe("b", &log)], 1));
        stage.finish();
        assert_eq!(*log.lock().unwrap(), vec![("a", false), ("b", false)]);
        assert_eq!(FAILURES.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_read_waits_until_every_commit_begun_before_it_is_flushed() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let (stage, release, _) = gated_stage();
        let w = stage.watermark().clone();
        // Nothing begun: a read answers at once.
        w.wait_durable();
        let n = w.begin();
        let (done_tx, done_rx) = crossbeam_channel::unbounded();
        let reader = w.clone();
        std::thread::spawn(move || {
            reader.wait_durable();
            done_tx.send(()).unwrap();
        });
        assert!(
            done_rx.recv_timeout(Duration::from_millis(100)).is_err(),
            "the read answered before the commit it may have seen was flushed"
        );
        stage.push(Item::Committed(vec![probe("a", &log)], n));
        assert!(done_rx.recv_timeout(Duration::from_millis(100)).is_err());
        release.send(()).unwrap();
        done_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("answered once flushed");
        // A failed batch's number is let go without a flush.
        let m = w.begin();
        stage.push(Item::Answered(Vec::new(), m));
        w.wait_durable();
        stage.finish();
    }

    #[test]
    fn the_writer_can_wait_out_a_running_flush_but_never_longer_than_its_bound() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let (stage, release, flushes) = gated_stage();
        let w = stage.watermark().clone();
        // No flush running: no wait.
        let t = std::time::Instant::now();
        w.wait_no_flush(Duration::from_secs(5));
        assert!(t.elapsed() < Duration::from_secs(1));
        let flushing = |w: &Watermark| {
            let until = std::time::Instant::now() + Duration::from_secs(5);
            while !w.flushing.load(Ordering::SeqCst) {
                assert!(std::time::Instant::now() < until, "the flush never started");
                std::thread::sleep(Duration::from_millis(1));
            }
        };
        stage.push(Item::Committed(vec![probe("a", &log)], w.begin()));
        flushing(&w);
        let waiter = w.clone();
        let (done_tx, done_rx) = crossbeam_channel::unbounded();
        std::thread::spawn(move || {
            waiter.wait_no_flush(Duration::from_secs(5));
            done_tx.send(std::time::Instant::now()).unwrap();
        });
        assert!(
            done_rx.recv_timeout(Duration::from_millis(100)).is_err(),
            "the writer went on while the flush ran"
        );
        let released = std::time::Instant::now();
        release.send(()).unwrap();
        let done = done_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("the wait ends with the flush");
        assert!(done >= released);
        // A flush that hangs holds the writer up for the bound only.
        stage.push(Item::Committed(vec![probe("b", &log)], w.begin()));
        flushing(&w);
        let t = std::time::Instant::now();
        w.wait_no_flush(Duration::from_millis(50));
        let waited = t.elapsed();
        assert!(
            waited >= Duration::from_millis(50) && waited < Duration::from_secs(4),
            "{waited:?}"
        );
        release.send(()).unwrap();
        stage.finish();
        assert_eq!(flushes.load(Ordering::SeqCst), 2);
        assert_eq!(log.lock().unwrap().len(), 2);
    }
}
