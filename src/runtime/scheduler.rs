//! The scheduler thread: claims runnable operations type by type, as many
//! as there are free slots (and GPUs), registers them as running and hands
//! them to the workers. It sleeps until nudged (a submit, a freed slot) or
//! for 200 ms, which picks up delayed (`run_after`) work.
//!
//! Claims are pipelined: a round is sent to the store and answered later
//! ([`crate::store::Backend::claim_then`]), and up to [`MAX_IN_FLIGHT`]
//! rounds may wait for their commit at once. So slots that free up while
//! one claim is being committed and flushed go into the next batch instead
//! of waiting for that answer. A round in flight holds what it asked for
//! (slots per type, and every free GPU when it asked for any) until its
//! answer is registered, so rounds never claim the same room twice. An
//! answer is registered and handed to the workers where it lands (the
//! writer's side), not back on this thread.
//!
//! A submit may plan the next round itself ([`Claims::carry`]) and queue
//! it with its insert, so both commit together; so may a finishing run,
//! right behind its final row. The scheduler is then not woken for it.

use super::handoff::Handoff;
use super::live::Live;
use super::running::StopRequest;
use super::{Assignment, Stopping};
use crate::channel::{Receiver, Sender};
use crate::config::Config;
use crate::error::Result;
use crate::model::OperationType;
use crate::store::records::{ClaimPlan, ClaimedOperation};
use crate::store::Store;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Most claim rounds waiting for their commit at once.
const MAX_IN_FLIGHT: usize = 3;
/// The longest sleep without a nudge (delayed work is picked up then).
const IDLE: Duration = Duration::from_millis(200);
/// After a failed round, how long before the next.
const AFTER_FAILURE: Duration = Duration::from_millis(200);
/// At shutdown, how long to wait for the answers of rounds in flight.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(30);

/// The scheduler: the rounds it plans and lands, and its nudges.
pub(super) struct Scheduler {
    pub(super) claims: Arc<Claims>,
    /// Nudges: new work, a freed slot, a round answered.
    pub(super) wake: Receiver<()>,
    pub(super) stopping: Stopping,
}

/// Claim rounds: planned by the scheduler thread, or carried by a submit
/// ([`Claims::carry`]); landed where their answer arrives. Shared by the
/// scheduler and the runtime (for submits) until the shutdown drain lets
/// go of it; once the last holder and every round in flight are gone,
/// the workers' hand-off closes and idle workers end.
pub(super) struct Claims {
    land: Arc<Landing>,
}

impl Claims {
    /// The rounds' shared state; `jobs` goes to the workers, `nudge`
    /// wakes the scheduler.
    pub(super) fn new(
        store: Store,
        live: Arc<Live>,
        config: Arc<Config>,
        jobs: Handoff<Assignment>,
        nudge: Sender<()>,
        stopping: Stopping,
    ) -> Arc<Claims> {
        let land = Arc::new(Landing {
            rounds: Mutex::new(Rounds {
                dirty: true,
                ..Rounds::default()
            }),
            store,
            live: live.clone(),
            jobs,
            nudge,
            stopping,
            room: Room { live, config },
        });
        Arc::new(Claims { land })
    }

    /// A round for a submit to queue right behind its insert (or a
    /// finishing run behind its final row), so that the
    /// round usually commits (and is flushed) with the insert and a new
    /// operation with a free slot starts without a commit of its own:
    /// the same round the scheduler would plan next, holding its room
    /// the same way, and landed the same way. `None` when the scheduler
    /// must decide (no free room, the most rounds in flight, a pause
    /// after a failed round, or the daemon stopping): the caller nudges it
    /// instead. Checked under the rounds' lock, so a round carried while
    /// the daemon stops is one the scheduler's exit waits for.
    pub(super) fn carry(&self) -> Option<(ClaimPlan, crate::store::ClaimDone)> {
        let mut r = lock(&self.land.rounds);
        if self.land.stopping.is_set()
            || r.paused_until.is_some_and(|t| Instant::now() < t)
            || r.in_flight.len() >= MAX_IN_FLIGHT
        {
            return None;
        }
        let (n, plan) = self.land.room.next_round(&mut r)?;
        drop(r);
        let l = self.land.clone();
        Some((plan, Box::new(move |got| l.land(n, got))))
    }
}

/// What a round in flight asked for, held until its answer is registered.
struct Held {
    round: u64,
    per_type: Vec<(OperationType, usize)>,
    total: usize,
    gpus: i64,
}

