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

/// One server process of a test: started with a few attempts (a port freed by [`free_port`] can
/// be taken by someone else in between), waited for until it accepts connections, and killed on
/// [`Supervised::kill`] or drop. The NATS and Redis test servers share it.
#[derive(Debug)]
pub(crate) struct Supervised {
    name: &'static str,
    port: u16,
    child: Option<std::process::Child>,
}

impl Supervised {
    /// Starts `spawn(port)` and waits until the port accepts connections (10 s per attempt).
    pub(crate) fn start(name: &'static str, port: u16, spawn: impl Fn(u16) -> std::process::Child) -> Self {
        let mut s = Self {
            name,
            port,
            child: None,
        };
        s.respawn(spawn);
        s
    }

    /// Starts the process again on the same port (after [`Supervised::kill`]).
    pub(crate) fn respawn(&mut self, spawn: impl Fn(u16) -> std::process::Child) {
        self.kill();
        for _ in 0..3 {
            self.child = Some(spawn(self.port));
            if wait_for_port(self.addr(), std::time::Duration::from_secs(10)) && self.running() {
                return;
            }
            self.kill();
        }
        panic!("{} did not start on port {}", self.name, self.port);
    }

    fn running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    pub(crate) fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, self.port))
    }

    /// Kills the process and reaps it.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.kill();
    }
}
