//! A channel whose receiver goes to sleep as soon as it finds nothing,
//! for the daemon's own threads (the writer's queue, the flush stage's
//! queue, the scheduler's nudges, the janitor's queue).
//!
//! Why not crossbeam's: its `recv` on an empty channel spins and then
//! calls `sched_yield` several times before it parks. On a busy 2-core
//! machine each of those yields is a context switch to whatever else is
//! runnable, and the writer, flush and scheduler threads each wait a
//! few times per command job: they made ~20 of the daemon's ~40 context
//! switches per job (BENCHMARKS.md §22). Here a receiver that finds the
//! queue empty waits on a condition variable at once, and a send wakes
//! it only when it is actually waiting (no futex call while it is busy).
//!
//! The same shape as `crossbeam_channel`'s API, for what the daemon
//! uses: many senders, one receiver; a send fails (handing the value
//! back) once the receiver is gone, and the receiver sees
//! `Disconnected` once every sender is gone and the queue is empty.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

struct State<T> {
    queue: VecDeque<T>,
    senders: usize,
    receiver_gone: bool,
    /// The receiver is waiting on `ready` (so a send must wake it).
    waiting: bool,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
    /// `try_send` refuses once this many values are queued.
    capacity: usize,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Release the lock and wake the receiver if it is waiting (no futex
    /// call while it is busy).
    fn wake_if_waiting(&self, mut s: MutexGuard<'_, State<T>>) {
        let wake = std::mem::take(&mut s.waiting);
        drop(s);
        if wake {
            self.ready.notify_one();
        }
    }
}

/// The sending side; clone it for more senders.
pub struct Sender<T>(Arc<Shared<T>>);

/// The one receiving side.
pub struct Receiver<T>(Arc<Shared<T>>);

/// `recv` found the queue empty and every sender gone.
#[derive(Debug, PartialEq, Eq)]
pub struct RecvError;

/// Why `recv_timeout` returned without a value.
#[derive(Debug, PartialEq, Eq)]
pub enum RecvTimeoutError {
    /// Nothing came in time.
    Timeout,
    /// The queue is empty and every sender is gone.
    Disconnected,
}

/// Why `try_recv` returned without a value.
#[derive(Debug, PartialEq, Eq)]
pub enum TryRecvError {
    /// Nothing is queued.
    Empty,
    /// The queue is empty and every sender is gone.
    Disconnected,
}

/// `send` or `try_send` could not queue the value (given back).
#[derive(Debug, PartialEq, Eq)]
pub enum SendError<T> {
    /// A bounded channel is full (`try_send` only).
    Full(T),
    /// The receiver is gone.
    Disconnected(T),
}

/// A channel with no bound on what it queues.
pub fn unbounded<T>() -> (Sender<T>, Receiver<T>) {
    bounded(usize::MAX)
}

/// A channel whose `try_send` refuses once `capacity` values are queued
/// (`send` still queues: the daemon's senders of a bounded channel only
/// nudge, with `try_send`).
pub fn bounded<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            queue: VecDeque::new(),
            senders: 1,
            receiver_gone: false,
            waiting: false,
        }),
        ready: Condvar::new(),
        capacity,
    });
    (Sender(shared.clone()), Receiver(shared))
}

impl<T> Sender<T> {
    /// Queue `value`; it comes back only when the receiver is gone.
    pub fn send(&self, value: T) -> Result<(), SendError<T>> {
        self.push(value, usize::MAX)
    }

    /// Queue `value` unless the channel holds its capacity already.
    pub fn try_send(&self, value: T) -> Result<(), SendError<T>> {
        self.push(value, self.0.capacity)
    }

    /// Queue every value of `values` at once: a receiver that takes one
    /// finds the others already queued behind it (the writer puts them in
    /// the same batch). Given back when the receiver is gone.
    pub fn send_all(&self, values: Vec<T>) -> Result<(), SendError<Vec<T>>> {
        let mut s = self.0.lock();
        if s.receiver_gone {
            return Err(SendError::Disconnected(values));
        }
        s.queue.extend(values);
        self.0.wake_if_waiting(s);
        Ok(())
    }

    fn push(&self, value: T, limit: usize) -> Result<(), SendError<T>> {
        let mut s = self.0.lock();
        if s.receiver_gone {
            return Err(SendError::Disconnected(value));
        }
        if s.queue.len() >= limit {
            return Err(SendError::Full(value));
        }
        s.queue.push_back(value);
        self.0.wake_if_waiting(s);
        Ok(())
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.0.lock().senders += 1;
        Sender(self.0.clone())
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.senders -= 1;
        if s.senders == 0 {
            self.0.wake_if_waiting(s);
        }
    }
}

