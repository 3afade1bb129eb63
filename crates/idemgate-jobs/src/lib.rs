//! Run-once jobs: run an async function at most once per key, record its serialised result, and
//! return that result to every duplicate.
//!
//! For queue consumers whose broker redelivers a message, cron jobs that may start twice on two
//! machines, and webhook handlers that receive the same event again. [`RunOnce`] uses idemgate's
//! engine unchanged: the same [`Store`]s (memory, embedded, Redis, PostgreSQL), the same record
//! state machine, leases and fencing tokens as the HTTP layer.
//!
//! ```
//! use std::sync::Arc;
//! use idemgate_core::MemoryStore;
//! use idemgate_jobs::{Run, RunError, RunOnce};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let jobs = RunOnce::builder(Arc::new(MemoryStore::default()), b"a 32-byte secret, shared by all workers")
//!     .namespace("emails")
//!     .build();
//!
//! let send = || async { Ok::<_, std::io::Error>(String::from("message-id-1")) };
//! let first = jobs.run("welcome-42", &("ada@example.com", 42), send).await.unwrap();
//! assert_eq!(first, Run::Executed("message-id-1".to_string()));
//!
//! // The broker delivers the message again: the function does not run, its result is replayed.
//! let again = jobs
//!     .run("welcome-42", &("ada@example.com", 42), || async {
//!         Ok::<String, std::io::Error>(unreachable!("runs once"))
//!     })
//!     .await
//!     .unwrap();
//! assert!(again.was_replayed());
//! assert_eq!(again.value(), "message-id-1");
//!
//! // The same key with another payload is a caller bug, never a replay.
//! let other = jobs.run("welcome-42", &("bob@example.com", 42), send).await;
//! assert!(matches!(other, Err(RunError::PayloadMismatch)));
//! # }
//! ```
//!
//! # How a run goes
//!
//! 1. The key is checked (1–255 visible ASCII characters, see [`idemgate_core::parse_key`]) and
//!    turned into a record id with a keyed hash of (namespace, key): the store never sees the raw
//!    key, and two job kinds (two namespaces) never share a record.
//! 2. The payload is fingerprinted: SHA-256 of its canonical JSON (serde_json, object keys
//!    sorted). A key reused with another payload is [`RunError::PayloadMismatch`], whether the
//!    first run is finished or still in flight (the mismatch takes precedence: no retry fixes it).
//! 3. One atomic claim in the store. A completed record is replayed ([`Run::Replayed`], or
//!    [`RunError::FailedBefore`] for a recorded permanent failure); an in-flight one answers
//!    [`RunError::InProgress`], or is waited for when [`RunOnceBuilder::wait`] is set.
//! 4. The claim's owner runs the function **in the caller's task** and records the outcome: a
//!    success as its JSON (it lives until the TTL ends); a failure either releases the key so the
//!    job can run again (the default) or is recorded as permanent (see [`RunOnce::run_with`]).
//!
//! # Results in the store
//!
//! Outcomes are stored as [`StoredResponse`]s so every store keeps them unchanged: a success is
//! status 200 with the result's JSON as the body, a permanent failure status 500 with the error's
//! message (its `Display`) as the body.
//!
//! # Failures, panics, cancellation and lost leases
//!
//! - **An error** releases the key by default ([`RunOnce::run`]): the job may run again, so a
//!   transient failure is never cached. [`RunOnce::run_with`] classifies each error as
//!   [`Failure::Retryable`] (released) or [`Failure::Permanent`] (recorded; duplicates get
//!   [`RunError::FailedBefore`] until the TTL ends or the key is [forgotten](RunOnce::forget)).
//! - **A panic** in the function (or while creating its future) continues in the caller and
//!   leaves the key locked until the lock timeout, as a crashed worker would and as the HTTP
//!   layer does: the panic may have come after the job's effect, so it is not run again at once.
//!   After the lock timeout the next duplicate takes the key over. Return an error classified
//!   [`Failure::Retryable`] instead where a failure is known to have done nothing.
//! - **Dropping the future** returned by `run` after the claim (a `tokio::time::timeout` around
//!   it, an aborted task) runs no clean-up: the key stays locked until the lock timeout
//!   ([`RunOnceBuilder::lock_timeout`]) ends, then the next duplicate takes it over. Bound the
//!   function itself if it may hang, and keep the lock timeout above its longest run.
//! - **A lost lease.** When the function outlives the lock timeout, another worker may take the
//!   key over; its fencing token then refuses this worker's outcome. The result is still returned
//!   to the caller (the work was done) and a warning is logged, as in the HTTP layer.
//! - **A store that fails to record** a success: the result is still returned and an error is
//!   logged; the key stays locked until the lock timeout ends. Returning an error instead would
//!   make a queue consumer reject a message whose work was done.
//! - **Store errors before the function runs** fail closed: [`RunError::Store`], nothing runs.
#![deny(missing_docs)]

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use http::{header, HeaderMap, HeaderValue, StatusCode};
use idemgate_core::{
    parse_key, Claim, ClaimRequest, CompleteError, FencingToken, Fingerprint, KeyError, RecordId, ScopeHasher, Store,
    StoreError, StoredResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, OnceCell};
