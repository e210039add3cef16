//! Starting a `command` job's program.
//!
//! The program must die with the daemon (`PR_SET_PDEATHSIG`) instead of
//! running on unsupervised after a crash. Setting that between fork and
//! exec rules out `posix_spawn`, and forking a large, multi-threaded daemon
//! for every job (copying its page tables, then faulting its pages back in)
//! was most of what a short job cost. So the program is started through
//! `opsd-exec` (exec_helper.c, built by build.rs and embedded here): the
//! daemon posix_spawns it, and it arms the death signal and execs the
//! program in its own place. The helper lives in an in-memory file, so
//! nothing is written to disk. Where it cannot run (no C compiler at build
//! time, no /proc, a kernel that refuses to execute in-memory files), the
//! daemon forks as before.

use nix::sys::signal::Signal;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;

/// The helper's executable, compiled by build.rs (empty when it could not be).
static HELPER: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/opsd-exec"));

/// The helper, once loaded: its memfd (held for the daemon's life, so the
/// path below keeps naming it), its `/proc/self/fd/N` path, and the random
/// tag it puts on its failure line.
struct Loaded {
    _fd: std::os::fd::OwnedFd,
    path: String,
    tag: String,
}

/// The helper, loaded and tried once per daemon; `None`: programs are
/// started by forking.
fn helper() -> Option<&'static Loaded> {
    static HELPER_FILE: OnceLock<Option<Loaded>> = OnceLock::new();
    HELPER_FILE.get_or_init(load_helper).as_ref()
}

/// Put the helper in a memfd (kept open for the daemon's life) and check
/// it runs; its path is `/proc/self/fd/N`, which names the same file in
/// the spawned child (it still holds the descriptor until its exec).
fn load_helper() -> Option<Loaded> {
    use std::io::Write;
    use std::os::fd::{AsRawFd, FromRawFd};
    if HELPER.is_empty() {
        tracing::info!("opsd-exec was not built: command jobs fork the daemon");
        return None;
    }
    // SAFETY: a NUL-terminated name and flags; returns a new descriptor or -1.
    let fd = unsafe { libc::memfd_create(c"opsd-exec".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        tracing::info!(
            "no memfd for opsd-exec ({}): command jobs fork the daemon",
            std::io::Error::last_os_error()
        );
        return None;
    }
    // SAFETY: `fd` was just created and is owned here alone.
    let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
    if let Err(e) = file.write_all(HELPER) {
        tracing::info!("cannot load opsd-exec ({e}): command jobs fork the daemon");
        return None;
    }
    let path = format!("/proc/self/fd/{}", file.as_raw_fd());
    let probe = Command::new(&path)
        .arg("--probe")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match probe {
        Ok(s) if s.success() => Some(Loaded {
            _fd: file.into(),
            path,
            tag: format!("{:016x}", rand::random::<u64>()),
        }),
        other => {
            tracing::info!("opsd-exec cannot run here ({other:?}): command jobs fork the daemon");
            None
        }
    }
}

/// A command that runs `program` with `argv` (`argv[0]` as its name),
/// dying with the daemon: through `helper` when given, else by forking
/// with the death signal armed before the exec.
fn command(program: &Path, argv: &[String], helper: Option<&Loaded>) -> Command {
    let daemon_pid = nix::unistd::getpid();
    if let Some(h) = helper {
        let mut cmd = Command::new(&h.path);
        cmd.arg(daemon_pid.as_raw().to_string())
            .arg(&h.tag)
            .arg(program)
            .args(argv);
        return cmd;
    }
    let mut cmd = Command::new(program);
    cmd.arg0(&argv[0]).args(&argv[1..]);
    // SAFETY: the closure only makes async-signal-safe system calls
    // (prctl, getppid) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // The signal follows the spawning worker thread, which lives
            // as long as the daemon.
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            if nix::unistd::getppid() != daemon_pid {
                return Err(std::io::Error::other(
                    "the daemon exited while starting the program",
                ));
            }
            Ok(())
        });
    }
    cmd
}

/// Start `program` with `argv` (`argv[0]` as its name), dying with the
/// daemon; `configure` adds stdio, group, directory and environment. Through
/// the helper when it runs here; should starting the helper itself fail
/// (its only way to fail here: a problem of the program is its exit 127),
/// by forking instead, whose error is then the program's own.
pub fn spawn(
    program: &Path,
    argv: &[String],
    configure: impl Fn(&mut Command),
) -> std::io::Result<std::process::Child> {
    if let Some(h) = helper() {
        let mut cmd = command(program, argv, Some(h));
        configure(&mut cmd);
        match cmd.spawn() {
            Ok(child) => return Ok(child),
            Err(e) => {
                tracing::warn!("cannot start opsd-exec ({e}); forking the daemon for this job")
            }
        }
    }
    let mut cmd = command(program, argv, None);
    configure(&mut cmd);
    cmd.spawn()
}

