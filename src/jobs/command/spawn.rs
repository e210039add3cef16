//! Starting a `command` job's program.
//!
//! The program must die with the daemon (`PR_SET_PDEATHSIG`) instead of
//! running on unsupervised after a crash, and only the program itself can
//! arm that, between fork and exec. Forking a large, multi-threaded daemon
//! for every job (copying its page tables, then faulting its pages back
//! in) was most of what a short job cost, `posix_spawn` runs no code of
//! ours in between, and a helper program that arms the signal and execs
//! the real one costs a second exec per job. So the daemon starts the
//! program as `posix_spawn` does inside: `clone(CLONE_VM | CLONE_VFORK)`
//! onto a small stack of its own. The child shares the daemon's memory
//! while the spawning thread waits for its exec, and makes only system
//! calls: signal handlers back to their defaults, its own process group,
//! the death signal, its standard streams, its directory, the exec. Should
//! one fail, it writes which and why into memory the parent reads once it
//! has gone, and exits 127; `spawn` then reaps it and returns the error.

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;

/// How to start a program: what `std::process::Command` would hold for
/// it. Its environment starts as the daemon's.
pub struct Launch {
    program: CString,
    argv: Vec<CString>,
    cwd: Option<CString>,
    /// Its changes to the daemon's environment: a variable set to a
    /// value, or taken out (`None`).
    env: BTreeMap<OsString, Option<OsString>>,
}

/// The daemon's environment, `(name, "NAME=value")`, sorted by name and
/// read once: every job's starts from it. Copying it out of `std::env`
/// and formatting it for `execve` for each job was about 170 allocations
/// per job (BENCHMARKS.md §25); the daemon never changes its own
/// environment once it runs.
fn daemon_env() -> &'static [(OsString, CString)] {
    static ENV: std::sync::OnceLock<Vec<(OsString, CString)>> = std::sync::OnceLock::new();
    ENV.get_or_init(|| {
        let mut all: Vec<(OsString, CString)> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.clone(), name_value(&k, &v).ok()?)))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    })
}

/// `NAME=value` as `execve` takes it.
fn name_value(name: &OsStr, value: &OsStr) -> io::Result<CString> {
    let mut kv = name.as_bytes().to_vec();
    kv.push(b'=');
    kv.extend_from_slice(value.as_bytes());
    c_string(OsStr::from_bytes(&kv))
}

impl Launch {
    /// `program` (a path) run with `argv`, `argv[0]` as its name.
    pub fn new(program: &Path, argv: &[String]) -> io::Result<Launch> {
        Ok(Launch {
            program: c_string(program.as_os_str())?,
            argv: argv
                .iter()
                .map(|a| c_string(OsStr::new(a)))
                .collect::<io::Result<_>>()?,
            cwd: None,
            env: BTreeMap::new(),
        })
    }

    /// Start in `dir` instead of the daemon's directory.
    pub fn cwd(&mut self, dir: &Path) -> io::Result<&mut Launch> {
        self.cwd = Some(c_string(dir.as_os_str())?);
        Ok(self)
    }

