//! The integration test modules.

mod cancel_trees;
mod cli;
mod command;
mod durability;
mod foreign_files;
mod hostile_jobs;
mod jobs;
mod lifecycle;
mod protocol;
mod research;
mod write_failures;
mod store_conformance;
mod postgres;
