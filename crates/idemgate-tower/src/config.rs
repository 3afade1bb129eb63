//! What the layer protects and how: the defaults and per-route policies.
//!
//! A request is matched to the route with the longest path prefix that matches; a route's
//! settings override the defaults field by field. Routes are resolved once, when the layer is
//! built, so the request path only scans a short list of prefixes.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;
use http::{HeaderName, Method, StatusCode};
use idemgate_core::FingerprintOptions;

/// A function from a request's head to its caller's identity.
pub type ScopeFn = Arc<dyn Fn(&Parts) -> Option<Vec<u8>> + Send + Sync>;

/// Where a request's caller identity (the key's scope) comes from.
#[derive(Clone)]
pub enum ScopeSource {
    /// The raw value(s) of a request header, e.g. `Authorization`. A request without the header
    /// belongs to the anonymous scope.
    Header(HeaderName),
    /// A function of the request, e.g. an authenticated user id from request extensions.
    /// `None` is the anonymous scope.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use idemgate_tower::{IdempotencyConfig, ScopeSource};
    ///
    /// /// What an authentication middleware put in the request's extensions.
    /// #[derive(Clone)]
    /// struct UserId(String);
    ///
    /// let config = IdempotencyConfig {
    ///     scope: ScopeSource::Custom(Arc::new(|parts| {
    ///         parts.extensions.get::<UserId>().map(|u| u.0.clone().into_bytes())
    ///     })),
    ///     ..IdempotencyConfig::default()
    /// };
    /// # let ScopeSource::Custom(f) = &config.scope else { unreachable!() };
    /// # let (mut parts, ()) = http::Request::new(()).into_parts();
    /// # assert_eq!(f(&parts), None);
    /// # parts.extensions.insert(UserId("alice".into()));
    /// # assert_eq!(f(&parts), Some(b"alice".to_vec()));
    /// ```
    Custom(ScopeFn),
    /// Every caller shares one scope (only for single-tenant services).
    Global,
}

impl fmt::Debug for ScopeSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScopeSource::Header(h) => f.debug_tuple("Header").field(h).finish(),
            ScopeSource::Custom(_) => f.write_str("Custom(..)"),
            ScopeSource::Global => f.write_str("Global"),
        }
    }
}

/// What happens to a protected request when the store cannot be reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OnStoreError {
    /// Answer 503 with `Retry-After`; never forward a request that could not be locked.
    #[default]
    Closed,
    /// Forward without protection (logged and counted as `store_error`).
    Open,
}

/// Settings a route may override.
#[derive(Clone, Debug, Default)]
pub struct PolicyOverrides {
    /// Protected methods.
    pub methods: Option<Vec<Method>>,
    /// How long a completed record is kept.
    pub ttl: Option<Duration>,
    /// How long a claim holds the key before another request may take it over.
    pub lock_timeout: Option<Duration>,
    /// Refuse protected requests without a key (400).
    pub require_key: Option<bool>,
    /// What the fingerprint covers.
    pub fingerprint: Option<FingerprintOptions>,
    /// Responses with these statuses are not stored and release the key.
    pub release_statuses: Option<Vec<StatusCode>>,
    /// Hold a repeat of an in-flight request this long and replay its outcome, instead of 409.
    pub wait_in_flight: Option<Option<Duration>>,
    /// When false, the route is never protected.
    pub enabled: Option<bool>,
}

/// A per-route policy: a path prefix and its overrides.
#[derive(Clone, Debug)]
pub struct RoutePolicy {
    /// Path prefix (`/payments` matches `/payments` and `/payments/123`).
    pub prefix: String,
    /// Overrides of the defaults.
    pub overrides: PolicyOverrides,
}