/// The rounds, shared by the scheduler thread (which starts them) and
/// their answers (which land on the writer's side, without a hop back to
/// the scheduler thread).
#[derive(Default)]
struct Rounds {
    in_flight: Vec<Held>,
    next: u64,
    /// No new round before this (after a failed one).
    paused_until: Option<Instant>,
    /// Something may be claimable: a nudge, the idle timeout, or a round
    /// that filled all it asked for.
    dirty: bool,
}

/// What an answer needs to land: the rounds, where to register, whom to
/// hand work to, and whom to nudge.
struct Landing {
    rounds: Mutex<Rounds>,
    store: Store,
    live: Arc<Live>,
    jobs: Handoff<Assignment>,
    nudge: Sender<()>,
    /// Set at shutdown: what lands then is asked to stop at once.
    stopping: Stopping,
    /// Where free room is counted, for the rounds planned here and by
    /// carriers; a wanted round is only worth a nudge when there is some.
    room: Room,
}

impl Scheduler {
    /// Claim rounds until the daemon stops taking work.
    pub(super) fn run(self) {
        let Scheduler {
            claims,
            wake,
            stopping,
        } = self;
        let (land, room) = (&claims.land, &claims.land.room);
        let store = land.store.clone();
        while !stopping.is_set() {
            let paused_until = {
                let mut r = lock(&land.rounds);
                if r.paused_until.is_some_and(|t| Instant::now() >= t) {
                    r.paused_until = None;
                }
                let ready = r.paused_until.is_none();
                if r.dirty && ready && r.in_flight.len() < MAX_IN_FLIGHT {
                    r.dirty = false;
                    if let Some((n, plan)) = room.next_round(&mut r) {
                        drop(r);
                        let l = land.clone();
                        store.claim_then(plan, Box::new(move |got| l.land(n, got)));
                    }
                    None
                } else {
                    // A pause still to run out; with the most rounds in
                    // flight, their answers nudge (or the idle timeout).
                    r.paused_until
                }
            };
            let timeout = match paused_until {
                Some(t) => t.saturating_duration_since(Instant::now()).min(IDLE),
                None => IDLE,
            };
            let _ = wake.recv_timeout(timeout);
            lock(&land.rounds).dirty = true;
        }
        // What rounds in flight claimed is running in the store: it is
        // registered and handed over as their answers land, so shutdown
        // stops it like any other run. Wait for them.
        let deadline = Instant::now() + SHUTDOWN_WAIT;
        while !lock(&land.rounds).in_flight.is_empty() && Instant::now() < deadline {
            let _ = wake.recv_timeout(Duration::from_millis(10));
        }
    }
}

/// Where the free room is counted.
struct Room {
    live: Arc<Live>,
    config: Arc<Config>,
}

impl Room {
    /// Whether a round planned now would have any room.
    fn any_free(&self, r: &Rounds) -> bool {
        self.unheld(r).is_some()
    }

    /// The free slots not held by rounds in flight: in all, and per type
    /// (types with none left out); `None` when there are none.
    fn unheld(&self, r: &Rounds) -> Option<(usize, Vec<(OperationType, usize)>)> {
        let (free, per_type) = self
            .live
            .free_slots(self.config.workers, |k| self.config.limit(k));
        let held = |k: OperationType| -> usize {
            r.in_flight
                .iter()
                .flat_map(|h| h.per_type.iter())
                .filter(|(t, _)| *t == k)
                .map(|(_, n)| n)
                .sum()
        };
        let total = free.saturating_sub(r.in_flight.iter().map(|h| h.total).sum());
        let per_type: Vec<(OperationType, usize)> = per_type
            .into_iter()
            .map(|(k, n)| (k, n.saturating_sub(held(k))))
            .filter(|(_, n)| *n > 0)
            .collect();
        (total > 0 && !per_type.is_empty()).then_some((total, per_type))
    }

    /// The next round for the free slots (and GPUs) not held by rounds in
    /// flight, held in `r`; `None` when there is no room.
    fn next_round(&self, r: &mut Rounds) -> Option<(u64, ClaimPlan)> {
        let (total, per_type) = self.unheld(r)?;
        // GPUs are handed out when a round's answer is registered: while
        // one that may take some is in flight, the others take none.
        let gpus = if r.in_flight.iter().any(|h| h.gpus > 0) {
            0
        } else {
            self.live.free_gpus()
        };
        let round = r.next;
        r.next += 1;
        r.in_flight.push(Held {
            round,
            per_type: per_type.clone(),
            total,
            gpus,
        });
        Some((
            round,
            ClaimPlan {
                per_type,
                total,
                free_gpus: gpus,
            },
        ))
    }
}

