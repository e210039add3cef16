//! Market data and the engines that use it: OHLCV loading, backtests.

pub mod ohlcv;
