//! [`Idempotency`]: the service that applies the rules to each request.
//!
//! For a protected request (method and route protected, key present and valid):
//! 1. buffer the body (at most `max_body`, else 413) and fingerprint the request;
//! 2. claim `(scope, key)` in the store — one round trip;
//! 3. on a completed record: replay it if the fingerprint matches (`Idempotent-Replayed: true`),
//!    else 422; on an in-flight record: 422 if the fingerprint differs, else 409 with
//!    `Retry-After` (or wait for it with `wait_in_flight`). A fingerprint mismatch takes
//!    precedence over 409 because no retry can fix it;
//! 4. on an acquired claim: forward, buffer the response (at most `max_response`) and record it —
//!    one more round trip — before it leaves; or release the key when the response says nothing
//!    was done (a release status such as 429/503, or an unreachable upstream) or cannot be stored
//!    (too large, an event stream). An unknown outcome (timeout, connection cut) keeps the key
//!    locked until its lease ends.

use std::borrow::Cow;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::BodyExt;
use idemgate_core::{
    parse_key, Claim, ClaimRequest, CompleteError, FencingToken, RecordId, StoreError, StoredResponse,
};
use tokio::time::Instant;
use tower_service::Service;

use crate::body::{RequestBody, ResponseBody};
use crate::config::{OnStoreError, Policy, ScopeSource};
use crate::future::{Detach, DetachedTasks, ResponseFuture};
use crate::http_util::strip_hop_by_hop;
use crate::layer::Shared;
use crate::metrics::{secs, Outcome};
use crate::problem::Problem;
use crate::{BoxError, REPLAYED_HEADER};

/// How an inner service reports that a request failed, and whether it was executed.
///
/// The layer looks for this type in the inner service's error (and its sources). Any other error
/// is treated as [`UpstreamError::Failed`]: the outcome is unknown.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The request never reached the upstream (connection refused): the key is released.
    #[error("upstream not reached: {0}")]
    NotExecuted(#[source] BoxError),
    /// No answer in time: the outcome is unknown, the key stays locked until its lease ends.
    #[error("upstream timed out after {0:?}")]
    Timeout(Duration),
    /// The exchange broke after the request was sent: the outcome is unknown.
    #[error("upstream exchange failed: {0}")]
    Failed(#[source] BoxError),
}

/// The idempotency middleware (see [`crate::IdempotencyLayer`]).
#[derive(Clone, Debug)]
pub struct Idempotency<S> {
    pub(crate) inner: S,
    pub(crate) shared: Arc<Shared>,
}

type Reply<B> = Response<ResponseBody<B>>;

impl<S, ReqB, ResB> Service<Request<ReqB>> for Idempotency<S>
where
    S: Service<Request<RequestBody<ReqB>>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError> + Send + 'static,
    ReqB: Body<Data = Bytes> + Send + 'static,
    ReqB::Error: Into<BoxError>,
    ResB: Body<Data = Bytes> + Send + Unpin + 'static,
    ResB::Error: Into<BoxError> + Send,
{
    type Response = Reply<ResB>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResB, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let start = Instant::now();
        let shared = &self.shared;
        let policy = shared.policies.for_path(req.uri().path());
        if !policy.protects(req.method()) {
            return self.passthrough(req, start);
        }
        shared.purger.start(&shared.store, &shared.config);
        let mut keys = req.headers().get_all(&shared.config.key_header).iter();
        let key = match (keys.next(), keys.next()) {
            (None, _) if policy.require_key => return self.refuse(&req, Problem::MissingKey, start),
            (None, _) => return self.passthrough(req, start),
            (Some(_), Some(_)) => return self.refuse(&req, Problem::MultipleKeys, start),
            (Some(v), None) => match parse_key(v.as_bytes()) {
                Ok(k) => k,
                Err(e) => return self.refuse(&req, Problem::InvalidKey(e.to_string()), start),
            },
        };
        let too_large = content_length(req.headers()).is_some_and(|n| n > shared.config.max_body as u64);
        if too_large {
            let limit = shared.config.max_body;
            return self.refuse(&req, Problem::PayloadTooLarge { limit }, start);
        }
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let job = Protected {
            shared: self.shared.clone(),
            policy: policy.clone(),
            inner,
        };
        // Polled on the connection's task; finished on a task of its own if the client goes away
        // (see `Detach`), so a disconnect cannot cancel it between the claim and the outcome.
        let run = async move {
            let (parts, body) = req.into_parts();
            let scope = scope_bytes(&job.shared.config.scope, &parts);
            let id = job.shared.hasher.record_id(&scope, &key);
            drop(scope);
            let method = parts.method.clone();
            let uri = parts.uri.clone();
            let mut job = job;
            let (resp, outcome) = job.run(parts, body, id).await?;
            job.shared.metrics.outcome(outcome);
            log_request(&method, uri.path(), outcome, resp.status(), start);
            Ok(resp)
        };
        // Combinators rather than an `async` block around `run`: the block would move the whole
        // state machine (about 1.8 KB) once more when first polled.
        let guarded = AssertUnwindSafe(run).catch_unwind().map(|caught| match caught {
            Ok(result) => result,
            Err(_) => {
                // Before its claim (a panic after it is caught in `Protected::run`): no key held.
                tracing::error!("protected request panicked before claiming its key");
                Ok(Problem::UpstreamFailed { retry_after_secs: 1 }.into_response())
            }
        });
        ResponseFuture::managed(Detach::new(Box::pin(guarded), self.shared.clone()))
    }
}