    /// Set `key` in its environment.
    pub fn env(&mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> &mut Launch {
        self.env
            .insert(key.as_ref().to_owned(), Some(value.as_ref().to_owned()));
        self
    }

    /// Take `key` out of its environment.
    pub fn env_remove(&mut self, key: impl AsRef<OsStr>) -> &mut Launch {
        self.env.insert(key.as_ref().to_owned(), None);
        self
    }

    /// Whether its environment has `key`.
    pub fn has_env(&self, key: impl AsRef<OsStr>) -> bool {
        let key = key.as_ref();
        match self.env.get(key) {
            Some(change) => change.is_some(),
            None => daemon_env()
                .binary_search_by(|(k, _)| k.as_os_str().cmp(key))
                .is_ok(),
        }
    }

    /// Start it, stdin from /dev/null and stdout and stderr into pipes,
    /// in a process group of its own, dying with the daemon. A file the
    /// kernel will not execute for want of a `#!` line (ENOEXEC) is run by
    /// /bin/sh, as execvp and the shell do.
    pub fn spawn(&self) -> io::Result<Program> {
        let own: Vec<CString> = self
            .env
            .iter()
            .filter_map(|(k, v)| Some(name_value(k, v.as_ref()?)))
            .collect::<io::Result<_>>()?;
        let mut envp: Vec<*const libc::c_char> = daemon_env()
            .iter()
            .filter(|(k, _)| !self.env.contains_key(k))
            .map(|(_, kv)| kv.as_ptr())
            .chain(own.iter().map(|kv| kv.as_ptr()))
            .collect();
        envp.push(std::ptr::null());
        let sh = c"/bin/sh";
        let argv = pointers(&self.argv);
        // sh PROGRAM ARGS...: the program's path in place of its name.
        let mut sh_argv = vec![sh.as_ptr(), self.program.as_ptr()];
        sh_argv.extend(self.argv.iter().skip(1).map(|a| a.as_ptr()));
        sh_argv.push(std::ptr::null());

        let stdin = dev_null()?;
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let mut plan = Plan {
            path: self.program.as_ptr(),
            argv: argv.as_ptr(),
            sh: sh.as_ptr(),
            sh_argv: sh_argv.as_ptr(),
            envp: envp.as_ptr(),
            cwd: self.cwd.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
            fds: [stdin.as_raw_fd(), out_w.as_raw_fd(), err_w.as_raw_fd()],
            daemon: std::process::id() as libc::pid_t,
            failed: Step::None,
            errno: 0,
        };
        #[cfg(debug_assertions)]
        check_signals_still_settled();
        let pid = clone_vfork(&mut plan)?;
        drop((out_w, err_w));
        // The child has exec'd or exited: what it wrote is there to read.
        let (failed, errno) =
            // SAFETY: `plan` lives on; the volatile reads see the child's writes.
            unsafe { (std::ptr::read_volatile(&plan.failed), std::ptr::read_volatile(&plan.errno)) };
        let mut program = Program {
            pid,
            stdout: Some(File::from(out_r)),
            stderr: Some(File::from(err_r)),
            status: None,
        };
        if failed != Step::None {
            let _ = program.wait();
            return Err(failed.error(errno, self.cwd.as_deref()));
        }
        Ok(program)
    }
}

/// A started program: its pid, the reading ends of its output pipes, and
/// its exit status once waited for.
pub struct Program {
    pid: libc::pid_t,
    /// The program's stdout.
    pub stdout: Option<File>,
    /// The program's stderr.
    pub stderr: Option<File>,
    status: Option<ExitStatus>,
}

impl Program {
    /// Its process id (also its process group's).
    pub fn id(&self) -> u32 {
        self.pid as u32
    }

