//! The store contract, tested once for all stores.
//!
//! Each case takes a fresh store and checks one part of the contract in `idemgate_core::store`.
//! Time is passed in (`now_ms`), so expiry and lease cases move the clock instead of sleeping.
//! A store crate runs every case with [`conformance_tests!`]:
//!
//! ```text
//! idemgate_store_conformance::conformance_tests!(async { std::sync::Arc::new(MemoryStore::default()) });
//! ```
#![allow(missing_docs)]

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};
use idemgate_core::{
    parse_key, time, Claim, ClaimRequest, CompleteError, FencingToken, Fingerprint, Record, RecordId, ScopeHasher,
    Store, StoredResponse,
};

/// Generates one `#[tokio::test]` per case; `$make` is an async block returning `Arc<S>`.
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::conformance_tests!(@cases $make;
            claim_complete_replay, fingerprint_is_reported_not_judged, concurrent_claims_one_winner,
            lease_expiry_and_takeover, fencing_rejects_a_stale_owner, release_frees_the_key,
            ttl_expiry, purge_removes_only_expired, large_binary_responses, scopes_are_isolated,
            get_and_delete);
    };
    (@cases $make:expr; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let store = $make.await;
                $crate::$case(store).await;
            }
        )*
    };
}

fn id(n: u8) -> RecordId {
    let mut b = [0u8; 32];
    b[0] = n;
    b[31] = n.wrapping_mul(7);
    // Mix in randomness so cases sharing a server never collide.
    let h = ScopeHasher::random();
    h.record_id(&b, &parse_key(format!("k{n}").as_bytes()).unwrap())
}

fn fp(n: u8) -> Fingerprint {
    Fingerprint([n; 32])
}

fn req(id: RecordId, fingerprint: Fingerprint, now_ms: u64, lease_ms: u64) -> ClaimRequest {
    ClaimRequest {
        id,
        fingerprint,
        now_ms,
        lease_ms,
    }
}

fn response(status: u16, body: &[u8]) -> StoredResponse {
    let mut h = HeaderMap::new();
    h.insert("content-type", HeaderValue::from_static("application/json"));
    h.append("set-cookie", HeaderValue::from_static("a=1"));
    h.append("set-cookie", HeaderValue::from_static("b=2"));
    StoredResponse::new(StatusCode::from_u16(status).unwrap(), &h, body)
}

async fn acquire<S: Store + ?Sized>(s: &S, r: ClaimRequest) -> FencingToken {
    match s.claim(r).await.expect("claim") {
        Claim::Acquired { token, .. } => token,
        other => panic!("expected to acquire, got {other:?}"),
    }
}

pub async fn claim_complete_replay<S: Store + ?Sized>(s: Arc<S>) {
    let now = time::now_ms();
    let (k, f) = (id(1), fp(1));
    let t = acquire(&*s, req(k, f, now, 10_000)).await;
    assert!(matches!(
        s.claim(req(k, f, now, 10_000)).await.unwrap(),
        Claim::InFlight { .. }
    ));
    s.complete(k, t, response(201, b"{\"ok\":true}"), now + 60_000)
        .await
        .unwrap();
    for _ in 0..3 {
        match s.claim(req(k, f, now + 1, 10_000)).await.unwrap() {
            Claim::Completed {
                fingerprint,
                response: r,
            } => {
                assert_eq!(fingerprint, f);
                assert_eq!(r, response(201, b"{\"ok\":true}"));
                assert_eq!(r.headers().unwrap().get_all("set-cookie").iter().count(), 2);
            }
            other => panic!("expected the stored response, got {other:?}"),
        }
    }
}

pub async fn fingerprint_is_reported_not_judged<S: Store + ?Sized>(s: Arc<S>) {
    let now = time::now_ms();
    let k = id(2);
    let t = acquire(&*s, req(k, fp(1), now, 10_000)).await;
    match s.claim(req(k, fp(2), now, 10_000)).await.unwrap() {
        Claim::InFlight {
            fingerprint,
            lease_until_ms,
        } => {
            assert_eq!(fingerprint, fp(1));
            assert_eq!(lease_until_ms, now + 10_000);
        }
        other => panic!("{other:?}"),
    }
    s.complete(k, t, response(200, b"x"), now + 60_000).await.unwrap();
    match s.claim(req(k, fp(2), now, 10_000)).await.unwrap() {
        Claim::Completed { fingerprint, .. } => assert_eq!(fingerprint, fp(1)),
        other => panic!("{other:?}"),
    }
}

