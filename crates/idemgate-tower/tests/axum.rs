//! The layer in a Rust service: an axum app over a real socket, with the caller's identity taken
//! from request extensions (as an authentication middleware would set it), on the memory and the
//! embedded store. The same rules as the gateway: replay, 422, 409, 400, scope.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use idemgate_core::{MemoryStore, ScopeHasher, Store};
use idemgate_tower::{IdempotencyConfig, IdempotencyLayer, ScopeSource};

/// The authenticated user, as an auth middleware puts it in the request's extensions.
#[derive(Clone)]
struct UserId(String);

async fn auth(mut req: Request, next: Next) -> axum::response::Response {
    // A stand-in for real authentication: the user comes from a bearer token.
    let user = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|u| UserId(u.to_string()));
    if let Some(u) = user {
        req.extensions_mut().insert(u);
    }
    next.run(req).await
}

/// The handler's state: executions, and a wake-up each time one starts.
type Charges = (Arc<AtomicU64>, Arc<tokio::sync::Notify>);

async fn charge(State((n, started)): State<Charges>, body: Bytes) -> (http::StatusCode, String) {
    let n = n.fetch_add(1, Ordering::SeqCst) + 1;
    started.notify_waiters();
    tokio::time::sleep(Duration::from_millis(if body.starts_with(b"slow") { 1000 } else { 0 })).await;
    (http::StatusCode::CREATED, format!("{{\"charge\":{n}}}"))
}

async fn serve(store: Arc<dyn Store>) -> (std::net::SocketAddr, Charges) {
    let count: Charges = (Arc::new(AtomicU64::new(0)), Arc::new(tokio::sync::Notify::new()));
    let config = IdempotencyConfig {
        scope: ScopeSource::Custom(Arc::new(|parts| {
            parts.extensions.get::<UserId>().map(|u| u.0.as_bytes().to_vec())
        })),
        ..IdempotencyConfig::default()
    };
    let layer = IdempotencyLayer::new(store, ScopeHasher::new(b"test secret for the axum layer"), config);
    // Layers added later run first: auth sets the user, then the idempotency layer reads it.
    let app = Router::new()
        .route("/charges", post(charge))
        .with_state(count.clone())
        .layer(layer)
        .layer(axum::middleware::from_fn(auth));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, count)
}

struct Reply {
    status: u16,
    replayed: bool,
    content_type: Option<String>,
    body: Bytes,
}

async fn post_charge(addr: std::net::SocketAddr, key: &str, user: &str, body: &'static str) -> Reply {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = http::Request::post(format!("http://{addr}/charges"))
        .header("idempotency-key", key)
        .header("authorization", format!("Bearer {user}"))
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .unwrap()
        .unwrap();
    let status = resp.status().as_u16();
    let replayed = resp.headers().get("idempotent-replayed").is_some_and(|v| v == "true");
    let content_type = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        replayed,
        content_type,
        body,
    }
}

async fn the_gateway_rules_hold_in_process(store: Arc<dyn Store>) {
    let (addr, (count, started)) = serve(store).await;
    let first = post_charge(addr, "k1", "alice", "a").await;
    assert_eq!(first.status, 201);
    assert!(!first.replayed);
    let again = post_charge(addr, "k1", "alice", "a").await;
    assert!(again.replayed);
    assert_eq!(again.body, first.body);
    assert_eq!(count.load(Ordering::SeqCst), 1);
    // Scope from the closure: the same key under bob is bob's own.
    let bob = post_charge(addr, "k1", "bob", "a").await;
    assert!(!bob.replayed);
    assert_eq!(count.load(Ordering::SeqCst), 2);
    // 422 on another body, 400 on a bad key: problem+json.
    let reused = post_charge(addr, "k1", "alice", "b").await;
    assert_eq!(reused.status, 422);
    assert_eq!(reused.content_type.as_deref(), Some("application/problem+json"));
    let bad = post_charge(addr, "a b", "alice", "a").await;
    assert_eq!(bad.status, 400);
    // 409 while in flight.
    let started_slow = started.notified();
    tokio::pin!(started_slow);
    started_slow.as_mut().enable();
    let slow = tokio::spawn(post_charge(addr, "k2", "alice", "slow"));
    tokio::time::timeout(Duration::from_secs(10), started_slow)
        .await
        .expect("the slow charge started");
    assert_eq!(post_charge(addr, "k2", "alice", "slow").await.status, 409);
    assert_eq!(slow.await.unwrap().status, 201);
    assert_eq!(count.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn memory_store() {
    the_gateway_rules_hold_in_process(Arc::new(MemoryStore::default())).await;
}

#[tokio::test]
async fn embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(idemgate_store_redb::RedbStore::open(dir.path()).unwrap());
    the_gateway_rules_hold_in_process(store).await;
}
