//! opsd: a single-host operations daemon for GPU workstations.
//!
//! See `ARCHITECTURE.md` for the map of modules and their invariants.
#![warn(missing_docs)]

pub mod control;
pub mod market;
pub mod ml;
pub mod model;
pub mod aggregate;
pub mod error;
pub mod ids;
pub mod store;
pub mod config;
pub mod jobs;
pub mod runtime;
pub mod protocol;
pub mod server;
pub mod service;
pub mod daemon;
pub mod client;
pub mod cli;
