//! A deliberately flaky connection: a TCP proxy that loses a share of responses *after* the
//! server produced them.
//!
//! For each client connection the proxy opens one connection to the server and copies bytes both
//! ways. It does not parse HTTP; it relies on HTTP/1.1 taking turns (a client sends its next
//! request only after reading the previous response): the first bytes the server sends after the
//! client has spoken start a response. For a configurable fraction of responses the proxy then
//! closes both connections instead of forwarding anything. By then the server has executed the
//! request and, behind the idempotency layer, recorded its answer: the client saw a transport
//! error for a payment that happened. That is exactly the case idempotency keys exist for.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// What the proxy did.
#[derive(Debug, Default)]
pub struct ProxyStats {
    /// Client connections accepted.
    pub connections: AtomicU64,
    /// Responses forwarded to the client.
    pub forwarded: AtomicU64,
    /// Responses the server produced that the client never saw (connection closed instead).
    pub dropped: AtomicU64,
}

/// A running flaky proxy; stops when dropped.
#[derive(Debug)]
pub struct FlakyProxy {
    addr: SocketAddr,
    stats: Arc<ProxyStats>,
    task: JoinHandle<()>,
}

impl Drop for FlakyProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FlakyProxy {
    /// Listens on `127.0.0.1:0` and forwards to `upstream`, dropping each response with
    /// probability `drop_rate` (clamped to `0.0..=1.0`), drawn from a generator seeded by `seed`.
    pub async fn start(upstream: SocketAddr, drop_rate: f64, seed: u64) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let stats = Arc::new(ProxyStats::default());
        let rng = Arc::new(Mutex::new(fastrand::Rng::with_seed(seed)));
        let drop_rate = if drop_rate.is_nan() {
            0.0
        } else {
            drop_rate.clamp(0.0, 1.0)
        };
        let s = stats.clone();
        let task = tokio::spawn(async move {
            loop {
                let (client, _) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "proxy accept failed");
                        continue;
                    }
                };
                s.connections.fetch_add(1, Ordering::Relaxed);
                let (s, rng) = (s.clone(), rng.clone());
                tokio::spawn(async move {
                    if let Err(e) = relay(client, upstream, drop_rate, &s, &rng).await {
                        tracing::debug!(error = %e, "proxy connection ended with an error");
                    }
                });
            }
        });
        Ok(Self { addr, stats, task })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What the proxy did so far.
    pub fn stats(&self) -> &ProxyStats {
        &self.stats
    }
}

async fn relay(
    client: TcpStream,
    upstream: SocketAddr,
    drop_rate: f64,
    stats: &ProxyStats,
    rng: &Mutex<fastrand::Rng>,
) -> io::Result<()> {
    let server = TcpStream::connect(upstream).await?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let mut cbuf = vec![0u8; 16 * 1024];
    let mut sbuf = vec![0u8; 16 * 1024];
    // True once the client has sent a request whose response has not started yet.
    let mut awaiting_response = false;
    loop {
        tokio::select! {
            n = cr.read(&mut cbuf) => {
                let n = n?;
                if n == 0 {
                    sw.shutdown().await?;
                    return Ok(());
                }
                sw.write_all(&cbuf[..n]).await?;
                awaiting_response = true;
            }
            n = sr.read(&mut sbuf) => {
                let n = n?;
                if n == 0 {
                    cw.shutdown().await?;
                    return Ok(());
                }
                if awaiting_response {
                    awaiting_response = false;
                    let lose = rng.lock().unwrap_or_else(|p| p.into_inner()).f64() < drop_rate;
                    if lose {
                        stats.dropped.fetch_add(1, Ordering::Relaxed);
                        // Returning drops all four halves: both connections close, and the
                        // client never sees a byte of the answer.
                        return Ok(());
                    }
                    stats.forwarded.fetch_add(1, Ordering::Relaxed);
                }
                cw.write_all(&sbuf[..n]).await?;
            }
        }
    }
}
