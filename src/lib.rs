//! opsd: a single-host operations daemon for GPU workstations.
//!
//! See `ARCHITECTURE.md` for the map of modules and their invariants.
#![warn(missing_docs)]

pub mod control;
pub mod market;
pub mod ml;
pub mod model;