use tokio::time::Instant;

/// The default time a completed record is kept: 24 hours.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);

/// The default lock timeout (lease) of a running job: 60 seconds.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(60);

/// The default namespace.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Domain tag of payload fingerprints.
const FINGERPRINT_TAG: &[u8] = b"idemgate-jobs payload v1\0";

/// Longest pause between two looks at an in-flight record while waiting for it.
const MAX_POLL: Duration = Duration::from_millis(100);

/// The outcome of a successful [`RunOnce::run`]: the function's result, and whether it was
/// computed by this call or replayed from an earlier one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Run<T> {
    /// This call ran the function; this is its result.
    Executed(T),
    /// An earlier call ran the function; this is its recorded result.
    Replayed(T),
}

impl<T> Run<T> {
    /// The result.
    pub fn value(&self) -> &T {
        match self {
            Run::Executed(v) | Run::Replayed(v) => v,
        }
    }

    /// The result, by value.
    pub fn into_value(self) -> T {
        match self {
            Run::Executed(v) | Run::Replayed(v) => v,
        }
    }

    /// True when the result was recorded by an earlier call (the function did not run now).
    pub fn was_replayed(&self) -> bool {
        matches!(self, Run::Replayed(_))
    }
}

/// What a failure of the function means, as decided by the classifier of [`RunOnce::run_with`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Nothing was done, or doing it again is safe: the key is released and the job may run
    /// again (a redelivery executes it).
    Retryable,
    /// Recorded: until the TTL ends, every duplicate gets [`RunError::FailedBefore`] with the
    /// error's message, and the function does not run again.
    Permanent,
}

/// Why [`RunOnce::run`] returned no result. `E` is the function's error type.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError<E> {
    /// The key is not 1–255 visible ASCII characters.
    #[error("invalid job key: {0}")]
    InvalidKey(#[from] KeyError),
    /// The key was used before (or is in use) with a different payload.
    #[error("the job key was used with a different payload")]
    PayloadMismatch,
    /// Another call holds the key and is running the function (or waiting for it took longer
    /// than [`RunOnceBuilder::wait`] allows).
    #[error("the job is running elsewhere; retry after {retry_after:?}")]
    InProgress {
        /// When the other call's lease ends at the latest (the key may be taken over then).
        retry_after: Duration,
    },
    /// The function ran in this call and failed.
    #[error("the job failed: {0}")]
    Failed(E),
    /// The function failed permanently in an earlier call; this is the recorded message.
    #[error("the job failed permanently before: {0}")]
    FailedBefore(String),
    /// The store failed (nothing ran, or the outcome could not be read).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The payload, or the function's result, cannot be serialised as JSON. For a result, the
    /// failure is recorded as permanent: the function ran, so it must not run again.
    #[error("cannot serialise the job's payload or result as JSON: {0}")]
    Encode(#[source] serde_json::Error),
    /// The recorded result cannot be read as the result type `T` (the type changed between
    /// deployments, or another job kind wrote the record).
    #[error("the recorded job result does not decode as this job's result type: {0}")]
    Decode(#[source] serde_json::Error),
}

/// Runs async functions at most once per key (see the crate docs). Cheap to clone: clones share
/// the store, configuration and local waiters.
#[derive(Clone)]
pub struct RunOnce {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    hasher: ScopeHasher,
    namespace: String,
    scope: Vec<u8>,
    ttl_ms: u64,
    lease_ms: u64,
    wait: Option<Duration>,
    secret_checked: OnceCell<()>,
    waiters: Waiters,
}

impl fmt::Debug for RunOnce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunOnce")
            .field("store", &self.inner.store.kind())
            .field("namespace", &self.inner.namespace)
            .field("ttl_ms", &self.inner.ttl_ms)
            .field("lock_timeout_ms", &self.inner.lease_ms)
            .field("wait", &self.inner.wait)
            .finish_non_exhaustive()
    }
}

