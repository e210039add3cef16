//! Applying the progress file's lines to the operation: progress (with
//! the sampled GPU usage merged into its context), metric points, the
//! result, and checkpoints (files fsynced, state wrapped with the offset).

use super::progress::{self, Event, ProgressTail};
use super::MAX_LINE_WARNINGS;
use crate::control::RunControl;
use crate::jobs::JobContext;
use crate::runtime::files;
use serde_json::{json, Map, Value};
use std::path::PathBuf;

/// What the job has gathered from the progress file during this attempt.
pub(super) struct Ingest {
    pub(super) cwd: PathBuf,
    pub(super) result: Option<Value>,
    pub(super) script_context: Option<Value>,
    pub(super) gpu_usage: Option<Value>,
    pub(super) warnings: usize,
}

impl Ingest {
    pub(super) fn warn(&mut self, ctx: &JobContext, msg: String) {
        self.warnings += 1;
        if self.warnings <= MAX_LINE_WARNINGS {
            ctx.warn(&msg);
        }
        if self.warnings == MAX_LINE_WARNINGS {
            ctx.warn("further malformed progress lines are counted, not reported one by one");
        }
    }

    /// The progress context: the program's, plus `gpu_usage`.
    pub(super) fn context(&self) -> Option<Value> {
        match (&self.script_context, &self.gpu_usage) {
            (None, None) => None,
            (c, g) => {
                let mut extra = Map::new();
                if let Some(g) = g {
                    extra.insert("gpu_usage".into(), g.clone());
                }
                Some(progress::merge_context(c.as_ref(), &extra))
            }
        }
    }

    fn line(&mut self, ctx: &mut JobContext, line: Result<progress::Line<'_>, String>) {
        let line = match line {
            Ok(l) => l,
            Err(e) => return self.warn(ctx, format!("progress file: {e}")),
        };
        let events = match progress::parse_line(line.bytes) {
            Ok(ev) => ev,
            Err(e) => {
                let text = String::from_utf8_lossy(line.bytes);
                let excerpt: String = text.chars().take(120).collect();
                return self.warn(
                    ctx,
                    format!("progress file, line at byte {}: {e}: {excerpt}", line.start),
                );
            }
        };
        for ev in events {
            match ev {
                Event::Progress(mut u) => {
                    if let Some(c) = u.context.take() {
                        self.script_context = Some(c);
                    }
                    u.context = self.context();
                    ctx.progress(u);
                }
                Event::Metric(m) => ctx.metric(m),
                Event::Result(r) => self.result = Some(r),
                Event::Checkpoint { state, path } => {
                    self.checkpoint(ctx, state, path, line.end, line.start)
                }
            }
        }
    }

    fn checkpoint(
        &mut self,
        ctx: &mut JobContext,
        state: Value,
        path: Option<String>,
        end: u64,
        start: u64,
    ) {
        let path = path.map(|p| self.cwd.join(p));
        if let Some(p) = &path {
            // Looked at without opening anything: a FIFO would block the
            // job loop (and so the cancel), /proc would be an endless walk.
            let tree = match files::inspect_tree(p) {
                Ok(t) => t,
                Err(e) => {
                    return self.warn(
                        ctx,
                        format!(
                            "progress file, line at byte {start}: checkpoint path {} refused: {e}; checkpoint ignored",
                            p.display()
                        ),
                    )
                }
            };
            // The checkpoint row must point at durable files (SPEC §4),
            // whether or not the program fsynced them.
            if let Err(e) = files::sync_tree(&tree) {
                tracing::warn!(operation = %ctx.id(), "fsync of {} failed: {e}", p.display());
            }
        }
        let wrapped = json!({
            "script_state": state,
            "path": path.as_ref().map(|p| p.display().to_string()),
            "progress_offset": end,
        });
        if let Err(e) = ctx.checkpoint_with_files(wrapped, path) {
            ctx.warn(&format!("checkpoint at byte {start} not saved: {e}"));
        }
    }
}

/// Drain every complete line now in the progress file; true if any bytes
/// were read (so the loop should look again at once).
///
/// Back-pressure: when the operation's metric queue is full, reading stops
/// at the next line (its offset kept) and the queue is written out before
/// this returns, so memory stays bounded however fast the program writes,
/// and no point is lost or reordered.
pub(super) fn ingest(
    ctx: &mut JobContext,
    tail: &mut ProgressTail,
    state: &mut Ingest,
    at_end: bool,
) -> bool {
    let mut full = false;
    let read = tail.poll(at_end, &mut |l| {
        if l.is_ok() && ctx.metric_room() == 0 {
            full = true;
            return false;
        }
        state.line(ctx, l);
        true
    });
    if full {
        if let Err(e) = ctx.flush_metrics() {
            // Not busy: the loop backs off instead of spinning on a
            // database that refuses writes.
            tracing::error!(operation = %ctx.id(), "{e}");
            return false;
        }
        return true;
    }
    match read {
        Ok(n) => n > 0,
        Err(e) => {
            tracing::warn!(operation = %ctx.id(), "reading {} failed: {e}", tail.path().display());
            false
        }
    }
}
