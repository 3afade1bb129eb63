//! Private NATS servers with JetStream, for the run-once jobs example worker's tests.
//!
//! [`NatsServer::start`] runs Debian's `nats-server` (package `nats-server`, installed as
//! `/usr/sbin/nats-server`; `$IDEMGATE_NATS_SERVER` overrides the path) with JetStream enabled
//! (`-js`), on a free loopback port, storing its streams in a temporary directory. The server is
//! killed when its handle drops; [`NatsServer::stop`] and [`NatsServer::restart`] simulate an
//! outage on the same port with the same stored streams.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use tempfile::TempDir;

/// A private `nats-server -js` (see the module docs).
#[derive(Debug)]
pub struct NatsServer {
    // Declared first: the process dies before its directory is removed.
    process: crate::Supervised,
    dir: TempDir,
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
        let process = crate::Supervised::start("nats-server", crate::free_port(), |port| spawn(port, dir.path()));
        Self { process, dir }
    }

    /// The server's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.process.port()
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.process.addr()
    }

    /// The URL NATS clients take (`nats://127.0.0.1:PORT`).
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port())
    }

    /// Kills the server (an outage); its JetStream directory is kept for a restart.
    pub fn stop(&mut self) {
        self.process.kill();
    }

    /// Starts the server again on the same port with the same stored streams.
    pub fn restart(&mut self) {
        let dir = self.dir.path().to_path_buf();
        self.process.respawn(|port| spawn(port, &dir));
    }
}

fn spawn(port: u16, dir: &std::path::Path) -> Child {
    Command::new(binary())
        .arg("-js")
        .args(["-a", "127.0.0.1"])
        .args(["-p", &port.to_string()])
        .arg("-sd")
        .arg(dir.join("jetstream"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nats-server is installed (Debian package nats-server)")
}
