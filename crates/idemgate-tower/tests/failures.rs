//! How the layer answers when the wrapped service itself fails: a panic is a 502 problem, the
//! claimed key stays locked for its lease (the operation may have taken effect), and the layer
//! goes on serving.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use idemgate_core::{MemoryStore, ScopeHasher};
use idemgate_tower::{IdempotencyConfig, IdempotencyLayer, RequestBody};
use tower::{Layer, ServiceExt};

fn post(key: &str, body: &'static str) -> Request<Full<Bytes>> {
    Request::post("/charges")
        .header("idempotency-key", key)
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

#[tokio::test]
async fn a_panicking_service_answers_502_and_keeps_the_key_locked() {
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
        ..IdempotencyConfig::default()
    };
    let layer = IdempotencyLayer::new(
        Arc::new(MemoryStore::default()),
        ScopeHasher::new(b"failures test secret"),
        config,
    );
    let app = layer.layer(handler);

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
