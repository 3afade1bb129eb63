//! An axum service with idempotency keys, in-process: `cargo run -p idemgate-tower --example axum`
//! then
//!
//! ```text
//! curl -i localhost:3001/orders -H 'Idempotency-Key: o-1' -H 'Authorization: Bearer alice' -d '{"sku":"A"}'
//! ```
//!
//! (run it again: `Idempotent-Replayed: true`, and the order was created once).
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::routing::post;
use axum::Router;
use idemgate_core::{MemoryStore, ScopeHasher};
use idemgate_tower::{IdempotencyConfig, IdempotencyLayer};

async fn create_order(State(orders): State<Arc<AtomicU64>>) -> (http::StatusCode, String) {
    let n = orders.fetch_add(1, Ordering::SeqCst) + 1;
    (http::StatusCode::CREATED, format!("{{\"order\":{n}}}\n"))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let layer = IdempotencyLayer::new(
        Arc::new(MemoryStore::default()),
        // In production: a secret from your configuration, the same on every replica.
        ScopeHasher::random(),
        // Keys scoped to the Authorization header; POST and PATCH protected; 24 h TTL.
        IdempotencyConfig::default(),
    );
    let app = Router::new()
        .route("/orders", post(create_order))
        .with_state(Arc::new(AtomicU64::new(0)))
        .layer(layer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3001").await?;
    println!("listening on http://127.0.0.1:3001");
    axum::serve(listener, app).await
}
