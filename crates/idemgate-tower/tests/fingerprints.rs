//! Fingerprints across versions: a record written before large bodies were fingerprinted by
//! their BLAKE3 digest (its fingerprint has every body byte in the SHA-256) is still the same
//! request to the layer, and a different body under its key is still refused.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use idemgate_core::fingerprint::BODY_DIGEST_MIN;
use idemgate_core::{
    parse_key, Claim, ClaimRequest, FingerprintOptions, MemoryStore, ScopeHasher, Store, StoredResponse,
};
use idemgate_tower::{IdempotencyConfig, IdempotencyLayer, RequestBody, ScopeSource};
use tower::{Layer, ServiceExt};

const SECRET: &[u8] = b"fingerprints across versions";

fn upload(key: &str, body: &Bytes) -> Request<Full<Bytes>> {
    Request::post("/uploads")
        .header("idempotency-key", key)
        .header("content-type", "application/octet-stream")
        .body(Full::new(body.clone()))
        .unwrap()
}

/// Writes a completed record for `upload(key, body)` the way an earlier version did.
async fn record_as_an_earlier_version(store: &MemoryStore, key: &str, body: &Bytes) {
    let mut headers = HeaderMap::new();
    headers.insert(http::header::CONTENT_TYPE, "application/octet-stream".parse().unwrap());
    let uri: Uri = "/uploads".parse().unwrap();
    let opts = FingerprintOptions::default();
    let legacy = opts.legacy_fingerprint(&Method::POST, &uri, &headers, body);
    assert_ne!(
        legacy,
        opts.fingerprint(&Method::POST, &uri, &headers, body),
        "a large body's fingerprint changed form"
    );
    let id = ScopeHasher::new(SECRET).record_id(&[], &parse_key(key.as_bytes()).unwrap());
    let now_ms = idemgate_core::time::now_ms();
    let claim = store
        .claim(ClaimRequest {
            id,
            fingerprint: legacy,
            now_ms,
            lease_ms: 60_000,
        })
        .await
        .unwrap();
    let Claim::Acquired { token, .. } = claim else {
        panic!("fresh key: {claim:?}")
    };
    let response = StoredResponse::new(StatusCode::CREATED, &HeaderMap::new(), b"stored by an earlier version");
    store.complete(id, token, response, now_ms + 60_000).await.unwrap();
}

#[tokio::test]
async fn a_large_body_recorded_by_an_earlier_version_replays_and_a_changed_one_is_refused() {
    let store = Arc::new(MemoryStore::default());
    let body = Bytes::from(vec![b'z'; 4 * BODY_DIGEST_MIN]);
    record_as_an_earlier_version(&store, "up-1", &body).await;

    let runs = Arc::new(AtomicU64::new(0));
    let counter = runs.clone();
    let handler = tower::service_fn(move |_req: Request<RequestBody<Full<Bytes>>>| {
        counter.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"executed")))) }
    });
    let config = IdempotencyConfig {
        scope: ScopeSource::Global,
        ..IdempotencyConfig::default()
    };
    let app = IdempotencyLayer::new(store.clone(), ScopeHasher::new(SECRET), config).layer(handler);

    let replay = app.clone().oneshot(upload("up-1", &body)).await.unwrap();
    assert_eq!(replay.status(), StatusCode::CREATED);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(
        replay.into_body().collect().await.unwrap().to_bytes(),
        "stored by an earlier version"
    );

    let mut changed = body.to_vec();
    changed[BODY_DIGEST_MIN] = b'y';
    let refused = app
        .clone()
        .oneshot(upload("up-1", &Bytes::from(changed)))
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(runs.load(Ordering::SeqCst), 0, "nothing executed");

    // A new key records the new form, and its retry replays it.
    let first = app.clone().oneshot(upload("up-2", &body)).await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let retry = app.clone().oneshot(upload("up-2", &body)).await.unwrap();
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}
