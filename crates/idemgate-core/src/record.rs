//! The record state machine and the decisions every store makes the same way.
//!
//! ```text
//!            claim                      complete(token)
//!  absent ───────────▶ in flight ──────────────────────▶ completed ──(ttl)──▶ absent
//!    ▲                  │   ▲ │                                    
//!    │ release(token)   │   │ │ lease expired: the next claim takes over with a new token
//!    └──────────────────┘   └─┘
//! ```
//!
//! - A claim of an absent key (or of a completed record past its TTL) creates an in-flight record
//!   with a fresh [`FencingToken`] and a lease.
//! - A claim of a live in-flight record reports it (the caller answers 409 or waits); of an
//!   in-flight record whose lease ran out, it takes over with a new token.
//! - A claim of a live completed record returns it (the caller compares fingerprints and replays).
//! - `complete` and `release` apply only when the record is in flight with the caller's token, so
//!   an owner whose lease was taken over can never overwrite the new owner's outcome.
//!
//! Stores keep records; [`decide_claim`], [`decide_complete`] and [`decide_release`] are the
//! rules, shared by the memory and embedded stores and mirrored by the Redis script and SQL.

use bytes::{BufMut, Bytes, BytesMut};

use crate::fingerprint::Fingerprint;
use crate::response::StoredResponse;

/// Identifies one claim of a key. Random, so a token is never reused after a release or purge.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct FencingToken(pub u64);

impl FencingToken {
    /// A fresh random token (never zero).
    pub fn random() -> Self {
        Self(fastrand::u64(1..))
    }
}

/// What a store keeps under a [`crate::RecordId`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// Claimed, its outcome not yet known.
    InFlight {
        /// The claiming request's fingerprint.
        fingerprint: Fingerprint,
        /// The current owner's token.
        token: FencingToken,
        /// When the lease ends and another request may take the key over (Unix ms).
        lease_until_ms: u64,
    },
    /// Executed; the response to replay.
    Completed {
        /// The executed request's fingerprint.
        fingerprint: Fingerprint,
        /// When the record is forgotten (Unix ms).
        expires_at_ms: u64,
        /// The recorded response.
        response: StoredResponse,
    },
}

impl Record {
    /// The time after which the record no longer counts (lease end or TTL end).
    pub fn deadline_ms(&self) -> u64 {
        match self {
            Record::InFlight { lease_until_ms, .. } => *lease_until_ms,
            Record::Completed { expires_at_ms, .. } => *expires_at_ms,
        }
    }

    /// The request fingerprint the record was made for.
    pub fn fingerprint(&self) -> Fingerprint {
        match self {
            Record::InFlight { fingerprint, .. } | Record::Completed { fingerprint, .. } => *fingerprint,
        }
    }

    /// A completed record past its TTL is gone; it may be purged. In-flight records past their
    /// lease are kept until taken over or purged, so `is_expired` is true for them too.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.deadline_ms() <= now_ms
    }
}

/// The answer to a claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// The caller owns the key and must execute, then `complete` or `release` with `token`.
    Acquired {
        /// The caller's fencing token.
        token: FencingToken,
        /// True when an expired lease of another owner was taken over.
        takeover: bool,
    },
    /// Another request holds the key.
    InFlight {
        /// That request's fingerprint.
        fingerprint: Fingerprint,
        /// When its lease ends (Unix ms).
        lease_until_ms: u64,
    },
    /// The key was executed; here is its outcome.
    Completed {
        /// The executed request's fingerprint.
        fingerprint: Fingerprint,
        /// The response to replay.
        response: StoredResponse,
    },
}

/// A claim request.
#[derive(Clone, Copy, Debug)]
pub struct ClaimRequest {
    /// The record's id.
    pub id: crate::RecordId,
    /// The request's fingerprint.
    pub fingerprint: Fingerprint,
    /// The current time (Unix ms).
    pub now_ms: u64,
    /// How long the lease lasts (ms).
    pub lease_ms: u64,
}

