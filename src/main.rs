//! The `opsd` binary.
fn main() {}
