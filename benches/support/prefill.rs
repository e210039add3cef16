//! The finished operations a benchmark writes straight into a fresh
//! database (setup only, not what is measured): their ids and times.
//! Included with `#[path]` by the durability benchmark and by the peer
//! package (which cannot depend on opsd), so every prefilled database has
//! the same rows.

/// The id of the `i`-th prefilled operation.
pub fn id(i: usize) -> String {
    format!("op_dummy_20260101_000000_{i:08x}")
}

/// When the `i`-th prefilled operation was created and finished: in
/// January 2026, one second apart, with `i` in the microseconds so no
/// two of the first million share a timestamp.
pub fn at(i: usize) -> String {
    format!(
        "2026-01-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        1 + i / 86_400 % 28,
        i / 3600 % 24,
        i / 60 % 60,
        i % 60,
        i % 1_000_000
    )
}
