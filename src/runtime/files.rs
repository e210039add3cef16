//! Durable file writes for checkpoints and artifacts: write a temporary
//! file, fsync it, rename it into place, fsync the directory. After this
//! returns the file survives a power cut, so the row that points at it may
//! be committed.

use std::io::Write;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

/// Write `bytes` to `path` durably (temp file, fsync, rename, fsync dir).
pub fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "file".into());
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    sync_dir(dir)
}

/// fsync a directory, making renames and creations in it durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Most entries a checkpoint tree may hold: a checkpoint is a few files or
/// a directory of shards, not a file system to walk.
pub const MAX_TREE_ENTRIES: usize = 100_000;

/// Deepest directory nesting a checkpoint tree may have.
pub const MAX_TREE_DEPTH: usize = 32;

/// Most bytes a checkpoint tree may hold (1 TiB): a bound on what the
/// daemon fsyncs and counts, far above any real model checkpoint.
pub const MAX_TREE_BYTES: u64 = 1 << 40;

/// Trees the daemon will not treat as checkpoint files: kernel views,
/// not data (`/proc` alone is an endless walk through `/proc/self/root`).
const PSEUDO_ROOTS: [&str; 3] = ["/proc", "/sys", "/dev"];

/// A checkpoint path after [`inspect_tree`]: only regular files and
/// directories, within the limits. Symbolic links inside are not followed.
#[derive(Debug, Default)]
pub struct Tree {
    /// The path as resolved (a symbolic link at the top is followed once).
    pub root: PathBuf,
    /// Regular files, the root itself when it is one.
    pub files: Vec<PathBuf>,
    /// Directories, the root first when it is one.
    pub dirs: Vec<PathBuf>,
    /// Total size of the files.
    pub bytes: u64,
}

fn kind_of(ft: &std::fs::FileType) -> &'static str {
    if ft.is_fifo() {
        "a FIFO (named pipe)"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_symlink() {
        "a symbolic link"
    } else {
        "not a regular file or directory"
    }
}

/// Refuse a directory on a kernel pseudo file system (proc, sysfs, ...),
/// wherever it is mounted.
fn check_fs(dir: &Path) -> Result<(), String> {
    use nix::sys::statfs as fs;
    let Ok(st) = fs::statfs(dir) else {
        return Ok(());
    };
    let pseudo = [
        fs::PROC_SUPER_MAGIC,
        fs::SYSFS_MAGIC,
        fs::DEVPTS_SUPER_MAGIC,
        fs::CGROUP_SUPER_MAGIC,
        fs::CGROUP2_SUPER_MAGIC,
        fs::DEBUGFS_MAGIC,
        fs::TRACEFS_MAGIC,
        fs::SECURITYFS_MAGIC,
        fs::BPF_FS_MAGIC,
        fs::NSFS_MAGIC,
    ];
    if pseudo.contains(&st.filesystem_type()) {
        return Err(format!(
            "{} is on a kernel pseudo file system, not data",
            dir.display()
        ));
    }
    Ok(())
}

/// Look at a checkpoint path without opening anything: it must be a
/// regular file or a directory of regular files and directories (symbolic
/// links inside are skipped, not followed), outside `/proc`, `/sys` and
/// `/dev`, and within [`MAX_TREE_ENTRIES`], [`MAX_TREE_DEPTH`] and
/// [`MAX_TREE_BYTES`]. The error says what is wrong, naming the path.
pub fn inspect_tree(path: &Path) -> Result<Tree, String> {
    let shown = path.display();
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!("{shown} does not exist"))
        }
        Err(e) => return Err(format!("cannot look at {shown}: {e}")),
    };
    // A link at the top (`latest -> epoch-3`) is followed once; realpath
    // only reads links, it opens nothing.
    let root = if meta.file_type().is_symlink() {
        std::fs::canonicalize(path).map_err(|e| format!("cannot resolve {shown}: {e}"))?
    } else {
        std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
    };
    let canonical = std::fs::canonicalize(&root).unwrap_or_else(|_| root.clone());
    if let Some(r) = PSEUDO_ROOTS
        .iter()
        .find(|r| canonical.starts_with(Path::new(r)))
    {
        return Err(format!(
            "{shown} is under {r}, which holds kernel views, not checkpoint files"
        ));
    }
    let meta = std::fs::symlink_metadata(&root)
        .map_err(|e| format!("cannot look at {}: {e}", root.display()))?;
    let mut tree = Tree {
        root: root.clone(),
        ..Tree::default()
    };
    let ft = meta.file_type();
    if ft.is_file() {
        if let Some(parent) = root.parent() {
            check_fs(parent)?;
        }
        tree.bytes = meta.len();
        if tree.bytes > MAX_TREE_BYTES {
            return Err(format!("{shown} is larger than {MAX_TREE_BYTES} bytes"));
        }
        tree.files.push(root);
        return Ok(tree);
    }
    if !ft.is_dir() {
        return Err(format!(
            "{shown} is {}; a checkpoint path must be a regular file or a directory",
            kind_of(&ft)
        ));
    }
    let mut stack = vec![(root, 0usize)];
    let mut entries = 0usize;
    while let Some((dir, depth)) = stack.pop() {
        check_fs(&dir)?;
        let rd =
            std::fs::read_dir(&dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
        tree.dirs.push(dir);
        for e in rd {
            let e = e.map_err(|e| format!("cannot list {shown}: {e}"))?;
            entries += 1;
            if entries > MAX_TREE_ENTRIES {
                return Err(format!(
                    "{shown} holds more than {MAX_TREE_ENTRIES} entries"
                ));
            }
            let p = e.path();
            let ft = e
                .file_type()
                .map_err(|err| format!("cannot look at {}: {err}", p.display()))?;
            if ft.is_symlink() {
                continue;
            } else if ft.is_dir() {
                if depth + 1 >= MAX_TREE_DEPTH {
                    return Err(format!(
                        "{shown} nests directories deeper than {MAX_TREE_DEPTH} levels"
                    ));
                }
                stack.push((p, depth + 1));
            } else if ft.is_file() {
                let len = std::fs::symlink_metadata(&p)
                    .map_err(|err| format!("cannot look at {}: {err}", p.display()))?
                    .len();
                tree.bytes = tree.bytes.saturating_add(len);
                if tree.bytes > MAX_TREE_BYTES {
                    return Err(format!("{shown} holds more than {MAX_TREE_BYTES} bytes"));
                }
                tree.files.push(p);
            } else {
                return Err(format!(
                    "{shown} contains {}, {}; a checkpoint holds only regular files and directories",
                    p.display(),
                    kind_of(&ft)
                ));
            }
        }
    }
    Ok(tree)
}