/// The layer's configuration.
#[derive(Clone, Debug)]
pub struct IdempotencyConfig {
    /// The header carrying the key (default `Idempotency-Key`).
    pub key_header: HeaderName,
    /// Where the caller identity comes from (default the `Authorization` header).
    pub scope: ScopeSource,
    /// Largest request body buffered for fingerprinting (over → 413).
    pub max_body: usize,
    /// Largest response body stored; a larger one is passed through and the key released.
    pub max_response: usize,
    /// Store outage behaviour.
    pub on_store_error: OnStoreError,
    /// Most requests that may wait on one in-flight key (with `wait_in_flight`); more get 409.
    pub max_waiters_per_key: usize,
    /// Protected methods (default POST, PATCH).
    pub methods: Vec<Method>,
    /// Record lifetime (default 24 h).
    pub ttl: Duration,
    /// Lease of an in-flight claim (default 60 s).
    pub lock_timeout: Duration,
    /// Refuse keyless protected requests (default false: forward them untouched).
    pub require_key: bool,
    /// Fingerprint options (default: method, path+query, `Content-Type`, raw body).
    pub fingerprint: FingerprintOptions,
    /// Statuses that release the key instead of being stored (default 429, 503).
    pub release_statuses: Vec<StatusCode>,
    /// Wait for an in-flight original instead of answering 409 (default off).
    pub wait_in_flight: Option<Duration>,
    /// Media types (lower case, without parameters) whose responses are streamed to the client
    /// as they come instead of being stored; the key is released, so a retry executes again
    /// (default `text/event-stream`). A response's `Content-Type` matches when its media type is
    /// one of these, ignoring case and parameters.
    pub stream_content_types: Vec<String>,
    /// Per-route policies.
    pub routes: Vec<RoutePolicy>,
    /// The wall clock in Unix ms (tests move it).
    pub clock: Clock,
    /// How often the layer deletes expired records (default 30 s), in a task it spawns on the
    /// tokio runtime of its first protected request and that ends when the layer and all its
    /// services are dropped. `None`: the application purges itself, with [`crate::purge_expired`]
    /// (the gateway does, in its housekeeping). Expired records are never replayed either way;
    /// purging frees their space.
    pub purge_interval: Option<Duration>,
}

/// A wall clock in Unix milliseconds.
#[derive(Clone)]
pub struct Clock(pub Arc<dyn Fn() -> u64 + Send + Sync>);

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Clock")
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock(Arc::new(idemgate_core::time::now_ms))
    }
}

impl Default for IdempotencyConfig {
    fn default() -> Self {
        Self {
            key_header: HeaderName::from_static("idempotency-key"),
            scope: ScopeSource::Header(http::header::AUTHORIZATION),
            max_body: 10 * 1024 * 1024,
            max_response: 10 * 1024 * 1024,
            on_store_error: OnStoreError::Closed,
            max_waiters_per_key: 64,
            methods: vec![Method::POST, Method::PATCH],
            ttl: Duration::from_secs(24 * 3600),
            lock_timeout: Duration::from_secs(60),
            require_key: false,
            fingerprint: FingerprintOptions::default(),
            release_statuses: vec![StatusCode::TOO_MANY_REQUESTS, StatusCode::SERVICE_UNAVAILABLE],
            wait_in_flight: None,
            stream_content_types: vec!["text/event-stream".to_owned()],
            routes: Vec::new(),
            clock: Clock::default(),
            purge_interval: Some(Duration::from_secs(30)),
        }
    }
}

/// A route's effective settings.
#[derive(Debug)]
pub(crate) struct Policy {
    pub(crate) enabled: bool,
    pub(crate) methods: Vec<Method>,
    pub(crate) ttl_ms: u64,
    pub(crate) lease_ms: u64,
    pub(crate) require_key: bool,
    pub(crate) fingerprint: FingerprintOptions,
    pub(crate) release_statuses: Vec<StatusCode>,
    pub(crate) wait_in_flight: Option<Duration>,
}

impl Policy {
    pub(crate) fn protects(&self, method: &Method) -> bool {
        // Methods are case-sensitive in HTTP, but an upstream that takes `post` for POST would
        // otherwise execute it unprotected: compared without case.
        self.enabled
            && self
                .methods
                .iter()
                .any(|m| m == method || m.as_str().eq_ignore_ascii_case(method.as_str()))
    }
}

