//! The program's stdout and stderr: copied into `<state dir>/logs/<id>.log`
//! under a size cap (one rotated `.1` file kept), with the last stderr
//! bytes remembered for the error message.
//!
//! Each stream has a reader thread with a fixed buffer, so the daemon's
//! memory stays flat however much the program prints; a program is never
//! blocked on a full pipe, even when the log cannot be written.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Bytes of stderr remembered for the error message.
const STDERR_TAIL_BYTES: usize = 8 * 1024;

/// Lines of stderr put into the error message.
pub const STDERR_TAIL_LINES: usize = 15;

/// A size-capped log file with one rotated generation.
pub struct LogFile {
    path: PathBuf,
    file: Option<File>,
    size: u64,
    /// 0: no cap.
    max_bytes: u64,
    failed: bool,
}

impl LogFile {
    /// Open `path` for appending (an earlier attempt's log continues).
    pub fn open(path: &Path, max_bytes: u64) -> std::io::Result<LogFile> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(LogFile {
            path: path.to_path_buf(),
            file: Some(file),
            size,
            max_bytes,
            failed: false,
        })
    }

    /// Append, rotating to `<path>.1` whenever the cap would be passed,
    /// so the file never grows beyond `max_bytes`. Errors are reported
    /// once and further output is dropped (the program keeps running).
    pub fn write(&mut self, mut data: &[u8]) {
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
    fn push(&mut self, data: &[u8]) {
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

/// Copy `from` into the log (and `tail`, for stderr) until EOF, on a thread
/// named `name`; `done` gets a message when it ends.
pub fn spawn_copier(
    name: &str,
    mut from: impl Read + Send + 'static,
    log: Arc<Mutex<LogFile>>,
    tail: Option<Arc<Mutex<Tail>>>,
    done: crossbeam_channel::Sender<()>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name(name.to_string())
        .stack_size(256 * 1024)
        .spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match from.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                };
                if let Ok(mut l) = log.lock() {
                    l.write(&buf[..n]);
                }
                if let Some(t) = &tail {
                    if let Ok(mut t) = t.lock() {
                        t.push(&buf[..n]);
                    }
                }
            }
            let _ = done.send(());
        })
        .map(|_| ())
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
    fn tail_keeps_last_lines() {
        let mut t = Tail::default();
        for i in 0..5000 {
            t.push(format!("line {i}\n").as_bytes());
        }
        assert_eq!(t.last_lines(2), "line 4998\nline 4999");
        assert!(t.bytes.len() <= STDERR_TAIL_BYTES);
    }
}