/// Configures a [`RunOnce`]; made by [`RunOnce::builder`].
#[derive(Debug)]
pub struct RunOnceBuilder {
    store: Arc<dyn Store>,
    hasher: ScopeHasher,
    namespace: String,
    ttl: Duration,
    lock_timeout: Duration,
    wait: Option<Duration>,
}

impl RunOnceBuilder {
    /// The job kind. Keys are scoped by it: `run("42", …)` in namespace `emails` and in namespace
    /// `invoices` are two records. Default [`DEFAULT_NAMESPACE`].
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// How long a completed outcome is kept and replayed; after it the key runs again.
    /// Default [`DEFAULT_TTL`]. Choose it above the longest time a duplicate can arrive (the
    /// broker's redelivery window, the cron overlap). At least 1 ms.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How long a running job holds its key before a duplicate may take it over (after a crash
    /// of its worker). Default [`DEFAULT_LOCK_TIMEOUT`]. Keep it above the function's longest
    /// run: a job outliving it may run twice (see the crate docs on lost leases). At least 1 ms.
    pub fn lock_timeout(mut self, lock_timeout: Duration) -> Self {
        self.lock_timeout = lock_timeout;
        self
    }

    /// What a duplicate does while the key is running elsewhere. `None` (the default): it
    /// returns [`RunError::InProgress`] at once, and a queue consumer typically asks the broker
    /// to redeliver later. `Some(limit)`: it waits up to `limit` for the outcome and returns it
    /// (replayed); if the running call releases the key (a retryable failure) or its lease ends,
    /// the waiting call runs the function itself. Waiting polls the store with a backoff of at
    /// most 100 ms and is woken at once by completions in the same process; it never holds a
    /// store connection while waiting.
    pub fn wait(mut self, limit: Option<Duration>) -> Self {
        self.wait = limit;
        self
    }

    /// The configured [`RunOnce`].
    pub fn build(self) -> RunOnce {
        let scope = idemgate_core::job_scope(&self.namespace);
        RunOnce {
            inner: Arc::new(Inner {
                store: self.store,
                hasher: self.hasher,
                namespace: self.namespace,
                scope,
                ttl_ms: millis(self.ttl),
                lease_ms: millis(self.lock_timeout),
                wait: self.wait,
                secret_checked: OnceCell::new(),
                waiters: Waiters::default(),
            }),
        }
    }
}

/// A duration in whole milliseconds, at least 1.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// How the function's error is handled: `Some(message)` records a permanent failure, `None`
/// releases the key.
type Classify<'a, E> = Box<dyn FnOnce(&E) -> Option<String> + Send + 'a>;

impl RunOnce {
    /// Starts configuring run-once jobs kept in `store`. `secret` keys the hash that turns keys
    /// into record ids: every worker sharing the store must use the same secret (shared stores
    /// refuse another one with [`StoreError::SecretMismatch`] on the first run).
    pub fn builder(store: Arc<dyn Store>, secret: &[u8]) -> RunOnceBuilder {
        RunOnceBuilder {
            store,
            hasher: ScopeHasher::new(secret),
            namespace: DEFAULT_NAMESPACE.to_string(),
            ttl: DEFAULT_TTL,
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
            wait: None,
        }
    }

    /// The namespace (job kind) keys are scoped by.
    pub fn namespace(&self) -> &str {
        &self.inner.namespace
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// Runs `f` unless it already ran for `key`; every error of `f` releases the key, so a failed
    /// job runs again on the next delivery. See [`RunOnce::run_with`] to record permanent
    /// failures instead.
    ///
    /// `payload` is what the job is about (the message body): a duplicate must carry the same
    /// payload, else [`RunError::PayloadMismatch`]. `f` runs in the caller's task; see the crate
    /// docs for panics and cancellation.
    pub async fn run<P, T, E, F, Fut>(&self, key: &str, payload: &P, f: F) -> Result<Run<T>, RunError<E>>
    where
        P: Serialize + ?Sized,
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.run_inner(key, payload, Box::new(|_: &E| None), f).await
    }