/// What a claim does to the record: the answer, and the record to write (if any).
pub fn decide_claim(existing: Option<&Record>, req: &ClaimRequest) -> (Claim, Option<Record>) {
    let live = existing.filter(|r| !r.is_expired(req.now_ms));
    match live {
        Some(Record::Completed {
            fingerprint, response, ..
        }) => (
            Claim::Completed {
                fingerprint: *fingerprint,
                response: response.clone(),
            },
            None,
        ),
        Some(Record::InFlight {
            fingerprint,
            lease_until_ms,
            ..
        }) => (
            Claim::InFlight {
                fingerprint: *fingerprint,
                lease_until_ms: *lease_until_ms,
            },
            None,
        ),
        None => {
            let token = FencingToken::random();
            let takeover = matches!(existing, Some(Record::InFlight { .. }));
            (
                Claim::Acquired { token, takeover },
                Some(Record::InFlight {
                    fingerprint: req.fingerprint,
                    token,
                    lease_until_ms: req.now_ms.saturating_add(req.lease_ms),
                }),
            )
        }
    }
}

/// `complete` applies only to the caller's own in-flight record: `Ok(completed record)`, or
/// `Err(())` when the caller was fenced off (its lease was taken over, or the record is gone).
#[allow(clippy::result_unit_err)]
pub fn decide_complete(
    existing: Option<&Record>,
    token: FencingToken,
    response: StoredResponse,
    expires_at_ms: u64,
) -> Result<Record, ()> {
    match existing {
        Some(Record::InFlight {
            fingerprint, token: t, ..
        }) if *t == token => Ok(Record::Completed {
            fingerprint: *fingerprint,
            expires_at_ms,
            response,
        }),
        _ => Err(()),
    }
}

/// `release` deletes the record only when it is the caller's own in-flight record.
pub fn decide_release(existing: Option<&Record>, token: FencingToken) -> bool {
    matches!(existing, Some(Record::InFlight { token: t, .. }) if *t == token)
}

