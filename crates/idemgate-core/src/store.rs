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
    /// The store's server refuses writes for lack of memory or disk (Redis `OOM` under
    /// `maxmemory-policy noeviction`, PostgreSQL `53100` disk full or `53200` out of memory): as
    /// with [`StoreError::Full`], nothing may run unprotected, whatever `on_store_error` says.
    #[error("store is out of space: {0}")]
    OutOfSpace(String),
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
    /// it; the embedded stores keep it in a file beside their data ([`check_secret_file`]); the
    /// memory store, gone with its process, need not.
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

/// The file an embedded store keeps its check value in, in its directory.
pub const SECRET_CHECK_FILE: &str = "scope-check";

/// [`Store::check_secret`] for a store that lives in a directory: compares `check` with the hex
/// value kept in `path`, or, when there is none yet, writes it durably (a temporary file synced and
/// renamed over, then the directory synced). A file that is not 64 hex digits is refused rather than
/// overwritten. Blocking file I/O: it runs once, at start-up.
pub fn check_secret_file(path: &std::path::Path, check: [u8; 32]) -> Result<(), StoreError> {
    use std::io::Write;
    let io = |what: &'static str| {
        let path = path.display().to_string();
        move |e: std::io::Error| StoreError::Backend(format!("{what} {path}: {e}").into())
    };
    let want: String = check.iter().map(|b| format!("{b:02x}")).collect();
    match std::fs::read_to_string(path) {
        Ok(kept) => {
            let kept = kept.trim();
            if kept.len() != 64 || !kept.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(StoreError::Backend(
                    format!(
                        "{} holds no scope check value (64 hex digits); move it away to start afresh",
                        path.display()
                    )
                    .into(),
                ));
            }
            return if kept.eq_ignore_ascii_case(&want) {
                Ok(())
            } else {
                Err(StoreError::SecretMismatch)
            };
        }
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io("read")(e)),
        Err(_) => {}
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io("create"))?;
    f.write_all(want.as_bytes()).map_err(io("write"))?;
    f.sync_all().map_err(io("sync"))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io("rename"))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("sync"))?;
    }
    Ok(())
}

impl std::fmt::Debug for dyn Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.kind())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_check_file_is_written_once_then_compared() {
        let dir = std::env::temp_dir().join(format!("idemgate-check-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(SECRET_CHECK_FILE);
        check_secret_file(&path, [1; 32]).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "01".repeat(32));
        check_secret_file(&path, [1; 32]).unwrap();
        assert!(matches!(
            check_secret_file(&path, [2; 32]),
            Err(StoreError::SecretMismatch)
        ));
        // The mismatch left the kept value alone.
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "01".repeat(32));
        std::fs::write(&path, "not hex").unwrap();
        assert!(matches!(check_secret_file(&path, [1; 32]), Err(StoreError::Backend(_))));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "not hex");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