    /// Like [`RunOnce::run`], with `classify` deciding what an error of `f` means:
    /// [`Failure::Retryable`] releases the key (the job may run again), [`Failure::Permanent`]
    /// records the error's message, which every duplicate then gets as
    /// [`RunError::FailedBefore`] without running `f`.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use idemgate_core::MemoryStore;
    /// use idemgate_jobs::{Failure, RunError, RunOnce};
    ///
    /// #[derive(Debug, thiserror::Error)]
    /// enum ChargeError {
    ///     #[error("card declined")]
    ///     Declined,
    ///     #[error("payment provider unreachable")]
    ///     Unreachable,
    /// }
    ///
    /// fn classify(e: &ChargeError) -> Failure {
    ///     match e {
    ///         ChargeError::Declined => Failure::Permanent,
    ///         ChargeError::Unreachable => Failure::Retryable,
    ///     }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let jobs = RunOnce::builder(Arc::new(MemoryStore::default()), b"secret").namespace("charges").build();
    /// let declined = || async { Err::<u64, _>(ChargeError::Declined) };
    /// let r = jobs.run_with("order-7", &700u64, classify, declined).await;
    /// assert!(matches!(r, Err(RunError::Failed(ChargeError::Declined))));
    /// // A redelivery does not charge again: it gets the recorded failure.
    /// let r = jobs.run_with("order-7", &700u64, classify, || async { Ok(1u64) }).await;
    /// assert!(matches!(r, Err(RunError::FailedBefore(msg)) if msg == "card declined"));
    /// # }
    /// ```
    pub async fn run_with<P, T, E, C, F, Fut>(
        &self,
        key: &str,
        payload: &P,
        classify: C,
        f: F,
    ) -> Result<Run<T>, RunError<E>>
    where
        P: Serialize + ?Sized,
        T: Serialize + DeserializeOwned,
        E: fmt::Display,
        C: FnOnce(&E) -> Failure + Send,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let classify: Classify<'_, E> = Box::new(move |e: &E| match classify(e) {
            Failure::Retryable => None,
            Failure::Permanent => Some(e.to_string()),
        });
        self.run_inner(key, payload, classify, f).await
    }

    /// Deletes the record of `key` whatever its state (an operator action: run a job again after
    /// a recorded permanent failure). `Ok(true)` if there was one. Forgetting a key whose job is
    /// running lets a duplicate run it a second time.
    pub async fn forget(&self, key: &str) -> Result<bool, RunError<std::convert::Infallible>> {
        let id = self.record_id(key)?;
        self.check_secret().await?;
        Ok(self.inner.store.delete(id).await?)
    }

    fn record_id(&self, key: &str) -> Result<RecordId, KeyError> {
        let key = parse_key(key.as_bytes())?;
        Ok(self.inner.hasher.record_id(&self.inner.scope, &key))
    }

    /// Checks the scope secret against a shared store, once per [`RunOnce`].
    async fn check_secret(&self) -> Result<(), StoreError> {
        let inner = &self.inner;
        inner
            .secret_checked
            .get_or_try_init(|| inner.store.check_secret(inner.hasher.check_value()))
            .await
            .map(|_| ())
    }

    async fn run_inner<P, T, E, F, Fut>(
        &self,
        key: &str,
        payload: &P,
        classify: Classify<'_, E>,
        f: F,
    ) -> Result<Run<T>, RunError<E>>
    where
        P: Serialize + ?Sized,
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let id = self.record_id(key)?;
        let fingerprint = payload_fingerprint(payload).map_err(RunError::Encode)?;
        self.check_secret().await?;
        let token = match self.acquire(id, fingerprint).await? {
            Acquired::Token(token) => token,
            Acquired::Replay(response) => return decode_outcome(&response),
        };
        let outcome = AssertUnwindSafe(async move { f().await }).catch_unwind().await;
        match outcome {
            Err(panic) => {
                // The panic may have come after the job's effect (a charge made, then a panic
                // while building the receipt): as a crashed worker's, the key stays locked until
                // the lock timeout, as in the HTTP layer, instead of inviting an immediate rerun.
                tracing::error!(namespace = %self.inner.namespace, record = ?id, "job panicked; the key stays locked until its lock timeout ends");
                std::panic::resume_unwind(panic)
            }
            Ok(Ok(value)) => match serde_json::to_vec(&value) {
                Ok(json) => {
                    self.complete(id, token, StatusCode::OK, mime::JSON, &json).await;
                    Ok(Run::Executed(value))
                }
                Err(e) => {
                    let message = format!("the job's result could not be serialised: {e}");
                    self.complete(
                        id,
                        token,
                        StatusCode::INTERNAL_SERVER_ERROR,
                        mime::TEXT,
                        message.as_bytes(),
                    )
                    .await;
                    Err(RunError::Encode(e))
                }
            },
            Ok(Err(e)) => {
                match classify(&e) {
                    Some(message) => {
                        self.complete(
                            id,
                            token,
                            StatusCode::INTERNAL_SERVER_ERROR,
                            mime::TEXT,
                            message.as_bytes(),
                        )
                        .await
                    }
                    None => self.release(id, token).await,
                }
                Err(RunError::Failed(e))
            }
        }
    }

    /// Claims `id`, waiting for an in-flight duplicate when configured.
    async fn acquire<E>(&self, id: RecordId, fingerprint: Fingerprint) -> Result<Acquired, RunError<E>> {
        let inner = &self.inner;
        let wait_until = inner.wait.map(|d| Instant::now() + d);
        let mut waiting: Option<WaitGuard<'_>> = None;
        let mut poll = Duration::from_millis(5);
        loop {
            // Arm the wake-up before looking, so a completion in between is not missed.
            let notify = waiting.as_ref().map(|w| w.notify.clone());
            let mut notified = notify.as_ref().map(|n| Box::pin(n.notified()));
            if let Some(n) = notified.as_mut() {
                n.as_mut().enable();
            }
            let now_ms = idemgate_core::time::now_ms();
            let claim = inner
                .store
                .claim(ClaimRequest {
                    id,
                    fingerprint,
                    now_ms,
                    lease_ms: inner.lease_ms,
                })
                .await?;
            match claim {
                Claim::Acquired { token, takeover } => {
                    if takeover {
                        tracing::info!(namespace = %inner.namespace, record = ?id, "took over a job whose lease had expired");
                    }
                    return Ok(Acquired::Token(token));
                }
                Claim::Completed { fingerprint: f, .. } | Claim::InFlight { fingerprint: f, .. }
                    if f != fingerprint =>
                {
                    return Err(RunError::PayloadMismatch);
                }
                Claim::Completed { response, .. } => return Ok(Acquired::Replay(response)),
                Claim::InFlight { lease_until_ms, .. } => {
                    let in_progress = || RunError::InProgress {
                        // Another caller's clock (or a claim that began just before ours) can put its
                        // lease end past our now + lock timeout: never promise more than one lease.
                        retry_after: Duration::from_millis(
                            lease_until_ms.saturating_sub(now_ms).clamp(1, inner.lease_ms),
                        ),
                    };
                    let Some(until) = wait_until else {
                        return Err(in_progress());
                    };
                    let now = Instant::now();
                    if now >= until {
                        return Err(in_progress());
                    }
                    match notified {
                        // First time: register for local wake-ups, then look again armed.
                        None => waiting = Some(inner.waiters.register(id)),
                        Some(n) => {
                            let lease_left = Duration::from_millis(lease_until_ms.saturating_sub(now_ms));
                            let pause = poll.min(until - now).min(lease_left.max(Duration::from_millis(1)));
                            let _ = tokio::time::timeout(pause, n).await;
                            poll = (poll * 2).min(MAX_POLL);
                        }
                    }
                }
            }
        }
    }

    /// Records the outcome of the caller's claim (see the crate docs for failures).
    async fn complete(&self, id: RecordId, token: FencingToken, status: StatusCode, ct: &'static str, body: &[u8]) {
        let inner = &self.inner;
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
        let response = StoredResponse::new(status, &headers, body);
        let expires_at_ms = idemgate_core::time::now_ms().saturating_add(inner.ttl_ms);
        match inner.store.complete(id, token, response, expires_at_ms).await {
            Ok(()) => {}
            Err(CompleteError::Fenced) => tracing::warn!(
                namespace = %inner.namespace, record = ?id,
                "the job outlived its lock timeout and another worker took the key over; this outcome was not recorded"
            ),
            Err(CompleteError::Store(e)) => tracing::error!(
                namespace = %inner.namespace, record = ?id, error = %e,
                "could not record the job's outcome; the key stays locked until its lock timeout ends"
            ),
        }
        inner.waiters.wake(&id);
    }

    /// Releases the caller's claim so the job may run again.
    async fn release(&self, id: RecordId, token: FencingToken) {
        let inner = &self.inner;
        match inner.store.release(id, token).await {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                namespace = %inner.namespace, record = ?id,
                "the job outlived its lock timeout; another worker holds the key now"
            ),
            Err(e) => tracing::error!(
                namespace = %inner.namespace, record = ?id, error = %e,
                "could not release the key; it stays locked until its lock timeout ends"
            ),
        }
        inner.waiters.wake(&id);
    }
}