impl<T> Receiver<T> {
    /// The next value, waiting as long as it takes; `Err` once the queue
    /// is empty and every sender is gone.
    pub fn recv(&self) -> Result<T, RecvError> {
        let mut s = self.0.lock();
        loop {
            if let Some(v) = s.queue.pop_front() {
                return Ok(v);
            }
            if s.senders == 0 {
                return Err(RecvError);
            }
            s.waiting = true;
            s = self.0.ready.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// The next value, waiting at most `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        let deadline = Instant::now().checked_add(timeout);
        let mut s = self.0.lock();
        loop {
            if let Some(v) = s.queue.pop_front() {
                return Ok(v);
            }
            if s.senders == 0 {
                return Err(RecvTimeoutError::Disconnected);
            }
            let left = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None => Duration::from_secs(3600),
            };
            if left.is_zero() {
                s.waiting = false;
                return Err(RecvTimeoutError::Timeout);
            }
            s.waiting = true;
            s = self
                .0
                .ready
                .wait_timeout(s, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// The next value if one is queued.
    pub fn try_recv(&self) -> Result<T, TryRecvError> {
        let mut s = self.0.lock();
        match s.queue.pop_front() {
            Some(v) => Ok(v),
            None if s.senders == 0 => Err(TryRecvError::Disconnected),
            None => Err(TryRecvError::Empty),
        }
    }

    /// Every value queued now, without waiting: a snapshot (values sent
    /// while the caller iterates wait for the next call, where
    /// crossbeam's iterator would pick them up).
    pub fn try_iter(&self) -> std::collections::vec_deque::IntoIter<T> {
        std::mem::take(&mut self.0.lock().queue).into_iter()
    }
}

impl<T> Drop for Receiver<T> {
    /// Later sends fail, and what is queued is dropped now (outside the
    /// lock): a value that carries someone's reply must not wait for the
    /// last sender to go before its waiter hears the channel is gone.
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.receiver_gone = true;
        let left = std::mem::take(&mut s.queue);
        drop(s);
        drop(left);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_arrive_in_order_from_several_senders() {
        let (tx, rx) = unbounded();
        let tx2 = tx.clone();
        let a = std::thread::spawn(move || (0..1000).for_each(|i| tx.send((0, i)).unwrap()));
        let b = std::thread::spawn(move || (0..1000).for_each(|i| tx2.send((1, i)).unwrap()));
        let mut next = [0, 0];
        while let Ok((who, i)) = rx.recv() {
            assert_eq!(i, next[who], "sender {who}'s values out of order");
            next[who] += 1;
        }
        a.join().unwrap();
        b.join().unwrap();
        assert_eq!(next, [1000, 1000], "recv ended before every value came");
    }

    #[test]
    fn a_sleeping_receiver_is_woken_by_a_send_and_by_the_last_sender_leaving() {
        let (tx, rx) = unbounded::<u32>();
        let t = std::thread::spawn(move || {
            let first = rx.recv();
            let second = rx.recv_timeout(Duration::from_secs(30));
            (first, second)
        });
        std::thread::sleep(Duration::from_millis(50));
        tx.send(7).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        drop(tx);
        let (first, second) = t.join().unwrap();
        assert_eq!(first, Ok(7));
        assert_eq!(second, Err(RecvTimeoutError::Disconnected));
    }

    #[test]
    fn recv_timeout_times_out_and_try_recv_says_empty() {
        let (tx, rx) = unbounded::<u32>();
        let t0 = Instant::now();
        assert_eq!(
            rx.recv_timeout(Duration::from_millis(30)),
            Err(RecvTimeoutError::Timeout)
        );
        assert!(t0.elapsed() >= Duration::from_millis(30));
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
        tx.send(1).unwrap();
        tx.send(2).unwrap();
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), vec![1, 2]);
        drop(tx);
        assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected));
    }

    #[test]
    fn values_sent_together_are_queued_together() {
        let (tx, rx) = unbounded();
        let t = std::thread::spawn(move || {
            let first = rx.recv().unwrap();
            let rest: Vec<u32> = rx.try_iter().collect();
            (first, rest)
        });
        std::thread::sleep(Duration::from_millis(30));
        tx.send_all(vec![1, 2, 3]).unwrap();
        assert_eq!(t.join().unwrap(), (1, vec![2, 3]));
    }

    #[test]
    fn a_bounded_channel_refuses_try_send_when_full() {
        let (tx, rx) = bounded(1);
        assert_eq!(tx.try_send(1), Ok(()));
        assert_eq!(tx.try_send(2), Err(SendError::Full(2)));
        assert_eq!(rx.recv(), Ok(1));
        assert_eq!(tx.try_send(3), Ok(()));
    }

    #[test]
    fn once_the_receiver_is_gone_sends_fail_and_queued_values_are_dropped() {
        let (tx, rx) = unbounded();
        let held = Arc::new(());
        tx.send(held.clone()).unwrap();
        assert_eq!(Arc::strong_count(&held), 2);
        drop(rx);
        assert_eq!(
            Arc::strong_count(&held),
            1,
            "a queued value outlived the receiver"
        );
        assert!(matches!(tx.send(held), Err(SendError::Disconnected(_))));
    }
}
