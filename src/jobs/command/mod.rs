//! `command`: runs the user's own program (a PyTorch training script, a
//! backtest) as an operation (SPEC §8).
//!
//! ```text
//! daemon worker ──spawn (own process group)──▶ program ──▶ grandchildren
//!     │  ▲                                        │  │
//!     │  └── tail OPSD_PROGRESS_FILE (JSON lines) ◀┘  │ stdout/stderr pipes
//!     │                                              ▼
//!     └── SIGTERM to the group on stop,      copier thread ──▶ logs/<id>.log
//!         SIGKILL after grace_seconds
//! ```
//!
//! The job's checkpoint wraps the program's:
//! `{"script_state": .., "path": .., "progress_offset": N}`, where `N` is
//! the progress-file offset just past the checkpoint line. The worker drops
//! metric points recorded after a checkpoint when it resumes; the job cuts
//! the progress file back to `N` to match, and the program, restarted from
//! the same checkpoint, writes those lines again. So a restart neither
//! loses nor duplicates points.

mod gpu;
mod ingest;
mod output;
pub mod params;
pub mod procs;
pub mod progress;
mod pump;
pub mod spawn;

use super::{Job, JobContext, JobOutcome};
use crate::control::{ProgressUpdate, RunControl};
use crate::runtime::running::StopRequest;
use ingest::{ingest, Ingest};
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use output::{LogFile, Tail};
use params::CommandParams;
use progress::ProgressTail;
use serde_json::{json, Map, Value};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the job loop looks at the progress file, the process and the
/// stop request when nothing is happening. It starts at 1 ms and doubles up
/// to this while idle, so a short program is noticed as soon as it exits
/// and a long quiet one costs 50 wake-ups a second.
const MAX_TICK: Duration = Duration::from_millis(20);

/// Malformed progress lines reported one by one; the rest are counted.
pub(crate) const MAX_LINE_WARNINGS: usize = 20;

/// The `command` job.
pub struct CommandJob;

impl Job for CommandJob {
    fn validate(&self, p: &Value) -> Result<Value, String> {
        encode(&params::validate(p)?)
    }

    fn validate_without_io(&self, p: &Value) -> Option<Result<Value, String>> {
        Some(params::validate_without_io(p)?.and_then(|p| encode(&p)))
    }

    fn run(&self, ctx: &mut JobContext) -> JobOutcome {
        let p: CommandParams = match serde_json::from_value(ctx.params().clone()) {
            Ok(p) => p,
            Err(e) => return JobOutcome::Failed(format!("invalid parameters: {e}")),
        };
        run(ctx, &p)
    }
}

/// Checked parameters as the operation's stored JSON.
fn encode(p: &CommandParams) -> Result<Value, String> {
    serde_json::to_value(p).map_err(|e| format!("cannot encode parameters: {e}"))
}

/// What a resumed attempt continues from.
struct Resume {
    script_state: Value,
    path: Option<String>,
    offset: u64,
}

fn resume_info(ctx: &JobContext) -> Option<Resume> {
    let st = ctx.resume_state()?;
    let path = st
        .get("path")
        .and_then(Value::as_str)
        .map(String::from)
        .or_else(|| {
            ctx.resume_checkpoint()
                .and_then(|c| c.artifacts_path.clone())
        });
    Some(Resume {
        script_state: st.get("script_state").cloned().unwrap_or(Value::Null),
        path,
        offset: st
            .get("progress_offset")
            .and_then(Value::as_u64)
            .unwrap_or(0),
    })
}

/// Text for an exit status: "exited with code 3" or "killed by signal SIGKILL (9)".
fn describe(status: &ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exited with code {code}");
    }
    match status.signal() {
        Some(sig) => match Signal::try_from(sig) {
            Ok(s) => format!("killed by signal {} ({sig})", s.as_str()),
            Err(_) => format!("killed by signal {sig}"),
        },
        None => format!("ended with status {status}"),
    }
}

