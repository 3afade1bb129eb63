//! The gateway's listener: HTTP/1.1 connections served by the idempotency layer around the
//! proxy, with graceful shutdown (stop accepting, let in-flight requests finish, bounded).
//!
//! [`serve_threads`] runs one serving thread per CPU, like nginx's workers: each thread has a
//! current-thread tokio runtime, its own listener on the port (`SO_REUSEPORT`: the kernel spreads
//! new connections across them) and its own upstream connection pool, so a request's tasks (the
//! client connection, the exchange, the upstream connection) never wake each other across
//! threads. The store and the layer's state are shared; a store with a thread of its own hands
//! its replies back through each serving thread's `ReplyQueue` (one wake-up per batch and
//! thread). [`serve`] is one listener on the caller's runtime (Redis and PostgreSQL with one
//! serving thread: their clients run there).

use std::cell::RefCell;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use idemgate_core::BoxFuture;
use idemgate_tower::{Idempotency, Problem, ResponseBody, UpstreamError};
use tokio::net::TcpListener;
use tower::ServiceExt;

use crate::head_timeout::{Busy, Guarded, HeadClock};
use crate::parse_errors::ProblemIo;
use crate::proxy::Proxy;
use crate::upstream::PooledBody;

type GatewayService = Idempotency<Proxy>;
type GatewayResponse = Response<ResponseBody<PooledBody>>;
type ConnResponse = Response<Guarded<ResponseBody<PooledBody>>>;
type GatewayFuture = <GatewayService as tower::Service<Request<Incoming>>>::Future;

/// One connection's service: the gateway's, with the proxy told whose connection it is; turns
/// errors of unprotected requests into problem responses.
///
/// hyper calls a connection's service through `&self`, one request at a time; the service sits
/// in a `RefCell` so that a request borrows it instead of cloning it (and boxing a future around
/// the clone) as a `Clone`-based service must.
struct Conn {
    svc: RefCell<GatewayService>,
    clock: Arc<HeadClock>,
}

impl Conn {
    fn new(svc: &GatewayService, peer: SocketAddr, clock: Arc<HeadClock>) -> Self {
        let mut svc = svc.clone();
        svc.get_mut().set_client(peer);
        Self {
            svc: RefCell::new(svc),
            clock,
        }
    }
}

impl hyper::service::Service<Request<Incoming>> for Conn {
    type Response = ConnResponse;
    type Error = Infallible;
    type Future = ConnFuture;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let mut borrowed;
        let mut cloned;
        // Never re-entered (hyper polls one request's service call at a time); a clone if it were.
        let svc: &mut GatewayService = match self.svc.try_borrow_mut() {
            Ok(b) => {
                borrowed = b;
                &mut borrowed
            }
            Err(_) => {
                cloned = self.svc.borrow().clone();
                &mut cloned
            }
        };
        // The proxy is always ready; ask once without a waker instead of driving `oneshot`.
        let ready = matches!(
            tower::Service::poll_ready(svc, &mut std::task::Context::from_waker(std::task::Waker::noop())),
            std::task::Poll::Ready(Ok(()))
        );
        let kind = if ready {
            ConnKind::Direct {
                fut: tower::Service::call(svc, req),
            }
        } else {
            ConnKind::Waiting {
                fut: Box::pin(svc.clone().oneshot(req)),
            }
        };
        ConnFuture {
            kind,
            busy: self.clock.busy(),
        }
    }
}

pin_project_lite::pin_project! {
    /// [`Conn`]'s response future: the gateway's, polled in place; the request counts as in
    /// progress (`--header-timeout`) until its response body is done.
    struct ConnFuture {
        #[pin]
        kind: ConnKind,
        busy: Busy,
    }
}