impl Landing {
    /// Register a round's answer and hand its operations to the workers;
    /// then release what the round held, and nudge the scheduler if it
    /// wants another round.
    fn land(&self, round: u64, got: Result<Vec<ClaimedOperation>>) {
        let asked = lock(&self.rounds)
            .in_flight
            .iter()
            .find(|h| h.round == round)
            .map_or(0, |h| h.total);
        let more = match got {
            Ok(claimed) => {
                // All it asked for: there may be more waiting.
                let full = claimed.len() >= asked;
                for op in claimed {
                    let running = self.live.register(&op);
                    // Claimed just as the daemon began to stop (the drain
                    // may already have asked the others): it stops at once
                    // and is resumed at the next start, like the others.
                    if self.stopping.is_set() {
                        running.request_stop(StopRequest::Shutdown, None);
                    }
                    if !running.gpus.is_empty() {
                        self.store.record_gpus(&op.id, running.gpus.clone());
                    }
                    self.jobs.send(Assignment { op, running });
                }
                full
            }
            Err(e) => {
                // While the database cannot be written, `health` says so;
                // one line per round would flood the log.
                if self.store.degraded().is_none() {
                    tracing::error!("claiming operations failed: {e}");
                }
                lock(&self.rounds).paused_until = Some(Instant::now() + AFTER_FAILURE);
                true
            }
        };
        let wanted = {
            let mut r = lock(&self.rounds);
            r.in_flight.retain(|h| h.round != round);
            r.dirty |= more;
            r.dirty && self.room.any_free(&r)
        };
        // Only when a round is wanted (this one filled up, or a nudge came
        // while the most rounds were in flight) and there is room for it:
        // an answer that nudged every time would start an empty round
        // after every empty round. With no room the round stays wanted
        // (`dirty`), and whatever frees room nudges or carries one: a
        // finishing run ([`Claims::carry`] from the worker, else a nudge),
        // freed GPUs, a released hold, a queue's new limit (and, at worst,
        // the scheduler's idle round).
        if wanted {
            let _ = self.nudge.try_send(());
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::OperationId;
    use crate::runtime::gpus::GpuPool;

    fn room(workers: usize, gpus: usize) -> Room {
        let config = Config {
            workers,
            ..Config::default()
        };
        let ids = (0..gpus).map(|i| i.to_string()).collect();
        Room {
            live: Arc::new(Live::new(GpuPool::new(ids))),
            config: Arc::new(config),
        }
    }

    fn claimed(n: usize, gpus: i64) -> ClaimedOperation {
        ClaimedOperation {
            id: OperationId(format!("op_dummy_20261202_000000_{n:08x}")),
            kind: OperationType::Dummy,
            metadata_json: "{}".into(),
            attempt: 1,
            parent: None,
            progress_percent: 0.0,
            gpus_requested: gpus,
            max_attempts: 1,
            fail_parent: false,
        }
    }

    #[test]
    fn rounds_in_flight_hold_their_room_until_their_answer_is_registered() {
        let room = room(4, 2);
        let mut r = Rounds::default();
        let a = claimed(1, 0);
        let slot_a = room.live.register(&a);
        let (first, plan) = room.next_round(&mut r).expect("room for a round");
        assert_eq!((plan.total, plan.free_gpus), (3, 2));
        // While it is in flight, nothing is left for a second round.
        assert!(room.next_round(&mut r).is_none());
        // A slot frees up: a second round may take it, but no GPU, since
        // the first may still take both.
        room.live.release(&a.id, &slot_a);
        let (second, plan) = room.next_round(&mut r).expect("the freed slot");
        assert_eq!((plan.total, plan.free_gpus), (1, 0));
        assert!(room.next_round(&mut r).is_none());
        // The first round's answer (one operation with a GPU) is
        // registered, then its hold goes: three slots and one GPU are
        // free, of which the second round still holds one slot.
        room.live.register(&claimed(2, 1));
        r.in_flight.retain(|h| h.round != first);
        let (_, plan) = room.next_round(&mut r).expect("three slots, one held");
        assert_eq!((plan.total, plan.free_gpus), (2, 1));
        // The second round's answer is empty: its slot is free again, for
        // a round that gets no GPU while the third may take the last one.
        r.in_flight.retain(|h| h.round != second);
        let (_, plan) = room.next_round(&mut r).expect("one slot");
        assert_eq!((plan.total, plan.free_gpus), (1, 0));
        assert!(
            room.next_round(&mut r).is_none(),
            "all four are held or running"
        );
    }
}
