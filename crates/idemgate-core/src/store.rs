//! The store contract.
//!
//! A store keeps [`Record`]s under [`RecordId`]s and applies the state machine of
//! [`crate::record`] atomically: two concurrent claims of one id never both acquire it, and a
//! `complete` or `release` whose fencing token is not the current owner's changes nothing. Stores
//! know nothing of HTTP; the adapters (the tower layer, run-once jobs) decide what to store.
//!
//! Durable stores commit a write before its future resolves: once `complete` returns `Ok`, a crash
//! does not lose the record.

use std::future::Future;
use std::pin::Pin;

use crate::record::{Claim, ClaimRequest, CorruptRecord, FencingToken, Record};
use crate::response::StoredResponse;
use crate::scope::RecordId;

/// A boxed, sendable future: stores are used as `Arc<dyn Store>`, chosen at start-up.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A store operation failed; the record is unchanged as far as the caller knows.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store cannot be reached (connection refused or lost, server down).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store did not answer in time.
    #[error("store timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// The store is at its configured capacity and nothing has expired.
    #[error("store is full ({capacity} records)")]
    Full {
        /// The configured capacity.
        capacity: usize,
    },
    /// The store was initialised by gateways with another scope secret: their record ids and
    /// ours would never match, so every replay would silently be missed.
    #[error("the store belongs to a deployment with a different scope secret; give every gateway the same --scope-secret-file")]
    SecretMismatch,
    /// A stored record could not be decoded.
    #[error(transparent)]
    Corrupt(#[from] CorruptRecord),
    /// The store's own error (I/O, commit, protocol).
    #[error("store error: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Why a `complete` did not record the response.
#[derive(Debug, thiserror::Error)]
pub enum CompleteError {
    /// The caller no longer owns the key: its lease was taken over, or the record was deleted.
    #[error("fenced off: the key is no longer held by this token")]
    Fenced,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What one purge call did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Purged {
    /// Records deleted.
    pub removed: usize,
    /// The call stopped before looking at every record: call again.
    pub more: bool,
}

/// The store contract (see the module docs). Every method is one atomic step.
pub trait Store: Send + Sync + 'static {
    /// A short name for logs and metrics (`memory`, `embedded`, …).
    fn kind(&self) -> &'static str;

    /// Claims `req.id` (see [`crate::record::decide_claim`]).
    fn claim(&self, req: ClaimRequest) -> BoxFuture<'_, Result<Claim, StoreError>>;

    /// Records the outcome of the caller's claim; the record lives until `expires_at_ms`.
    fn complete(
        &self,
        id: RecordId,
        token: FencingToken,
        response: StoredResponse,
        expires_at_ms: u64,
    ) -> BoxFuture<'_, Result<(), CompleteError>>;

    /// Deletes the caller's in-flight record so the key may execute again. `Ok(false)` when the
    /// caller no longer owned it (nothing changed).
    fn release(&self, id: RecordId, token: FencingToken) -> BoxFuture<'_, Result<bool, StoreError>>;

    /// The record as stored (possibly expired; compare [`Record::is_expired`]).
    fn get(&self, id: RecordId) -> BoxFuture<'_, Result<Option<Record>, StoreError>>;

    /// Deletes a record whatever its state (operator action). `Ok(true)` if one existed.
    fn delete(&self, id: RecordId) -> BoxFuture<'_, Result<bool, StoreError>>;

    /// Deletes up to `limit` records expired at `now_ms`. A store may stop early to bound the
    /// work of one call; [`Purged::more`] says whether another call may find more.
    fn purge_expired(&self, now_ms: u64, limit: usize) -> BoxFuture<'_, Result<Purged, StoreError>>;

    /// Checks that the store answers.
    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Records `check` (see [`crate::ScopeHasher::check_value`]) if the store has none, else
    /// compares it: [`StoreError::SecretMismatch`] when it differs. Shared stores must implement
    /// it; stores private to one process need not.
    fn check_secret(&self, check: [u8; 32]) -> BoxFuture<'_, Result<(), StoreError>> {
        let _ = check;
        Box::pin(async { Ok(()) })
    }

    /// Makes every acknowledged write durable and stops background work (shutdown).
    fn flush(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async { Ok(()) })
    }

    /// How many records are stored, when the store can tell cheaply.
    fn len_hint(&self) -> Option<u64> {
        None
    }
}

impl std::fmt::Debug for dyn Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.kind())
    }
}
