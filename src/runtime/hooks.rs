//! The `on_finish` hook (SPEC §12): a program the user configured, run
//! when an operation ends ("tell me when my overnight run is done").
//!
//! It runs on a thread of its own, never on the writer or a worker; it
//! reads the final row (status, stop reason, label) from the store, so
//! what it is told is what was committed. Its failure is logged and
//! never changes the operation. An operation stopped by a shutdown has
//! not ended (it resumes at the next start), and a failed attempt put
//! back in the queue for a retry has not either: neither runs the hook.

use super::Runtime;
use crate::ids::OperationId;
use crate::model::StopReason;
use std::process::{Command, Stdio};

/// Run the configured hook for `id`, if any, in the background.
pub(super) fn on_finish(rt: &Runtime, id: &OperationId) {
    let argv = rt.config.on_finish.clone();
    if argv.is_empty() {
        return;
    }
    let store = rt.store.clone();
    let id = id.clone();
    let spawned = std::thread::Builder::new()
        .name("on-finish".into())
        .spawn(move || {
            let rec = match store.get(&id) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(operation = %id, "on_finish: cannot read the operation: {e}");
                    return;
                }
            };
            if rec.status.is_active() || rec.stop_reason == Some(StopReason::Shutdown) {
                return;
            }
            let out = Command::new(&argv[0])
                .args(&argv[1..])
                .env("OPSD_OPERATION_ID", id.as_str())
                .env("OPSD_STATUS", rec.status.as_str())
                .env(
                    "OPSD_STOP_REASON",
                    rec.stop_reason.map(|r| r.as_str()).unwrap_or(""),
                )
                .env("OPSD_LABEL", rec.label.as_deref().unwrap_or(""))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .output();
            match out {
                Ok(o) if o.status.success() => {}
                Ok(o) => tracing::warn!(
                    operation = %id,
                    "on_finish {:?} failed ({}): {}",
                    argv[0],
                    o.status,
                    String::from_utf8_lossy(&o.stderr).trim()
                ),
                Err(e) => {
                    tracing::warn!(operation = %id, "on_finish {:?} could not start: {e}", argv[0])
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("on_finish: cannot start a thread: {e}");
    }
}
