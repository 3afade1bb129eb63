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

use http::header::{HeaderValue, HOST};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use idemgate_core::BoxFuture;
use idemgate_tower::{strip_hop_by_hop, RequestBody, UpstreamError};

/// The client's address, put in request extensions by the server.
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub SocketAddr);

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
    authority: Authority,
    host_header: HeaderValue,
    base_path: String,
}

/// Forwards requests to one upstream over pooled HTTP/1.1 connections.
#[derive(Clone, Debug)]
pub struct Proxy {
    client: Client<HttpConnector, RequestBody<Incoming>>,
    target: Arc<Target>,
    timeout: Duration,
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
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        // A failed connect is "not executed" (the key is released); keep it well inside the
        // response timeout so a slow connect is not mistaken for an unknown outcome.
        connector.set_connect_timeout(Some((timeout / 2).min(Duration::from_secs(5))));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(256)
            .build(connector);
        Ok(Self {
            client,
            target: Arc::new(Target {
                authority,
                host_header,
                base_path,
            }),
            timeout,
        })
    }

    fn rewrite(&self, req: &mut Request<RequestBody<Incoming>>) -> Result<(), UpstreamError> {
        let t = &self.target;
        let pq = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
        let pq: PathAndQuery = if t.base_path.is_empty() {
            PathAndQuery::from_maybe_shared(bytes::Bytes::copy_from_slice(pq.as_bytes()))
        } else {
            format!("{}{}", t.base_path, pq).parse()
        }
        .map_err(|e| UpstreamError::NotExecuted(Box::new(e)))?;
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(t.authority.clone());
        parts.path_and_query = Some(pq);
        *req.uri_mut() = Uri::from_parts(parts).map_err(|e| UpstreamError::NotExecuted(Box::new(e)))?;
        let peer = req.extensions().get::<PeerAddr>().copied();
        let headers = req.headers_mut();
        strip_hop_by_hop(headers);
        if let Some(host) = headers.insert(HOST, t.host_header.clone()) {
            headers.insert("x-forwarded-host", host);
        }
        if let Some(PeerAddr(addr)) = peer {
            let ip = addr.ip().to_string();
            let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
                Some(prev) => format!("{prev}, {ip}"),
                None => ip,
            };
            if let Ok(v) = HeaderValue::from_str(&xff) {
                headers.insert("x-forwarded-for", v);
            }
        }
        headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
        *req.version_mut() = http::Version::HTTP_11;
        Ok(())
    }
}

impl tower::Service<Request<RequestBody<Incoming>>> for Proxy {
    type Response = Response<Incoming>;
    type Error = UpstreamError;
    type Future = BoxFuture<'static, Result<Response<Incoming>, UpstreamError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<RequestBody<Incoming>>) -> Self::Future {
        let rewritten = self.rewrite(&mut req);
        let client = self.client.clone();
        let timeout = self.timeout;
        Box::pin(async move {
            rewritten?;
            match tokio::time::timeout(timeout, client.request(req)).await {
                Err(_) => Err(UpstreamError::Timeout(timeout)),
                Ok(Ok(mut resp)) => {
                    strip_hop_by_hop(resp.headers_mut());
                    Ok(resp)
                }
                Ok(Err(e)) if e.is_connect() => Err(UpstreamError::NotExecuted(Box::new(e))),
                Ok(Err(e)) => Err(UpstreamError::Failed(Box::new(e))),
            }
        })
    }
}
