//! A free TCP port on the loopback, for a daemon's `http` listener in the
//! dashboard's benchmark and tests. Included with `#[path]` by both (a
//! benchmark cannot use the tests' helpers, nor they a benchmark's), so
//! it is written once.

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
