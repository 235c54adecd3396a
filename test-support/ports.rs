//! Loopback ports for the test servers.

#![allow(dead_code, unreachable_pub)] // each test binary uses its own part

/// A loopback port free now; another process may take it before the server binds it.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