    /// Wait for it to exit and reap it; later calls give the same status.
    pub fn wait(&mut self) -> io::Result<ExitStatus> {
        if let Some(s) = self.status {
            return Ok(s);
        }
        let mut raw = 0;
        loop {
            // SAFETY: waits for our own child; `raw` is a valid out-pointer.
            let r = unsafe { libc::waitpid(self.pid, &mut raw, 0) };
            if r == self.pid {
                let s = ExitStatus::from_raw(raw);
                self.status = Some(s);
                return Ok(s);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

/// The step of the child's start that failed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(i32)]
enum Step {
    None,
    ProcessGroup,
    DeathSignal,
    DaemonGone,
    Stdio,
    Directory,
    Exec,
}

impl Step {
    /// The failure as the error `spawn` returns.
    fn error(self, errno: i32, cwd: Option<&std::ffi::CStr>) -> io::Error {
        let os = io::Error::from_raw_os_error(errno);
        let what = match self {
            Step::None | Step::Exec => return os,
            Step::ProcessGroup => "cannot give the program its own process group".to_string(),
            Step::DeathSignal => "cannot arm the death signal".to_string(),
            Step::DaemonGone => {
                return io::Error::other("the daemon exited while starting the program")
            }
            Step::Stdio => "cannot connect the program's stdin, stdout and stderr".to_string(),
            Step::Directory => format!(
                "cannot enter the working directory {}",
                cwd.map(|c| c.to_string_lossy()).unwrap_or_default()
            ),
        };
        io::Error::new(os.kind(), format!("{what}: {os}"))
    }
}

/// Everything the child needs, prepared by the parent: the child reads it
/// and writes only `failed` and `errno`.
#[repr(C)]
struct Plan {
    path: *const libc::c_char,
    argv: *const *const libc::c_char,
    sh: *const libc::c_char,
    sh_argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    cwd: *const libc::c_char,
    fds: [RawFd; 3],
    daemon: libc::pid_t,
    failed: Step,
    errno: i32,
}

/// Bytes of stack the child runs on (it calls a few libc wrappers only).
const CHILD_STACK: usize = 64 * 1024;

/// Start the child on a stack of its own with all signals blocked (no
/// handler of the daemon's may run in it before it has reset them), and
/// return once it has exec'd or exited.
fn clone_vfork(plan: &mut Plan) -> io::Result<libc::pid_t> {
    CHILD_STACKS.with(|cell| {
        let mut stack = cell.borrow_mut();
        // 16-byte aligned, as the ABI wants the stack pointer.
        if stack.is_empty() {
            *stack = vec![0u128; CHILD_STACK / 16];
        }
        // SAFETY: one past the end of `stack`, which this thread keeps and
        // does not touch until the child has exec'd or exited (the thread
        // is suspended until then).
        let top = unsafe { stack.as_mut_ptr().add(stack.len()) } as *mut libc::c_void;
        clone_onto(top, plan)
    })
}

thread_local! {
    /// The stack a thread's children run on between clone and exec, kept
    /// for the thread's next start instead of allocated and zeroed (64 KiB)
    /// for every job. One per thread: a thread starts one child at a time.
    static CHILD_STACKS: std::cell::RefCell<Vec<u128>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `/dev/null`, opened once for every program's stdin (above 0-2, and
/// close-on-exec: the child's `dup2` makes its own stdin from it).
fn dev_null() -> io::Result<std::os::fd::BorrowedFd<'static>> {
    static DEV_NULL: std::sync::OnceLock<OwnedFd> = std::sync::OnceLock::new();
    if DEV_NULL.get().is_none() {
        let fd = above_stdio(File::open("/dev/null")?.into())?;
        // Two threads may race here; the loser's descriptor is closed.
        let _ = DEV_NULL.set(fd);
    }
    use std::os::fd::AsFd;
    Ok(DEV_NULL.get().expect("set above").as_fd())
}

/// The signals the daemon has a handler for or ignores, as a bit mask
/// (bit `n - 1` for signal `n`), once [`signals_settled`] has recorded
/// them; 0 until then.
static RESET_SIGNALS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// Whether [`RESET_SIGNALS`] is known.
static SIGNALS_SETTLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Record which signals a child must set back to their defaults, so that
/// each start resets those (a few) instead of asking about all 64. Call
/// once the process has installed every signal handler it will have (the
/// daemon, after its own); until then, and in any process that never
/// calls it, every start asks about every signal. A handler installed
/// after this call would not be reset in a child, which could then run it
/// between its start and its exec: install none.
pub fn signals_settled() {
    RESET_SIGNALS.store(signals_to_reset(), std::sync::atomic::Ordering::SeqCst);
    SIGNALS_SETTLED.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// The signals that must be reset now (the mask [`signals_settled`]
/// records): system calls only, so the child may call it too.
fn signals_to_reset() -> u64 {
    let mut mask = 0u64;
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: a query only; `old` is plain data it fills.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        if unsafe { libc::sigaction(sig, std::ptr::null(), &mut old) } != 0 {
            continue;
        }
        if must_reset(sig, &old) {
            mask |= 1 << (sig - 1);
        }
    }
    mask
}

/// Debug builds (the test suites, which run `opsd serve` itself) check at
/// every start that no handler came after [`signals_settled`].
#[cfg(debug_assertions)]
fn check_signals_still_settled() {
    use std::sync::atomic::Ordering::SeqCst;
    if SIGNALS_SETTLED.load(SeqCst) {
        let now = signals_to_reset();
        let recorded = RESET_SIGNALS.load(SeqCst);
        assert!(
            now & !recorded == 0,
            "a signal handler was installed after signals_settled (signals {:#x} are not \
             reset in children): install it before, or call signals_settled again",
            now & !recorded
        );
    }
}

/// Whether a child must set `sig`, whose disposition is `old`, back to
/// its default: a handler is the daemon's code; SIGPIPE, which Rust
/// programs ignore, too; other ignored signals stay so.
fn must_reset(sig: libc::c_int, old: &libc::sigaction) -> bool {
    let handled = old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN;
    handled || (sig == libc::SIGPIPE && old.sa_sigaction != libc::SIG_DFL)
}

/// Clone the child onto the stack ending at `top`.
fn clone_onto(top: *mut libc::c_void, plan: &mut Plan) -> io::Result<libc::pid_t> {
    // SAFETY: sigset_t is plain data; the calls only fill and apply sets.
    let pid = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        // SAFETY: `child` makes only system calls on its own stack and
        // reads `plan`, which stays valid and unchanged until it returns.
        let pid = libc::clone(
            child,
            top,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            plan as *mut Plan as *mut libc::c_void,
        );
        let e = io::Error::last_os_error();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        if pid < 0 {
            return Err(e);
        }
        pid
    };
    Ok(pid)
}

/// The child, between clone and exec. It shares the daemon's memory, so
/// it allocates nothing, takes no lock and never returns into Rust code
/// of the daemon's: each step is one system call, and a failure ends it.
extern "C" fn child(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the parent's `Plan`, alive while the parent waits;
    // every call below is a plain system call wrapper.
    unsafe {
        let plan = &mut *(arg as *mut Plan);
        // Handlers are the daemon's code: back to the defaults (see
        // `must_reset`), from the recorded list once the daemon's handlers
        // are settled, else by asking about each signal (system calls
        // only, nothing allocated).
        let mask = if SIGNALS_SETTLED.load(std::sync::atomic::Ordering::SeqCst) {
            RESET_SIGNALS.load(std::sync::atomic::Ordering::SeqCst)
        } else {
            signals_to_reset()
        };
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        for sig in 1..=64 {
            if mask & (1 << (sig - 1)) != 0 {
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            }
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        // Its own process group: signals reach the program's children too,
        // and a Ctrl-C meant for a foreground daemon does not reach it.
        if libc::setpgid(0, 0) != 0 {
            fail(plan, Step::ProcessGroup);
        }
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
            fail(plan, Step::DeathSignal);
        }
        // The daemon may have died before the signal was armed.
        if libc::getppid() != plan.daemon {
            *libc::__errno_location() = 0;
            fail(plan, Step::DaemonGone);
        }
        for (target, &fd) in plan.fds.iter().enumerate() {
            if libc::dup2(fd, target as RawFd) < 0 {
                fail(plan, Step::Stdio);
            }
        }
        if !plan.cwd.is_null() && libc::chdir(plan.cwd) != 0 {
            fail(plan, Step::Directory);
        }
        libc::execve(plan.path, plan.argv, plan.envp);
        if *libc::__errno_location() == libc::ENOEXEC {
            libc::execve(plan.sh, plan.sh_argv, plan.envp);
        }
        fail(plan, Step::Exec)
    }
}

/// Tell the parent which step failed, with errno as it stands, and exit.
///
/// # Safety
/// Only in `child`, with its `plan`.
unsafe fn fail(plan: &mut Plan, step: Step) -> ! {
    std::ptr::write_volatile(&mut plan.errno, *libc::__errno_location());
    std::ptr::write_volatile(&mut plan.failed, step);
    libc::_exit(127)
}

/// A NUL-terminated copy of `s`; an error naming it if it holds a NUL.
fn c_string(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{:?} contains a NUL byte", s.to_string_lossy()),
        )
    })
}

/// The pointers of `strings`, NULL-terminated, as execve takes them.
fn pointers(strings: &[CString]) -> Vec<*const libc::c_char> {
    let mut v: Vec<_> = strings.iter().map(|s| s.as_ptr()).collect();
    v.push(std::ptr::null());
    v
}

/// A pipe, both ends close-on-exec and numbered above 2 (the child puts
/// them on 1 and 2, which must not be one of them).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 returns.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both were just created and are owned here alone.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok((above_stdio(r)?, above_stdio(w)?))
}

