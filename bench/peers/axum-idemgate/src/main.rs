//! Bench target: the same handler as the axum-idempotent peer (bench/peers/axum-idempotent), in
//! the same kind of axum app, wrapped in idemgate-tower's `IdempotencyLayer` on the memory store:
//! idemgate as a Rust service gets it, compared like for like with axum-idempotent (both
//! in-process, no proxy hop). Keys are scoped globally (no session needed), POST is protected.
//!
//!   PORT=9103 DELAY_MS=0 ./axum-idemgate-peer      (delay also via ?delay_ms=N)
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use idemgate_core::{MemoryStore, ScopeHasher};
use idemgate_tower::{IdempotencyConfig, IdempotencyLayer, ScopeSource};
use serde::Deserialize;

#[derive(Clone)]
struct AppState {
    executions: Arc<AtomicU64>,
    default_delay_ms: u64,
}

#[derive(Deserialize)]
struct PayQuery {
    delay_ms: Option<u64>,
}

async fn payments(State(st): State<AppState>, Query(q): Query<PayQuery>, body: Bytes) -> Response {
    let n = st.executions.fetch_add(1, Ordering::Relaxed) + 1;
    let delay = q.delay_ms.unwrap_or(st.default_delay_ms);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let json = format!(
        "{{\"id\":\"pay_{n:010}\",\"status\":\"succeeded\",\"amount\":1999,\"currency\":\"usd\",\"execution\":{n},\"req_bytes\":{}}}",
        body.len()
    );
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], json).into_response()
}

#[tokio::main]
async fn main() {
    let port: u16 = std::env::var("PORT").ok().and_then(|s| s.parse().ok()).unwrap_or(9103);
    let default_delay_ms = std::env::var("DELAY_MS").ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    let st = AppState { executions: Arc::new(AtomicU64::new(0)), default_delay_ms };
    let config = IdempotencyConfig { scope: ScopeSource::Global, ..IdempotencyConfig::default() };
    let layer = IdempotencyLayer::new(Arc::new(MemoryStore::default()), ScopeHasher::random(), config);

    let stats_st = st.clone();
    let app = Router::new()
        .route("/payments", post(payments))
        .layer(layer)
        .route(
            "/stats",
            get(move || async move { format!("{{\"executions\":{}}}", stats_st.executions.load(Ordering::Relaxed)) }),
        )
        .with_state(st);

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
    eprintln!("axum-idemgate peer listening on 127.0.0.1:{port}");
    axum::serve(listener, app).await.expect("serve");
}
