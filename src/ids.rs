//! Operation ids and timestamps.
//!
//! Ids are `op_<type>_<YYYYMMDD>_<HHMMSS>_<8 hex>` (SPEC §2): readable in
//! sqlite3 and sorted by creation time, which also gives inserts good B-tree
//! locality. The 8-hex tail is time-ordered too ([`next_tail`]), for the
//! same locality in the short-id index.

use crate::model::OperationType;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The id of an operation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OperationId(pub String);

impl OperationId {
    /// A fresh id for an operation of `kind` created at `at`.
    ///
    /// The 8-hex tail is [`next_tail`]: time-ordered, not random, so the
    /// short-id index (`substr(operation_id, -8)`) grows at one end like
    /// the others instead of taking each insert onto a random page of a
    /// large index.
    pub fn generate(kind: OperationType, at: DateTime<Utc>) -> Self {
        let suffix = next_tail(at);
        OperationId(format!(
            "op_{}_{}_{suffix:08x}",
            kind.as_str(),
            at.format("%Y%m%d_%H%M%S")
        ))
    }

    /// The same id with a fresh random suffix: the retry when a new id
    /// collides with an existing one (ids made in the same second differ
    /// only in their 32 random bits, so at thousands of submits a second
    /// the birthday bound makes collisions a matter of seconds).
    pub fn with_new_suffix(&self) -> Self {
        let suffix: u32 = rand::random();
        let keep = self.0.len().saturating_sub(8);
        OperationId(format!("{}{suffix:08x}", &self.0[..keep]))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for OperationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for OperationId {
    fn from(s: &str) -> Self {
        OperationId(s.to_string())
    }
}

/// The tail of a new id: the clock in 16-microsecond ticks plus a random
/// offset drawn once per process, modulo 2^32 (it wraps every 19 hours),
/// and strictly increasing within this process (a burst of more than one
/// id per tick runs a little ahead of the clock).
///
/// Two ids from one process never share a tail within a wrap. Two
/// processes (hosts on one PostgreSQL) have different offsets, so their
/// tails meet no more often than random ones would; a full id that does
/// collide is retried by the store ([`OperationId::with_new_suffix`]).
/// Consecutive ids get neighbouring tails, so inserts into the short-id
/// index append: with random tails, at a million rows every insert
/// dirtied a random leaf page of it (another page in the WAL per insert).
fn next_tail(at: DateTime<Utc>) -> u32 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    // A random offset per process: two hosts making ids in the same tick
    // then collide no more often than random tails did.
    static OFFSET: OnceLock<u32> = OnceLock::new();
    let offset = *OFFSET.get_or_init(rand::random);
    let tick = (at.timestamp_micros().max(0) as u64) >> 4;
    let mut prev = LAST.load(Ordering::Relaxed);
    loop {
        let next = tick.max(prev + 1);
        match LAST.compare_exchange_weak(prev, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return (next as u32).wrapping_add(offset),
            Err(seen) => prev = seen,
        }
    }
}

/// A timestamp as stored: RFC 3339 UTC with microseconds, fixed width so it
/// sorts as text.
pub fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Now, as stored.
pub fn now() -> String {
    timestamp(Utc::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_has_the_spec_shape() {
        let at = DateTime::parse_from_rfc3339("2026-11-22T14:30:22Z")
            .unwrap()
            .with_timezone(&Utc);
        let id = OperationId::generate(OperationType::Training, at);
        let s = id.as_str();
        assert!(s.starts_with("op_training_20261122_143022_"), "{s}");
        let hex = &s["op_training_20261122_143022_".len()..];
        assert_eq!(hex.len(), 8);
        assert!(hex
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    }

    fn tail(id: &OperationId) -> u32 {
        u32::from_str_radix(&id.0[id.0.len() - 8..], 16).unwrap()
    }

    #[test]
    fn tails_follow_the_clock_and_never_repeat() {
        // Made at the same instant, ids still get distinct, increasing
        // tails (other tests may take values in between); random tails
        // would jump anywhere in 2^32.
        let at = Utc::now();
        let ids: Vec<OperationId> = (0..1000)
            .map(|_| OperationId::generate(OperationType::Dummy, at))
            .collect();
        for pair in ids.windows(2) {
            let step = tail(&pair[1]).wrapping_sub(tail(&pair[0]));
            assert!(
                (1..1_000_000).contains(&step),
                "{} then {}",
                pair[0],
                pair[1]
            );
        }
        // A second later is 62,500 ticks of 16 us later.
        let later = OperationId::generate(OperationType::Dummy, at + chrono::Duration::seconds(1));
        let step = tail(&later).wrapping_sub(tail(&ids[999]));
        assert!((30_000..1_100_000).contains(&step), "step {step}");
    }

    #[test]
    fn a_new_suffix_keeps_the_shape() {
        let id = OperationId::generate(OperationType::Dummy, Utc::now());
        let other = id.with_new_suffix();
        assert_eq!(id.0.len(), other.0.len());
        assert_eq!(id.0[..id.0.len() - 8], other.0[..other.0.len() - 8]);
    }

    #[test]
    fn timestamps_sort_as_text() {
        let a = timestamp(DateTime::from_timestamp(1_000_000_000, 5_000).unwrap());
        let b = timestamp(DateTime::from_timestamp(1_000_000_000, 50_000).unwrap());
        assert!(a < b, "{a} {b}");
        assert!(a.ends_with('Z'));
    }
}
