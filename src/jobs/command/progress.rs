//! The progress file (`OPSD_PROGRESS_FILE`): the program appends JSON
//! lines, the daemon tails them.
//!
//! Only complete lines are consumed, and the byte offset after the last
//! consumed line is what the job stores in its checkpoint: on resume the
//! file is cut back to that offset, so lines written after the checkpoint
//! (whose metric points the worker drops from the database, and which the
//! program regenerates from the checkpoint) are neither lost nor counted
//! twice. Memory is bounded: one read chunk plus at most one line.

use crate::control::ProgressUpdate;
use serde_json::{Map, Value};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Longest line accepted; longer ones are skipped with a warning.
pub const MAX_LINE_BYTES: usize = 1024 * 1024;

/// Bytes read per call to [`ProgressTail::poll`], so one busy program
/// cannot starve the job loop's stop checks.
const POLL_BYTES: usize = 1024 * 1024;

/// One understood line of the progress file.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// `{"progress": {...}}`.
    Progress(ProgressUpdate),
    /// `{"metric": {...}}`.
    Metric(Value),
    /// `{"checkpoint": {"state": .., "path": ".."}}`.
    Checkpoint {
        /// The program's state.
        state: Value,
        /// Its checkpoint file or directory, if any.
        path: Option<String>,
    },
    /// `{"result": {...}}`.
    Result(Value),
}

/// Parse one line into its events (a line may carry several keys; they
/// apply in the order progress, metric, result, checkpoint). The error
/// says what is wrong, for a warning on the operation.
pub fn parse_line(line: &[u8]) -> Result<Vec<Event>, String> {
    let v: Value = serde_json::from_slice(line).map_err(|e| format!("not JSON ({e})"))?;
    let Value::Object(mut obj) = v else {
        return Err("not a JSON object".into());
    };
    if let Some(k) = obj
        .keys()
        .find(|k| !matches!(k.as_str(), "progress" | "metric" | "checkpoint" | "result"))
    {
        return Err(format!(
            "unknown key `{k}` (expected progress, metric, checkpoint or result)"
        ));
    }
    let mut out = Vec::with_capacity(1);
    if let Some(p) = obj.remove("progress") {
        out.push(Event::Progress(parse_progress(p)?));
    }
    if let Some(m) = obj.remove("metric") {
        if !m.is_object() {
            return Err("`metric` must be a JSON object".into());
        }
        out.push(Event::Metric(m));
    }
    if let Some(r) = obj.remove("result") {
        if !r.is_object() {
            return Err("`result` must be a JSON object".into());
        }
        out.push(Event::Result(r));
    }
    if let Some(c) = obj.remove("checkpoint") {
        let Value::Object(mut c) = c else {
            return Err(
                "`checkpoint` must be a JSON object with `state` and optional `path`".into(),
            );
        };
        if let Some(k) = c.keys().find(|k| !matches!(k.as_str(), "state" | "path")) {
            return Err(format!(
                "checkpoint: unknown key `{k}` (expected state, path)"
            ));
        }
        let path = match c.remove("path") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if !s.is_empty() => Some(s),
            Some(v) => {
                return Err(format!(
                    "checkpoint.path must be a non-empty string (got {v})"
                ))
            }
        };
        out.push(Event::Checkpoint {
            state: c.remove("state").unwrap_or(Value::Null),
            path,
        });
    }
    Ok(out)
}

fn parse_progress(p: Value) -> Result<ProgressUpdate, String> {
    let Value::Object(mut m) = p else {
        return Err("`progress` must be a JSON object".into());
    };
    // The daemon computes the ETA itself from the rate of progress.
    m.remove("eta_seconds");
    if let Some(c) = m.get("context") {
        if !c.is_object() && !c.is_null() {
            return Err("progress.context must be a JSON object".into());
        }
    }
    serde_json::from_value(Value::Object(m)).map_err(|e| format!("progress: {e}"))
}

/// Merge two JSON objects (`b`'s keys win); non-objects are replaced.
pub fn merge_context(a: Option<&Value>, b: &Map<String, Value>) -> Value {
    let mut out = match a {
        Some(Value::Object(m)) => m.clone(),
        _ => Map::new(),
    };
    for (k, v) in b {
        out.insert(k.clone(), v.clone());
    }
    Value::Object(out)
}

