//! The integration test modules.

mod cli;
mod durability;
mod jobs;
mod lifecycle;
mod protocol;
