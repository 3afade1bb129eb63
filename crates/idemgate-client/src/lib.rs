//! `idemgate-client`: safe retries for unsafe requests, as a [`reqwest_middleware`] middleware.
//!
//! [`IdempotencyMiddleware`] gives every POST and PATCH that has no `Idempotency-Key` a fresh
//! UUID v4 key, then retries what is worth retrying with **the same key on every attempt**, so a
//! server behind idemgate (the gateway or the `idemgate-tower` layer) executes the operation once
//! and replays its recorded answer to every retry:
//!
//! - **retried**: transport errors (connection refused or reset, a response cut off), timeouts,
//!   and the statuses 409 (`request-in-progress`), 429, 502, 503 and 504. To see a cut-off body,
//!   the middleware reads a retryable request's response whole before returning it when its
//!   `Content-Length` is within [`buffer_limit`](IdempotencyMiddleware::buffer_limit) (1 MiB by
//!   default); a larger or unsized response streams to the caller, and if its body is cut off
//!   there, [`idempotency_key`] on the response gives the key to send the request again with;
//! - **never retried**: any other status (400, 422 `key-reused`, 500, …), errors from other
//!   middleware, and requests the middleware cannot safely repeat (see below);
//! - **backoff**: exponential with full jitter: before retry `n` (from 0) it sleeps a random
//!   duration in `[0, min(max_delay, base_delay · 2ⁿ)]`, unless the response carried
//!   `Retry-After` (seconds or an HTTP date), which is honoured instead;
//! - **bounded**: at most [`max_attempts`](IdempotencyMiddleware::max_attempts) attempts, all
//!   within a total [`deadline`](IdempotencyMiddleware::deadline). A wait that would reach the
//!   deadline is not started: the last answer (or error) is returned at once. An attempt still
//!   running at the deadline is abandoned with [`RetryError::DeadlineExceeded`].
//!
//! What is retried: requests carrying a key (their own or one the middleware added), and requests
//! whose method is idempotent by definition (GET, HEAD, OPTIONS, TRACE, PUT, DELETE). A POST
//! without a key whose method is not in [`methods`](IdempotencyMiddleware::methods) is sent once.
//!
//! Retrying needs a body that can be sent again ([`reqwest::Request::try_clone`]): bytes, strings,
//! JSON and forms can; a streaming body cannot, so such a request is sent exactly once (it still
//! gets its key).
//!
//! The final response carries what happened: [`was_replayed`] (the server answered from its
//! record: `Idempotent-Replayed: true`), [`idempotency_key`] (the key every attempt carried) and
//! [`attempts`].
//!
//! ```no_run
//! use std::time::Duration;
//! use idemgate_client::{attempts, idempotency_key, was_replayed, IdempotencyMiddleware};
//!
//! # async fn run() -> Result<(), reqwest_middleware::Error> {
//! let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
//!     .with(
//!         IdempotencyMiddleware::new()
//!             .max_attempts(5)
//!             .base_delay(Duration::from_millis(100))
//!             .max_delay(Duration::from_secs(5))
//!             .deadline(Duration::from_secs(30)),
//!     )
//!     .build();
//! let resp = client
//!     .post("http://127.0.0.1:3000/charges")
//!     .header("content-type", "application/json")
//!     .body(r#"{"amount":1999,"currency":"usd","customer":"cus_1"}"#)
//!     .send()
//!     .await?;
//! println!(
//!     "{} after {:?} attempt(s), key {:?}, replayed: {}",
//!     resp.status(),
//!     attempts(&resp),
//!     idempotency_key(&resp),
//!     was_replayed(&resp),
//! );
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

mod retry_after;

use std::fmt;
use std::time::{Duration, SystemTime};

use http::{Extensions, HeaderName, HeaderValue, Method, StatusCode};
use reqwest::{Request, Response};
use reqwest_middleware::{Middleware, Next};
use tokio::time::Instant;

pub use retry_after::parse_retry_after;

