//! The integration test modules.

mod cli;
mod command;
mod durability;
mod hostile_jobs;
mod jobs;
mod lifecycle;
mod protocol;