mod mime {
    pub(crate) const JSON: &str = "application/json";
    pub(crate) const TEXT: &str = "text/plain; charset=utf-8";
}

enum Acquired {
    Token(FencingToken),
    Replay(StoredResponse),
}

/// SHA-256 of a domain tag and the payload's canonical JSON (going through [`serde_json::Value`]
/// sorts object keys, so a `HashMap` payload fingerprints the same whatever its iteration order).
fn payload_fingerprint<P: Serialize + ?Sized>(payload: &P) -> Result<Fingerprint, serde_json::Error> {
    let json = serde_json::to_vec(&serde_json::to_value(payload)?)?;
    let mut h = Sha256::new();
    h.update(FINGERPRINT_TAG);
    h.update(&json);
    Ok(Fingerprint(h.finalize().into()))
}

/// A recorded outcome as the caller's result.
fn decode_outcome<T: DeserializeOwned, E>(response: &StoredResponse) -> Result<Run<T>, RunError<E>> {
    let body = response.body();
    if response.status() == StatusCode::OK {
        serde_json::from_slice(&body)
            .map(Run::Replayed)
            .map_err(RunError::Decode)
    } else {
        Err(RunError::FailedBefore(String::from_utf8_lossy(&body).into_owned()))
    }
}

/// Calls waiting for a key in this process, woken when its outcome is recorded or released.
#[derive(Default)]
struct Waiters {
    map: Mutex<HashMap<RecordId, (Arc<Notify>, usize)>>,
}

