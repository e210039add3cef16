//! Integration tests: each runs the real `opsd` binary against a real
//! SQLite file in a fresh temporary directory. One test binary (modules
//! under `suite/`) so the build links once.

mod common;
mod suite;