/// A line read from the file.
pub struct Line<'a> {
    /// Its bytes, without the newline.
    pub bytes: &'a [u8],
    /// Offset of its first byte.
    pub start: u64,
    /// Offset just past it (and its newline): the consumed offset.
    pub end: u64,
}

/// Open `path` if it is a regular file (`Ok(None)` when nothing is there),
/// without following a link and without blocking on a FIFO; anything else
/// at the path is an error.
fn open_regular(path: &Path, write: bool) -> std::io::Result<Option<File>> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = match OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other(
            "it is not a regular file; progress lines are not read",
        ));
    }
    Ok(Some(file))
}

/// Remove whatever is at `path` (not following a link): a file, a link, a
/// FIFO, or a directory with what the program put in it.
fn remove_entry(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Follows the progress file from a byte offset.
pub struct ProgressTail {
    path: PathBuf,
    /// Open once the file exists: the program creates it with its first
    /// line, so a program that reports nothing costs no file at all.
    file: Option<File>,
    /// The path held something other than a regular file (said once).
    refused: bool,
    /// Offset just past the last complete line handed out.
    consumed: u64,
    /// Bytes read past `consumed` that do not end a line yet.
    partial: Vec<u8>,
    /// Skipping the rest of an over-long line.
    skipping: bool,
    chunk: Vec<u8>,
}

impl ProgressTail {
    /// Follow the file at `path` (created by the program when it first
    /// writes; its directory is made here), cut back to `offset` if it
    /// exists: what lies beyond was written after the checkpoint being
    /// resumed from.
    pub fn open(path: &Path, offset: u64) -> std::io::Result<ProgressTail> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        // What an earlier attempt left there is cut back only if it is a
        // regular file of ours: a link (to anything) or a FIFO, device or
        // directory put in its place is removed, never opened or
        // truncated, and the program makes the file anew.
        let (file, consumed) = match open_regular(path, true) {
            Ok(Some(file)) => {
                let len = file.metadata()?.len();
                let offset = offset.min(len);
                if len > offset {
                    file.set_len(offset)?;
                }
                (Some(file), offset)
            }
            Ok(None) => (None, 0),
            Err(_) => {
                remove_entry(path)?;
                (None, 0)
            }
        };
        Ok(ProgressTail {
            path: path.to_path_buf(),
            file,
            refused: false,
            consumed,
            partial: Vec::new(),
            skipping: false,
            chunk: Vec::new(),
        })
    }

    /// Open the file once the program has made it. Only a regular file is
    /// followed: a FIFO (opening it would block), a device or a symbolic
    /// link put there instead is refused, once, with an error.
    fn ensure_open(&mut self) -> std::io::Result<bool> {
        if self.file.is_some() {
            return Ok(true);
        }
        if self.refused {
            return Ok(false);
        }
        match open_regular(&self.path, false) {
            Ok(file) => {
                self.file = file;
                Ok(self.file.is_some())
            }
            Err(e) => {
                self.refused = true;
                Err(e)
            }
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Offset just past the last consumed line.
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// Hand every new complete line to `f` (at most about 1 MiB per call);
    /// with `at_end` (the program has exited) a last line without its
    /// newline counts too. `f` gets `Err` for a line skipped as too long.
    /// `f` returns false to refuse a line (the job cannot take it now):
    /// reading stops there, and the next call starts again at that line,
    /// so back-pressure loses nothing and keeps the order.
    /// Returns the bytes read: non-zero means call again soon.
    pub fn poll(
        &mut self,
        at_end: bool,
        f: &mut dyn FnMut(Result<Line<'_>, String>) -> bool,
    ) -> std::io::Result<usize> {
        if !self.ensure_open()? {
            return Ok(0);
        }
        if self.chunk.is_empty() {
            self.chunk = vec![0; 64 * 1024];
        }
        let mut read_total = 0;
        let mut refused = false;
        while read_total < POLL_BYTES && !refused {
            let pos = self.consumed + self.partial.len() as u64;
            let Some(file) = self.file.as_ref() else {
                break;
            };
            let n = match file.read_at(&mut self.chunk, pos) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if n == 0 {
                break;
            }
            read_total += n;
            let mut data = &self.chunk[..n];
            while let Some(i) = data.iter().position(|b| *b == b'\n') {
                let (head, rest) = (&data[..i], &data[i + 1..]);
                let start = self.consumed;
                let end = start + self.partial.len() as u64 + i as u64 + 1;
                let taken = if self.skipping {
                    self.skipping = false;
                    true
                } else if self.partial.len() + i > MAX_LINE_BYTES {
                    f(Err(format!(
                        "a line at byte {start} is longer than {MAX_LINE_BYTES} bytes; skipped"
                    )));
                    true
                } else if self.partial.is_empty() {
                    f(Ok(Line {
                        bytes: head,
                        start,
                        end,
                    }))
                } else {
                    self.partial.extend_from_slice(head);
                    f(Ok(Line {
                        bytes: &self.partial,
                        start,
                        end,
                    }))
                };
                self.partial.clear();
                if !taken {
                    // Read again from the refused line's start next time.
                    refused = true;
                    break;
                }
                self.consumed = end;
                data = rest;
            }
            if refused {
                break;
            }
            if self.skipping {
                // Count the skipped bytes as consumed without keeping them.
                self.consumed += data.len() as u64;
            } else {
                self.partial.extend_from_slice(data);
                if self.partial.len() > MAX_LINE_BYTES {
                    f(Err(format!(
                        "a line at byte {} is longer than {MAX_LINE_BYTES} bytes; skipped",
                        self.consumed
                    )));
                    self.consumed += self.partial.len() as u64;
                    self.partial = Vec::new();
                    self.skipping = true;
                }
            }
        }
        if at_end
            && !refused
            && read_total < POLL_BYTES
            && !self.partial.is_empty()
            && !self.skipping
        {
            let start = self.consumed;
            let end = start + self.partial.len() as u64;
            let taken = f(Ok(Line {
                bytes: &self.partial,
                start,
                end,
            }));
            if taken {
                self.partial.clear();
                self.consumed = end;
            }
        }
        Ok(read_total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::io::Write;

    #[test]
    fn the_file_is_followed_once_the_program_makes_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("progress").join("op.jsonl");
        let mut t = ProgressTail::open(&p, 0).unwrap();
        assert!(
            !p.exists(),
            "nothing is created for a program that reports nothing"
        );
        assert!(lines(&mut t, false).is_empty());
        std::fs::write(&p, "{\"percentage\": 5}\n").unwrap();
        assert_eq!(lines(&mut t, false).len(), 1);
    }

    #[test]
    fn what_an_earlier_attempt_left_in_its_place_is_removed_not_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let link = dir.path().join("link.jsonl");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let t = ProgressTail::open(&link, 0).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert!(
            std::fs::symlink_metadata(&link).is_err(),
            "the link is gone"
        );
        assert_eq!(t.consumed(), 0);
        let fifo = dir.path().join("fifo.jsonl");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        ProgressTail::open(&fifo, 10).unwrap();
        assert!(!fifo.exists());
        let d = dir.path().join("dir.jsonl");
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("x"), "y").unwrap();
        ProgressTail::open(&d, 0).unwrap();
        assert!(!d.exists());
    }

    #[test]
    fn a_fifo_or_a_link_in_its_place_is_refused_once_and_never_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo.jsonl");
        let mut t = ProgressTail::open(&fifo, 0).unwrap();
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let err = t.poll(false, &mut |_| true).unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
        assert_eq!(t.poll(false, &mut |_| true).unwrap(), 0, "said once");
        let link = dir.path().join("link.jsonl");
        let mut t = ProgressTail::open(&link, 0).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", &link).unwrap();
        assert!(t.poll(false, &mut |_| true).is_err());
        assert_eq!(t.poll(false, &mut |_| true).unwrap(), 0);
    }

    fn lines(t: &mut ProgressTail, at_end: bool) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        t.poll(at_end, &mut |l| {
            match l {
                Ok(l) => out.push((String::from_utf8_lossy(l.bytes).to_string(), l.end)),
                Err(e) => out.push((format!("ERR {e}"), 0)),
            }
            true
        })
        .unwrap();
        out
    }

    /// A tail on `p`, and the program's end of the file (it creates it).
    fn tail_and_program(p: &Path) -> (ProgressTail, File) {
        let t = ProgressTail::open(p, 0).unwrap();
        let w = OpenOptions::new()
            .append(true)
            .create(true)
            .open(p)
            .unwrap();
        (t, w)
    }

    #[test]
    fn a_refused_line_is_read_again_next_time() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("p.jsonl");
        let (mut t, mut w) = tail_and_program(&p);
        w.write_all(b"1\n2\n3\n4").unwrap();
        // Take two lines, refuse the third.
        let mut got = Vec::new();
        t.poll(true, &mut |l| {
            if got.len() == 2 {
                return false;
            }
            got.push(String::from_utf8_lossy(l.unwrap().bytes).to_string());
            true
        })
        .unwrap();
        assert_eq!(got, ["1", "2"]);
        assert_eq!(t.consumed(), 4);
        // Refusing the unterminated last line at the end keeps it too.
        let mut n = 0;
        t.poll(true, &mut |_| {
            n += 1;
            n < 2
        })
        .unwrap();
        assert_eq!(t.consumed(), 6);
        assert_eq!(
            lines(&mut t, true),
            vec![("4".to_string(), 7)],
            "the refused last line comes back"
        );
    }

    #[test]
    fn partial_lines_wait_for_their_newline_and_resume_cuts_back() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("p.jsonl");
        let (mut t, mut w) = tail_and_program(&p);
        w.write_all(b"{\"a\":1}\n{\"b\"").unwrap();
        assert_eq!(lines(&mut t, false), vec![("{\"a\":1}".to_string(), 8)]);
        w.write_all(b":2}\n").unwrap();
        assert_eq!(lines(&mut t, false), vec![("{\"b\":2}".to_string(), 16)]);
        w.write_all(b"tail").unwrap();
        assert!(lines(&mut t, false).is_empty());
        assert_eq!(lines(&mut t, true), vec![("tail".to_string(), 20)]);
        // Resuming from offset 8 drops the later lines.
        let mut t = ProgressTail::open(&p, 8).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 8);
        assert!(lines(&mut t, true).is_empty());
        assert_eq!(t.consumed(), 8);
    }

    #[test]
    fn over_long_lines_are_skipped() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("p.jsonl");
        let mut big = vec![b'x'; MAX_LINE_BYTES + 10];
        big.extend_from_slice(b"\n{}\n");
        let mut t = ProgressTail::open(&p, 0).unwrap();
        std::fs::write(&p, &big).unwrap();
        let mut got = lines(&mut t, false);
        got.extend(lines(&mut t, false));
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got[0].0.starts_with("ERR"));
        assert_eq!(got[1], ("{}".to_string(), big.len() as u64));
    }

    #[test]
    fn lines_parse_into_events() {
        let e =
            parse_line(br#"{"progress":{"percentage":50,"message":"half","context":{"epoch":2}}}"#)
                .unwrap();
        assert_eq!(
            e,
            vec![Event::Progress(ProgressUpdate {
                percentage: Some(50.0),
                message: Some("half".into()),
                context: Some(json!({ "epoch": 2 })),
                ..Default::default()
            })]
        );
        let e = parse_line(br#"{"checkpoint":{"state":{"epoch":3},"path":"/tmp/x"}}"#).unwrap();
        assert_eq!(
            e,
            vec![Event::Checkpoint {
                state: json!({ "epoch": 3 }),
                path: Some("/tmp/x".into())
            }]
        );
        assert!(parse_line(b"nope").unwrap_err().contains("not JSON"));
        assert!(parse_line(br#"{"progress":5}"#)
            .unwrap_err()
            .contains("progress"));
        assert!(parse_line(br#"{"progress":{"percent":5}}"#)
            .unwrap_err()
            .contains("percent"));
        assert!(parse_line(br#"{"metrc":{}}"#)
            .unwrap_err()
            .contains("metrc"));
        assert!(parse_line(br#"{"metric":[1]}"#)
            .unwrap_err()
            .contains("metric"));
    }
}
