//! The integration test modules.

mod lifecycle;
