//! opsd: a single-host operations daemon for GPU workstations.
//!
//! See `ARCHITECTURE.md` for the map of modules and their invariants.
#![warn(missing_docs)]

pub mod aggregate;
pub(crate) mod channel;
pub mod cli;
pub mod client;
pub mod config;
pub mod control;
pub mod daemon;
pub mod error;
pub mod http;
pub mod ids;
pub mod jobs;
pub mod market;
pub mod ml;
pub mod model;
pub mod paths;
pub mod protocol;
pub mod runtime;
pub mod server;
pub mod service;
pub mod store;
