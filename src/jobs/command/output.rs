//! The program's stdout and stderr: copied into `<state dir>/logs/<id>.log`
//! under a size cap (one rotated `.1` file kept), with the last stderr
//! bytes remembered for the error message. The file is created at the
//! first output (see [`LogFile`]).
//!
//! The daemon's output pump (`pump.rs`) drains every job's pipes, with a
//! fixed buffer, so the daemon's memory stays flat however much the program
//! prints; a program is never blocked on a full pipe when the log cannot
//! be written (a failed write is dropped; one that hangs holds up the
//! pump, see `pump.rs`), and never waits on the job's supervision loop
//! (which may itself wait on a database write).

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Bytes of stderr remembered for the error message.
const STDERR_TAIL_BYTES: usize = 8 * 1024;

/// Lines of stderr put into the error message.
pub const STDERR_TAIL_LINES: usize = 15;

/// One line of opsd's own in a program's log: `==> opsd: <text>`.
pub fn notice(text: &str) -> Vec<u8> {
    format!("==> opsd: {text}\n").into_bytes()
}

/// A size-capped log file with one rotated generation, created when there
/// is something to keep in it.
///
/// Creating a file is one of the dearest things a short job does (a new
/// inode: 30-470 us of kernel time on an ext4 without a journal,
/// BENCHMARKS.md §19), and most short jobs print nothing. So the file is
/// made by the first [`LogFile::write`]: the program's first byte of output
/// or an opsd notice worth keeping. The attempt's start line
/// ([`LogFile::header`]) waits in memory until then, and the exit line
/// ([`LogFile::note_if_open`]) is added only to a log that exists. A job that
/// printed nothing and ended on its own leaves no log file.
pub struct LogFile {
    path: PathBuf,
    file: Option<File>,
    /// Written before the first byte, when the file is created.
    header: Vec<u8>,
    size: u64,
    /// 0: no cap.
    max_bytes: u64,
    failed: bool,
}

impl LogFile {
    /// The log at `path`: an earlier attempt's file is opened for appending
    /// (its log continues); a missing one is created at the first write.
    /// The directory is made now and must be writable, so that a state
    /// directory where no log can go fails the job before its program
    /// starts. (A creation that fails later, as with no inode left, drops
    /// the output with a warning in the daemon's log; the program runs on.)
    pub fn open(path: &Path, max_bytes: u64) -> std::io::Result<LogFile> {
        if let Some(dir) = path.parent() {
            // One call per job in the common case (the directory is there).
            match nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK) {
                Ok(()) => {}
                Err(nix::errno::Errno::ENOENT) => std::fs::create_dir_all(dir)?,
                Err(e) => return Err(e.into()),
            }
        }
        let (file, size) = match OpenOptions::new().append(true).open(path) {
            Ok(f) => {
                let size = f.metadata()?.len();
                (Some(f), size)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (None, 0),
            Err(e) => return Err(e),
        };
        Ok(LogFile {
            path: path.to_path_buf(),
            file,
            header: Vec::new(),
            size,
            max_bytes,
            failed: false,
        })
    }

    /// A line that belongs at the top of this attempt's output: written
    /// now into a log that exists, else kept until the first write.
    pub fn header(&mut self, line: &[u8]) {
        if self.file.is_some() {
            self.write(line);
        } else {
            self.header = line.to_vec();
        }
    }

    /// Append `data` only to a log that exists (a closing line that says
    /// nothing on its own); dropped otherwise. A waiting header stays: a
    /// process outside the program's group may still print.
    pub fn note_if_open(&mut self, data: &[u8]) {
        if self.file.is_some() {
            self.write(data);
        }
    }

    /// Create the file, with the waiting header first.
    fn create(&mut self) -> std::io::Result<()> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = file.metadata()?.len();
        self.file = Some(file);
        let header = std::mem::take(&mut self.header);
        self.write(&header);
        Ok(())
    }

    /// Append, rotating to `<path>.1` whenever the cap would be passed,
    /// so the file never grows beyond `max_bytes`. Errors are reported
    /// once and further output is dropped (the program keeps running).
    pub fn write(&mut self, mut data: &[u8]) {
        if self.file.is_none() && !self.failed && !data.is_empty() {
            if let Err(e) = self.create() {
                self.fail(e);
            }
        }
        while !data.is_empty() && !self.failed {
            let room = if self.max_bytes == 0 {
                data.len()
            } else {
                (self.max_bytes.saturating_sub(self.size)) as usize
            };
            if room == 0 {
                if let Err(e) = self.rotate() {
                    self.fail(e);
                }
                continue;
            }
            let n = room.min(data.len());
            let r = match self.file.as_mut() {
                Some(f) => f.write_all(&data[..n]),
                None => Ok(()),
            };
            if let Err(e) = r {
                self.fail(e);
            }
            self.size += n as u64;
            data = &data[n..];
        }
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let mut old = self.path.clone().into_os_string();
        old.push(".1");
        self.file = None;
        std::fs::rename(&self.path, &old)?;
        self.file = Some(
            OpenOptions::new()
                .create(true)
                .append(true)
                .truncate(false)
                .open(&self.path)?,
        );
        self.size = 0;
        Ok(())
    }

    fn fail(&mut self, e: std::io::Error) {
        tracing::warn!(path = %self.path.display(), "cannot write the command log; dropping output: {e}");
        self.failed = true;
    }
}

/// The last bytes written to stderr.
#[derive(Default)]
pub struct Tail {
    bytes: VecDeque<u8>,
}

