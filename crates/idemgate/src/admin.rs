//! The admin listener (`--admin-listen`).
//!
//! - `GET /healthz`: 200 while the process runs.
//! - `GET /readyz`: 200 when the store answers a ping within a second, else 503 problem+json.
//! - `GET /metrics`: Prometheus text format.
//! - `GET /keys/{key}`: a record's state (`in_flight` or `completed`), status, expiry and lease.
//! - `DELETE /keys/{key}`: deletes a record (204, or 404).
//!
//! The key API requires `Authorization: Bearer <token>` with the token from `--admin-token-file`
//! (compared in constant time) and is disabled (403) without one. The key is the path segment,
//! percent-decoded; the caller it belongs to is given as the raw scope-header value in an
//! `Idemgate-Scope` request header (absent: the anonymous scope).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use idemgate_core::{parse_key, Record};
use idemgate_tower::{IdempotencyLayer, PROBLEM_BASE};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;

use crate::head_timeout::{Guarded, HeadClock};
use crate::parse_errors::ProblemIo;

pub struct Admin {
    pub layer: IdempotencyLayer,
    pub token: Option<String>,
    pub prometheus: Option<crate::recorder::MetricsHandle>,
}

type Resp = Response<Full<Bytes>>;

fn json(status: StatusCode, v: &serde_json::Value) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn problem(status: StatusCode, slug: &str, title: &str, detail: &str) -> Resp {
    let mut r = json(
        status,
        &serde_json::json!({"type": format!("{PROBLEM_BASE}{slug}"), "title": title, "status": status.as_u16(), "detail": detail}),
    );
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    r
}

impl Admin {
    async fn handle(&self, req: Request<Incoming>) -> Resp {
        let path = req.uri().path();
        match (req.method(), path) {
            (&Method::GET, "/healthz") => json(StatusCode::OK, &serde_json::json!({"status": "ok"})),
            (&Method::GET, "/readyz") => {
                let store = self.layer.store();
                match tokio::time::timeout(Duration::from_secs(1), store.ping()).await {
                    Ok(Ok(())) => json(
                        StatusCode::OK,
                        &serde_json::json!({"status": "ready", "store": store.kind()}),
                    ),
                    Ok(Err(e)) => problem(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "store-unavailable",
                        "Store unavailable",
                        &e.to_string(),
                    ),
                    Err(_) => problem(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "store-unavailable",
                        "Store unavailable",
                        "the store did not answer within 1s",
                    ),
                }
            }
            (&Method::GET, "/metrics") => {
                let body = self.prometheus.as_ref().map(|p| p.render()).unwrap_or_default();
                let mut r = Response::new(Full::new(Bytes::from(body)));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                r
            }
            (m, p) if p.starts_with("/keys/") && (m == Method::GET || m == Method::DELETE) => self.key_api(&req).await,
            _ => problem(
                StatusCode::NOT_FOUND,
                "not-found",
                "Not found",
                "admin endpoints: /healthz /readyz /metrics /keys/{key}",
            ),
        }
    }

    async fn key_api(&self, req: &Request<Incoming>) -> Resp {
        let Some(token) = &self.token else {
            return problem(
                StatusCode::FORBIDDEN,
                "admin-disabled",
                "Key API disabled",
                "start the gateway with --admin-token-file to enable it",
            );
        };
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            // The scheme is case-insensitive (RFC 9110 §11.1): `bearer` is `Bearer`.
            .and_then(|v| {
                let v = v.as_bytes();
                (v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ")).then(|| &v[7..])
            })
            .unwrap_or_default();
        if !bool::from(given.ct_eq(token.as_bytes())) {
            let mut r = problem(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Unauthorized",
                "a valid admin bearer token is required",
            );
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
        let raw = &req.uri().path()["/keys/".len()..];
        let decoded: Vec<u8> = percent_encoding::percent_decode_str(raw).collect();
        let key = match parse_key(&decoded) {
            Ok(k) => k,
            Err(e) => {
                return problem(
                    StatusCode::BAD_REQUEST,
                    "invalid-key",
                    "Invalid idempotency key",
                    &e.to_string(),
                )
            }
        };
        // The caller's scope header as it sent it, every value (a header sent twice has a
        // scope of its own).
        let scope = idemgate_core::header_scope(req.headers().get_all("idemgate-scope"));
        let id = self.layer.record_id(&scope, &key);
        let store = self.layer.store();
        if req.method() == Method::DELETE {
            return match store.delete(id).await {
                Ok(true) => {
                    tracing::info!(record = ?id, "record deleted through the admin API");
                    let mut r = Response::new(Full::new(Bytes::new()));
                    *r.status_mut() = StatusCode::NO_CONTENT;
                    r
                }
                Ok(false) => problem(
                    StatusCode::NOT_FOUND,
                    "key-not-found",
                    "Key not found",
                    "no record for this key and scope",
                ),
                Err(e) => problem(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store-unavailable",
                    "Store unavailable",
                    &e.to_string(),
                ),
            };
        }
        let now = idemgate_core::time::now_ms();
        match store.get(id).await {
            Ok(Some(rec)) if !rec.is_expired(now) || matches!(rec, Record::InFlight { .. }) => {
                let v = match &rec {
                    Record::InFlight { lease_until_ms, .. } => serde_json::json!({
                        "state": if rec.is_expired(now) { "in_flight_expired" } else { "in_flight" },
                        "lease_until_ms": lease_until_ms,
                    }),
                    Record::Completed {
                        expires_at_ms,
                        response,
                        ..
                    } => serde_json::json!({
                        "state": "completed",
                        "status": response.status().as_u16(),
                        "body_bytes": response.body().len(),
                        "expires_at_ms": expires_at_ms,
                    }),
                };
                json(StatusCode::OK, &v)
            }
            Ok(_) => problem(
                StatusCode::NOT_FOUND,
                "key-not-found",
                "Key not found",
                "no record for this key and scope",
            ),
            Err(e) => problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "store-unavailable",
                "Store unavailable",
                &e.to_string(),
            ),
        }
    }
}

/// Serves the admin API until the task is dropped.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: back off as the main listener does
                // instead of spinning a core.
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                continue;
            }
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            // Requests are counted as the gateway's are, so that hyper's answers to unparsable
            // ones become problem documents (`parse_errors.rs`).
            let clock = HeadClock::new();
            let io = TokioIo::new(ProblemIo::new(stream, clock.clone()));
            let svc = hyper::service::service_fn(move |req| {
                let admin = admin.clone();
                let busy = clock.busy();
                async move { Ok::<_, Infallible>(admin.handle(req).await.map(|body| Guarded::new(body, busy))) }
            });
            let _ = http1::Builder::new().serve_connection(io, svc).await;
        });
    }
}