/// The header a replayed response carries (`Idempotent-Replayed: true`).
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

/// The default key header, `Idempotency-Key`.
pub const DEFAULT_KEY_HEADER: &str = "idempotency-key";

/// [`IdempotencyMiddleware::buffer_limit`]'s default.
const DEFAULT_BUFFER_LIMIT: u64 = 1 << 20;

/// What the middleware attaches to the final response's extensions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyOutcome {
    /// The key every attempt carried (`None` for a request sent without one, e.g. a GET).
    pub key: Option<String>,
    /// How many attempts were made, this response's included (1 when it was not retried).
    pub attempts: u32,
}

/// Returned (inside [`reqwest_middleware::Error::Middleware`]) when the middleware stopped
/// waiting for an answer; downcast it with `anyhow::Error::downcast_ref`.
///
/// The request may or may not have been executed; retrying later with the same key is safe
/// against a server that honours idempotency keys.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RetryError {
    /// The total deadline passed while an attempt was waiting for its response, or left no time
    /// for another attempt after a timed-out one.
    #[error("idempotency retry deadline of {deadline:?} exceeded after {attempts} attempt(s)")]
    DeadlineExceeded {
        /// The key the attempts carried.
        key: Option<String>,
        /// Attempts made, the abandoned one included.
        attempts: u32,
        /// The configured total deadline.
        deadline: Duration,
    },
    /// The last allowed attempt hit the per-attempt timeout.
    #[error("attempt {attempts} timed out after {timeout:?}; no attempts left")]
    AttemptTimedOut {
        /// The key the attempts carried.
        key: Option<String>,
        /// Attempts made.
        attempts: u32,
        /// The configured per-attempt timeout.
        timeout: Duration,
    },
}

impl RetryError {
    /// The key the attempts carried.
    pub fn key(&self) -> Option<&str> {
        match self {
            RetryError::DeadlineExceeded { key, .. } | RetryError::AttemptTimedOut { key, .. } => key.as_deref(),
        }
    }

    /// Attempts made.
    pub fn attempts(&self) -> u32 {
        match self {
            RetryError::DeadlineExceeded { attempts, .. } | RetryError::AttemptTimedOut { attempts, .. } => *attempts,
        }
    }
}

