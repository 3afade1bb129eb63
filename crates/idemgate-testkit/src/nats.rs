//! Private NATS servers with JetStream, for the run-once jobs example worker's tests.
//!
//! [`NatsServer::start`] runs Debian's `nats-server` (package `nats-server`, installed as
//! `/usr/sbin/nats-server`; `$IDEMGATE_NATS_SERVER` overrides the path) with JetStream enabled
//! (`-js`), on a free loopback port, storing its streams in a temporary directory. The server is
//! killed when its handle drops; [`NatsServer::stop`] and [`NatsServer::restart`] simulate an
//! outage on the same port with the same stored streams.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

/// How long a starting server may take to accept connections.
const START_WITHIN: Duration = Duration::from_secs(10);

/// A private `nats-server -js` (see the module docs).
#[derive(Debug)]
pub struct NatsServer {
    port: u16,
    dir: TempDir,
    child: Option<Child>,
}

/// The `nats-server` binary: `$IDEMGATE_NATS_SERVER`, else Debian's path, else `$PATH`.
fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("IDEMGATE_NATS_SERVER") {
        return PathBuf::from(p);
    }
    let debian = PathBuf::from("/usr/sbin/nats-server");
    if debian.exists() {
        return debian;
    }
    PathBuf::from("nats-server")
}

impl NatsServer {
    /// Starts a server on a free port. Panics (this is test support) when `nats-server` is not
    /// installed or does not accept connections within 10 s.
    pub fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("idemgate-nats-")
            .tempdir()
            .expect("a temporary directory for nats-server");
        let mut server = Self {
            port: crate::free_port(),
            dir,
            child: None,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        // The port freed by `free_port` can be taken by someone else in between; retry a little.
        for _ in 0..3 {
            let child = Command::new(binary())
                .arg("-js")
                .args(["-a", "127.0.0.1"])
                .args(["-p", &self.port.to_string()])
                .arg("-sd")
                .arg(self.dir.path().join("jetstream"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("nats-server is installed (Debian package nats-server)");
            self.child = Some(child);
            if crate::wait_for_port(self.addr(), START_WITHIN) && self.running() {
                return;
            }
            self.kill();
        }
        panic!("nats-server did not start on port {}", self.port);
    }

    fn running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// The server's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// The URL NATS clients take (`nats://127.0.0.1:PORT`).
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (an outage); its JetStream directory is kept for a restart.
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Starts the server again on the same port with the same stored streams.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