impl<S> Idempotency<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably (a server sets per-connection state on its clone).
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The exchanges that went on without their client (it hung up after the claim): a server
    /// waits for [`DetachedTasks::idle`] at shutdown so that they record their outcomes.
    pub fn detached(&self) -> DetachedTasks {
        self.shared.detached.clone()
    }

    fn passthrough<ReqB, ResB>(
        &mut self,
        req: Request<ReqB>,
        start: Instant,
    ) -> ResponseFuture<S::Future, ResB, S::Error>
    where
        S: Service<Request<RequestBody<ReqB>>, Response = Response<ResB>>,
    {
        let method = req.method().clone();
        let uri = req.uri().clone();
        let fut = self.inner.call(req.map(|body| RequestBody::Stream { body }));
        ResponseFuture::passthrough(fut, self.shared.clone(), method, uri, start)
    }

    fn refuse<ReqB, F, ResB, E>(
        &self,
        req: &Request<ReqB>,
        problem: Problem,
        start: Instant,
    ) -> ResponseFuture<F, ResB, E> {
        let resp = problem.into_response();
        self.shared.metrics.outcome(Outcome::Invalid);
        log_request(req.method(), req.uri().path(), Outcome::Invalid, resp.status(), start);
        ResponseFuture::ready(resp)
    }
}

/// The state of one protected request.
struct Protected<S> {
    shared: Arc<Shared>,
    policy: Arc<Policy>,
    inner: S,
}