/// True when the server answered from its idempotency record (`Idempotent-Replayed: true`).
///
/// ```
/// let replay = http::Response::builder()
///     .status(201)
///     .header("idempotent-replayed", "true")
///     .body("{}")
///     .unwrap();
/// assert!(idemgate_client::was_replayed(&reqwest::Response::from(replay)));
///
/// let first = http::Response::builder().status(201).body("{}").unwrap();
/// assert!(!idemgate_client::was_replayed(&reqwest::Response::from(first)));
/// ```
pub fn was_replayed(resp: &Response) -> bool {
    resp.headers()
        .get(REPLAYED_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// The idempotency key the request carried on every attempt, when it went through
/// [`IdempotencyMiddleware`] with one.
pub fn idempotency_key(resp: &Response) -> Option<&str> {
    resp.extensions()
        .get::<IdempotencyOutcome>()
        .and_then(|o| o.key.as_deref())
}

/// How many attempts the middleware made for this response (`None` if it did not handle it).
pub fn attempts(resp: &Response) -> Option<u32> {
    resp.extensions().get::<IdempotencyOutcome>().map(|o| o.attempts)
}

/// The middleware: adds idempotency keys and retries (see the [crate documentation](crate)).
#[derive(Clone)]
pub struct IdempotencyMiddleware {
    max_attempts: u32,
    base_delay: Duration,
    max_delay: Duration,
    deadline: Duration,
    attempt_timeout: Option<Duration>,
    key_header: HeaderName,
    methods: Vec<Method>,
    retry_statuses: Vec<StatusCode>,
    buffer_limit: u64,
}

impl fmt::Debug for IdempotencyMiddleware {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyMiddleware")
            .field("max_attempts", &self.max_attempts)
            .field("base_delay", &self.base_delay)
            .field("max_delay", &self.max_delay)
            .field("deadline", &self.deadline)
            .field("attempt_timeout", &self.attempt_timeout)
            .field("key_header", &self.key_header)
            .field("methods", &self.methods)
            .field("retry_statuses", &self.retry_statuses)
            .field("buffer_limit", &self.buffer_limit)
            .finish()
    }
}

impl Default for IdempotencyMiddleware {
    fn default() -> Self {
        Self::new()
    }
}

impl IdempotencyMiddleware {
    /// The defaults: 5 attempts, 100 ms base delay, 5 s maximum delay, 30 s total deadline, no
    /// per-attempt timeout (the client's own applies), keys in `Idempotency-Key` on POST and PATCH,
    /// retrying 409, 429, 502, 503 and 504.
    pub fn new() -> Self {
        Self {
            max_attempts: 5,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
            deadline: Duration::from_secs(30),
            attempt_timeout: None,
            key_header: HeaderName::from_static(DEFAULT_KEY_HEADER),
            methods: vec![Method::POST, Method::PATCH],
            retry_statuses: vec![
                StatusCode::CONFLICT,
                StatusCode::TOO_MANY_REQUESTS,
                StatusCode::BAD_GATEWAY,
                StatusCode::SERVICE_UNAVAILABLE,
                StatusCode::GATEWAY_TIMEOUT,
            ],
            buffer_limit: DEFAULT_BUFFER_LIMIT,
        }
    }

    /// At most `n` attempts in all, the first included (`0` counts as `1`: no retries).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }

    /// The backoff's base: retry `n` (from 0) waits up to `base · 2ⁿ`.
    pub fn base_delay(mut self, d: Duration) -> Self {
        self.base_delay = d;
        self
    }

    /// The longest backoff wait (before jitter). `Retry-After` is not capped by it, only by the
    /// deadline.
    pub fn max_delay(mut self, d: Duration) -> Self {
        self.max_delay = d;
        self
    }

    /// The total time allowed for all attempts and waits together.
    pub fn deadline(mut self, d: Duration) -> Self {
        self.deadline = d;
        self
    }

    /// Abandon one attempt after `d` and retry it (as a timeout), within the total deadline.
    pub fn attempt_timeout(mut self, d: Duration) -> Self {
        self.attempt_timeout = Some(d);
        self
    }

    /// The header carrying the key (default `Idempotency-Key`).
    pub fn key_header(mut self, name: HeaderName) -> Self {
        self.key_header = name;
        self
    }

    /// The methods that get a key when they have none (default POST and PATCH).
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.methods = methods.into_iter().collect();
        self
    }

    /// The response statuses that are retried (default 409, 429, 502, 503, 504). Other statuses
    /// are returned as they are.
    pub fn retry_statuses(mut self, statuses: impl IntoIterator<Item = StatusCode>) -> Self {
        self.retry_statuses = statuses.into_iter().collect();
        self
    }

    /// Responses to retryable requests whose `Content-Length` is at most `bytes` (default
    /// 1 MiB) are read whole before they are returned, so that a body cut off on the way is
    /// retried with the same key like any transport error. Larger responses, and those without
    /// a length, stream to the caller as they come (a cut is then the caller's to retry, with
    /// [`idempotency_key`]). `0` turns buffering off.
    pub fn buffer_limit(mut self, bytes: u64) -> Self {
        self.buffer_limit = bytes;
        self
    }

    /// The wait before retry number `retry` (from 0), without `Retry-After`: full jitter.
    fn backoff(&self, retry: u32) -> Duration {
        let factor = 2u32.saturating_pow(retry.min(31));
        let cap = self.base_delay.saturating_mul(factor).min(self.max_delay);
        let nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(fastrand::u64(0..=nanos))
    }
}

