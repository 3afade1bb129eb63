//! Record identity: a keyed hash of (caller scope, idempotency key).
//!
//! The store never sees a raw caller credential (an `Authorization` value) or raw key: a record is
//! addressed by `HMAC-SHA256(secret, len(scope) ‖ scope ‖ key)`. Two callers using the same key
//! get two unrelated ids, and without the per-deployment secret nobody can tell from a store dump
//! which caller a record belongs to. Every gateway of a fleet must share the secret.
//!
//! Scopes of different kinds never coincide, so HTTP records and run-once jobs can share a store
//! and a secret: a single header value never contains a NUL or a 0x01 byte; a header sent more
//! than once is [`multi_value_scope`] (a NUL first); a run-once job's is [`job_scope`] (a fixed
//! prefix with a NUL inside); an application's own value goes through [`custom_scope`], which puts
//! a 0x01 before any value that begins like a multi-value or job scope. A custom value and a
//! single header value share one space on purpose (a custom function may return the raw header).

use std::borrow::Cow;
use std::fmt;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::key::IdempotencyKey;

/// A record's address in a store: 32 bytes of keyed hash.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordId(pub [u8; 32]);

impl RecordId {
    /// Lower-case hex, as stores that need text keys (Redis) use it.
    pub fn to_hex(&self) -> String {
        self.hex().iter().map(|&b| char::from(b)).collect()
    }

    /// [`Self::to_hex`]'s ASCII bytes, on the stack (a store building a key around them).
    pub fn hex(&self) -> [u8; 64] {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 64];
        for (i, b) in self.0.iter().enumerate() {
            out[2 * i] = DIGITS[usize::from(b >> 4)];
            out[2 * i + 1] = DIGITS[usize::from(b & 0xf)];
        }
        out
    }
}

impl fmt::Debug for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RecordId({})", &self.to_hex()[..16])
    }
}

/// 32 bytes from the operating system's cryptographic random source.
pub fn random_secret() -> [u8; 32] {
    let mut secret = [0u8; 32];
    if getrandom::fill(&mut secret).is_err() {
        // No OS randomness (never seen on supported platforms): derive from what varies.
        let mut h = Sha256::new();
        h.update(crate::time::now_ms().to_le_bytes());
        h.update(std::process::id().to_le_bytes());
        h.update((&secret as *const _ as usize).to_le_bytes());
        h.update(fastrand::u64(..).to_le_bytes());
        secret = h.finalize().into();
    }
    secret
}

/// The beginning of every run-once job's scope.
pub const JOB_SCOPE_PREFIX: &[u8] = b"idemgate-jobs\0";

/// The scope of run-once jobs in `namespace`.
pub fn job_scope(namespace: &str) -> Vec<u8> {
    let mut scope = JOB_SCOPE_PREFIX.to_vec();
    scope.extend_from_slice(namespace.as_bytes());
    scope
}

/// The scope a request's scope header gives, from all its values in order: none is the anonymous
/// (empty) scope, one is its raw bytes, more are [`multi_value_scope`].
pub fn header_scope<'a>(values: impl IntoIterator<Item = &'a http::HeaderValue>) -> Cow<'a, [u8]> {
    let mut values = values.into_iter();
    match (values.next(), values.next()) {
        (None, _) => Cow::Borrowed(&[]),
        (Some(v), None) => Cow::Borrowed(v.as_bytes()),
        (Some(v), Some(w)) => Cow::Owned(multi_value_scope(
            [v, w].into_iter().chain(values).map(http::HeaderValue::as_bytes),
        )),
    }
}

/// The scope of a request that carries its scope header more than once: a NUL byte, then each
/// value after its length (u32, little-endian), so no two lists of values share a scope and none
/// shares one with a single value.
pub fn multi_value_scope<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut scope = vec![0u8];
    for v in values {
        scope.extend_from_slice(&(v.len() as u32).to_le_bytes());
        scope.extend_from_slice(v);
    }
    scope
}

