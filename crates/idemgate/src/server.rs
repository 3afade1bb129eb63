//! The gateway's listener: HTTP/1.1 connections served by the idempotency layer around the
//! proxy, with graceful shutdown (stop accepting, let in-flight requests finish, bounded).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
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

use crate::proxy::{PeerAddr, Proxy};

type GatewayService = Idempotency<Proxy>;

/// One connection's service: tags requests with the peer address and turns errors of
/// unprotected requests into problem responses.
#[derive(Clone)]
struct Conn {
    svc: GatewayService,
    peer: SocketAddr,
}

impl hyper::service::Service<Request<Incoming>> for Conn {
    type Response = Response<ResponseBody<Incoming>>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        req.extensions_mut().insert(PeerAddr(self.peer));
        let svc = self.svc.clone();
        Box::pin(async move {
            match svc.oneshot(req).await {
                Ok(resp) => Ok(resp),
                Err(e) => {
                    tracing::warn!(error = %e, "upstream error on an unprotected request");
                    Ok(match e {
                        UpstreamError::NotExecuted(_) => Problem::UpstreamUnavailable,
                        UpstreamError::Timeout(_) => Problem::UpstreamTimeout { retry_after_secs: 1 },
                        UpstreamError::Failed(_) => Problem::UpstreamFailed { retry_after_secs: 1 },
                    }
                    .into_response())
                }
            }
        })
    }
}

/// Serves `svc` on `listener` until `shutdown` resolves, then drains for at most `drain`.
pub async fn serve(listener: TcpListener, svc: GatewayService, shutdown: impl Future<Output = ()>, drain: Duration) {
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder.timer(hyper_util::rt::TokioTimer::new());
    builder.header_read_timeout(Some(Duration::from_secs(30)));
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
                let conn = builder.serve_connection(TokioIo::new(stream), Conn { svc: svc.clone(), peer });
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::info!("shutting down: no new connections; waiting for in-flight requests");
    if tokio::time::timeout(drain, graceful.shutdown()).await.is_err() {
        tracing::warn!(?drain, "in-flight requests did not finish in time");
    }
}
