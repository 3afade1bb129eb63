//! How the layer answers when the wrapped service itself fails: a panic is a 502 problem, the
//! claimed key stays locked for its lease (the operation may have taken effect), a panic before
//! any claim (in a scope function) holds nothing, and the layer goes on serving.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use idemgate_core::{MemoryStore, ScopeHasher};
use idemgate_tower::{IdempotencyConfig, IdempotencyLayer, RequestBody, ScopeSource};
use tower::{Layer, ServiceExt};

fn post(key: &str, body: &'static str) -> Request<Full<Bytes>> {
    Request::post("/charges")
        .header("idempotency-key", key)
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

/// The layer (a 7 s lease on the memory store) over a handler that counts its calls and fails
/// after "charging" when the key is `boom`.
fn app(
    scope: ScopeSource,
) -> (
    impl tower::Service<
            Request<Full<Bytes>>,
            Response = Response<impl http_body::Body<Error: std::fmt::Debug>>,
            Error = Infallible,
        > + Clone,
    Arc<AtomicU64>,
) {
    let calls = Arc::new(AtomicU64::new(0));
    let counter = calls.clone();
    let handler = tower::service_fn(move |req: Request<RequestBody<Full<Bytes>>>| {
        counter.fetch_add(1, Ordering::SeqCst);
        let boom = req.headers()["idempotency-key"] == "boom";
        async move {
            assert!(!boom, "the handler failed after charging");
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
        }
    });
    let config = IdempotencyConfig {
        lock_timeout: Duration::from_secs(7),
        scope,
        ..IdempotencyConfig::default()
    };
    let hasher = ScopeHasher::new(b"failures test secret");
    let layer = IdempotencyLayer::new(Arc::new(MemoryStore::default()), hasher, config);
    (layer.layer(handler), calls)
}

#[tokio::test]
async fn a_panicking_service_answers_502_and_keeps_the_key_locked() {
    let (app, calls) = app(ScopeSource::Header(http::header::AUTHORIZATION));

    let failed = app.clone().oneshot(post("boom", "{}")).await.unwrap();
    assert_eq!(failed.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(failed.headers()["content-type"], "application/problem+json");
    assert_eq!(
        failed.headers()["retry-after"],
        "7",
        "retry after the lease, not sooner"
    );
    let doc: serde_json::Value =
        serde_json::from_slice(&failed.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(doc["type"], "https://idemgate.dev/problems/upstream-failed");

    // The key is still locked: a retry within the lease is a 409, and does not run the handler.
    let retry = app.clone().oneshot(post("boom", "{}")).await.unwrap();
    assert_eq!(retry.status(), StatusCode::CONFLICT);
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // Other keys are served as usual.
    let fine = app.clone().oneshot(post("fine", "{}")).await.unwrap();
    assert_eq!(fine.status(), StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_panic_before_the_claim_answers_502_and_holds_nothing() {
    // A scope function that fails on one caller's requests.
    let scope = ScopeSource::Custom(Arc::new(|parts| {
        assert!(parts.headers.get("x-broken").is_none(), "the scope function failed");
        Some(b"caller".to_vec())
    }));
    let (app, calls) = app(scope);
    let broken = || {
        let mut r = post("k", "{}");
        r.headers_mut().insert("x-broken", http::HeaderValue::from_static("1"));
        r
    };
    let failed = app.clone().oneshot(broken()).await.unwrap();
    assert_eq!(failed.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(failed.headers()["retry-after"], "1", "nothing is locked: retry at once");
    assert_eq!(calls.load(Ordering::SeqCst), 0, "nothing was forwarded");
    // Nothing was claimed: the same key from a working request executes at once.
    let fine = app.clone().oneshot(post("k", "{}")).await.unwrap();
    assert_eq!(fine.status(), StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}
