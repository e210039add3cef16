//! Empty checkpoint directories kept for the next operation, so that a
//! short job neither creates nor deletes a directory.
//!
//! Every run is handed an existing `OPSD_CHECKPOINT_DIR` (SPEC §8), and
//! a run that ends for good has it removed. On ext4 each `mkdir` allocates
//! an inode, and each `rmdir` leaves a freed inode that later allocations
//! in that block group step over one by one for a minute or more
//! (`recently_deleted` in the kernel): a stream of short jobs made the
//! search longer for every file created after it. Profiles of 600
//! CLI-submitted `true` jobs spent 2-15 % of the machine in that search,
//! depending on how much had been deleted on the file system just before.
//! A finished run's directory, when it is still empty, is moved here
//! instead (`rename`, no inode freed), and the next run's is moved out of
//! here (no inode allocated).
//!
//! Only directories this process moved in are handed out (the list is in
//! memory), and a directory is handed out only while it is still empty:
//! no run ever sees another's files. A run one of whose processes may
//! outlive it (one that did not die, or held its output open) has its
//! directory removed as before, never kept. The pool lives inside the
//! checkpoint directory's parent, so a `rename` never crosses a file
//! system; its names carry the host (in hex), the pid and a random token,
//! so hosts sharing `shared_dir` never take each other's. A process
//! outside the job that was handed the directory and writes into it after
//! the job ended (a detached container with it mounted) is not detected:
//! before, its writes failed in a deleted directory; now they would appear
//! in a later run's.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Directories kept at most: enough for a burst of short jobs on every
/// slot; the rest are removed as before.
const KEEP: usize = 256;

/// The pool of empty directories.
pub struct SpareDirs {
    /// Where they wait: `<checkpoints>/.spare`.
    home: PathBuf,
    /// Prefix of their names: `<host in hex>-<pid>-<random>-`.
    prefix: String,
    /// The ones this process moved in, still there.
    free: Mutex<Vec<PathBuf>>,
    /// Names handed out so far.
    named: AtomicU64,
    /// Set once `home` is known to exist (made on the first keep, not at
    /// start-up, and not again for every finished run).
    home_made: AtomicBool,
}

/// Whether `dir` is a directory with nothing in it.
fn is_empty_dir(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|mut entries| entries.next().is_none())
        .unwrap_or(false)
}

