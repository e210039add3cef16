//! Everything that can change the database, one file per kind of write.
//!
//! Each type here implements [`super::writer::Write`]; nothing else does,
//! so this listing is the complete list of changes the daemon makes. Each
//! `apply` runs on the writer thread inside a batch transaction (in its own
//! savepoint) and may run again if the batch has to be retried.

pub(super) mod add_warning;
pub(super) mod begin_attempt;
pub(super) mod cancel_tree;
pub(super) mod claim;
pub(super) mod clean;
pub(super) mod delete_checkpoint;
pub(super) mod finish;
pub(super) mod record_gpus;
pub(super) mod recover;
pub(super) mod release;
pub(super) mod save_checkpoint;
pub(super) mod set_queue;
pub(super) mod stopped_at_shutdown;
pub(super) mod submit;
pub(super) mod sweep_checkpoints;
pub(super) mod try_resume;
pub(super) mod write_progress;
