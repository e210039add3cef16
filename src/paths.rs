//! The state directory's layout, in one place: where an operation's
//! checkpoint files, artifacts, log and progress file live.

use crate::ids::OperationId;
use std::path::{Path, PathBuf};

/// The files under a state directory.
#[derive(Debug, Clone)]
pub struct StatePaths {
    root: PathBuf,
    /// Where checkpoint files and artifacts go (config `shared_dir`,
    /// default the state directory).
    shared: PathBuf,
}

impl StatePaths {
    /// The layout under `state_dir`.
    pub fn new(state_dir: &Path) -> StatePaths {
        StatePaths {
            root: state_dir.to_path_buf(),
            shared: state_dir.to_path_buf(),
        }
    }

    /// The same layout with checkpoint files and artifacts under `shared`
    /// (a directory other hosts can read).
    pub fn with_shared(mut self, shared: &Path) -> StatePaths {
        self.shared = shared.to_path_buf();
        self
    }

    /// The state directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The parent of every operation's checkpoint directory.
    pub fn checkpoints_root(&self) -> PathBuf {
        self.shared.join("checkpoints")
    }

    /// Checkpoint files of an operation, kept across its attempts and
    /// deleted with its checkpoint.
    pub fn checkpoints(&self, id: &OperationId) -> PathBuf {
        self.checkpoints_root().join(id.as_str())
    }

    /// Artifacts (models, ...) of an operation.
    pub fn artifacts(&self, id: &OperationId) -> PathBuf {
        self.shared.join("artifacts").join(id.as_str())
    }

    /// The log of a command job (rotated to `<log>.1`).
    pub fn log(&self, id: &OperationId) -> PathBuf {
        self.root.join("logs").join(format!("{id}.log"))
    }

    /// The progress file a command job writes.
    pub fn progress(&self, id: &OperationId) -> PathBuf {
        self.root.join("progress").join(format!("{id}.jsonl"))
    }

    /// Remove an operation's checkpoint files, if any (they are ours).
    pub fn remove_checkpoints(&self, id: &OperationId) {
        let dir = self.checkpoints(id);
        if dir.exists() {
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(dir = %dir.display(), "could not remove checkpoint files: {e}");
            }
        }
    }

    /// Remove an operation's log (and its rotated generation) and
    /// progress file, if any: `opsd clean`. Artifacts are the user's
    /// results and stay.
    pub fn remove_operation_files(&self, id: &OperationId) {
        let log = self.log(id);
        let mut rotated = log.clone().into_os_string();
        rotated.push(".1");
        for f in [log, PathBuf::from(rotated), self.progress(id)] {
            match std::fs::remove_file(&f) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(file = %f.display(), "could not remove: {e}"),
            }
        }
    }
}