impl SpareDirs {
    /// A pool under `checkpoints` (the parent of every checkpoint
    /// directory) for this `host`. Leftovers of an earlier process of the
    /// same host are removed when they are empty (`rmdir` only: a
    /// directory with anything in it is never touched).
    pub fn new(checkpoints: &Path, host: &str) -> SpareDirs {
        let home = checkpoints.join(".spare");
        // Hex, so that no two host names give one prefix.
        let host: String = host.bytes().map(|b| format!("{b:02x}")).collect();
        let ours = format!("{host}-");
        if let Ok(entries) = std::fs::read_dir(&home) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(&ours) {
                    let _ = std::fs::remove_dir(e.path());
                }
            }
        }
        SpareDirs {
            home,
            // The pid and a random token: two processes never share a name
            // (a container's daemon is often pid 1 on every host).
            prefix: format!(
                "{host}-{}-{:08x}-",
                std::process::id(),
                rand::random::<u32>()
            ),
            free: Mutex::new(Vec::new()),
            named: AtomicU64::new(0),
            home_made: AtomicBool::new(false),
        }
    }

    /// The kept directories (a poisoned lock still holds a valid list).
    fn free(&self) -> MutexGuard<'_, Vec<PathBuf>> {
        self.free.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Make `dir` exist: it is left as it is when it already does (a run
    /// resuming from its files), else an empty spare is moved there, else
    /// it is created.
    pub fn place(&self, dir: &Path) -> io::Result<()> {
        if dir.is_dir() {
            return Ok(());
        }
        loop {
            let spare = self.free().pop();
            let Some(spare) = spare else { break };
            // Something put a file into it meanwhile: not handed out.
            if !is_empty_dir(&spare) {
                tracing::warn!(dir = %spare.display(), "a spare checkpoint directory is not empty; leaving it");
                continue;
            }
            match std::fs::rename(&spare, dir) {
                Ok(()) => return Ok(()),
                Err(_) => {
                    let _ = std::fs::remove_dir(&spare);
                    break;
                }
            }
        }
        std::fs::create_dir_all(dir)
    }

    /// Keep `dir` for a later run instead of removing it: true when it
    /// was an empty directory and is now in the pool; false when the
    /// caller should remove it as before (it holds files, the pool is
    /// full, or it could not be moved).
    pub fn take_back(&self, dir: &Path) -> bool {
        if self.free().len() >= KEEP || !is_empty_dir(dir) {
            return false;
        }
        if !self.home_made.load(Ordering::Relaxed) {
            if let Err(e) = std::fs::create_dir_all(&self.home) {
                tracing::debug!("cannot create {}: {e}", self.home.display());
                return false;
            }
            self.home_made.store(true, Ordering::Relaxed);
        }
        let n = self.named.fetch_add(1, Ordering::Relaxed);
        let spare = self.home.join(format!("{}{n}", self.prefix));
        if std::fs::rename(dir, &spare).is_err() {
            return false;
        }
        self.free().push(spare);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// A pool in a fresh directory, and a first run's directory placed
    /// (`op_0`), which the test may keep or fill.
    fn pool(host: &str) -> (tempfile::TempDir, SpareDirs, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let pool = SpareDirs::new(d.path(), host);
        let first = d.path().join("op_0");
        pool.place(&first).unwrap();
        (d, pool, first)
    }

    #[test]
    fn an_empty_finished_directory_becomes_the_next_runs() {
        let (d, pool, first) = pool("host a");
        let inode = std::fs::metadata(&first).unwrap().ino();
        assert!(pool.take_back(&first));
        assert!(!first.exists());
        let second = d.path().join("op_2");
        pool.place(&second).unwrap();
        assert!(is_empty_dir(&second));
        assert_eq!(
            std::fs::metadata(&second).unwrap().ino(),
            inode,
            "the same directory, moved: no inode made or freed"
        );
        // The pool is empty again: the next one is created.
        let third = d.path().join("op_3");
        pool.place(&third).unwrap();
        assert!(third.is_dir());
        assert_ne!(std::fs::metadata(&third).unwrap().ino(), inode);
    }

    #[test]
    fn a_directory_with_files_is_never_kept_or_handed_out() {
        let (d, pool, used) = pool("h");
        std::fs::write(used.join("model.pt"), b"weights").unwrap();
        assert!(!pool.take_back(&used), "it holds a file");
        assert!(used.join("model.pt").exists(), "nothing of it was touched");
        // A spare that gained a file after it was kept is skipped.
        let empty = d.path().join("op_2");
        pool.place(&empty).unwrap();
        assert!(pool.take_back(&empty));
        let spare = pool.free()[0].clone();
        std::fs::write(spare.join("stray"), b"x").unwrap();
        let next = d.path().join("op_3");
        pool.place(&next).unwrap();
        assert!(is_empty_dir(&next), "the new run's directory is empty");
        assert!(spare.join("stray").exists(), "the stray file is left alone");
    }

    #[test]
    fn a_resumed_runs_directory_is_left_as_it_is() {
        let (d, pool, spare_source) = pool("h");
        assert!(pool.take_back(&spare_source));
        let resumed = d.path().join("op_1");
        std::fs::create_dir(&resumed).unwrap();
        std::fs::write(resumed.join("state.bin"), b"step 40").unwrap();
        pool.place(&resumed).unwrap();
        assert_eq!(
            std::fs::read(resumed.join("state.bin")).unwrap(),
            b"step 40"
        );
        assert_eq!(pool.free().len(), 1, "the spare is still kept");
    }

    #[test]
    fn an_earlier_processes_empty_spares_are_removed_and_full_ones_kept() {
        let d = tempfile::tempdir().unwrap();
        let home = d.path().join(".spare");
        // "h" is 68 in hex, "h.1" 682e31: neither is the other's prefix.
        std::fs::create_dir_all(home.join("68-1-0-0")).unwrap();
        std::fs::create_dir_all(home.join("68-1-0-1")).unwrap();
        std::fs::write(home.join("68-1-0-1").join("f"), b"x").unwrap();
        std::fs::create_dir_all(home.join("682e31-1-0-0")).unwrap();
        let _pool = SpareDirs::new(d.path(), "h");
        assert!(!home.join("68-1-0-0").exists());
        assert!(home.join("68-1-0-1").join("f").exists());
        assert!(
            home.join("682e31-1-0-0").exists(),
            "another host's is not ours"
        );
    }
}
