//! Request outcomes, counted and logged once per request.
//!
//! Metric names (Prometheus, through the `metrics` facade; a no-op unless the application
//! installs a recorder):
//! - `idemgate_requests_total{outcome}`: one per request, by [`Outcome`].
//! - `idemgate_upstream_seconds`: time from forwarding a protected request to its stored response.
//! - `idemgate_store_seconds{op}`: store latency, `op` = `claim` | `complete` | `release`.
//! - `idemgate_responses_not_stored_total{reason}`: responses passed through without being stored
//!   (`too_large`, `event_stream`).

use std::time::Duration;

use metrics::{Counter, Histogram};

/// What happened to a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// Forwarded once and its response stored.
    Executed,
    /// Answered from a stored response.
    Replayed,
    /// 409: the key is in flight.
    Conflict,
    /// 422: the key was used with another request.
    Mismatch,
    /// 400 or 413: refused before anything else.
    Invalid,
    /// Not protected (method, route or no key): forwarded untouched.
    Bypassed,
    /// The store failed: 503, or forwarded unprotected with `--on-store-error open`.
    StoreError,
    /// Forwarded, but the outcome released the key (429/503 or another release status, a
    /// response too large to store, an event stream, an unreachable upstream).
    Released,
    /// The upstream failed or timed out with an unknown outcome; the key stays locked.
    UpstreamError,
}

impl Outcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Executed => "executed",
            Outcome::Replayed => "replayed",
            Outcome::Conflict => "conflict",
            Outcome::Mismatch => "mismatch",
            Outcome::Invalid => "invalid",
            Outcome::Bypassed => "bypassed",
            Outcome::StoreError => "store_error",
            Outcome::Released => "released",
            Outcome::UpstreamError => "upstream_error",
        }
    }

    const ALL: [Outcome; 9] = [
        Outcome::Executed,
        Outcome::Replayed,
        Outcome::Conflict,
        Outcome::Mismatch,
        Outcome::Invalid,
        Outcome::Bypassed,
        Outcome::StoreError,
        Outcome::Released,
        Outcome::UpstreamError,
    ];
}

/// Metric handles, registered once when the layer is built (clones record into the same series).
#[derive(Debug, Clone)]
pub(crate) struct Metrics {
    outcomes: [Counter; 9],
    pub(crate) upstream: Histogram,
    pub(crate) store_claim: Histogram,
    pub(crate) store_complete: Histogram,
    pub(crate) store_release: Histogram,
    pub(crate) not_stored_too_large: Counter,
    pub(crate) not_stored_event_stream: Counter,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        Self {
            outcomes: Outcome::ALL.map(|o| metrics::counter!("idemgate_requests_total", "outcome" => o.as_str())),
            upstream: metrics::histogram!("idemgate_upstream_seconds"),
            store_claim: metrics::histogram!("idemgate_store_seconds", "op" => "claim"),
            store_complete: metrics::histogram!("idemgate_store_seconds", "op" => "complete"),
            store_release: metrics::histogram!("idemgate_store_seconds", "op" => "release"),
            not_stored_too_large: metrics::counter!("idemgate_responses_not_stored_total", "reason" => "too_large"),
            not_stored_event_stream: metrics::counter!("idemgate_responses_not_stored_total", "reason" => "event_stream"),
        }
    }

    pub(crate) fn outcome(&self, o: Outcome) {
        self.outcomes[o as usize].increment(1);
    }
}

pub(crate) fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}
