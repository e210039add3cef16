//! Start-up recovery, in one transaction: `running` rows become
//! `failed`/`crash`, then what a shutdown stopped (and crashed operations
//! with a checkpoint, with auto-resume) goes back to `resuming`.

use super::super::writer::Write;
use super::super::{dependencies, operations as ops};
use crate::error::Result;
use crate::store::records::Recovery;
use rusqlite::Connection;

/// Recover from the last run.
pub(crate) struct Recover {
    pub auto_resume: bool,
}

impl Write for Recover {
    type Out = Recovery;
    fn apply(&mut self, c: &Connection) -> Result<Recovery> {
        let now = crate::ids::now();
        let crashed = ops::fail_crashed(c, &now)?;
        let mut resumed = Vec::new();
        for id in ops::recoverable(c, self.auto_resume)? {
            match ops::try_resume(c, &id, &now) {
                Ok(()) => resumed.push(id),
                Err(e) => tracing::warn!(operation = %id, "not resumed: {e}"),
            }
        }
        // Crashed operations that stay failed end their dependents' wait.
        for id in crashed.iter().filter(|id| !resumed.contains(id)) {
            dependencies::settle(c, id, crate::model::Status::Failed, &now)?;
        }
        Ok(Recovery { crashed, resumed })
    }
}
