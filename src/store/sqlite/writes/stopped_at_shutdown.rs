//! Operations that did not stop within the shutdown grace: `cancelled`
//! with the reason each was given; a shutdown's last checkpoint becomes a
//! shutdown checkpoint, so the next start resumes from it.

use super::super::writer::Write;
use super::super::{checkpoints, dependencies, operations as ops};
use crate::error::Result;
use crate::ids::OperationId;
use crate::model::{CheckpointType, Status, StopReason};
use crate::store::records::Finish;
use rusqlite::Connection;

/// Record the operations left running at the end of the grace.
pub(crate) struct StoppedAtShutdown(pub Vec<(OperationId, StopReason)>);

impl Write for StoppedAtShutdown {
    type Out = ();
    fn apply(&mut self, c: &Connection) -> Result<()> {
        let now = crate::ids::now();
        for (id, why) in &self.0 {
            let ended = ops::finish(
                c,
                id,
                &Finish {
                    status: Status::Cancelled,
                    stop_reason: Some(*why),
                    result: None,
                    error: Some(
                        "the daemon stopped before this operation could checkpoint; it resumes \
                         from its latest checkpoint"
                            .into(),
                    ),
                    progress: None,
                },
                &now,
            )?;
            if *why == StopReason::Shutdown {
                checkpoints::set_type(c, id, CheckpointType::Shutdown)?;
            } else if ended {
                dependencies::settle(c, id, Status::Cancelled, &now)?;
            }
        }
        Ok(())
    }
}