/// How long to wait between SIGTERM and SIGKILL: the job's grace, but
/// within the daemon's own shutdown grace so the checkpoint is recorded
/// before the daemon exits.
fn grace_for(p: &CommandParams, why: StopRequest, shutdown_grace_seconds: u64) -> Duration {
    let mut g = p.grace_seconds;
    if why == StopRequest::Shutdown {
        let daemon = shutdown_grace_seconds as f64;
        g = g.min((daemon - 2.0).max(daemon * 0.5));
    }
    Duration::from_secs_f64(g.max(0.0))
}

fn run(ctx: &mut JobContext, p: &CommandParams) -> JobOutcome {
    let id = ctx.id().to_string();
    let config = ctx.config().clone();
    let paths = config.paths();
    let resume = resume_info(ctx);
    let program = match params::resolve_program(p) {
        Ok(prog) => prog,
        Err(e) => return JobOutcome::Failed(format!("cannot start the program: {e}")),
    };
    let checkpoint_dir = match ctx.checkpoint_dir() {
        Ok(d) => d,
        Err(e) => {
            return JobOutcome::Failed(format!("cannot create the checkpoint directory: {e}"))
        }
    };
    let mut tail = match ProgressTail::open(
        &paths.progress(ctx.id()),
        resume.as_ref().map_or(0, |r| r.offset),
    ) {
        Ok(t) => t,
        Err(e) => return JobOutcome::Failed(format!("cannot create the progress file: {e}")),
    };
    let log = match LogFile::open(&paths.log(ctx.id()), config.log_max_bytes) {
        Ok(l) => Arc::new(Mutex::new(l)),
        Err(e) => return JobOutcome::Failed(format!("cannot create the log file: {e}")),
    };
    let note = |text: String| {
        if let Ok(mut l) = log.lock() {
            l.write(&output::notice(&text));
        }
    };
    // The attempt's first line waits until the program prints something
    // (or opsd has a notice): a job that prints nothing makes no log file.
    if let Ok(mut l) = log.lock() {
        let line = format!(
            "attempt {} {}: {}",
            ctx.attempt(),
            if resume.is_some() {
                "resuming from its checkpoint"
            } else {
                "starting"
            },
            p.argv.join(" ")
        );
        l.header(&output::notice(&line));
    }

    let launch = || -> std::io::Result<spawn::Launch> {
        let mut l = spawn::Launch::new(&program, &p.argv)?;
        if let Some(cwd) = &p.cwd {
            l.cwd(std::path::Path::new(cwd))?;
        }
        if !l.has_env("PYTHONUNBUFFERED") && !p.env.contains_key("PYTHONUNBUFFERED") {
            // Python buffers stdout into a pipe; users expect `opsd logs` live.
            l.env("PYTHONUNBUFFERED", "1");
        }
        for (k, v) in &p.env {
            l.env(k, v);
        }
        l.env("OPSD_OPERATION_ID", &id)
            .env("OPSD_ATTEMPT", ctx.attempt().to_string())
            .env("OPSD_PROGRESS_FILE", tail.path())
            .env("OPSD_CHECKPOINT_DIR", &checkpoint_dir);
        if !ctx.gpus().is_empty() {
            l.env("CUDA_VISIBLE_DEVICES", ctx.gpus().join(","))
                .env("CUDA_DEVICE_ORDER", "PCI_BUS_ID");
        }
        l.env_remove("OPSD_RESUME_STATE")
            .env_remove("OPSD_RESUME_CHECKPOINT");
        if let Some(r) = &resume {
            l.env("OPSD_RESUME_STATE", r.script_state.to_string());
            if let Some(path) = &r.path {
                l.env("OPSD_RESUME_CHECKPOINT", path);
            }
        }
        Ok(l)
    };
    let mut child = match launch().and_then(|l| l.spawn()) {
        Ok(c) => c,
        Err(e) => {
            let msg = start_error(p, &program, &e.to_string());
            note(msg.clone());
            return JobOutcome::Failed(msg);
        }
    };
    let pid = Pid::from_raw(child.id() as i32);
    tracing::info!(operation = %id, pid = pid.as_raw(), "command started");
    let exit_watch = ExitWatch::open(pid);
    let mut procs = procs::JobProcs::new(&id, pid);

    let stderr_tail = Arc::new(Mutex::new(Tail::default()));
    let (done_tx, done_rx) = crossbeam_channel::unbounded();
    output::spawn_copier(
        child.stdout.take(),
        child.stderr.take(),
        log.clone(),
        stderr_tail.clone(),
        done_tx,
    );
    let sampler = if ctx.gpus().is_empty() {
        None
    } else {
        gpu::Sampler::start(
            config.nvidia_smi.clone(),
            ctx.gpus().to_vec(),
            Duration::from_millis(config.gpu_sample_interval_ms.max(100)),
        )
    };

    let mut state = Ingest {
        cwd: p
            .cwd
            .as_ref()
            .map(PathBuf::from)
            .or_else(|| std::env::current_dir().ok())
            .unwrap_or_else(|| PathBuf::from("/")),
        result: None,
        script_context: None,
        gpu_usage: None,
        warnings: 0,
    };
    let mut term_deadline: Option<Instant> = None;
    let mut killed = false;
    let mut tick = Duration::from_millis(1);
    // Whether a stop had been asked for when the program exited: a stop
    // that arrives while we drain its output must not undo a finished run.
    let mut stopped_at_exit = false;
    let wait_error = loop {
        let busy = ingest(ctx, &mut tail, &mut state, false);
        procs.track_every();
        if let Some(sample) = sampler.as_ref().and_then(gpu::Sampler::take) {
            state.gpu_usage = Some(sample);
            let context = state.context();
            ctx.progress(ProgressUpdate {
                context,
                ..Default::default()
            });
        }
        // WNOWAIT leaves the exited program a zombie, so its pid (the
        // group id) cannot be reused before the group is cleaned up below.
        match waitid(
            Id::Pid(pid),
            WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT,
        ) {
            Ok(WaitStatus::StillAlive) => {}
            Ok(_) => {
                stopped_at_exit = ctx.stop_request().is_some();
                break None;
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => break Some(e),
        }
        if term_deadline.is_none() {
            if let Some(why) = ctx.stop_request() {
                let grace = grace_for(p, why, config.shutdown_grace_seconds);
                note(format!(
                    "stop requested ({}): SIGTERM, SIGKILL in {grace:?}",
                    why.stop_reason()
                ));
                let _ = killpg(pid, Signal::SIGTERM);
                procs.signal_escaped(Signal::SIGTERM);
                term_deadline = Some(Instant::now() + grace);
            }
        }
        if let Some(deadline) = term_deadline {
            if !killed && Instant::now() >= deadline {
                let _ = killpg(pid, Signal::SIGKILL);
                procs.signal_escaped(Signal::SIGKILL);
                killed = true;
                ctx.warn(&format!(
                    "the program did not exit within grace_seconds ({}) of SIGTERM; killed with SIGKILL",
                    p.grace_seconds
                ));
            }
        }
        if busy {
            tick = Duration::from_millis(1);
        } else {
            // Sleep until the next look at the progress file, or until the
            // program exits, whichever comes first.
            exit_watch.wait(tick);
            tick = (tick * 2).min(MAX_TICK);
        }
    };
    // The operation ends with its program: whatever is left in its group
    // (data-loader workers, a forgotten background process) goes too, and
    // so does what left the group (`setsid`). The program's zombie still
    // holds its pid, so the group id cannot name another group yet.
    let _ = killpg(pid, Signal::SIGKILL);
    let (escaped, survivors) = procs.kill_all(wait_error.is_none());
    if survivors {
        ctx.checkpoint_dir_may_be_in_use();
    }
    if escaped > 0 {
        note(format!(
            "killed {escaped} process(es) the program left behind"
        ));
    }
    let status = child.wait();
    // The copiers end when every writer of the pipes is gone; a process
    // that left the group may hold them open, so do not wait for ever.
    let until = Instant::now() + Duration::from_secs(5);
    if done_rx.recv_deadline(until).is_err() {
        tracing::warn!(operation = %id, "a process outside the program's group still holds its output open");
        ctx.checkpoint_dir_may_be_in_use();
    }
    while ingest(ctx, &mut tail, &mut state, true) {}
    drop(sampler);
    if state.warnings > MAX_LINE_WARNINGS {
        ctx.warn(&format!(
            "{} malformed progress lines in all were ignored",
            state.warnings
        ));
    }

    let status = match (wait_error, status) {
        (None, Ok(s)) => s,
        (Some(e), _) => return JobOutcome::Failed(format!("lost track of the program: {e}")),
        (_, Err(e)) => return JobOutcome::Failed(format!("lost track of the program: {e}")),
    };
    let how = describe(&status);
    if let Ok(mut l) = log.lock() {
        l.note_if_open(&output::notice(&format!("the program {how}")));
    }
    tracing::info!(operation = %id, "command {how}");
    if stopped_at_exit {
        return JobOutcome::Stopped;
    }
    if status.success() {
        let _ = std::fs::remove_file(tail.path());
        ctx.progress(ProgressUpdate {
            percentage: Some(100.0),
            ..Default::default()
        });
        let mut result = match state.result {
            Some(Value::Object(m)) => m,
            _ => Map::new(),
        };
        result.insert("exit_code".into(), json!(0));
        return JobOutcome::Completed(Value::Object(result));
    }
    let stderr = stderr_tail
        .lock()
        .map(|t| t.last_lines(output::STDERR_TAIL_LINES))
        .unwrap_or_default();
    let mut msg = format!("{:?} {how}", p.argv[0]);
    if stderr.is_empty() {
        msg.push_str(" (nothing on stderr)");
    } else {
        msg.push_str("; last lines of stderr:\n");
        msg.push_str(&stderr);
    }
    JobOutcome::Failed(msg)
}

/// The error of a program that could not be started.
fn start_error(p: &CommandParams, program: &std::path::Path, why: &str) -> String {
    let mut msg = format!(
        "cannot start the program {:?} ({}): {why}",
        p.argv[0],
        program.display()
    );
    if why.starts_with("No such file or directory") && program.exists() {
        msg.push_str(" (the interpreter on its #! line may be missing)");
    }
    msg
}

/// A pidfd of the program: lets the supervision loop sleep until the
/// program exits instead of noticing its exit at the next tick (most of a
/// short command's latency). Without pidfd support (Linux < 5.3) it falls
/// back to sleeping the tick.
struct ExitWatch(Option<std::os::fd::OwnedFd>);

impl ExitWatch {
    fn open(pid: Pid) -> ExitWatch {
        use std::os::fd::FromRawFd;
        // SAFETY: pidfd_open takes a pid and flags and returns a new file
        // descriptor (or -1); nothing else is touched.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
        ExitWatch((fd >= 0).then(|| unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) }))
    }

    /// Return after `most`, or as soon as the program has exited.
    fn wait(&self, most: Duration) {
        use std::os::fd::AsRawFd;
        match &self.0 {
            Some(fd) => {
                let mut p = libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd for the duration of the call.
                unsafe { libc::poll(&mut p, 1, most.as_millis().max(1) as i32) };
            }
            None => std::thread::sleep(most),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses_read_well() {
        assert_eq!(
            describe(&ExitStatus::from_raw(3 << 8)),
            "exited with code 3"
        );
        assert_eq!(
            describe(&ExitStatus::from_raw(9)),
            "killed by signal SIGKILL (9)"
        );
    }

    #[test]
    fn shutdown_grace_stays_within_the_daemons() {
        let p = params::validate(&json!({ "argv": ["true"] })).unwrap();
        assert_eq!(
            grace_for(&p, StopRequest::User, 10),
            Duration::from_secs(30)
        );
        assert_eq!(
            grace_for(&p, StopRequest::Shutdown, 10),
            Duration::from_secs(8)
        );
        assert_eq!(
            grace_for(&p, StopRequest::Shutdown, 60),
            Duration::from_secs(30)
        );
    }
}
