//! The idempotency engine's data model, shared by every adapter and store.
//!
//! - [`key`]: parsing the `Idempotency-Key` header value.
//! - [`scope`]: turning (caller, key) into a [`RecordId`] with a keyed hash, so raw caller
//!   credentials are never stored.
//! - [`fingerprint`]: what makes two requests "the same request".
//! - [`response`]: a stored HTTP response, encoded once into one contiguous buffer.
//! - [`record`]: the record state machine (absent → in flight → completed) and its decisions.
//! - [`store`]: the store contract every backend implements; [`memory`] is the in-process store.
//! - [`reply`]: one wake-up per batch for replies from a store's own thread to a serving thread.
#![deny(missing_docs)]

pub mod fingerprint;
pub mod key;
pub mod memory;
pub mod record;
pub mod reply;
pub mod response;
pub mod scope;
pub mod store;
pub mod time;

pub use fingerprint::{Fingerprint, FingerprintOptions};
pub use key::{parse_key, IdempotencyKey, KeyError};
pub use memory::MemoryStore;
pub use record::{Claim, ClaimRequest, FencingToken, Record};
pub use response::StoredResponse;
pub use scope::{custom_scope, header_scope, job_scope, multi_value_scope, RecordId, ScopeHasher};
pub use store::{check_secret_file, BoxFuture, CompleteError, Purged, Store, StoreError, SECRET_CHECK_FILE};
