//! The host loop of a daemon on a shared store (PostgreSQL, SPEC §11):
//! one thread that
//!
//! - registers this daemon in `hosts` and heartbeats it,
//! - renews the leases of the operations running here, and stops the
//!   jobs of those it no longer holds (another host rescued them while
//!   this one was stopped or cut off: their writes are fenced anyway),
//! - rescues operations whose host stopped renewing (crash recovery, on
//!   any host),
//! - applies stop requests other hosts wrote for operations running here
//!   (a cancel issued on another host), and
//! - wakes the scheduler when another host says there is work.
//!
//! It waits on the store's LISTEN/NOTIFY between rounds; with no
//! notification it polls stop requests every [`POLL`], so a cancel reaches
//! its operation within a second even without NOTIFY.

use super::running::StopRequest;
use super::Runtime;
use crate::model::StopReason;
use crate::store::records::HostRecord;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest wait for a notification between two polls of stop requests.
const POLL: Duration = Duration::from_millis(300);

/// The loop's state.
pub(super) struct HostLoop {
    pub(super) rt: Arc<Runtime>,
    /// Set by the shutdown once the drain is over (the loop renews leases
    /// while jobs checkpoint).
    pub(super) stop: Arc<AtomicBool>,
}

impl Runtime {
    /// This daemon as a `hosts` row.
    pub fn host_record(&self) -> HostRecord {
        let types: Vec<&str> = crate::model::OperationType::ALL
            .iter()
            .filter(|k| self.config.limit(**k) > 0)
            .map(|k| k.as_str())
            .collect();
        let gpus: Vec<String> = self
            .gpu_status()
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|g| g["id"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        HostRecord {
            host: self.config.host_name(),
            started_at: self.started_at_text.clone(),
            last_seen_at: crate::ids::now(),
            version: env!("CARGO_PKG_VERSION").into(),
            workers: self.config.workers as i64,
            gpus: serde_json::json!(gpus),
            types: serde_json::json!(types),
        }
    }
}

impl HostLoop {
    /// Run until the shutdown says so.
    pub(super) fn run(self) {
        let rt = &self.rt;
        let beat = Duration::from_secs(rt.config.lease_seconds.max(2)) / 3;
        let mut last_beat: Option<Instant> = None;
        while !self.stop.load(Ordering::Acquire) {
            if last_beat.is_none_or(|t| t.elapsed() >= beat) {
                last_beat = Some(Instant::now());
                self.heartbeat();
                self.renew();
                self.rescue();
            }
            self.apply_stop_requests();
            let signals = rt.store.wait_for_signal(POLL);
            if signals.work {
                rt.wake();
            }
        }
    }

    fn heartbeat(&self) {
        if let Err(e) = self.rt.store.register_host(&self.rt.host_record()) {
            tracing::warn!("heartbeat in the hosts table failed: {e}");
        }
    }

    /// Renew leases; stop the jobs whose claim another host took.
    fn renew(&self) {
        let rt = &self.rt;
        let running: Vec<_> = rt
            .live
            .all()
            .iter()
            .map(|op| (op.id.clone(), op.attempt))
            .collect();
        let lost = match rt.store.renew_leases(&running) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!("renewing leases failed: {e}");
                return;
            }
        };
        for (id, attempt) in lost {
            // Finished meanwhile (released) or a later run: not lost.
            let Some(slot) = rt.live.get(&id).filter(|s| s.attempt == attempt) else {
                continue;
            };
            tracing::warn!(
                operation = %id, attempt,
                "this host lost its claim on the operation (its lease ran out and another host \
                 recovered it): stopping its job here; nothing more of this run is recorded"
            );
            slot.request_stop(
                StopRequest::Shutdown,
                Some("this host lost its lease on the operation".into()),
            );
        }
    }

    /// Recover operations whose host stopped renewing their lease.
    fn rescue(&self) {
        let rt = &self.rt;
        match rt.store.rescue_expired(rt.config.auto_resume) {
            Ok(rec) => {
                for id in &rec.crashed {
                    tracing::warn!(operation = %id, "its host's lease ran out: marked failed (crash)");
                }
                if !rec.resumed.is_empty() {
                    tracing::info!(count = rec.resumed.len(), "resuming rescued operations");
                    rt.wake();
                }
                if !rec.crashed.is_empty() {
                    rt.notify_change();
                }
            }
            Err(e) => tracing::warn!("rescuing expired leases failed: {e}"),
        }
    }

    /// Stop markers other hosts wrote for operations running here.
    fn apply_stop_requests(&self) {
        let rt = &self.rt;
        if rt.live.count() == 0 {
            return;
        }
        let requests = match rt.store.stop_requests() {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!("reading stop requests failed: {e}");
                return;
            }
        };
        for (id, attempt, reason) in requests {
            let Some(slot) = rt.live.get(&id).filter(|s| s.attempt == attempt) else {
                continue;
            };
            if slot.stop_requested().is_some() {
                continue;
            }
            let why = match reason {
                StopReason::Parent => StopRequest::Parent,
                StopReason::Shutdown => StopRequest::Shutdown,
                StopReason::Error => StopRequest::ChildFailed,
                StopReason::User | StopReason::Crash | StopReason::Dependency => StopRequest::User,
            };
            tracing::info!(operation = %id, "stop requested from another host");
            slot.request_stop(why, None);
            rt.notify_change();
        }
    }
}