pub async fn concurrent_claims_one_winner<S: Store + ?Sized>(s: Arc<S>) {
    let now = time::now_ms();
    for round in 0..5u8 {
        let k = id(100 + round);
        let tasks: Vec<_> = (0..64)
            .map(|_| {
                let s = s.clone();
                tokio::spawn(async move { s.claim(req(k, fp(3), now, 10_000)).await.expect("claim") })
            })
            .collect();
        let mut won = 0;
        for t in tasks {
            if matches!(t.await.unwrap(), Claim::Acquired { .. }) {
                won += 1;
            }
        }
        assert_eq!(won, 1, "exactly one of 64 concurrent claims acquires the key");
    }
}

pub async fn lease_expiry_and_takeover<S: Store + ?Sized>(s: Arc<S>) {
    let now = time::now_ms();
    let k = id(4);
    let t1 = acquire(&*s, req(k, fp(4), now, 1_000)).await;
    assert!(matches!(
        s.claim(req(k, fp(4), now + 999, 1_000)).await.unwrap(),
        Claim::InFlight { .. }
    ));
    match s.claim(req(k, fp(4), now + 1_000, 1_000)).await.unwrap() {
        Claim::Acquired { token, takeover } => {
            assert!(takeover, "a claim after the lease ended takes the key over");
            assert_ne!(token, t1, "with a new token");
        }
        other => panic!("{other:?}"),
    }
}

pub async fn fencing_rejects_a_stale_owner<S: Store + ?Sized>(s: Arc<S>) {
    let now = time::now_ms();
    let k = id(5);
    let stale = acquire(&*s, req(k, fp(5), now, 1_000)).await;
    let owner = acquire(&*s, req(k, fp(5), now + 2_000, 1_000)).await;
    assert!(matches!(
        s.complete(k, stale, response(200, b"stale"), now + 60_000).await,
        Err(CompleteError::Fenced)
    ));
    assert!(!s.release(k, stale).await.unwrap(), "a stale release changes nothing");
    s.complete(k, owner, response(200, b"owner"), now + 60_000)
        .await
        .unwrap();
    assert!(matches!(
        s.complete(k, stale, response(200, b"stale"), now + 60_000).await,
        Err(CompleteError::Fenced)
    ));
    assert!(
        matches!(
            s.complete(k, owner, response(200, b"again"), now + 60_000).await,
            Err(CompleteError::Fenced)
        ),
        "a completed record is final"
    );
    match s.claim(req(k, fp(5), now + 2_001, 1_000)).await.unwrap() {
        Claim::Completed { response: r, .. } => assert_eq!(&r.body()[..], b"owner"),
        other => panic!("{other:?}"),
    }
}

pub async fn release_frees_the_key<S: Store + ?Sized>(s: Arc<S>) {
    let now = time::now_ms();
    let k = id(6);
    let t = acquire(&*s, req(k, fp(6), now, 10_000)).await;
    assert!(s.release(k, t).await.unwrap());
    assert!(s.get(k).await.unwrap().is_none());
    let t2 = acquire(&*s, req(k, fp(7), now, 10_000)).await;
    assert!(
        !s.release(k, t).await.unwrap(),
        "the old token cannot release the new claim"
    );
    assert!(s.release(k, t2).await.unwrap());
}

pub async fn ttl_expiry<S: Store + ?Sized>(s: Arc<S>) {
    let now = time::now_ms();
    let k = id(7);
    let t = acquire(&*s, req(k, fp(7), now, 1_000)).await;
    s.complete(k, t, response(200, b"v1"), now + 5_000).await.unwrap();
    assert!(matches!(
        s.claim(req(k, fp(7), now + 4_999, 1_000)).await.unwrap(),
        Claim::Completed { .. }
    ));
    match s.claim(req(k, fp(8), now + 5_000, 1_000)).await.unwrap() {
        Claim::Acquired { takeover, .. } => assert!(!takeover, "an expired record is absent"),
        other => panic!("after the TTL a key executes again: {other:?}"),
    }
}