/// Routes resolved against the defaults, longest prefix first.
#[derive(Debug)]
pub(crate) struct Policies {
    routes: Vec<(String, Arc<Policy>)>,
    default: Arc<Policy>,
}

impl Policies {
    pub(crate) fn resolve(cfg: &IdempotencyConfig) -> Self {
        let default = Policy {
            enabled: true,
            methods: cfg.methods.clone(),
            ttl_ms: millis(cfg.ttl),
            lease_ms: millis(cfg.lock_timeout),
            require_key: cfg.require_key,
            fingerprint: cfg.fingerprint.clone(),
            release_statuses: cfg.release_statuses.clone(),
            wait_in_flight: cfg.wait_in_flight,
        };
        let mut routes: Vec<(String, Arc<Policy>)> = cfg
            .routes
            .iter()
            .map(|r| {
                let o = &r.overrides;
                let p = Policy {
                    enabled: o.enabled.unwrap_or(true),
                    methods: o.methods.clone().unwrap_or_else(|| default.methods.clone()),
                    ttl_ms: o.ttl.map_or(default.ttl_ms, millis),
                    lease_ms: o.lock_timeout.map_or(default.lease_ms, millis),
                    require_key: o.require_key.unwrap_or(default.require_key),
                    fingerprint: o.fingerprint.clone().unwrap_or_else(|| default.fingerprint.clone()),
                    release_statuses: o
                        .release_statuses
                        .clone()
                        .unwrap_or_else(|| default.release_statuses.clone()),
                    wait_in_flight: o.wait_in_flight.unwrap_or(default.wait_in_flight),
                };
                (normalize_path(&r.prefix).into_owned(), Arc::new(p))
            })
            .collect();
        routes.sort_by_key(|r| std::cmp::Reverse(r.0.len()));
        Self {
            routes,
            default: Arc::new(default),
        }
    }

    /// The policy of the route whose prefix matches `path` once normalised (see
    /// [`normalize_path`]), so `//payments` or `/a/../payments` cannot dodge the `/payments` route
    /// at an upstream that normalises paths (nginx merges slashes, most routers resolve dot
    /// segments). What is forwarded and fingerprinted stays the path as received.
    pub(crate) fn for_path(&self, path: &str) -> &Arc<Policy> {
        if self.routes.is_empty() {
            return &self.default;
        }
        let path = normalize_path(path);
        self.routes
            .iter()
            .find(|(prefix, _)| path_has_prefix(&path, prefix))
            .map_or(&self.default, |(_, p)| p)
    }
}

/// A path as routers compare it: percent-encoded unreserved characters decoded (`%70` → `p`,
/// RFC 3986 §6.2.2.2), repeated slashes merged, `.` and `..` segments resolved (§5.2.4; `..`
/// never climbs above the root). Borrowed when there is nothing to change.
pub(crate) fn normalize_path(path: &str) -> std::borrow::Cow<'_, str> {
    let b = path.as_bytes();
    let plain = !b.contains(&b'%') && !path.contains("//") && !path.split('/').any(|seg| seg == "." || seg == "..");
    if plain {
        return std::borrow::Cow::Borrowed(path);
    }
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                let c = (h * 16 + l) as u8;
                if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                    decoded.push(c as char);
                    i += 3;
                    continue;
                }
            }
        }
        // Byte by byte is safe: a `%` escape is ASCII, and everything else is copied whole.
        let len = path[i..].chars().next().map_or(1, char::len_utf8);
        decoded.push_str(&path[i..i + len]);
        i += len;
    }
    let mut segments: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let trailing = decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    let mut out = String::with_capacity(decoded.len());
    for seg in &segments {
        out.push('/');
        out.push_str(seg);
    }
    if out.is_empty() || trailing {
        out.push('/');
    }
    std::borrow::Cow::Owned(out)
}

