//! Runs the payments API on `127.0.0.1:3000` (or `PAYMENTS_ADDR`) with its ledger in
//! `./payments.db` (or `PAYMENTS_DB`). See this example's README.md for curl lines to try.

use std::path::PathBuf;

use payments::api;
use payments::ledger::Ledger;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let addr = std::env::var("PAYMENTS_ADDR").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let db = PathBuf::from(std::env::var("PAYMENTS_DB").unwrap_or_else(|_| "payments.db".into()));
    let ledger = Ledger::open(&db)?;
    // A demo secret. In production: 32 random bytes from your secret manager, shared by every
    // instance behind the load balancer.
    let secret = std::env::var("PAYMENTS_SCOPE_SECRET").unwrap_or_else(|_| "demo secret, change me".into());
    let app = api::router(ledger, secret.as_bytes());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!(
        "payments API listening on http://{} (ledger {})",
        listener.local_addr()?,
        db.display()
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