impl<S> Protected<S> {
    async fn run<ReqB, ResB>(
        &mut self,
        parts: http::request::Parts,
        body: ReqB,
        id: RecordId,
    ) -> Result<(Reply<ResB>, Outcome), S::Error>
    where
        S: Service<Request<RequestBody<ReqB>>, Response = Response<ResB>>,
        S::Error: Into<BoxError>,
        ReqB: Body<Data = Bytes>,
        ReqB::Error: Into<BoxError>,
        ResB: Body<Data = Bytes> + Unpin,
        ResB::Error: Into<BoxError> + Send,
    {
        let shared = self.shared.clone();
        let cfg = &shared.config;
        let body = match read_body(body, cfg.max_body, content_length(&parts.headers)).await {
            Ok(body) => body,
            Err(ReadError::TooLarge) => {
                return Ok(problem(
                    Problem::PayloadTooLarge { limit: cfg.max_body },
                    Outcome::Invalid,
                ));
            }
            Err(ReadError::Unreadable) => return Ok(problem(Problem::UnreadableBody, Outcome::Invalid)),
        };
        let fingerprint = self
            .policy
            .fingerprint
            .fingerprint(&parts.method, &parts.uri, &parts.headers, &body);
        let wait_until = self.policy.wait_in_flight.map(|d| Instant::now() + d);
        let mut waiting = None;
        let mut poll = Duration::from_millis(5);
        loop {
            // Arm the wake-up before looking, so a completion in between is not missed.
            let notify = waiting.as_ref().map(|w: &crate::waiters::Waiting<'_>| w.notify.clone());
            let mut notified = notify.as_ref().map(|n| Box::pin(n.notified()));
            if let Some(n) = notified.as_mut() {
                n.as_mut().enable();
            }
            let t = Instant::now();
            let claim = self
                .shared
                .store
                .claim(ClaimRequest {
                    id,
                    fingerprint,
                    now_ms: (cfg.clock.0)(),
                    lease_ms: self.policy.lease_ms,
                })
                .await;
            let claimed = Instant::now();
            self.shared.metrics.store_claim.record(secs(claimed - t));
            match claim {
                Ok(Claim::Acquired { token, takeover }) => {
                    if takeover {
                        tracing::info!(record = ?id, "took over a key whose lease had expired");
                    }
                    drop(waiting);
                    let req = Request::from_parts(parts, RequestBody::full(body));
                    // Boxed: this future is moved (copied) with every protected request, replays
                    // included, and the execution's state is most of its size.
                    let executed = AssertUnwindSafe(Box::pin(self.execute(req, id, token, t, claimed)))
                        .catch_unwind()
                        .await;
                    return Ok(executed.unwrap_or_else(|_| {
                        // The operation may have taken effect: the key stays locked for its lease.
                        tracing::error!(record = ?id, "protected request panicked after claiming its key; the key stays locked until its lease ends");
                        let retry_after_secs = self.policy.lease_ms.div_ceil(1000).max(1);
                        problem(Problem::UpstreamFailed { retry_after_secs }, Outcome::UpstreamError)
                    }));
                }
                Ok(Claim::Completed { fingerprint: f, .. }) | Ok(Claim::InFlight { fingerprint: f, .. })
                    if !self.policy.fingerprint.matches(
                        f,
                        fingerprint,
                        (&parts.method, &parts.uri, &parts.headers, &body),
                    ) =>
                {
                    return Ok(problem(Problem::KeyReused, Outcome::Mismatch));
                }
                Ok(Claim::Completed { response, .. }) => return Ok(replay(&response)),
                Ok(Claim::InFlight { .. }) => {
                    let conflict = || problem(Problem::Conflict { retry_after_secs: 1 }, Outcome::Conflict);
                    let Some(until) = wait_until else { return Ok(conflict()) };
                    let now = Instant::now();
                    if now >= until {
                        return Ok(conflict());
                    }
                    match (&waiting, notified) {
                        (None, _) => match shared.waiters.register(id) {
                            // Registered: look again with the wake-up armed.
                            Some(w) => waiting = Some(w),
                            None => return Ok(conflict()),
                        },
                        (Some(_), Some(n)) => {
                            let _ = tokio::time::timeout(poll.min(until - now), n).await;
                            poll = (poll * 2).min(Duration::from_millis(100));
                        }
                        (Some(_), None) => {}
                    }
                }
                Err(StoreError::Full { .. } | StoreError::OutOfSpace(_)) => {
                    return Ok(problem(Problem::StoreFull, Outcome::StoreError));
                }
                Err(e) => {
                    tracing::warn!(error = %e, store = self.shared.store.kind(), "store claim failed");
                    if cfg.on_store_error == OnStoreError::Closed {
                        return Ok(problem(Problem::StoreUnavailable, Outcome::StoreError));
                    }
                    let req = Request::from_parts(parts, RequestBody::full(body));
                    return Ok(match self.inner.call(req).await {
                        Ok(resp) => (resp.map(ResponseBody::stream), Outcome::StoreError),
                        Err(e) => (upstream_problem(&*e.into()).into_response(), Outcome::StoreError),
                    });
                }
            }
        }
    }

    /// Forwards the request this claim owns (asked for at `lease_start`, the time the stored
    /// lease counts from or later; granted at `started`) and records (or releases) its outcome.
    async fn execute<ReqB, ResB>(
        &mut self,
        req: Request<RequestBody<ReqB>>,
        id: RecordId,
        token: FencingToken,
        lease_start: Instant,
        started: Instant,
    ) -> (Reply<ResB>, Outcome)
    where
        S: Service<Request<RequestBody<ReqB>>, Response = Response<ResB>>,
        S::Error: Into<BoxError>,
        ResB: Body<Data = Bytes> + Unpin,
        ResB::Error: Into<BoxError> + Send,
    {
        // From before the claim, as the stored lease: a slow claim shortens the time this
        // request may run rather than letting it outlive its lease, when a retry may take over.
        let lease_end = lease_start + Duration::from_millis(self.policy.lease_ms);
        let lock_secs = self.policy.lease_ms.div_ceil(1000).max(1);
        let resp = match self.inner.call(req).await {
            Ok(resp) => resp,
            Err(e) => {
                let e: BoxError = e.into();
                return match find_upstream_error(&*e) {
                    Some(UpstreamError::NotExecuted(_)) => {
                        tracing::warn!(error = %e, "upstream not reached; key released");
                        release(&self.shared, id, token).await;
                        problem(Problem::UpstreamUnavailable, Outcome::Released)
                    }
                    Some(UpstreamError::Timeout(_)) => {
                        tracing::warn!(error = %e, "upstream timed out; key stays locked until its lease ends");
                        problem(
                            Problem::UpstreamTimeout {
                                retry_after_secs: lock_secs,
                            },
                            Outcome::UpstreamError,
                        )
                    }
                    _ => {
                        tracing::warn!(error = %e, "upstream failed; key stays locked until its lease ends");
                        problem(
                            Problem::UpstreamFailed {
                                retry_after_secs: lock_secs,
                            },
                            Outcome::UpstreamError,
                        )
                    }
                };
            }
        };
        let (mut rparts, mut rbody) = resp.into_parts();
        strip_hop_by_hop(&mut rparts.headers);
        if self.policy.release_statuses.contains(&rparts.status) {
            release(&self.shared, id, token).await;
            return (
                Response::from_parts(rparts, ResponseBody::stream(rbody)),
                Outcome::Released,
            );
        }
        if is_streamed(&rparts.headers, &self.shared.config.stream_content_types) {
            tracing::info!(record = ?id, "streamed response passed through, not stored; key released");
            self.shared.metrics.not_stored_event_stream.increment(1);
            release(&self.shared, id, token).await;
            return (
                Response::from_parts(rparts, ResponseBody::stream(rbody)),
                Outcome::Released,
            );
        }
        let max = self.shared.config.max_response;
        let hint = content_length(&rparts.headers);
        if hint.is_some_and(|n| n > max as u64) {
            return pass_too_large(&self.shared, rparts, None, rbody, id, token).await;
        }
        let mut builder = StoredResponse::builder(rparts.status, &rparts.headers, |_| true, hint.unwrap_or(0) as usize);
        loop {
            let frame = match tokio::time::timeout_at(lease_end, rbody.frame()).await {
                Ok(frame) => frame,
                Err(_) => {
                    tracing::warn!("upstream response body not finished within the lock timeout");
                    return problem(Problem::UpstreamTimeout { retry_after_secs: 1 }, Outcome::UpstreamError);
                }
            };
            let data = match frame {
                None => break,
                // Trailers are not stored (documented); data frames are.
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => data,
                    Err(_) => continue,
                },
                Some(Err(e)) => {
                    tracing::warn!(error = %e.into(), "upstream response cut mid-body; key stays locked until its lease ends");
                    return problem(
                        Problem::UpstreamFailed {
                            retry_after_secs: lock_secs,
                        },
                        Outcome::UpstreamError,
                    );
                }
            };
            builder.extend_body(&data);
            if builder.body_len() > max {
                let prefix = builder.finish().body();
                return pass_too_large(&self.shared, rparts, Some(prefix), rbody, id, token).await;
            }
        }
        let answered = Instant::now();
        self.shared.metrics.upstream.record(secs(answered - started));
        let stored = builder.finish();
        let body = stored.body();
        let expires_at_ms = (self.shared.config.clock.0)().saturating_add(self.policy.ttl_ms);
        let result = self.shared.store.complete(id, token, stored, expires_at_ms).await;
        self.shared.metrics.store_complete.record(secs(answered.elapsed()));
        match result {
            Ok(()) => self.shared.waiters.wake(&id),
            Err(CompleteError::Fenced) => {
                tracing::warn!(record = ?id, "lease was taken over while executing; this response was not recorded")
            }
            Err(CompleteError::Store(e)) => {
                tracing::error!(record = ?id, error = %e, "could not record the response; the key stays locked until its lease ends")
            }
        }
        (
            Response::from_parts(rparts, ResponseBody::full(body)),
            Outcome::Executed,
        )
    }
}

