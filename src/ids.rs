//! Operation ids and timestamps.
//!
//! Ids are `op_<type>_<YYYYMMDD>_<HHMMSS>_<8 hex>` (SPEC §2): readable in
//! sqlite3 and sorted by creation time, which also gives inserts good B-tree
//! locality.

use crate::model::OperationType;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;

/// The id of an operation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OperationId(pub String);

impl OperationId {
    /// A fresh id for an operation of `kind` created at `at`.
    pub fn generate(kind: OperationType, at: DateTime<Utc>) -> Self {
        let suffix: u32 = rand::random();
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
