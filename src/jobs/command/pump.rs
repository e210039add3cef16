//! One thread, `opsd-cmd-output`, that copies every running command
//! job's stdout and stderr into its log, waiting on all their pipes at
//! once (`epoll`).
//!
//! Why not a thread per job, as before: starting and ending a thread is
//! one of the dearer things a short job did (`clone3`, its stack mapped
//! and unmapped, two more context switches), about 5 % of a `true` job's
//! daemon CPU (BENCHMARKS.md §22), and most programs print little. The
//! pump keeps the per-job copier's promises (`output.rs`): each pipe is
//! read as soon as it has data, with one fixed buffer, so the daemon's
//! memory stays flat, and it never waits on a job's supervision loop or
//! the database. One difference: the log writes are the pump's own, so a
//! log write that hangs (the state directory's disk stalling, which
//! stalls the database on the same disk too) holds up every job's output
//! and programs that fill their 64 KiB pipe wait, where a thread per job
//! held up only that job. A job's
//! `done` gets its message once both of its pipes reached EOF and
//! everything read is in the log.
//!
//! A pipe the pump cannot take (it could not be started, or the kernel
//! refused to watch one more pipe) is copied on a thread of its own.

use super::output::{LogFile, ReadFd, Tail};
use std::collections::HashMap;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// What a job's pipes share: where their bytes go, and whom to tell when
/// both are closed.
struct JobOutput {
    log: Arc<Mutex<LogFile>>,
    tail: Arc<Mutex<Tail>>,
    open: AtomicUsize,
    done: crossbeam_channel::Sender<()>,
}

/// One pipe being copied.
struct Stream {
    pipe: Mutex<Box<dyn ReadFd>>,
    is_stderr: bool,
    job: Arc<JobOutput>,
}

/// The pump: its epoll set and the pipes in it, by token.
struct Pump {
    epoll: OwnedFd,
    streams: Mutex<HashMap<u64, Arc<Stream>>>,
    next_token: AtomicU64,
}

/// The pump, started by the first job that needs it; `None` when it
/// cannot be started now (that job copies on threads of its own, and the
/// next job tries again: a failure such as `EAGAIN` may pass).
fn pump() -> Option<&'static Pump> {
    static PUMP: Mutex<Option<&'static Pump>> = Mutex::new(None);
    let mut p = lock(&PUMP);
    if p.is_none() {
        match start() {
            Ok(started) => *p = Some(started),
            Err(e) => tracing::warn!(
                "cannot start the output pump ({e}); this command job copies its output on threads of its own"
            ),
        }
    }
    *p
}

fn start() -> std::io::Result<&'static Pump> {
    // SAFETY: plain system call; the descriptor is owned below.
    let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor nothing else owns.
    let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
    let pump = Box::new(Pump {
        epoll,
        streams: Mutex::new(HashMap::new()),
        next_token: AtomicU64::new(1),
    });
    // Leaked only once its thread runs: it lives as long as the daemon.
    let (tx, rx) = std::sync::mpsc::channel::<&'static Pump>();
    std::thread::Builder::new()
        .name("opsd-cmd-output".into())
        .stack_size(256 * 1024)
        .spawn(move || {
            if let Ok(pump) = rx.recv() {
                pump.run()
            }
        })?;
    let pump: &'static Pump = Box::leak(pump);
    let _ = tx.send(pump);
    Ok(pump)
}

/// Copy `streams` (a job's pipes, each with whether it is stderr) into
/// `log` (stderr also into `tail`) until each reaches EOF; `done` then
/// gets one message. On the pump; a pipe it cannot take (the pump did not
/// start, or the kernel refused to watch the pipe) on a thread of its own.
pub(super) fn add(
    streams: Vec<(Box<dyn ReadFd>, bool)>,
    log: Arc<Mutex<LogFile>>,
    tail: Arc<Mutex<Tail>>,
    done: crossbeam_channel::Sender<()>,
) {
    let job = Arc::new(JobOutput {
        log,
        tail,
        // One share held by this call until every pipe is handed over: a
        // pipe that closes at once cannot end the job before the next one
        // is added.
        open: AtomicUsize::new(streams.len() + 1),
        done,
    });
    let pump = pump();
    for (pipe, is_stderr) in streams {
        let stream = Arc::new(Stream {
            pipe: Mutex::new(pipe),
            is_stderr,
            job: job.clone(),
        });
        match pump {
            Some(pump) => pump.watch(stream),
            None => copy_on_own_thread(stream),
        }
    }
    job.close_one();
}