/// Methods a client may repeat without a key (RFC 9110 §9.2.2).
fn idempotent_method(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Attaches the outcome to the final response.
fn tag(mut resp: Response, key: &Option<String>, attempts: u32) -> Response {
    resp.extensions_mut().insert(IdempotencyOutcome {
        key: key.clone(),
        attempts,
    });
    resp
}

/// `resp` with its body read whole: the same status, version, headers, URL and extensions, or
/// the error that cut the body off.
async fn buffered(mut resp: Response) -> Result<Response, reqwest::Error> {
    use reqwest::ResponseBuilderExt as _;
    let (status, version, url) = (resp.status(), resp.version(), resp.url().clone());
    let headers = std::mem::take(resp.headers_mut());
    let extensions = std::mem::take(resp.extensions_mut());
    let body = resp.bytes().await?;
    let mut rebuilt = http::Response::new(body);
    *rebuilt.status_mut() = status;
    *rebuilt.version_mut() = version;
    *rebuilt.headers_mut() = headers;
    *rebuilt.extensions_mut() = extensions;
    // The URL travels as an extension that only reqwest's builder can set.
    let with_url = http::Response::builder()
        .url(url)
        .body(())
        .map(|r| r.into_parts().0.extensions);
    if let Ok(ext) = with_url {
        rebuilt.extensions_mut().extend(ext);
    }
    Ok(Response::from(rebuilt))
}

/// Whether a reqwest error is a transport failure or a timeout (worth a retry): a body cut off
/// (a decode error of a buffered body) included.
fn transient(e: &reqwest_middleware::Error) -> bool {
    match e {
        reqwest_middleware::Error::Reqwest(e) => {
            e.is_connect() || e.is_timeout() || e.is_request() || e.is_body() || e.is_decode()
        }
        reqwest_middleware::Error::Middleware(_) => false,
    }
}

#[async_trait::async_trait]
impl Middleware for IdempotencyMiddleware {
    async fn handle(
        &self,
        mut req: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        let start = Instant::now();
        // `deadline(Duration::MAX)` means no deadline: an instant too far to represent is
        // replaced by one thirty years on, as tokio does for its own far-off timers.
        let deadline_at = start
            .checked_add(self.deadline)
            .unwrap_or_else(|| start + Duration::from_secs(30 * 365 * 86_400));

        let key = match req.headers().get(&self.key_header) {
            Some(v) => Some(String::from_utf8_lossy(v.as_bytes()).into_owned()),
            None if self.methods.contains(req.method()) => {
                let key = uuid::Uuid::new_v4().to_string();
                match HeaderValue::from_str(&key) {
                    Ok(v) => {
                        req.headers_mut().insert(self.key_header.clone(), v);
                        Some(key)
                    }
                    Err(_) => None,
                }
            }
            None => None,
        };
        let retryable = key.is_some() || idempotent_method(req.method());

        let mut attempt: u32 = 0;
        let mut spare = req;
        loop {
            attempt += 1;
            let copy = if retryable && attempt < self.max_attempts {
                spare.try_clone()
            } else {
                None
            };
            let (to_send, spare_next) = match copy {
                Some(c) => (c, Some(spare)),
                None => (spare, None),
            };

            let now = Instant::now();
            let remaining = deadline_at.saturating_duration_since(now);
            let limit = self.attempt_timeout.map_or(remaining, |t| t.min(remaining));
            let result = match tokio::time::timeout(limit, next.clone().run(to_send, extensions)).await {
                Ok(r) => r,
                Err(_) => {
                    let deadline_err = |key| {
                        reqwest_middleware::Error::middleware(RetryError::DeadlineExceeded {
                            key,
                            attempts: attempt,
                            deadline: self.deadline,
                        })
                    };
                    if Instant::now() >= deadline_at {
                        return Err(deadline_err(key));
                    }
                    // The per-attempt timeout: treated like a transport timeout.
                    let Some(s) = spare_next else {
                        return Err(reqwest_middleware::Error::middleware(RetryError::AttemptTimedOut {
                            key,
                            attempts: attempt,
                            timeout: limit,
                        }));
                    };
                    tracing::debug!(attempt, "attempt timed out; retrying");
                    spare = s;
                    if !sleep_within(self.backoff(attempt - 1), deadline_at).await {
                        return Err(deadline_err(key));
                    }
                    continue;
                }
            };

            // A final answer that can still be retried is read whole first (`buffer_limit`), so
            // that a body cut off on the way is retried like any transport error.
            let result = match result {
                Ok(resp)
                    if spare_next.is_some()
                        && !self.retry_statuses.contains(&resp.status())
                        && resp.content_length().is_some_and(|n| n <= self.buffer_limit) =>
                {
                    let remaining = deadline_at.saturating_duration_since(Instant::now());
                    match tokio::time::timeout(remaining, buffered(resp)).await {
                        Ok(Ok(resp)) => return Ok(tag(resp, &key, attempt)),
                        Ok(Err(e)) => Err(reqwest_middleware::Error::Reqwest(e)),
                        Err(_) => {
                            return Err(reqwest_middleware::Error::middleware(RetryError::DeadlineExceeded {
                                key,
                                attempts: attempt,
                                deadline: self.deadline,
                            }))
                        }
                    }
                }
                other => other,
            };
            let wait = match &result {
                Ok(resp) if self.retry_statuses.contains(&resp.status()) => resp
                    .headers()
                    .get(http::header::RETRY_AFTER)
                    .and_then(|v| parse_retry_after(v.as_bytes(), SystemTime::now()))
                    .unwrap_or_else(|| self.backoff(attempt - 1)),
                Ok(_) => return result.map(|r| tag(r, &key, attempt)),
                Err(e) if transient(e) => self.backoff(attempt - 1),
                Err(_) => return result,
            };
            let Some(s) = spare_next else {
                return result.map(|r| tag(r, &key, attempt));
            };
            if !sleep_within(wait, deadline_at).await {
                tracing::debug!(attempt, ?wait, "next wait would pass the deadline; giving up");
                return result.map(|r| tag(r, &key, attempt));
            }
            match &result {
                Ok(resp) => tracing::debug!(attempt, status = resp.status().as_u16(), "retrying"),
                Err(e) => tracing::debug!(attempt, error = %e, "retrying"),
            }
            // The previous response is dropped here, releasing its connection.
            drop(result);
            spare = s;
        }
    }
}

/// Sleeps `wait` if that ends before `deadline` (leaving time for an attempt); false otherwise.
async fn sleep_within(wait: Duration, deadline: Instant) -> bool {
    // A `Retry-After` of 10²⁰ seconds saturates to `u64::MAX` seconds: too far for an instant.
    let Some(wake) = Instant::now().checked_add(wait) else {
        return false;
    };
    if wake >= deadline {
        return false;
    }
    tokio::time::sleep_until(wake).await;
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_full_jitter_under_the_cap() {
        let m = IdempotencyMiddleware::new()
            .base_delay(Duration::from_millis(10))
            .max_delay(Duration::from_millis(50));
        for retry in 0..40 {
            let cap = Duration::from_millis(10 * 2u64.pow(retry.min(20))).min(Duration::from_millis(50));
            for _ in 0..50 {
                assert!(m.backoff(retry) <= cap, "retry {retry}");
            }
        }
        // Full jitter: values spread over the range, not clustered at the cap.
        let samples: Vec<_> = (0..200).map(|_| m.backoff(10)).collect();
        assert!(samples.iter().any(|d| *d < Duration::from_millis(25)));
        assert!(samples.iter().any(|d| *d > Duration::from_millis(25)));
    }

    #[test]
    fn max_attempts_is_at_least_one() {
        assert_eq!(IdempotencyMiddleware::new().max_attempts(0).max_attempts, 1);
    }

    #[test]
    fn idempotent_methods() {
        assert!(idempotent_method(&Method::GET));
        assert!(idempotent_method(&Method::PUT));
        assert!(!idempotent_method(&Method::POST));
        assert!(!idempotent_method(&Method::PATCH));
    }
}
