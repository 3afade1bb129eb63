//! Private store servers for tests: each test starts its own `redis-server` or PostgreSQL from the
//! binaries Debian installs (see `scripts/deps.sh`), in a temporary directory, on a free loopback
//! port, and the server is killed when its handle drops. Tests can stop and restart a server to
//! check what happens in an outage. The machine's own services are never used.
#![allow(missing_docs)]

pub mod nats;
pub mod postgres;
pub mod redis;

/// A free TCP port on 127.0.0.1 (bound, then released for the server to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Waits until `addr` accepts TCP connections, for at most `within`.
pub fn wait_for_port(addr: std::net::SocketAddr, within: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    false
}
