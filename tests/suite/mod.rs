//! The integration test modules.

mod cancel_trees;
mod charts;
mod cli;
mod command;
mod dashboard;
mod durability;
mod everyday;
mod foreign_files;
mod hardening;
mod hostile_jobs;
mod jobs;
mod lifecycle;
mod postgres;
mod protocol;
mod python_client;
mod research;
mod store_conformance;
mod typed_protocol;
mod write_failures;