/// `fd`, moved above 0-2 if it is one of them (a daemon started with its
/// standard streams closed hands those numbers out).
fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    // SAFETY: duplicates a descriptor we own; the copy is owned by the result.
    let n = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `n` was just created and is owned here alone.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// An executable file `name` in `dir` holding `text`.
    fn script(dir: &tempfile::TempDir, name: &str, text: &str) -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    /// Run `launch` to its end: (stdout, stderr, status).
    fn output(launch: &Launch) -> (String, String, ExitStatus) {
        let mut p = launch.spawn().unwrap();
        let (mut out, mut err) = (String::new(), String::new());
        p.stdout.take().unwrap().read_to_string(&mut out).unwrap();
        p.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        let status = p.wait().unwrap();
        (out, err, status)
    }

    #[test]
    fn the_daemons_environment_is_passed_on_with_the_jobs_changes() {
        // A variable of this process that no shell sets by itself.
        const VAR: &str = "CARGO_MANIFEST_DIR";
        let seen = |change: &dyn Fn(&mut Launch)| {
            let script = format!("echo \"${{{VAR}-unset}}\"");
            let mut l =
                Launch::new(Path::new("/bin/sh"), &["sh".into(), "-c".into(), script]).unwrap();
            change(&mut l);
            let has = l.has_env(VAR);
            let mut p = l.spawn().unwrap();
            let mut out = String::new();
            p.stdout.take().unwrap().read_to_string(&mut out).unwrap();
            assert!(p.wait().unwrap().success());
            (out.trim_end().to_string(), has)
        };
        let daemons = std::env::var(VAR).expect("cargo test sets it");
        assert_eq!(seen(&|_| {}), (daemons, true));
        assert_eq!(
            seen(&|l| {
                l.env(VAR, "/opsd-test");
            }),
            ("/opsd-test".to_string(), true)
        );
        assert_eq!(
            seen(&|l| {
                l.env(VAR, "/opsd-test").env_remove(VAR);
            }),
            ("unset".to_string(), false)
        );
    }

    #[test]
    fn the_program_runs_with_its_name_group_streams_and_environment() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = Launch::new(
            Path::new("/bin/sh"),
            &[
                "my-name".into(),
                "-c".into(),
                // The signal mask first, with builtins only: dash blocks
                // every signal for a moment whenever it waits for a child
                // (and clears its mask after), so a look from a child of
                // the shell could catch that moment, and one after a wait
                // would no longer show the mask the program started with.
                "while read -r l; do case $l in SigBlk*|SigIgn*) echo \"$l\";; esac; \
                 done < /proc/$$/status; \
                 echo $$ $(cut -d' ' -f5 /proc/$$/stat) $PWD \"$SET\" \"${GONE-unset}\"; \
                 tr '\\0' ' ' < /proc/$$/cmdline; echo; echo oops >&2; \
                 read x; echo \"stdin:$x.\"; exit 3"
                    .into(),
            ],
        )
        .unwrap();
        l.cwd(dir.path()).unwrap();
        l.env("SET", "a b").env("GONE", "x").env_remove("GONE");
        let mut p = l.spawn().unwrap();
        let pid = p.id();
        let mut out = String::new();
        p.stdout.take().unwrap().read_to_string(&mut out).unwrap();
        let mut err = String::new();
        p.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        let status = p.wait().unwrap();
        assert_eq!(status.code(), Some(3));
        assert_eq!(p.wait().unwrap().code(), Some(3), "a second wait");
        let mut lines = out.lines();
        // Nothing blocked; SIGPIPE (which this test process ignores) not
        // ignored by the program.
        assert_eq!(lines.next(), Some("SigBlk:\t0000000000000000"), "{out}");
        let ign =
            u64::from_str_radix(lines.next().unwrap().trim_start_matches("SigIgn:\t"), 16).unwrap();
        assert_eq!(ign & (1 << (libc::SIGPIPE - 1)), 0, "{out}");
        let first: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        let real = dir.path().canonicalize().unwrap();
        assert_eq!(first[0], pid.to_string(), "{out}");
        assert_eq!(first[1], pid.to_string(), "its own process group: {out}");
        assert_eq!(Path::new(first[2]).canonicalize().unwrap(), real, "{out}");
        assert_eq!(&first[3..], ["a", "b", "unset"], "{out}");
        assert!(lines.next().unwrap().starts_with("my-name -c "), "{out}");
        assert_eq!(lines.next(), Some("stdin:."), "stdin is /dev/null: {out}");
        assert_eq!(err, "oops\n");
    }

    #[test]
    fn settled_signals_list_the_handled_and_sigpipe_and_programs_still_start_clean() {
        let caught = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        signal_hook::flag::register(libc::SIGUSR2, caught).unwrap();
        signals_settled();
        let mask = RESET_SIGNALS.load(std::sync::atomic::Ordering::SeqCst);
        let bit = |sig: libc::c_int| mask & (1 << (sig - 1)) != 0;
        assert!(bit(libc::SIGUSR2), "a handler is reset: {mask:x}");
        assert!(bit(libc::SIGPIPE), "the ignored SIGPIPE is reset: {mask:x}");
        assert!(!bit(libc::SIGKILL) && !bit(libc::SIGSTOP));
        // grep itself is the program: no shell, whose own waits block
        // signals for a moment (see the test above).
        let grep = ["/usr/bin/grep", "/bin/grep"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.exists())
            .expect("grep");
        let mut p = Launch::new(
            grep,
            &[
                "grep".into(),
                "-E".into(),
                "^(SigBlk|SigIgn)".into(),
                "/proc/self/status".into(),
            ],
        )
        .unwrap()
        .spawn()
        .unwrap();
        let mut out = String::new();
        p.stdout.take().unwrap().read_to_string(&mut out).unwrap();
        assert!(p.wait().unwrap().success());
        let mut lines = out.lines();
        assert_eq!(lines.next(), Some("SigBlk:\t0000000000000000"), "{out}");
        let ign =
            u64::from_str_radix(lines.next().unwrap().trim_start_matches("SigIgn:\t"), 16).unwrap();
        assert_eq!(ign & (1 << (libc::SIGPIPE - 1)), 0, "{out}");
    }

    #[test]
    fn failures_before_the_exec_come_back_as_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = Launch::new(Path::new("/no/such/program"), &["x".into()])
            .unwrap()
            .spawn()
            .err()
            .expect("a missing program");
        assert_eq!(missing.raw_os_error(), Some(libc::ENOENT), "{missing}");
        let bad_interpreter = script(&dir, "s", "#!/no/such/interpreter\n");
        let e = Launch::new(&bad_interpreter, &["s".into()])
            .unwrap()
            .spawn()
            .err()
            .expect("a missing interpreter");
        assert!(
            e.to_string().starts_with("No such file or directory"),
            "{e}"
        );
        let mut l = Launch::new(Path::new("/bin/true"), &["true".into()]).unwrap();
        l.cwd(&dir.path().join("gone")).unwrap();
        let e = l.spawn().err().expect("a missing directory");
        assert!(
            e.to_string()
                .starts_with("cannot enter the working directory"),
            "{e}"
        );
        assert!(e.to_string().contains("gone"), "{e}");
        let e = Launch::new(Path::new("/bin/true"), &["a\0b".into()])
            .err()
            .expect("a NUL byte");
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn a_script_without_an_interpreter_line_runs_with_sh() {
        // As execvp does: the kernel refuses the file (ENOEXEC), so it is
        // run by /bin/sh.
        let dir = tempfile::tempdir().unwrap();
        let script = script(&dir, "plain", "echo \"ran with $# args: $1\"\n");
        let (out, _, status) =
            output(&Launch::new(&script, &["plain".into(), "one".into()]).unwrap());
        assert!(status.success());
        assert_eq!(out, "ran with 1 args: one\n");
    }

    #[test]
    fn the_program_dies_with_the_thread_that_started_it() {
        // PR_SET_PDEATHSIG follows the spawning thread; in the daemon that
        // is a worker, which lives as long as the daemon.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let l = Launch::new(Path::new("/bin/sleep"), &["sleep".into(), "30".into()]).unwrap();
            let p = l.spawn().unwrap();
            tx.send(p).ok();
        })
        .join()
        .unwrap();
        let mut p = rx.recv().unwrap();
        let status = p.wait().unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    }
}
