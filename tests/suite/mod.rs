//! The integration test modules.

mod cli;
mod command;
mod durability;
mod jobs;
mod lifecycle;
mod protocol;
mod research;
