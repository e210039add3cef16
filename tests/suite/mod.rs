//! The integration test modules.

mod cli;
mod durability;
mod lifecycle;
mod protocol;