pub async fn purge_removes_only_expired<S: Store + ?Sized>(s: Arc<S>) {
    let now = time::now_ms();
    let (old, live, flying) = (id(8), id(9), id(10));
    let t = acquire(&*s, req(old, fp(8), now, 1_000)).await;
    s.complete(old, t, response(200, b"old"), now + 1_000).await.unwrap();
    let t = acquire(&*s, req(live, fp(9), now, 1_000)).await;
    s.complete(live, t, response(200, b"live"), now + 1_000_000)
        .await
        .unwrap();
    acquire(&*s, req(flying, fp(10), now, 1_000_000)).await;
    let mut purged = 0;
    for _ in 0..100 {
        let n = s.purge_expired(now + 2_000, 1_000).await.unwrap();
        purged += n.removed;
        if s.get(old).await.unwrap().is_none() {
            break;
        }
    }
    assert!(purged >= 1);
    assert!(s.get(old).await.unwrap().is_none(), "expired record purged");
    assert!(
        matches!(s.get(live).await.unwrap(), Some(Record::Completed { .. })),
        "live record kept"
    );
    assert!(
        matches!(s.get(flying).await.unwrap(), Some(Record::InFlight { .. })),
        "live lease kept"
    );
}

pub async fn large_binary_responses<S: Store + ?Sized>(s: Arc<S>) {
    let now = time::now_ms();
    let k = id(11);
    let body: Vec<u8> = (0..5 * 1024 * 1024).map(|i| (i * 131 % 256) as u8).collect();
    let t = acquire(&*s, req(k, fp(11), now, 10_000)).await;
    let r = response(200, &body);
    s.complete(k, t, r.clone(), now + 60_000).await.unwrap();
    match s.claim(req(k, fp(11), now, 10_000)).await.unwrap() {
        Claim::Completed { response: got, .. } => {
            assert_eq!(got.body(), Bytes::from(body));
            assert_eq!(got, r);
        }
        other => panic!("{other:?}"),
    }
}

pub async fn scopes_are_isolated<S: Store + ?Sized>(s: Arc<S>) {
    let now = time::now_ms();
    let h = ScopeHasher::new(b"conformance secret");
    let key = parse_key(b"same-key").unwrap();
    let (a, b) = (h.record_id(b"Bearer alice", &key), h.record_id(b"Bearer bob", &key));
    let ta = acquire(&*s, req(a, fp(12), now, 10_000)).await;
    s.complete(a, ta, response(200, b"alice"), now + 60_000).await.unwrap();
    let tb = acquire(&*s, req(b, fp(12), now, 10_000)).await;
    s.complete(b, tb, response(200, b"bob"), now + 60_000).await.unwrap();
    for (k, expect) in [(a, &b"alice"[..]), (b, &b"bob"[..])] {
        match s.claim(req(k, fp(12), now, 10_000)).await.unwrap() {
            Claim::Completed { response: r, .. } => assert_eq!(&r.body()[..], expect),
            other => panic!("{other:?}"),
        }
    }
}

pub async fn get_and_delete<S: Store + ?Sized>(s: Arc<S>) {
    let now = time::now_ms();
    let k = id(13);
    assert!(s.get(k).await.unwrap().is_none());
    assert!(!s.delete(k).await.unwrap());
    let t = acquire(&*s, req(k, fp(13), now, 10_000)).await;
    assert!(matches!(s.get(k).await.unwrap(), Some(Record::InFlight { token, .. }) if token == t));
    assert!(s.delete(k).await.unwrap());
    assert!(s.get(k).await.unwrap().is_none());
    s.ping().await.unwrap();
}

/// What every store private to one directory must do: keep a completed record across a close and
/// reopen, answer `Unavailable` once closed, and refuse a second open while one is open. `open`
/// opens (or reopens) the store in `dir`; `close` closes it without dropping it. Returns the
/// closed store so the caller can check more of its closed behaviour.
pub async fn survives_reopen_and_fails_once_closed<S, E>(
    dir: &std::path::Path,
    open: impl Fn(&std::path::Path) -> Result<S, E>,
    close: impl Fn(&S),
) where
    S: Store,
    E: std::fmt::Debug,
{
    let now = time::now_ms();
    let r = req(id(9), fp(1), now, 10_000);
    {
        let s = open(dir).expect("open");
        assert_eq!(s.kind(), "embedded");
        let token = acquire(&s, r).await;
        s.complete(r.id, token, response(201, b"kept"), now + 60_000)
            .await
            .expect("complete");
        close(&s);
        let other = req(id(8), fp(1), now, 10_000);
        assert!(matches!(
            s.claim(other).await,
            Err(idemgate_core::StoreError::Unavailable(_))
        ));
        assert!(s.ping().await.is_err());
    }
    let s = open(dir).expect("reopen");
    assert_eq!(s.len_hint(), Some(1));
    match s.claim(r).await.expect("claim") {
        Claim::Completed { response, .. } => assert_eq!(&response.body()[..], b"kept"),
        other => panic!("{other:?}"),
    }
    assert!(
        open(dir).is_err(),
        "a second open of the same directory must fail while one is open"
    );
}
