//! Market data and the engines that use it: OHLCV loading, backtests.
//!
//! - [`ohlcv`]: CSV loading and validation of bars.
//! - [`params`]: the `backtest` job's parameters and their validation.
//! - [`sma`]: the pandas-compatible rolling mean behind `sma_cross`.
//! - [`stats`]: streaming backtest statistics.
//! - [`state`]: the engine's serializable, resumable state.
//! - [`backtest`]: the resumable engine, [`backtest::run_backtest`].

pub mod backtest;
pub mod ohlcv;
pub mod params;
pub mod sma;
pub mod state;
pub mod stats;

#[cfg(test)]
mod backtest_tests;
#[cfg(test)]
mod reference_tests;
