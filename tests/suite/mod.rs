//! The integration test modules.

mod durability;
mod lifecycle;
mod protocol;
