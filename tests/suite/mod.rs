//! The integration test modules.

mod cli;
mod command;
mod durability;
mod hardening;
mod jobs;
mod lifecycle;
mod protocol;