/// Copy one pipe on a thread of its own (the pump could not take it).
fn copy_on_own_thread(stream: Arc<Stream>) {
    let s = stream.clone();
    let started = std::thread::Builder::new()
        .name("opsd-cmd-output".into())
        .stack_size(256 * 1024)
        .spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            while s.copy_once(&mut buf) {}
            s.job.close_one();
        });
    if let Err(e) = started {
        // The pipe is dropped with `stream`: the program sees EPIPE rather
        // than a full pipe, and the job does not wait for it. Said in the
        // job's log, so its missing output is explained.
        let which = if stream.is_stderr { "stderr" } else { "stdout" };
        tracing::warn!(
            "cannot start a thread to copy a command's {which} ({e}); that output is lost"
        );
        lock(&stream.job.log).write(&super::output::notice(&format!(
            "cannot start a thread to copy the program's {which} ({e}); that output is lost"
        )));
        stream.job.close_one();
    }
}

impl JobOutput {
    fn close_one(&self) {
        if self.open.fetch_sub(1, Ordering::SeqCst) == 1 {
            let _ = self.done.send(());
        }
    }
}

impl Stream {
    /// Read once and keep what came; `false` at EOF or a read error.
    fn copy_once(&self, buf: &mut [u8]) -> bool {
        let read = lock(&self.pipe).read(buf);
        match read {
            Ok(0) => false,
            Ok(n) => {
                lock(&self.job.log).write(&buf[..n]);
                if self.is_stderr {
                    lock(&self.job.tail).push(&buf[..n]);
                }
                true
            }
            Err(e) => matches!(
                e.kind(),
                std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock
            ),
        }
    }
}

impl Pump {
    /// Start copying `stream` here, or on a thread of its own when the
    /// kernel will not watch it (out of memory, or `max_user_watches`).
    fn watch(&self, stream: Arc<Stream>) {
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let fd = lock(&stream.pipe).as_raw_fd();
        lock(&self.streams).insert(token, stream);
        if let Err(e) = self.ctl(libc::EPOLL_CTL_ADD, fd, token) {
            tracing::warn!(
                "cannot add a command's output pipe to the pump ({e}); copying it on a thread"
            );
            if let Some(stream) = lock(&self.streams).remove(&token) {
                copy_on_own_thread(stream);
            }
        }
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, token: u64) -> std::io::Result<()> {
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
            u64: token,
        };
        // SAFETY: valid epoll and pipe descriptors, and a valid event.
        if unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), op, fd, &mut event) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    fn run(&self) {
        let mut buf = vec![0u8; 64 * 1024];
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 64];
        loop {
            // SAFETY: `events` has room for `events.len()` entries.
            let n = unsafe {
                libc::epoll_wait(
                    self.epoll.as_raw_fd(),
                    events.as_mut_ptr(),
                    events.len() as libc::c_int,
                    -1,
                )
            };
            if n < 0 {
                // EINTR; anything else is transient (the set stays as it
                // is, so nothing is lost): wait a little and go on.
                if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                continue;
            }
            for event in &events[..n as usize] {
                let token = event.u64;
                let Some(stream) = lock(&self.streams).get(&token).cloned() else {
                    continue;
                };
                if !stream.copy_once(&mut buf) {
                    let fd = lock(&stream.pipe).as_raw_fd();
                    let _ = self.ctl(libc::EPOLL_CTL_DEL, fd, token);
                    lock(&self.streams).remove(&token);
                    // The pipe closes when the last reference goes, here.
                    stream.job.close_one();
                }
            }
        }
    }
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
