//! The integration test modules.

mod cancel_trees;
mod cli;
mod command;
mod durability;
mod foreign_files;
mod hostile_jobs;
mod jobs;
mod lifecycle;
mod postgres;
mod protocol;
mod research;
mod store_conformance;
mod write_failures;
