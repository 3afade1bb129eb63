//! Private redis-server instances for tests.
//!
//! [`RedisServer::start`] runs Debian's `redis-server` on a free loopback port, with no
//! persistence (`--save ""`, `--appendonly no`), a temporary working directory and the
//! `noeviction` policy the Redis store asks for. The server is killed when its handle drops;
//! [`RedisServer::stop`] and [`RedisServer::restart`] simulate an outage and a recovery on the
//! same port, so a client that reconnects by itself can be tested.
//!
//! [`cluster::RedisCluster`] starts a three-primary Redis Cluster the same way, and
//! [`tls::TlsRedisServer`] a server that speaks only TLS, with a throwaway CA.

pub mod cluster;
pub mod tls;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

/// How long a starting server may take to accept connections.
pub(crate) const START_WITHIN: Duration = Duration::from_secs(10);

/// A private `redis-server` (see the module docs).
#[derive(Debug)]
pub struct RedisServer {
    // Declared first: the process dies before its directory is removed.
    process: crate::Supervised,
    dir: TempDir,
}

impl RedisServer {
    /// Starts a server on a free port. Panics (this is test support) when `redis-server` is not
    /// installed or does not accept connections within 10 s.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory for redis-server");
        let process =
            crate::Supervised::start("redis-server", crate::free_port(), |port| spawn_redis(port, dir.path()));
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

    /// The URL the Redis store takes (`redis://127.0.0.1:PORT`).
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port())
    }

    /// Kills the server (an outage). Its data is gone: persistence is off.
    pub fn stop(&mut self) {
        self.process.kill();
    }

    /// Starts the server again on the same port (after [`RedisServer::stop`]).
    pub fn restart(&mut self) {
        let dir = self.dir.path().to_path_buf();
        self.process.respawn(|port| spawn_redis(port, &dir));
    }
}

fn spawn_redis(port: u16, dir: &Path) -> Child {
    spawn_redis_with(dir, &["--port".to_owned(), port.to_string()])
}

/// Runs `redis-server` in `dir` on 127.0.0.1 without persistence, with `args` (ports, TLS,
/// cluster mode) added.
pub(crate) fn spawn_redis_with(dir: &Path, args: &[String]) -> Child {
    Command::new("redis-server")
        .args(args)
        .args(["--bind", "127.0.0.1"])
        .args(["--save", ""])
        .args(["--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .args(["--maxmemory-policy", "noeviction"])
        .args(["--protected-mode", "no"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server is installed (scripts/deps.sh)")
}