/// The stored bytes are not a record this version understands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stored record is corrupt: {0}")]
pub struct CorruptRecord(pub &'static str);

const FORMAT_V1: u8 = 1;
const TAG_IN_FLIGHT: u8 = 1;
const TAG_COMPLETED: u8 = 2;

impl Record {
    /// Serialises the record for stores that keep bytes: `version u8`, `tag u8`, fingerprint,
    /// then `token u64, lease_until u64` or `expires_at u64` and the encoded response.
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(self.encoded_len());
        self.encode_to(&mut b);
        b.freeze()
    }

    /// The length of [`Record::encode`]'s output.
    pub fn encoded_len(&self) -> usize {
        match self {
            Record::InFlight { .. } => 2 + 32 + 16,
            Record::Completed { response, .. } => 2 + 32 + 8 + response.as_bytes().len(),
        }
    }

    /// Appends [`Record::encode`]'s output to `out`.
    pub fn encode_to(&self, out: &mut impl BufMut) {
        match self {
            Record::InFlight {
                fingerprint,
                token,
                lease_until_ms,
            } => {
                out.put_u8(FORMAT_V1);
                out.put_u8(TAG_IN_FLIGHT);
                out.put_slice(&fingerprint.0);
                out.put_u64_le(token.0);
                out.put_u64_le(*lease_until_ms);
            }
            Record::Completed {
                fingerprint,
                expires_at_ms,
                response,
            } => {
                out.put_u8(FORMAT_V1);
                out.put_u8(TAG_COMPLETED);
                out.put_slice(&fingerprint.0);
                out.put_u64_le(*expires_at_ms);
                out.put_slice(response.as_bytes());
            }
        }
    }

    /// [`Record::deadline_ms`] read straight from encoded bytes, without decoding the response.
    pub fn encoded_deadline_ms(data: &[u8]) -> Result<u64, CorruptRecord> {
        let at = match data.get(..2) {
            Some([FORMAT_V1, TAG_IN_FLIGHT]) => 42,
            Some([FORMAT_V1, TAG_COMPLETED]) => 34,
            _ => return Err(CorruptRecord("unknown format or record kind")),
        };
        data.get(at..at + 8)
            .and_then(|s| s.try_into().ok())
            .map(u64::from_le_bytes)
            .ok_or(CorruptRecord("truncated"))
    }

    /// Parses bytes written by [`Record::encode`].
    pub fn decode(data: Bytes) -> Result<Record, CorruptRecord> {
        if data.len() < 2 + 32 + 8 {
            return Err(CorruptRecord("truncated"));
        }
        if data[0] != FORMAT_V1 {
            return Err(CorruptRecord("unknown format version"));
        }
        let mut fp = [0u8; 32];
        fp.copy_from_slice(&data[2..34]);
        let fingerprint = Fingerprint(fp);
        let u64_at = |at: usize| -> Result<u64, CorruptRecord> {
            data.get(at..at + 8)
                .and_then(|s| s.try_into().ok())
                .map(u64::from_le_bytes)
                .ok_or(CorruptRecord("truncated"))
        };
        match data[1] {
            TAG_IN_FLIGHT => Ok(Record::InFlight {
                fingerprint,
                token: FencingToken(u64_at(34)?),
                lease_until_ms: u64_at(42)?,
            }),
            TAG_COMPLETED => Ok(Record::Completed {
                fingerprint,
                expires_at_ms: u64_at(34)?,
                response: StoredResponse::from_bytes(data.slice(42..)).map_err(|e| CorruptRecord(e.0))?,
            }),
            _ => Err(CorruptRecord("unknown record kind")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, StatusCode};
    use proptest::prelude::*;

    fn req(now_ms: u64) -> ClaimRequest {
        ClaimRequest {
            id: crate::RecordId([7; 32]),
            fingerprint: Fingerprint([1; 32]),
            now_ms,
            lease_ms: 1000,
        }
    }

    #[test]
    fn state_machine() {
        let (claim, rec) = decide_claim(None, &req(0));
        let Claim::Acquired { token, takeover: false } = claim else {
            panic!("{claim:?}")
        };
        let rec = rec.unwrap();
        // Live lease: reported, not taken.
        assert!(matches!(
            decide_claim(Some(&rec), &req(999)).0,
            Claim::InFlight {
                lease_until_ms: 1000,
                ..
            }
        ));
        // Expired lease: taken over with another token.
        let (claim, _) = decide_claim(Some(&rec), &req(1000));
        assert!(matches!(claim, Claim::Acquired { takeover: true, token: t } if t != token));
        // Fencing: only the owner's token completes or releases.
        let resp = StoredResponse::new(StatusCode::CREATED, &HeaderMap::new(), b"ok");
        assert!(decide_complete(Some(&rec), FencingToken(token.0 ^ 1), resp.clone(), 5000).is_err());
        assert!(!decide_release(Some(&rec), FencingToken(token.0 ^ 1)));
        assert!(decide_release(Some(&rec), token));
        let done = decide_complete(Some(&rec), token, resp.clone(), 5000).unwrap();
        assert!(decide_complete(Some(&done), token, resp.clone(), 5000).is_err());
        assert!(matches!(
            decide_claim(Some(&done), &req(4999)).0,
            Claim::Completed { .. }
        ));
        // Past its TTL a completed record is absent again.
        assert!(matches!(
            decide_claim(Some(&done), &req(5000)).0,
            Claim::Acquired { takeover: false, .. }
        ));
    }

    proptest! {
        #[test]
        fn codec_round_trips(fp in any::<[u8; 32]>(), t in 1u64.., at in any::<u64>(), body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let a = Record::InFlight { fingerprint: Fingerprint(fp), token: FencingToken(t), lease_until_ms: at };
            prop_assert_eq!(Record::encoded_deadline_ms(&a.encode()).unwrap(), at);
            prop_assert_eq!(Record::decode(a.encode()).unwrap(), a);
            let mut h = HeaderMap::new();
            h.insert("content-type", "application/octet-stream".parse().unwrap());
            let b = Record::Completed { fingerprint: Fingerprint(fp), expires_at_ms: at, response: StoredResponse::new(StatusCode::OK, &h, &body) };
            prop_assert_eq!(Record::encoded_deadline_ms(&b.encode()).unwrap(), at);
            prop_assert_eq!(b.encode().len(), b.encoded_len());
            prop_assert_eq!(Record::decode(b.encode()).unwrap(), b);
        }

        #[test]
        fn decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = Record::encoded_deadline_ms(&data);
            let _ = Record::decode(Bytes::from(data));
        }
    }
}