async fn pass_too_large<ResB>(
    shared: &Shared,
    rparts: http::response::Parts,
    prefix: Option<Bytes>,
    body: ResB,
    id: RecordId,
    token: FencingToken,
) -> (Reply<ResB>, Outcome) {
    tracing::warn!(record = ?id, limit = shared.config.max_response, "response too large to store; passed through and key released");
    shared.metrics.not_stored_too_large.increment(1);
    release(shared, id, token).await;
    (
        Response::from_parts(rparts, ResponseBody::Stream { prefix, body }),
        Outcome::Released,
    )
}

async fn release(shared: &Shared, id: RecordId, token: FencingToken) {
    let t = Instant::now();
    let result = shared.store.release(id, token).await;
    shared.metrics.store_release.record(secs(t.elapsed()));
    match result {
        Ok(_) => shared.waiters.wake(&id),
        Err(e) => {
            tracing::error!(record = ?id, error = %e, "could not release the key; it stays locked until its lease ends")
        }
    }
}

/// Why a request body could not be buffered.
enum ReadError {
    /// More than the limit.
    TooLarge,
    /// The client's body stream failed.
    Unreadable,
}

/// The whole request body, at most `max` bytes (trailers are not kept). A body that arrives as
/// one frame (most do) is that frame's buffer itself; more are joined into one, sized from the
/// declared `Content-Length` when there is one, so that each byte is copied once.
async fn read_body<B>(body: B, max: usize, declared: Option<u64>) -> Result<Bytes, ReadError>
where
    B: Body<Data = Bytes>,
{
    let mut body = std::pin::pin!(body);
    let mut first: Option<Bytes> = None;
    let mut joined: Option<bytes::BytesMut> = None;
    let mut len = 0usize;
    while let Some(frame) = body.as_mut().frame().await {
        let Ok(data) = frame.map_err(|_| ReadError::Unreadable)?.into_data() else {
            continue;
        };
        len = len.saturating_add(data.len());
        if len > max {
            return Err(ReadError::TooLarge);
        }
        match (&mut first, &mut joined) {
            (None, None) => first = Some(data),
            (Some(f), None) => {
                let declared = declared.map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX));
                let mut j = bytes::BytesMut::with_capacity(len.max(declared).max(f.len() * 2).min(max));
                j.extend_from_slice(f);
                j.extend_from_slice(&data);
                joined = Some(j);
            }
            (_, Some(j)) => j.extend_from_slice(&data),
        }
    }
    Ok(match joined {
        Some(j) => j.freeze(),
        None => first.unwrap_or_default(),
    })
}

