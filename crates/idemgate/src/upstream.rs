//! Keep-alive HTTP/1.1 connections to the one upstream: a pool per serving thread.
//!
//! The gateway talks to a single upstream, so its pool is a stack of idle connections behind an
//! uncontended mutex (each serving thread has its own [`Pool`]): a checkout pops the most
//! recently used connection that is ready, a response whose body has been read to its end puts
//! its connection back ([`PooledBody`]). A general client pool (hyper-util's) keys connections by
//! scheme and host (hashed per request, byte by byte) and spawns a task per request to wait for
//! the connection to become idle again; here neither is needed.
//!
//! - A connection whose response body is dropped before its end is closed, not reused: its
//!   state is unknown.
//! - A request sent on a reused connection that the upstream had closed meanwhile (its
//!   keep-alive ran out) comes back unsent (`try_send_request`): it is sent again on a new
//!   connection, once. A request that cannot be sent at all is reported as not executed;
//!   one that failed after it was sent, as failed (the outcome is unknown).

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use idemgate_tower::{RequestBody, UpstreamError};
use pin_project_lite::pin_project;
use tokio::net::TcpStream;

type Sender = SendRequest<RequestBody<Incoming>>;

/// Idle connections to one upstream.
#[derive(Debug)]
pub struct Pool {
    /// `host:port`, resolved at each connect.
    addr: String,
    connect_timeout: Duration,
    max_idle: usize,
    idle: Mutex<Vec<Sender>>,
}

impl Pool {
    pub fn new(addr: String, connect_timeout: Duration, max_idle: usize) -> Self {
        Self {
            addr,
            connect_timeout,
            max_idle,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Sends `req` (origin-form URI, headers rewritten) and returns the response head; its body
    /// hands the connection back when it has been read to its end.
    pub async fn send(
        self: &Arc<Self>,
        req: Request<RequestBody<Incoming>>,
    ) -> Result<Response<PooledBody>, UpstreamError> {
        let mut req = req;
        let mut reused = self.checkout();
        loop {
            let (mut conn, was_idle) = match reused.take() {
                Some(conn) => (conn, true),
                None => (self.connect().await?, false),
            };
            match conn.try_send_request(req).await {
                Ok(resp) => {
                    let pool = self.clone();
                    return Ok(resp.map(|body| PooledBody {
                        body,
                        conn: Some((conn, pool)),
                    }));
                }
                Err(mut e) => match e.take_message() {
                    // Not sent: an idle connection the upstream closed. Once more, on a new one.
                    Some(unsent) if was_idle => {
                        tracing::debug!(error = %e.error(), "pooled upstream connection was closed; reconnecting");
                        req = unsent;
                    }
                    Some(_) => return Err(UpstreamError::NotExecuted(Box::new(e.into_error()))),
                    None => return Err(UpstreamError::Failed(Box::new(e.into_error()))),
                },
            }
        }
    }

    /// The most recently used idle connection that can take a request now; closed ones are
    /// dropped, ones still finishing their last response stay.
    fn checkout(&self) -> Option<Sender> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let mut cx = Context::from_waker(Waker::noop());
        let mut i = idle.len();
        while i > 0 {
            i -= 1;
            match idle[i].poll_ready(&mut cx) {
                Poll::Ready(Ok(())) => return Some(idle.swap_remove(i)),
                Poll::Ready(Err(_)) => drop(idle.swap_remove(i)),
                Poll::Pending => {}
            }
        }
        None
    }

    fn put(&self, conn: Sender) {
        if conn.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < self.max_idle {
            idle.push(conn);
        }
    }

    async fn connect(&self) -> Result<Sender, UpstreamError> {
        let not_reached = |e: Box<dyn std::error::Error + Send + Sync>| UpstreamError::NotExecuted(e);
        let stream = match tokio::time::timeout(self.connect_timeout, TcpStream::connect(self.addr.as_str())).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(not_reached(Box::new(e))),
            Err(_) => {
                return Err(not_reached(
                    format!("connecting to {} timed out after {:?}", self.addr, self.connect_timeout).into(),
                ))
            }
        };
        let _ = stream.set_nodelay(true);
        let (mut conn, driver) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| not_reached(Box::new(e)))?;
        tokio::spawn(async move {
            if let Err(e) = driver.await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        poll_fn(|cx| conn.poll_ready(cx))
            .await
            .map_err(|e| not_reached(Box::new(e)))?;
        Ok(conn)
    }
}

pin_project! {
    /// An upstream response body that returns its connection to the pool once read to its end.
    pub struct PooledBody {
        #[pin]
        body: Incoming,
        conn: Option<(Sender, Arc<Pool>)>,
    }

    impl PinnedDrop for PooledBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            // Read to its end (the last frame taken, its `None` not yet polled): reusable.
            if this.body.is_end_stream() {
                if let Some((conn, pool)) = this.conn.take() {
                    pool.put(conn);
                }
            }
        }
    }
}

impl std::fmt::Debug for PooledBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledBody").finish_non_exhaustive()
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let mut this = self.project();
        let frame = this.body.as_mut().poll_frame(cx);
        let ended = match &frame {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => this.body.is_end_stream(),
            Poll::Ready(Some(Err(_))) => {
                // Broken mid-body: never reuse the connection.
                this.conn.take();
                false
            }
            Poll::Pending => false,
        };
        if ended {
            if let Some((conn, pool)) = this.conn.take() {
                pool.put(conn);
            }
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