struct WaitGuard<'a> {
    waiters: &'a Waiters,
    id: RecordId,
    notify: Arc<Notify>,
}

impl Waiters {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RecordId, (Arc<Notify>, usize)>> {
        // Every map operation is complete when the lock is released: a poisoned lock is fine.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn register(&self, id: RecordId) -> WaitGuard<'_> {
        let notify = {
            let mut map = self.lock();
            let entry = map.entry(id).or_insert_with(|| (Arc::new(Notify::new()), 0));
            entry.1 += 1;
            entry.0.clone()
        };
        WaitGuard {
            waiters: self,
            id,
            notify,
        }
    }

    fn wake(&self, id: &RecordId) {
        let notify = self.lock().get(id).map(|(n, _)| n.clone());
        if let Some(n) = notify {
            n.notify_waiters();
        }
    }
}

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        let mut map = self.waiters.lock();
        if let Some(entry) = map.get_mut(&self.id) {
            entry.1 -= 1;
            if entry.1 == 0 {
                map.remove(&self.id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn fingerprint_is_canonical_and_tells_payloads_apart() {
        let mut a = HashMap::new();
        let mut b = HashMap::new();
        for i in 0..32 {
            a.insert(format!("k{i}"), i);
        }
        for i in (0..32).rev() {
            b.insert(format!("k{i}"), i);
        }
        let sorted: BTreeMap<_, _> = a.clone().into_iter().collect();
        assert_eq!(payload_fingerprint(&a).unwrap(), payload_fingerprint(&b).unwrap());
        assert_eq!(payload_fingerprint(&a).unwrap(), payload_fingerprint(&sorted).unwrap());
        b.insert("k0".into(), 1);
        assert_ne!(payload_fingerprint(&a).unwrap(), payload_fingerprint(&b).unwrap());
        assert_ne!(payload_fingerprint(&1u8).unwrap(), payload_fingerprint("1").unwrap());
    }

    #[test]
    fn run_accessors() {
        let r = Run::Replayed(3);
        assert!(r.was_replayed());
        assert_eq!(*r.value(), 3);
        assert_eq!(r.into_value(), 3);
        assert!(!Run::Executed(()).was_replayed());
    }

    #[test]
    fn durations_are_whole_positive_millis() {
        assert_eq!(millis(Duration::ZERO), 1);
        assert_eq!(millis(Duration::from_micros(1500)), 1);
        assert_eq!(millis(Duration::from_secs(2)), 2000);
        assert_eq!(millis(Duration::MAX), u64::MAX);
    }
}
