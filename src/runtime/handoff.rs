//! The scheduler's hand-off to the workers: a FIFO that idle workers
//! sleep on.
//!
//! A channel would do, but crossbeam's `recv` spins and yields before it
//! parks; with hundreds of idle workers on one channel that spinning was
//! a fifth of the daemon's CPU in the no-op lifecycle benchmark. Here an
//! idle worker sleeps on a condition variable, and each hand-off wakes
//! exactly one.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};

struct Shared<T> {
    queue: Mutex<(VecDeque<T>, bool)>,
    ready: Condvar,
}

/// The sending side (the scheduler). Dropping it closes the hand-off:
/// workers take what is left, then their `take` returns `None`.
pub(crate) struct Handoff<T>(Arc<Shared<T>>);

/// The receiving side, one clone per worker.
pub(crate) struct Intake<T>(Arc<Shared<T>>);

/// A new, open hand-off.
pub(crate) fn handoff<T>() -> (Handoff<T>, Intake<T>) {
    let shared = Arc::new(Shared {
        queue: Mutex::new((VecDeque::new(), false)),
        ready: Condvar::new(),
    });
    (Handoff(shared.clone()), Intake(shared))
}

impl<T> Handoff<T> {
    /// Queue one item and wake one idle worker.
    pub(crate) fn send(&self, item: T) {
        let mut q = self.0.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.0.push_back(item);
        drop(q);
        self.0.ready.notify_one();
    }
}

impl<T> Drop for Handoff<T> {
    fn drop(&mut self) {
        let mut q = self.0.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.1 = true;
        drop(q);
        self.0.ready.notify_all();
    }
}

impl<T> Clone for Intake<T> {
    fn clone(&self) -> Self {
        Intake(self.0.clone())
    }
}

impl<T> Intake<T> {
    /// The next item, sleeping until there is one; `None` once the sender
    /// is gone and nothing is left.
    pub(crate) fn take(&self) -> Option<T> {
        let mut q = self.0.queue.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(item) = q.0.pop_front() {
                return Some(item);
            }
            if q.1 {
                return None;
            }
            q = self.0.ready.wait(q).unwrap_or_else(|p| p.into_inner());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_reaches_one_worker_and_workers_end_when_closed() {
        let (tx, rx) = handoff::<u32>();
        let workers: Vec<_> = (0..8)
            .map(|_| {
                let rx = rx.clone();
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    while let Some(v) = rx.take() {
                        got.push(v);
                    }
                    got
                })
            })
            .collect();
        for v in 0..10_000 {
            tx.send(v);
        }
        drop(tx);
        let mut all: Vec<u32> = workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect();
        all.sort_unstable();
        assert_eq!(all, (0..10_000).collect::<Vec<_>>());
    }

    #[test]
    fn items_queued_before_closing_are_still_taken() {
        let (tx, rx) = handoff::<u32>();
        tx.send(1);
        tx.send(2);
        drop(tx);
        assert_eq!(rx.take(), Some(1));
        assert_eq!(rx.take(), Some(2));
        assert_eq!(rx.take(), None);
    }
}
