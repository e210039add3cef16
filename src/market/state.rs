//! The resumable state of a backtest: the account ([`Book`]), the
//! strategy's memory ([`SignalState`]) and the run's position
//! ([`BacktestState`]).
//!
//! Kept apart from the engine because it is a contract of its own: it is
//! what checkpoints store (as JSON) and what a resumed run is given back,
//! so its layout is versioned ([`STATE_VERSION`]) and checked on resume.

use super::params::{BacktestParams, StrategyKind};
use super::sma::RollingMean;
use super::stats::StatsAcc;
use serde::{Deserialize, Serialize};

/// Version of the [`BacktestState`] layout; a state of another version is
/// refused rather than misread.
pub const STATE_VERSION: u32 = 1;

/// The trading account: cash, the open position, and the statistics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Book {
    /// Cash, after commissions paid.
    pub cash: f64,
    /// Units held: positive long, negative short, 0 flat (always integral).
    pub size: f64,
    /// Fill price of the open position.
    pub entry_price: f64,
    /// Bar whose open filled the open position.
    pub entry_bar: usize,
    /// Direction to enter at the next bar's open (0: none).
    pub pending: i8,
    /// Equity fell to 0 or below: the account is closed, equity stays 0.
    pub bust: bool,
    /// Running statistics.
    pub stats: StatsAcc,
}

/// What the strategy remembers between bars.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignalState {
    /// SMA(fast) (sma_cross).
    pub fast: RollingMean,
    /// SMA(slow) (sma_cross).
    pub slow: RollingMean,
    /// `sign(fast - slow)` at the previous bar, 0 when equal or undefined.
    pub rel: i8,
    /// Last non-zero predicted direction acted on (model).
    pub last_dir: i8,
}

/// Everything needed to continue a backtest: JSON-serializable, constant
/// size, free of non-finite numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BacktestState {
    /// [`STATE_VERSION`].
    pub version: u32,
    /// Strategy the state belongs to (checked on resume).
    pub strategy: StrategyKind,
    /// `fast` parameter (checked on resume).
    pub fast: usize,
    /// `slow` parameter (checked on resume).
    pub slow: usize,
    /// `cash` parameter (checked on resume).
    pub initial_cash: f64,
    /// `commission` parameter (checked on resume).
    pub commission: f64,
    /// Number of bars of the data (checked on resume).
    pub bars_total: usize,
    /// First bar not yet processed.
    pub next_bar: usize,
    /// The bars traded, `(first, last)` both included, when `start`/`end`
    /// select fewer than all (checked on resume). Absent for the whole
    /// data, so such states read and write as before ranges existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<(usize, usize)>,
    /// The account.
    pub book: Book,
    /// The strategy's memory.
    pub signal: SignalState,
}

impl BacktestState {
    /// The state before bar 0.
    pub fn new(params: &BacktestParams, bars_total: usize) -> Self {
        let (fast, slow) = match params.strategy {
            StrategyKind::SmaCross => (params.fast, params.slow),
            StrategyKind::Model => (1, 1),
        };
        Self {
            version: STATE_VERSION,
            strategy: params.strategy,
            fast: params.fast,
            slow: params.slow,
            initial_cash: params.cash,
            commission: params.commission,
            bars_total,
            next_bar: 0,
            range: None,
            book: Book {
                cash: params.cash,
                size: 0.0,
                entry_price: 0.0,
                entry_bar: 0,
                pending: 0,
                bust: false,
                stats: StatsAcc::new(params.cash),
            },
            signal: SignalState {
                fast: RollingMean::new(fast),
                slow: RollingMean::new(slow),
                rel: 0,
                last_dir: 0,
            },
        }
    }

    /// Why this state cannot continue a run of `params` over `n` bars,
    /// trading `range` (`None`: all of them).
    pub(crate) fn check_resumable(
        &self,
        params: &BacktestParams,
        n: usize,
        range: Option<(usize, usize)>,
    ) -> Result<(), String> {
        let (first, last) = range.unwrap_or((0, n.saturating_sub(1)));
        let same = self.version == STATE_VERSION
            && self.range == range
            && (first..=last + 1).contains(&self.next_bar)
            && self.strategy == params.strategy
            && self.fast == params.fast
            && self.slow == params.slow
            && self.initial_cash == params.cash
            && self.commission == params.commission
            && self.bars_total == n
            && self.next_bar <= n;
        if same {
            Ok(())
        } else {
            Err(format!(
                "the checkpoint does not belong to this backtest (state version {}, \
                 strategy {}, fast {}, slow {}, cash {}, commission {}, {} bars, \
                 range {:?}); start it again without the checkpoint",
                self.version,
                self.strategy.as_str(),
                self.fast,
                self.slow,
                self.initial_cash,
                self.commission,
                self.bars_total,
                self.range
            ))
        }
    }
}