pin_project_lite::pin_project! {
    #[project = ConnKindProj]
    enum ConnKind {
        Direct { #[pin] fut: GatewayFuture },
        Waiting { fut: BoxFuture<'static, Result<GatewayResponse, UpstreamError>> },
    }
}

impl Future for ConnFuture {
    type Output = Result<ConnResponse, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = match this.kind.project() {
            ConnKindProj::Direct { fut } => std::task::ready!(fut.poll(cx)),
            ConnKindProj::Waiting { fut } => std::task::ready!(fut.as_mut().poll(cx)),
        };
        let mut resp = match result {
            Ok(resp) => resp,
            Err(e) => {
                tracing::warn!(error = %e, "upstream error on an unprotected request");
                match e {
                    UpstreamError::NotExecuted(_) => Problem::UpstreamUnavailable,
                    UpstreamError::Timeout(_) => Problem::UpstreamTimeout { retry_after_secs: 1 },
                    UpstreamError::Failed(_) => Problem::UpstreamFailed { retry_after_secs: 1 },
                }
                .into_response()
            }
        };
        if resp.status().canonical_reason().is_none() {
            // hyper writes `<none>` for a status it has no phrase for (599): an empty reason
            // phrase is the valid way to say nothing (RFC 9112 §4).
            resp.extensions_mut().insert(hyper::ext::ReasonPhrase::from_static(b""));
        }
        let busy = std::mem::replace(this.busy, Busy::ended());
        Poll::Ready(Ok(resp.map(|body| Guarded::new(body, busy))))
    }
}

/// How a listener serves its connections.
#[derive(Clone, Copy, Debug)]
pub struct ServeOptions {
    /// How long in-flight requests may finish after shutdown begins (`--shutdown-timeout`).
    pub drain: Duration,
    /// `--header-timeout` (see `head_timeout.rs`).
    pub header_timeout: Duration,
}

/// Serves `svc` on `listener` until `shutdown` resolves, then drains for at most `opts.drain`.
pub async fn serve(listener: TcpListener, svc: GatewayService, shutdown: impl Future<Output = ()>, opts: ServeOptions) {
    let ServeOptions { drain, header_timeout } = opts;
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    // hyper's per-request header timer is replaced by one watchdog per connection.
    builder.timer(hyper_util::rt::TokioTimer::new());
    builder.header_read_timeout(None::<Duration>);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off briefly, keep serving.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let clock = HeadClock::new();
                let io = TokioIo::new(ProblemIo::new(stream, clock.clone()));
                let conn = builder.serve_connection(io, Conn::new(&svc, peer, clock.clone()));
                let conn = graceful.watch(conn);
                let task = tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
                // The watchdog: a task of its own, so the connection's wake-ups never poll its
                // timer; it ends with the connection, or ends the connection.
                let abort = task.abort_handle();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = task => {}
                        () = clock.expired(header_timeout) => {
                            tracing::debug!(%peer, "no request head within --header-timeout; closing the connection");
                            abort.abort();
                        }
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::info!("shutting down: no new connections; waiting for in-flight requests");
    // Then for exchanges whose client hung up: they run on this runtime, which ends after this.
    let detached = svc.detached();
    let drained = async {
        graceful.shutdown().await;
        detached.idle().await;
    };
    if tokio::time::timeout(drain, drained).await.is_err() {
        tracing::warn!(
            ?drain,
            detached = detached.running(),
            "in-flight requests did not finish in time"
        );
    }
}

/// Serves on `threads` threads (see the module docs) until `shutdown` resolves, then lets each
/// drain for at most `opts.drain`. `first` is a listener made by [`bind_reuseport`]; the other
/// threads bind their own to its address. `ready` is called once every thread runs its event
/// loop; if one fails to start instead, the others are stopped and an error returned.
pub async fn serve_threads<F>(
    first: std::net::TcpListener,
    threads: usize,
    make_svc: F,
    ready: impl FnOnce(),
    shutdown: impl Future<Output = ()>,
    opts: ServeOptions,
) -> anyhow::Result<()>
where
    F: Fn() -> anyhow::Result<GatewayService>,
{
    use anyhow::Context as _;
    let addr = first.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut handles = Vec::with_capacity(threads);
    let mut first = Some(first);
    for i in 0..threads {
        let listener = match first.take() {
            Some(l) => l,
            None => bind_reuseport(addr).with_context(|| format!("cannot listen on {addr}"))?,
        };
        let svc = make_svc()?;
        let mut stop = stop_rx.clone();
        let started_tx = started_tx.clone();
        let handle = std::thread::Builder::new()
            .name(format!("idemgate-http-{i}"))
            .spawn(move || -> std::io::Result<()> {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                rt.block_on(async move {
                    // Replies from a store's own thread (the record log's writer) come back as
                    // one wake-up per batch instead of one per request.
                    let replies = tokio::spawn(idemgate_core::reply::ReplyQueue::install());
                    let listener = TcpListener::from_std(listener)?;
                    let _ = started_tx.send(());
                    drop(started_tx);
                    let shutdown = async move {
                        let _ = stop.wait_for(|stopped| *stopped).await;
                    };
                    serve(listener, svc, shutdown, opts).await;
                    replies.abort();
                    Ok(())
                })
            })
            .context("cannot start a serving thread")?;
        handles.push(handle);
    }
    // Every thread sends once it is serving; a thread that fails first drops its sender unsent.
    drop(started_tx);
    let mut up = 0;
    while up < threads && started.recv().await.is_some() {
        up += 1;
    }
    if up == threads {
        ready();
        shutdown.await;
    }
    let _ = stop_tx.send(true);
    tokio::task::spawn_blocking(move || {
        for h in handles {
            match h.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "serving thread failed"),
                Err(_) => tracing::error!("serving thread panicked"),
            }
        }
    })
    .await?;
    anyhow::ensure!(
        up == threads,
        "{} of {threads} serving threads failed to start",
        threads - up
    );
    Ok(())
}

/// Binds the first of the serving threads' listeners: as [`bind_reuseport`], after checking that
/// no other socket holds `addr`. `SO_REUSEPORT` alone would let a second gateway (or anything
/// else that set it) share the port silently and split the traffic between two processes, and
/// so between two stores; a plain bind, which conflicts with any listener on the port, fails
/// first with "address in use". (A socket in TIME_WAIT does not conflict: `SO_REUSEADDR`.)
pub fn bind_reuseport_first(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    if addr.port() != 0 {
        let probe = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        probe.set_reuseaddr(true)?;
        probe.bind(addr)?;
    }
    bind_reuseport(addr)
}

/// Binds `addr` with `SO_REUSEPORT` (and `SO_REUSEADDR`), so one listener per serving thread can
/// share the port and the kernel spreads connections across them.
pub fn bind_reuseport(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    #[cfg(unix)]
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    let listener = socket.listen(1024)?;
    listener.into_std()
}