/// Open for fsync without ever blocking or following a link: a FIFO put
/// in place after [`inspect_tree`] opens at once and is then refused.
fn open_for_sync(p: &Path, dir: bool) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut flags = libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    if dir {
        flags |= libc::O_DIRECTORY;
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(p)?;
    let ft = f.metadata()?.file_type();
    if (dir && !ft.is_dir()) || (!dir && !ft.is_file()) {
        return Err(std::io::Error::other(format!(
            "{} changed into {} while being synced",
            p.display(),
            kind_of(&ft)
        )));
    }
    Ok(f)
}

/// fsync every file and directory of an inspected tree, and the directory
/// holding it, so a checkpoint row may point at it.
pub fn sync_tree(tree: &Tree) -> std::io::Result<()> {
    for f in &tree.files {
        open_for_sync(f, false)?.sync_all()?;
    }
    for d in &tree.dirs {
        open_for_sync(d, true)?.sync_all()?;
    }
    if let Some(parent) = tree.root.parent() {
        open_for_sync(parent, true)?.sync_all()?;
    }
    Ok(())
}

/// Bytes used by a file, or by every file under a directory; 0 for a path
/// [`inspect_tree`] refuses (it never follows links out or walks `/proc`).
pub fn size_on_disk(path: &Path) -> u64 {
    inspect_tree(path).map(|t| t.bytes).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durable_write_replaces_and_sizes() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sub/state.bin");
        write_durably(&p, b"hello").unwrap();
        write_durably(&p, b"hello world").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"hello world");
        assert_eq!(size_on_disk(d.path()), 11);
        // No temporary files left behind.
        assert_eq!(std::fs::read_dir(p.parent().unwrap()).unwrap().count(), 1);
    }

    #[test]
    fn trees_hold_only_files_and_directories_within_limits() {
        let d = tempfile::tempdir().unwrap();
        let ck = d.path().join("ck");
        write_durably(&ck.join("a/w.bin"), b"12345").unwrap();
        write_durably(&ck.join("b.json"), b"{}").unwrap();
        // A link inside is neither followed nor counted.
        std::os::unix::fs::symlink("/proc", ck.join("proc")).unwrap();
        let t = inspect_tree(&ck).unwrap();
        assert_eq!((t.bytes, t.files.len(), t.dirs.len()), (7, 2, 2));
        sync_tree(&t).unwrap();
        // A link at the top is followed once.
        std::os::unix::fs::symlink(&ck, d.path().join("latest")).unwrap();
        assert_eq!(inspect_tree(&d.path().join("latest")).unwrap().bytes, 7);

        let fifo = d.path().join("pipe");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let e = inspect_tree(&fifo).unwrap_err();
        assert!(e.contains("FIFO") && e.contains("pipe"), "{e}");
        std::fs::rename(&fifo, ck.join("a/pipe")).unwrap();
        let e = inspect_tree(&ck).unwrap_err();
        assert!(e.contains("a/pipe") && e.contains("FIFO"), "{e}");
        assert!(open_for_sync(&ck.join("a/pipe"), false).is_err());
        for p in ["/proc", "/proc/self", "/sys", "/dev/null"] {
            let e = inspect_tree(Path::new(p)).unwrap_err();
            assert!(e.contains(p), "{e}");
            assert_eq!(size_on_disk(Path::new(p)), 0);
        }
        assert!(inspect_tree(&d.path().join("nope"))
            .unwrap_err()
            .contains("does not exist"));

        let mut deep = d.path().join("deep");
        for _ in 0..MAX_TREE_DEPTH + 1 {
            deep = deep.join("d");
        }
        std::fs::create_dir_all(&deep).unwrap();
        let e = inspect_tree(&d.path().join("deep")).unwrap_err();
        assert!(e.contains("deeper"), "{e}");
    }
}
