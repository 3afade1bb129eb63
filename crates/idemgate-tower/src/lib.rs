//! `IdempotencyLayer`: idempotency keys for any tower HTTP service.
//!
//! This crate is the one place where idempotency's HTTP semantics live: which requests are
//! protected, how a key is read, what a fingerprint covers, when a response is stored, replayed or
//! released, and every `application/problem+json` answer (400, 409, 413, 422, 502, 503, 504). The
//! `idemgate` gateway is this layer wrapped around a proxy service; Rust services wrap their own.
//!
//! ```no_run
//! use std::sync::Arc;
//! use idemgate_core::{MemoryStore, ScopeHasher};
//! use idemgate_tower::{IdempotencyConfig, IdempotencyLayer};
//!
//! let layer = IdempotencyLayer::new(
//!     Arc::new(MemoryStore::default()),
//!     ScopeHasher::new(b"a per-deployment secret"),
//!     IdempotencyConfig::default(),
//! );
//! // let app = tower::ServiceBuilder::new().layer(layer).service(my_http_service);
//! # let _ = layer;
//! ```
#![deny(missing_docs)]

mod body;
mod config;
mod future;
mod http_util;
mod layer;
mod metrics;
mod problem;
mod service;
mod waiters;

pub use body::{RequestBody, ResponseBody};
pub use config::{Clock, IdempotencyConfig, OnStoreError, PolicyOverrides, RoutePolicy, ScopeFn, ScopeSource};
pub use future::ResponseFuture;
pub use http_util::{is_hop_by_hop, strip_hop_by_hop};
pub use layer::IdempotencyLayer;
pub use metrics::Outcome;
pub use problem::{Problem, PROBLEM_BASE};
pub use service::{Idempotency, UpstreamError};

/// The error type bodies and services are boxed into.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The header added to every replayed response.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";
