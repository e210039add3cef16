//! A thread that tidies the checkpoint directories of finished runs.
//!
//! Why a thread of its own: the end of a run is recorded by a commit,
//! and what follows it (freeing the slot, removing the run's checkpoint
//! files, or keeping its empty directory for a later run) ran where the
//! commit is answered: on the flush stage's thread, which answers every
//! caller in commit order. Directory work there (several system calls
//! for an empty directory, a `remove_dir_all` of a training run's
//! checkpoint files, which may take seconds) delayed every later answer:
//! submits, claims, cancels. Here it runs beside the stage instead.
//!
//! Nothing depends on when a directory is tidied: a finished operation
//! never runs again under its id, and a run that finds no spare directory
//! makes one. At shutdown the queue is drained ([`Janitor::finish`]); a
//! task given after that runs where it is given. A daemon that dies
//! instead (killed, or aborting after a failed flush) leaves the
//! directories still queued on disk, as it would have left those whose
//! commit it had not answered yet.

use crate::channel::{Receiver, Sender};
use std::sync::Mutex;
use std::thread::JoinHandle;

type Task = Box<dyn FnOnce() + Send>;

/// The janitor thread and the queue to it.
pub(super) struct Janitor {
    tx: Mutex<Option<Sender<Task>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Janitor {
    /// Start the thread; if it cannot be started, tasks run where they
    /// are given, as before.
    pub(super) fn start() -> Janitor {
        let (tx, rx) = crate::channel::unbounded::<Task>();
        match std::thread::Builder::new()
            .name("opsd-janitor".into())
            .spawn(move || run(rx))
        {
            Ok(thread) => Janitor {
                tx: Mutex::new(Some(tx)),
                thread: Mutex::new(Some(thread)),
            },
            Err(e) => {
                tracing::warn!("cannot start the janitor thread ({e}); finished runs' directories are tidied inline");
                Janitor {
                    tx: Mutex::new(None),
                    thread: Mutex::new(None),
                }
            }
        }
    }

    /// Run `task` on the janitor thread (here, once it is finished).
    pub(super) fn run(&self, task: impl FnOnce() + Send + 'static) {
        let task: Task = Box::new(task);
        let refused = match lock(&self.tx).as_ref() {
            Some(tx) => tx.send(task).err().map(|e| match e {
                crate::channel::SendError::Full(t) | crate::channel::SendError::Disconnected(t) => {
                    t
                }
            }),
            None => Some(task),
        };
        if let Some(task) = refused {
            task();
        }
    }

    /// Do everything queued, then stop the thread.
    pub(super) fn finish(&self) {
        lock(&self.tx).take();
        if let Some(t) = lock(&self.thread).take() {
            let _ = t.join();
        }
    }
}

/// How long the thread rests after it has emptied its queue: tasks given
/// meanwhile wait for it without waking it, so a stream of short jobs
/// wakes it about 1 / PAUSE times a second instead of once per job (a
/// context switch each, on a machine the jobs keep busy). A job started
/// in the meantime that finds no spare directory makes one; the pool
/// grows by the few that are in flight.
const PAUSE: std::time::Duration = std::time::Duration::from_millis(20);

fn run(rx: Receiver<Task>) {
    while let Ok(first) = rx.recv() {
        do_task(first);
        while let Ok(task) = rx.try_recv() {
            do_task(task);
        }
        std::thread::sleep(PAUSE);
    }
}

/// Run one task; one that panics must not stop the ones after it.
fn do_task(task: Task) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(task)).is_err() {
        tracing::error!("tidying a finished run's directory panicked; going on");
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn tasks_run_off_the_callers_thread_in_order_and_finish_drains_them() {
        let janitor = Janitor::start();
        let order = Arc::new(Mutex::new(Vec::new()));
        let caller = std::thread::current().id();
        for i in 0..100 {
            let order = order.clone();
            janitor.run(move || {
                assert_ne!(std::thread::current().id(), caller);
                lock(&order).push(i);
            });
        }
        janitor.finish();
        assert_eq!(*lock(&order), (0..100).collect::<Vec<_>>());
        // After finish, a task runs where it is given.
        let here = Arc::new(AtomicUsize::new(0));
        let h = here.clone();
        janitor.run(move || {
            assert_eq!(std::thread::current().id(), caller);
            h.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(here.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_panicking_task_does_not_stop_the_next() {
        let janitor = Janitor::start();
        let ran = Arc::new(AtomicUsize::new(0));
        janitor.run(|| panic!("a task that fails"));
        let r = ran.clone();
        janitor.run(move || {
            r.fetch_add(1, Ordering::SeqCst);
        });
        janitor.finish();
        assert_eq!(ran.load(Ordering::SeqCst), 1);
    }
}
