//! `IdempotencyLayer`: idempotency keys for any tower HTTP service.
//!
//! This crate is the one place where idempotency's HTTP semantics live: which requests are
//! protected, how a key is read, what a fingerprint covers, when a response is stored, replayed or
//! released, and every `application/problem+json` answer (400, 409, 413, 422, 502, 503, 504). The
//! `idemgate` gateway is this layer wrapped around a proxy service; Rust services wrap their own.
//!
//! ```
//! use std::convert::Infallible;
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicU64, Ordering};
//!
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::{BodyExt, Full};
//! use idemgate_core::{MemoryStore, ScopeHasher};
//! use idemgate_tower::{IdempotencyConfig, IdempotencyLayer, RequestBody};
//! use tower::{Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let charges = Arc::new(AtomicU64::new(0));
//! let counter = charges.clone();
//! // Any HTTP service: here a function that "charges" and answers 201.
//! let service = tower::service_fn(move |_req: Request<RequestBody<Full<Bytes>>>| {
//!     let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
//!     async move {
//!         let mut resp = Response::new(Full::new(Bytes::from(format!("charge {n}"))));
//!         *resp.status_mut() = StatusCode::CREATED;
//!         Ok::<_, Infallible>(resp)
//!     }
//! });
//! let layer = IdempotencyLayer::new(
//!     Arc::new(MemoryStore::default()),
//!     ScopeHasher::new(b"a per-deployment secret"),
//!     IdempotencyConfig::default(),
//! );
//! let app = layer.layer(service);
//!
//! let request = || {
//!     Request::post("/charges")
//!         .header("idempotency-key", "order-1001")
//!         .body(Full::new(Bytes::from_static(b"{\"amount\":1999}")))
//!         .unwrap()
//! };
//! let first = app.clone().oneshot(request()).await.unwrap();
//! assert_eq!(first.status(), StatusCode::CREATED);
//! let retry = app.clone().oneshot(request()).await.unwrap();
//! assert_eq!(retry.status(), StatusCode::CREATED);
//! assert_eq!(retry.headers()["idempotent-replayed"], "true");
//! assert_eq!(retry.into_body().collect().await.unwrap().to_bytes(), "charge 1");
//! assert_eq!(charges.load(Ordering::SeqCst), 1, "executed once");
//! # }
//! ```
#![deny(missing_docs)]

mod body;
mod config;
mod future;
mod http_util;
mod layer;
mod metrics;
mod problem;
mod purge;
mod service;
mod waiters;

pub use body::{RequestBody, ResponseBody};
pub use config::{Clock, IdempotencyConfig, OnStoreError, PolicyOverrides, RoutePolicy, ScopeFn, ScopeSource};
pub use future::{DetachedTasks, ResponseFuture};
pub use http_util::{is_hop_by_hop, strip_hop_by_hop};
pub use layer::IdempotencyLayer;
pub use metrics::Outcome;
pub use problem::{Problem, PROBLEM_BASE};
pub use purge::purge_expired;
pub use service::{Idempotency, UpstreamError};

/// The error type bodies and services are boxed into.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The header added to every replayed response.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";