impl Tail {
    pub(super) fn push(&mut self, data: &[u8]) {
        let data = &data[data.len().saturating_sub(STDERR_TAIL_BYTES)..];
        let over = (self.bytes.len() + data.len()).saturating_sub(STDERR_TAIL_BYTES);
        self.bytes.drain(..over);
        self.bytes.extend(data);
    }

    /// The last `n` non-empty lines, as text.
    pub fn last_lines(&self, n: usize) -> String {
        let (a, b) = self.bytes.as_slices();
        let text = String::from_utf8_lossy(&[a, b].concat()).to_string();
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

/// A readable pipe with a descriptor to poll.
pub(super) trait ReadFd: Read + AsRawFd + Send {}
impl<T: Read + AsRawFd + Send> ReadFd for T {}

/// Copy `stdout` and `stderr` into the log (and stderr into `tail` too)
/// until both reach EOF; `done` gets one message then. The copying is
/// done by the daemon's one output pump (`pump.rs`), not a thread per
/// job: a short job's cost is largely the threads it starts.
pub fn spawn_copier(
    stdout: Option<impl Read + AsRawFd + Send + 'static>,
    stderr: Option<impl Read + AsRawFd + Send + 'static>,
    log: Arc<Mutex<LogFile>>,
    tail: Arc<Mutex<Tail>>,
    done: crossbeam_channel::Sender<()>,
) {
    let mut streams: Vec<(Box<dyn ReadFd>, bool)> = Vec::new();
    if let Some(out) = stdout {
        streams.push((Box::new(out), false));
    }
    if let Some(err) = stderr {
        streams.push((Box::new(err), true));
    }
    super::pump::add(streams, log, tail, done);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_is_capped_and_rotated_once() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("op.log");
        let mut l = LogFile::open(&p, 100).unwrap();
        for _ in 0..25 {
            l.write(&[b'a'; 33]);
        }
        assert!(std::fs::metadata(&p).unwrap().len() <= 100);
        assert_eq!(
            std::fs::metadata(d.path().join("op.log.1")).unwrap().len(),
            100
        );
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 2);
    }

    #[test]
    fn a_log_is_created_by_the_first_output_with_its_header_first() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("logs").join("op.log");
        // Nothing printed: the start and exit lines alone make no file.
        let mut l = LogFile::open(&p, 0).unwrap();
        assert!(
            p.parent().unwrap().is_dir(),
            "the directory is made at once"
        );
        l.header(b"start\n");
        l.note_if_open(b"exit\n");
        assert!(!p.exists(), "a silent job left a log file");
        // Output after the exit line (a leftover process) still gets the
        // header first.
        l.write(b"late\n");
        drop(l);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "start\nlate\n");
        std::fs::remove_file(&p).unwrap();
        // The first output creates it, the waiting header first.
        let mut l = LogFile::open(&p, 0).unwrap();
        l.header(b"start\n");
        l.write(b"out\n");
        l.note_if_open(b"exit\n");
        drop(l);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "start\nout\nexit\n");
        // A later attempt continues the existing log, header and all.
        let mut l = LogFile::open(&p, 0).unwrap();
        l.header(b"again\n");
        l.note_if_open(b"exit\n");
        drop(l);
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "start\nout\nexit\nagain\nexit\n"
        );
    }

    #[test]
    fn a_log_directory_that_cannot_be_written_fails_at_once() {
        use std::os::unix::fs::PermissionsExt;
        if nix::unistd::geteuid().is_root() {
            eprintln!("note: root writes anywhere; the permission check is not exercised");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let logs = d.path().join("logs");
        std::fs::create_dir(&logs).unwrap();
        std::fs::set_permissions(&logs, std::fs::Permissions::from_mode(0o500)).unwrap();
        let r = LogFile::open(&logs.join("op.log"), 0);
        std::fs::set_permissions(&logs, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(r.is_err(), "an unwritable log directory was accepted");
    }

    #[test]
    fn one_copier_drains_both_pipes_to_their_ends() {
        // A program that writes more than a pipe holds to each stream in
        // turn would block for ever if either were left undrained.
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("op.log");
        let log = Arc::new(Mutex::new(LogFile::open(&p, 0).unwrap()));
        let tail = Arc::new(Mutex::new(Tail::default()));
        let mut child = std::process::Command::new("sh")
            .args([
                "-c",
                "head -c 200000 /dev/zero | tr '\\0' e >&2; echo >&2; head -c 300000 /dev/zero | tr '\\0' o; echo last-err >&2",
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = crossbeam_channel::unbounded();
        spawn_copier(
            child.stdout.take(),
            child.stderr.take(),
            log.clone(),
            tail.clone(),
            tx,
        );
        let ended = rx.recv_timeout(std::time::Duration::from_secs(20));
        if ended.is_err() {
            let _ = child.kill();
        }
        assert!(child.wait().unwrap().success(), "the program was blocked");
        ended.expect("the copier ends at the pipes' EOF");
        drop(log);
        let text = std::fs::read(&p).unwrap();
        assert_eq!(text.iter().filter(|b| **b == b'e').count(), 200_000 + 1);
        assert_eq!(text.iter().filter(|b| **b == b'o').count(), 300_000);
        assert_eq!(tail.lock().unwrap().last_lines(1), "last-err");
    }

    #[test]
    fn tail_keeps_last_lines() {
        let mut t = Tail::default();
        for i in 0..5000 {
            t.push(format!("line {i}\n").as_bytes());
        }
        assert_eq!(t.last_lines(2), "line 4998\nline 4999");
        assert!(t.bytes.len() <= STDERR_TAIL_BYTES);
    }
}
