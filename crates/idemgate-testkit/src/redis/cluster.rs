//! A private three-primary Redis Cluster for tests.
//!
//! [`RedisCluster::start`] runs three `redis-server`s in cluster mode (`--cluster-enabled yes`,
//! each in its own temporary directory with its own `nodes.conf`, on free client and bus ports,
//! no persistence), joins them with `redis-cli --cluster create … --cluster-replicas 0
//! --cluster-yes`, and waits (at most 30 s) until `CLUSTER INFO` reports `cluster_state:ok` on
//! every node. [`RedisCluster::start_tls`] does the same with TLS only (`--tls-cluster yes`,
//! client and bus). Every server is killed when the handle drops.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::tls::TestCerts;
use super::{spawn_redis_with, START_WITHIN};

/// Primaries in a test cluster.
pub const NODES: usize = 3;

/// How long joining the nodes into a cluster may take.
const FORM_WITHIN: Duration = Duration::from_secs(30);

#[derive(Debug)]
struct Node {
    port: u16,
    child: Child,
}

/// A private Redis Cluster (see the module docs).
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<Node>,
    tls: Option<TestCerts>,
    dir: TempDir,
}

impl RedisCluster {
    /// Starts a three-primary cluster on plain TCP. Panics (this is test support) when
    /// `redis-server` or `redis-cli` is missing or the cluster does not form within 30 s.
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// Starts a three-primary cluster that speaks only TLS (clients and the cluster bus), with
    /// a fresh CA ([`RedisCluster::certs`]).
    pub fn start_tls() -> Self {
        Self::start_with(Some(TestCerts::generate()))
    }

    fn start_with(tls: Option<TestCerts>) -> Self {
        assert!(
            Command::new("redis-cli")
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success()),
            "redis-cli is installed (Debian's redis-tools, which redis-server depends on)"
        );
        let dir = tempfile::tempdir().expect("a temporary directory for the cluster");
        let mut cluster = Self {
            nodes: Vec::with_capacity(NODES),
            tls,
            dir,
        };
        for n in 0..NODES {
            let node = cluster.spawn_node(n);
            cluster.nodes.push(node);
        }
        cluster.form();
        cluster
    }

    fn spawn_node(&self, n: usize) -> Node {
        let dir = self.dir.path().join(format!("node{n}"));
        std::fs::create_dir_all(&dir).expect("a node directory");
        for _ in 0..3 {
            let (port, bus) = (crate::free_port(), crate::free_port());
            let mut args: Vec<String> = Vec::new();
            match &self.tls {
                None => args.extend(["--port".to_owned(), port.to_string()]),
                Some(certs) => {
                    args.extend([
                        "--port".to_owned(),
                        "0".to_owned(),
                        "--tls-port".to_owned(),
                        port.to_string(),
                    ]);
                    args.extend(certs.server_args());
                    args.extend(["--tls-cluster", "yes", "--tls-replication", "yes"].map(String::from));
                }
            }
            args.extend(
                [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "5000",
                ]
                .map(String::from),
            );
            args.extend(["--cluster-port".to_owned(), bus.to_string()]);
            let mut child = spawn_redis_with(&dir, &args);
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            if crate::wait_for_port(addr, START_WITHIN) && matches!(child.try_wait(), Ok(None)) {
                return Node { port, child };
            }
            let _ = child.kill();
            let _ = child.wait();
            // A stale nodes.conf from the failed attempt would name the wrong ports.
            let _ = std::fs::remove_file(dir.join("nodes.conf"));
        }
        panic!("redis-server did not start in cluster mode");
    }

    /// `redis-cli` with the TLS options this cluster needs.
    fn cli(&self) -> Command {
        let mut cmd = Command::new("redis-cli");
        if let Some(certs) = &self.tls {
            cmd.arg("--tls").arg("--cacert").arg(certs.ca_path());
        }
        cmd
    }

    fn form(&self) {
        let deadline = Instant::now() + FORM_WITHIN;
        let mut create = self.cli();
        create.arg("--cluster").arg("create");
        for port in self.ports() {
            create.arg(format!("127.0.0.1:{port}"));
        }
        create.args(["--cluster-replicas", "0", "--cluster-yes"]);
        let log = self.dir.path().join("cluster-create.log");
        match run_bounded(create, &log, deadline) {
            Some(status) if status.success() => {}
            other => panic!(
                "redis-cli --cluster create failed ({other:?}): {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            ),
        }
        // Every node must agree the cluster is up before a client asks it for the slot map.
        for port in self.ports() {
            let log = self.dir.path().join(format!("cluster-info-{port}.log"));
            loop {
                let mut info = self.cli();
                info.args(["-h", "127.0.0.1", "-p", &port.to_string(), "cluster", "info"]);
                let ok = run_bounded(info, &log, deadline).is_some_and(|s| s.success())
                    && std::fs::read_to_string(&log).is_ok_and(|s| s.contains("cluster_state:ok"));
                if ok {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the cluster did not reach cluster_state:ok within {FORM_WITHIN:?}"
                );
                // Gossip has no signal to wait on: poll, briefly.
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Kills node `n` (an outage of its slots; the cluster has no replica to fail over to).
    pub fn stop_node(&mut self, n: usize) {
        if let Some(node) = self.nodes.get_mut(n) {
            let _ = node.child.kill();
            let _ = node.child.wait();
        }
    }

    /// The client ports of the nodes, on 127.0.0.1.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// The certificates of a TLS cluster.
    pub fn certs(&self) -> Option<&TestCerts> {
        self.tls.as_ref()
    }

    /// `redis+cluster://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3` (`rediss+cluster://` for a TLS
    /// cluster; the CA must still be given).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss+cluster"
        } else {
            "redis+cluster"
        };
        let hosts: Vec<String> = self.ports().iter().map(|p| format!("127.0.0.1:{p}")).collect();
        format!("{scheme}://{}", hosts.join(","))
    }

    /// `redis://127.0.0.1:P` of one node, for a plain connection to it.
    pub fn node_url(&self, n: usize) -> String {
        format!("redis://127.0.0.1:{}", self.nodes[n].port)
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.child.kill();
            let _ = node.child.wait();
        }
    }
}

/// Runs `cmd` with its output in `log`; kills it at `deadline`. `None` when it could not run or
/// was killed.
fn run_bounded(mut cmd: Command, log: &Path, deadline: Instant) -> Option<ExitStatus> {
    let out = File::create(log).ok()?;
    let err = out.try_clone().ok()?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
        .ok()?;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}