fn problem<B>(p: Problem, outcome: Outcome) -> (Reply<B>, Outcome) {
    (p.into_response(), outcome)
}

fn replay<B>(stored: &StoredResponse) -> (Reply<B>, Outcome) {
    let Ok(mut headers) = stored.headers_with_room(1) else {
        tracing::error!("stored response is corrupt; answering 503");
        return problem(Problem::StoreUnavailable, Outcome::StoreError);
    };
    headers.insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    let mut resp = Response::new(ResponseBody::full(stored.body()));
    *resp.status_mut() = stored.status();
    *resp.headers_mut() = headers;
    (resp, Outcome::Replayed)
}

/// The problem for an inner-service error on a request whose key is not held.
pub(crate) fn upstream_problem(e: &(dyn std::error::Error + 'static)) -> Problem {
    match find_upstream_error(e) {
        Some(UpstreamError::NotExecuted(_)) => Problem::UpstreamUnavailable,
        Some(UpstreamError::Timeout(_)) => Problem::UpstreamTimeout { retry_after_secs: 1 },
        _ => Problem::UpstreamFailed { retry_after_secs: 1 },
    }
}

fn find_upstream_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a UpstreamError> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(u) = err.downcast_ref::<UpstreamError>() {
            return Some(u);
        }
        cur = err.source();
    }
    None
}