/// The scope of a caller identity that an application computed: the value itself, unless it
/// begins with a NUL, a 0x01 or [`JOB_SCOPE_PREFIX`]; such a value gets a 0x01 in front, so it can
/// never be taken for a multi-value header's scope or a job's.
pub fn custom_scope(mut value: Vec<u8>) -> Vec<u8> {
    if matches!(value.first(), Some(0 | 1)) || value.starts_with(JOB_SCOPE_PREFIX) {
        value.insert(0, 1);
    }
    value
}

/// Derives [`RecordId`]s from a per-deployment secret.
#[derive(Clone)]
pub struct ScopeHasher {
    mac: Hmac<Sha256>,
    check: [u8; 32],
}

impl fmt::Debug for ScopeHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScopeHasher").finish_non_exhaustive()
    }
}

impl ScopeHasher {
    /// A hasher keyed by `secret` (any length; 32 random bytes are plenty).
    pub fn new(secret: &[u8]) -> Self {
        // HMAC accepts keys of any length, so this cannot fail.
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
            .unwrap_or_else(|_| <Hmac<Sha256> as Mac>::new_from_slice(&[0u8; 32]).expect("32-byte key"));
        let mut check_mac = mac.clone();
        check_mac.update(b"idemgate secret check v1");
        let check = check_mac.finalize().into_bytes().into();
        Self { mac, check }
    }

    /// A random secret, for stores that live and die with the process.
    pub fn random() -> Self {
        Self::new(&random_secret())
    }

    /// The id of `key` under the caller identified by `scope` (empty for anonymous callers).
    pub fn record_id(&self, scope: &[u8], key: &IdempotencyKey) -> RecordId {
        let mut mac = self.mac.clone();
        mac.update(&(scope.len() as u32).to_le_bytes());
        mac.update(scope);
        mac.update(key.as_str().as_bytes());
        RecordId(mac.finalize().into_bytes().into())
    }

    /// A value derived from the secret that reveals nothing about it. Shared stores keep it so a
    /// gateway started with a different secret is refused instead of silently missing replays.
    pub fn check_value(&self) -> [u8; 32] {
        self.check
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::parse_key;

    #[test]
    fn scopes_and_secrets_separate_ids() {
        let h = ScopeHasher::new(b"secret");
        let k = parse_key(b"key-1").unwrap();
        assert_eq!(h.record_id(b"alice", &k), h.record_id(b"alice", &k));
        assert_ne!(h.record_id(b"alice", &k), h.record_id(b"bob", &k));
        assert_ne!(h.record_id(b"", &k), h.record_id(b"alice", &k));
        // The length prefix keeps (scope, key) boundaries unambiguous.
        let ab = parse_key(b"bc").unwrap();
        let abc = parse_key(b"c").unwrap();
        assert_ne!(h.record_id(b"a", &ab), h.record_id(b"ab", &abc));
        assert_ne!(
            ScopeHasher::new(b"other").record_id(b"alice", &k),
            h.record_id(b"alice", &k)
        );
        assert_ne!(ScopeHasher::new(b"other").check_value(), h.check_value());
        assert_ne!(ScopeHasher::random().check_value(), ScopeHasher::random().check_value());
    }

    #[test]
    fn scope_kinds_never_coincide() {
        let jobs = job_scope("default");
        assert_eq!(jobs, b"idemgate-jobs\0default");
        // A header sent twice, with the job prefix split over its two values.
        let two = multi_value_scope([&b"idemgate-jobs"[..], b"default"]);
        assert_ne!(two, jobs);
        assert_eq!(two[0], 0);
        // Value boundaries count: ("a", "bc") is not ("ab", "c"), nor one value "abc".
        assert_ne!(
            multi_value_scope([&b"a"[..], b"bc"]),
            multi_value_scope([&b"ab"[..], b"c"])
        );
        assert_ne!(multi_value_scope([&b"abc"[..]]), b"abc");
        // An application's value is kept, unless it looks like another kind.
        assert_eq!(custom_scope(b"user-42".to_vec()), b"user-42");
        assert_ne!(custom_scope(jobs.clone()), jobs);
        assert_ne!(custom_scope(two.clone()), two);
        let escaped = custom_scope(vec![1, 2]);
        assert_eq!(escaped, [1, 1, 2]);
        assert_ne!(custom_scope(escaped.clone()), escaped);
    }
}