/// Why the program could not be started, when the helper said so: it
/// exited 127 with its tagged line last on stderr (`last_stderr_line` is
/// asked for only then). `None` for a program that ran, whatever its exit.
pub fn start_failure(
    status: &ExitStatus,
    last_stderr_line: impl FnOnce() -> String,
) -> Option<String> {
    let h = helper()?;
    if status.code() != Some(127) || status.signal().is_some() {
        return None;
    }
    let line = last_stderr_line();
    let why = line
        .trim()
        .strip_prefix(&format!("opsd-exec[{}]: ", h.tag))?;
    Some(describe_errno(why))
}

/// The helper's "WHAT errno N" in words: the helper has no C library to
/// name the error, so the daemon does ("errno 2" is "No such file or
/// directory"; "cannot arm the death signal: errno 1" ends in "Operation
/// not permitted"). Anything else is passed on as written.
fn describe_errno(why: &str) -> String {
    let Some((what, n)) = why.rsplit_once("errno ") else {
        return why.to_string();
    };
    match n.parse::<i32>() {
        Ok(n) => format!("{what}{}", nix::errno::Errno::from_raw(n).desc()),
        Err(_) => why.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An executable file `name` in `dir` holding `text`.
    fn script(dir: &tempfile::TempDir, name: &str, text: &str) -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    /// The last line of a process's stderr.
    fn last_line(stderr: &[u8]) -> String {
        String::from_utf8_lossy(stderr)
            .lines()
            .last()
            .unwrap_or("")
            .to_string()
    }

    #[test]
    fn the_helper_is_built_and_runs_here() {
        // A fresh machine has a C compiler (the bundled SQLite needs one),
        // so the fast path must be the one in use, not the fallback.
        assert!(!HELPER.is_empty(), "build.rs did not build opsd-exec");
        assert!(helper().is_some(), "opsd-exec does not run here");
    }

    #[test]
    #[cfg(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    ))]
    fn the_helper_is_the_build_without_a_c_library() {
        // A static glibc build is hundreds of KiB and spends its start in
        // the C library's set-up; the build without one is a few KiB.
        assert!(
            HELPER.len() < 64 * 1024,
            "opsd-exec is {} bytes: build.rs fell back to the C library build",
            HELPER.len()
        );
    }

    #[test]
    fn the_helpers_error_numbers_are_said_in_words() {
        assert_eq!(describe_errno("errno 2"), "No such file or directory");
        assert_eq!(
            describe_errno("cannot arm the death signal: errno 1"),
            "cannot arm the death signal: Operation not permitted"
        );
        assert_eq!(
            describe_errno("the daemon exited while starting the program"),
            "the daemon exited while starting the program"
        );
    }

    #[test]
    fn the_helper_runs_the_program_in_its_place_with_its_name() {
        let child = spawn(
            Path::new("/bin/sh"),
            &[
                "my-name".into(),
                "-c".into(),
                "echo $$; tr '\\0' ' ' < /proc/$$/cmdline".into(),
            ],
            |c| {
                c.stdout(Stdio::piped());
            },
        )
        .unwrap();
        let pid = child.id();
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines = text.lines();
        assert_eq!(
            lines.next(),
            Some(pid.to_string().as_str()),
            "same pid: {text}"
        );
        assert!(
            lines.next().unwrap_or("").starts_with("my-name -c "),
            "{text}"
        );
        assert!(out.status.success());
    }

    #[test]
    fn a_program_that_cannot_be_executed_is_reported_as_not_started() {
        let dir = tempfile::tempdir().unwrap();
        let script = script(&dir, "s", "#!/no/such/interpreter\n");
        let out = spawn(&script, &["s".into()], |c| {
            c.stderr(Stdio::piped());
        })
        .and_then(|c| c.wait_with_output());
        if helper().is_some() {
            let out = out.unwrap();
            let why = start_failure(&out.status, || last_line(&out.stderr));
            assert_eq!(
                why.as_deref(),
                Some("No such file or directory"),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        } else {
            assert!(out.is_err());
        }
        // A program that exits 127 by itself is not a start failure, even
        // when its last line looks like the helper's (the tag differs).
        let out = spawn(
            Path::new("/bin/sh"),
            &[
                "sh".into(),
                "-c".into(),
                "echo 'opsd-exec: x' >&2; exit 127".into(),
            ],
            |c| {
                c.stderr(Stdio::piped());
            },
        )
        .unwrap()
        .wait_with_output()
        .unwrap();
        assert_eq!(out.status.code(), Some(127));
        assert_eq!(start_failure(&out.status, || last_line(&out.stderr)), None);
    }

    #[test]
    fn a_script_without_an_interpreter_line_runs_with_sh() {
        // As execvp does (and the fork path did): the kernel refuses the
        // file (ENOEXEC), so it is run by /bin/sh.
        let dir = tempfile::tempdir().unwrap();
        let script = script(&dir, "plain", "echo \"ran with $# args: $1\"\n");
        let out = spawn(&script, &["plain".into(), "one".into()], |c| {
            c.stdout(Stdio::piped());
        })
        .unwrap()
        .wait_with_output()
        .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "ran with 1 args: one\n"
        );
    }
}