fn content_length(h: &http::HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// Whether the response's media type is one that is streamed through (`stream_content_types`).
fn is_streamed(h: &http::HeaderMap, types: &[String]) -> bool {
    let Some(value) = h.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let media = value.split(';').next().unwrap_or_default().trim();
    types.iter().any(|t| t.eq_ignore_ascii_case(media))
}

/// The caller identity a key is scoped to.
fn scope_bytes<'a>(source: &ScopeSource, parts: &'a http::request::Parts) -> Cow<'a, [u8]> {
    match source {
        ScopeSource::Header(name) => idemgate_core::header_scope(parts.headers.get_all(name)),
        ScopeSource::Custom(f) => Cow::Owned(f(parts).map(idemgate_core::custom_scope).unwrap_or_default()),
        ScopeSource::Global => Cow::Borrowed(&[]),
    }
}

pub(crate) fn log_request(method: &http::Method, path: &str, outcome: Outcome, status: StatusCode, start: Instant) {
    tracing::info!(
        target: "idemgate::request",
        method = %method,
        path,
        status = status.as_u16(),
        outcome = outcome.as_str(),
        micros = start.elapsed().as_micros() as u64,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Frame;
    use http_body_util::StreamBody;

    fn frames(parts: Vec<Result<&'static [u8], &'static str>>) -> impl Body<Data = Bytes> {
        StreamBody::new(futures_util::stream::iter(
            parts
                .into_iter()
                .map(|p| p.map(|b| Frame::data(Bytes::from_static(b))).map_err(BoxError::from)),
        ))
    }

    #[tokio::test]
    async fn bodies_are_read_whole_within_the_limit() {
        let one = read_body(frames(vec![Ok(b"abc")]), 3, None).await.ok().unwrap();
        assert_eq!(&one[..], b"abc");
        let many = read_body(frames(vec![Ok(b"ab"), Ok(b""), Ok(b"cd"), Ok(b"e")]), 5, None)
            .await
            .ok()
            .unwrap();
        assert_eq!(&many[..], b"abcde");
        // A declared length sizes the joined buffer; the result is the same.
        let declared = read_body(frames(vec![Ok(b"ab"), Ok(b"cd"), Ok(b"e")]), 9, Some(5))
            .await
            .ok()
            .unwrap();
        assert_eq!(&declared[..], b"abcde");
        assert!(read_body(frames(vec![]), 0, None).await.ok().unwrap().is_empty());
        assert!(matches!(
            read_body(frames(vec![Ok(b"ab"), Ok(b"cd")]), 3, None).await,
            Err(ReadError::TooLarge)
        ));
        assert!(matches!(
            read_body(frames(vec![Ok(b"abcd")]), 3, None).await,
            Err(ReadError::TooLarge)
        ));
        assert!(matches!(
            read_body(frames(vec![Ok(b"ab"), Err("reset")]), 9, None).await,
            Err(ReadError::Unreadable)
        ));
    }
}
