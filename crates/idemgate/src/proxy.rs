//! The proxy service: forwards a request to the upstream and hands back its response.
//!
//! It knows nothing of idempotency; the gateway wraps it in [`idemgate_tower::IdempotencyLayer`].
//! It reports failures as [`UpstreamError`] so the layer can tell "never reached the upstream"
//! (connection refused: the key is released) from "outcome unknown" (timeout, cut connection).
//!
//! Like nginx's default, the upstream sees `Host` set to its own authority; the client's host
//! goes in `X-Forwarded-Host`, its address in `X-Forwarded-For`, and `X-Forwarded-Proto: http`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{HeaderName, HeaderValue, HOST};
use http::uri::{PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use idemgate_core::BoxFuture;
use idemgate_tower::{strip_hop_by_hop, RequestBody, UpstreamError};

use crate::upstream::{Pool, PooledBody};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// The upstream could not be parsed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamUrlError {
    #[error("invalid upstream URL {0:?}: {1}")]
    Invalid(String, String),
    #[error("upstream URL {0:?} must be http://host:port (TLS to the upstream is not supported)")]
    Scheme(String),
}

#[derive(Debug)]
struct Target {
    pool: Arc<Pool>,
    host_header: HeaderValue,
    base_path: String,
    timeout: Duration,
}

/// Forwards requests to one upstream over pooled HTTP/1.1 connections.
///
/// Cloned for every request (by the server and by the layer), so a clone is one reference count
/// (and, per connection, the client's address). Each serving thread makes its own proxy, so each
/// has its own connection pool.
#[derive(Clone, Debug)]
pub struct Proxy {
    target: Arc<Target>,
    /// The client's address as an `X-Forwarded-For` value, set per connection by the server
    /// ([`Proxy::set_client`]; formatted once, not per request).
    forwarded_for: Option<HeaderValue>,
}

impl Proxy {
    pub fn new(upstream: &str, timeout: Duration) -> Result<Self, UpstreamUrlError> {
        let uri: Uri = upstream
            .parse()
            .map_err(|e: http::uri::InvalidUri| UpstreamUrlError::Invalid(upstream.into(), e.to_string()))?;
        if uri.scheme() != Some(&Scheme::HTTP) {
            return Err(UpstreamUrlError::Scheme(upstream.into()));
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| UpstreamUrlError::Invalid(upstream.into(), "no host".into()))?;
        let host_header = HeaderValue::from_str(authority.as_str())
            .map_err(|e| UpstreamUrlError::Invalid(upstream.into(), e.to_string()))?;
        let base_path = uri.path().trim_end_matches('/').to_string();
        let addr = format!("{}:{}", authority.host(), authority.port_u16().unwrap_or(80));
        // A failed connect is "not executed" (the key is released); keep it well inside the
        // response timeout so a slow connect is not mistaken for an unknown outcome.
        let connect_timeout = (timeout / 2).min(Duration::from_secs(5));
        Ok(Self {
            target: Arc::new(Target {
                pool: Arc::new(Pool::new(addr, connect_timeout, 256)),
                host_header,
                base_path,
                timeout,
            }),
            forwarded_for: None,
        })
    }

    /// Tells the proxy whose connection it forwards (the `X-Forwarded-For` it adds).
    pub fn set_client(&mut self, peer: SocketAddr) {
        self.forwarded_for = HeaderValue::from_str(&peer.ip().to_string()).ok();
    }

    fn rewrite(&self, req: &mut Request<RequestBody<Incoming>>) -> Result<(), UpstreamError> {
        let t = &self.target;
        let pq = match (req.uri().path_and_query(), t.base_path.is_empty()) {
            // The request's own, shared (no copy, no second parse).
            (Some(pq), true) => pq.clone(),
            (None, true) => PathAndQuery::from_static("/"),
            (pq, false) => format!("{}{}", t.base_path, pq.map_or("/", |pq| pq.as_str()))
                .parse()
                .map_err(|e| UpstreamError::NotExecuted(Box::new(e)))?,
        };
        // Origin form (`/path?query`): what an HTTP/1.1 request to the origin carries.
        *req.uri_mut() = Uri::from(pq);
        let headers = req.headers_mut();
        strip_hop_by_hop(headers);
        if let Some(host) = headers.insert(HOST, t.host_header.clone()) {
            headers.insert(X_FORWARDED_HOST.clone(), host);
        }
        if let Some(ip) = &self.forwarded_for {
            match headers.get(&X_FORWARDED_FOR) {
                Some(prev) => {
                    let mut xff = Vec::with_capacity(prev.len() + 2 + ip.len());
                    xff.extend_from_slice(prev.as_bytes());
                    xff.extend_from_slice(b", ");
                    xff.extend_from_slice(ip.as_bytes());
                    if let Ok(v) = HeaderValue::from_bytes(&xff) {
                        headers.insert(X_FORWARDED_FOR.clone(), v);
                    }
                }
                None => {
                    headers.insert(X_FORWARDED_FOR.clone(), ip.clone());
                }
            }
        }
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
        *req.version_mut() = http::Version::HTTP_11;
        Ok(())
    }
}

impl tower::Service<Request<RequestBody<Incoming>>> for Proxy {
    type Response = Response<PooledBody>;
    type Error = UpstreamError;
    type Future = BoxFuture<'static, Result<Response<PooledBody>, UpstreamError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<RequestBody<Incoming>>) -> Self::Future {
        let rewritten = self.rewrite(&mut req);
        let target = self.target.clone();
        Box::pin(async move {
            rewritten?;
            let timeout = target.timeout;
            match tokio::time::timeout(timeout, target.pool.send(req)).await {
                Err(_) => Err(UpstreamError::Timeout(timeout)),
                Ok(Ok(mut resp)) => {
                    strip_hop_by_hop(resp.headers_mut());
                    // The stored response keeps no reason phrase, so its replays get the
                    // standard one: so does the first answer (RFC 9112 §4: clients ignore it).
                    resp.extensions_mut().remove::<hyper::ext::ReasonPhrase>();
                    Ok(resp)
                }
                Ok(Err(e)) => Err(e),
            }
        })
    }
}
