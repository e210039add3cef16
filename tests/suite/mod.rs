//! The integration test modules.

mod command;
mod lifecycle;
