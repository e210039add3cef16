//! Cancel an operation and its active descendants in one transaction.

use super::super::operations as ops;
use super::super::writer::Write;
use crate::error::Result;
use crate::ids::OperationId;
use crate::model::StopReason;
use crate::store::records::TreeCancel;
use rusqlite::Connection;

/// Cancel the tree under `root`.
pub(crate) struct CancelTree {
    pub root: OperationId,
    pub reason: StopReason,
    pub message: Option<String>,
}

impl Write for CancelTree {
    type Out = TreeCancel;
    fn apply(&mut self, c: &Connection) -> Result<TreeCancel> {
        ops::cancel_tree(
            c,
            &self.root,
            self.reason,
            self.message.as_deref(),
            &crate::ids::now(),
        )
    }
}