/// `/payments` matches `/payments`, `/payments/` and `/payments/1`, not `/paymentsx`.
fn path_has_prefix(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || prefix.is_empty())
}

/// A TTL or lease in whole milliseconds, at least 1: a zero would forget every response at once
/// or let any repeat take over a running request.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_wins_and_overrides_merge() {
        let cfg = IdempotencyConfig {
            routes: vec![
                RoutePolicy {
                    prefix: "/payments".into(),
                    overrides: PolicyOverrides {
                        require_key: Some(true),
                        ..Default::default()
                    },
                },
                RoutePolicy {
                    prefix: "/payments/refunds".into(),
                    overrides: PolicyOverrides {
                        ttl: Some(Duration::from_secs(5)),
                        ..Default::default()
                    },
                },
            ],
            ..Default::default()
        };
        let p = Policies::resolve(&cfg);
        assert!(p.for_path("/payments/1").require_key);
        assert!(!p.for_path("/paymentsx").require_key);
        assert!(!p.for_path("/other").require_key);
        assert_eq!(p.for_path("/payments/refunds/9").ttl_ms, 5000);
        assert!(
            !p.for_path("/payments/refunds/9").require_key,
            "a route overrides the defaults, not its parent route"
        );
        assert!(p.for_path("/").protects(&Method::POST));
        assert!(!p.for_path("/").protects(&Method::PUT));
    }

    #[test]
    fn routes_match_the_normalised_path() {
        let cfg = IdempotencyConfig {
            routes: vec![RoutePolicy {
                prefix: "/payments".into(),
                overrides: PolicyOverrides {
                    require_key: Some(true),
                    ..Default::default()
                },
            }],
            ..Default::default()
        };
        let p = Policies::resolve(&cfg);
        for path in [
            "/payments",
            "//payments",
            "/./payments/",
            "/a/../payments/1",
            "/../payments",
            "/%70ayments",
            "/%70%61yments//1",
            "/payments/.",
        ] {
            assert!(p.for_path(path).require_key, "{path}");
        }
        for path in [
            "/paymentsx",
            "/payments/../other",
            "/%2Fpayments",
            "/pay%2Fments",
            "/a/payments",
            "/%",
        ] {
            assert!(!p.for_path(path).require_key, "{path}");
        }
        assert_eq!(normalize_path("/a/b"), "/a/b");
        assert!(matches!(normalize_path("/a/b/"), std::borrow::Cow::Borrowed(_)));
        assert_eq!(normalize_path("/a//b/./c/../"), "/a/b/");
        assert_eq!(normalize_path("/.."), "/");
        assert_eq!(normalize_path("/caf%C3%A9/%7e%zz%4"), "/caf%C3%A9/~%zz%4");
        assert_eq!(normalize_path("/é//x"), "/é/x");
    }

    #[test]
    fn methods_are_protected_whatever_their_case() {
        let p = Policies::resolve(&IdempotencyConfig::default());
        let lower = Method::from_bytes(b"post").unwrap();
        assert!(p.for_path("/").protects(&lower));
        assert!(p.for_path("/").protects(&Method::PATCH));
        assert!(!p.for_path("/").protects(&Method::from_bytes(b"get").unwrap()));
    }

    #[test]
    fn spans_under_a_millisecond_count_as_one() {
        let cfg = IdempotencyConfig {
            ttl: Duration::from_micros(500),
            lock_timeout: Duration::ZERO,
            routes: vec![RoutePolicy {
                prefix: "/p".into(),
                overrides: PolicyOverrides {
                    lock_timeout: Some(Duration::from_nanos(1)),
                    ..Default::default()
                },
            }],
            ..Default::default()
        };
        let p = Policies::resolve(&cfg);
        assert_eq!((p.for_path("/").ttl_ms, p.for_path("/").lease_ms), (1, 1));
        assert_eq!(p.for_path("/p/1").lease_ms, 1);
    }
}
