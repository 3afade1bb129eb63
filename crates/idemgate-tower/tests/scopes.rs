//! Scopes of different kinds share one store and one secret without ever sharing a record: a
//! scope header sent twice, a run-once job's namespace, and an application's own identity.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use idemgate_core::{MemoryStore, ScopeHasher, Store};
use idemgate_jobs::RunOnce;
use idemgate_tower::{IdempotencyConfig, IdempotencyLayer, RequestBody, ScopeSource};
use tower::{Layer, Service, ServiceExt};

const SECRET: &[u8] = b"one secret for jobs and requests";

/// A layer over a handler that counts its executions and answers 201 with the count.
fn app(
    store: Arc<dyn Store>,
    scope: ScopeSource,
) -> (
    impl Service<
            Request<Full<Bytes>>,
            Response = Response<impl http_body::Body<Data = Bytes, Error: std::fmt::Debug>>,
            Error = Infallible,
        > + Clone,
    Arc<AtomicU64>,
) {
    let runs = Arc::new(AtomicU64::new(0));
    let counter = runs.clone();
    let handler = tower::service_fn(move |_req: Request<RequestBody<Full<Bytes>>>| {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            let mut resp = Response::new(Full::new(Bytes::from(format!("http {n}"))));
            *resp.status_mut() = StatusCode::CREATED;
            Ok::<_, Infallible>(resp)
        }
    });
    let config = IdempotencyConfig {
        scope,
        ..IdempotencyConfig::default()
    };
    (
        IdempotencyLayer::new(store, ScopeHasher::new(SECRET), config).layer(handler),
        runs,
    )
}

async fn record_a_job(store: &Arc<dyn Store>, namespace: &str, key: &str) {
    let jobs = RunOnce::builder(store.clone(), SECRET).namespace(namespace).build();
    let run = jobs
        .run(key, &"payload", || async {
            Ok::<_, Infallible>("job result".to_string())
        })
        .await
        .unwrap();
    assert!(!run.was_replayed());
}

#[tokio::test]
async fn a_scope_header_sent_twice_never_meets_a_job_record() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    record_a_job(&store, "default", "k1").await;
    let (app, runs) = app(store, ScopeSource::Header(http::HeaderName::from_static("x-tenant")));
    // The two values joined naively would read "idemgate-jobs\0default": the job's scope.
    let request = || {
        Request::post("/charges")
            .header("idempotency-key", "k1")
            .header("x-tenant", "idemgate-jobs")
            .header("x-tenant", "default")
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap()
    };
    let first = app.clone().oneshot(request()).await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED, "executed, not the job's record");
    assert!(first.headers().get("idempotent-replayed").is_none());
    assert_eq!(first.into_body().collect().await.unwrap().to_bytes(), "http 1");
    // The two-valued scope is a scope of its own: the retry replays its own response.
    let retry = app.clone().oneshot(request()).await.unwrap();
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_eq!(retry.into_body().collect().await.unwrap().to_bytes(), "http 1");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_application_scope_never_meets_a_job_record() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    record_a_job(&store, "billing", "k1").await;
    // An application whose identity happens to be spelled like the job's scope.
    let scope = ScopeSource::Custom(Arc::new(|_| Some(b"idemgate-jobs\0billing".to_vec())));
    let (app, runs) = app(store, scope);
    let request = Request::post("/charges")
        .header("idempotency-key", "k1")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    let first = app.oneshot(request).await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    assert!(first.headers().get("idempotent-replayed").is_none());
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// The layer purges expired records by itself (`purge_interval`), on the runtime of its first
/// protected request, and its purge task ends with the layer. Tokio's clock is paused: each wait
/// below only lets the purge task's next tick come, in virtual time.
#[tokio::test(start_paused = true)]
async fn the_layer_purges_expired_records_by_itself() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    let now = Arc::new(AtomicU64::new(1_000_000));
    let clock = now.clone();
    let config = IdempotencyConfig {
        ttl: std::time::Duration::from_secs(60),
        purge_interval: Some(std::time::Duration::from_millis(20)),
        clock: idemgate_tower::Clock(Arc::new(move || clock.load(Ordering::SeqCst))),
        ..IdempotencyConfig::default()
    };
    let handler = tower::service_fn(|_req: Request<RequestBody<Full<Bytes>>>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    });
    let app = IdempotencyLayer::new(store.clone(), ScopeHasher::new(SECRET), config).layer(handler);
    for key in ["a", "b", "c"] {
        let req = Request::post("/p")
            .header("idempotency-key", key)
            .body(Full::new(Bytes::new()))
            .unwrap();
        app.clone().oneshot(req).await.unwrap();
    }
    assert_eq!(store.len_hint(), Some(3));
    // Past the TTL: the records are purged within a few intervals (bounded wait).
    now.fetch_add(61_000, Ordering::SeqCst);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while store.len_hint() != Some(0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never purged: {:?}",
            store.len_hint()
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // The task holds the store only while the layer lives.
    drop(app);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while Arc::strong_count(&store) > 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the purge task outlived the layer"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// A replica whose secret is not the store's is told so by `check_secret`.
#[tokio::test]
async fn check_secret_refuses_a_replica_with_another_secret() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(idemgate_store_redb::RedbStore::open(dir.path()).unwrap());
    let layer =
        |secret: &[u8]| IdempotencyLayer::new(store.clone(), ScopeHasher::new(secret), IdempotencyConfig::default());
    layer(SECRET).check_secret().await.unwrap();
    layer(SECRET).check_secret().await.unwrap();
    let other = layer(b"another secret, not the fleet's").check_secret().await;
    assert!(
        matches!(other, Err(idemgate_core::StoreError::SecretMismatch)),
        "{other:?}"
    );
}
