//! The client side: `reqwest` with `idemgate_client::IdempotencyMiddleware`.
//!
//! Each charge is one `POST /charges`; the middleware gives it a fresh key and retries transport
//! errors and 409/429/502/503/504 with that same key, so a charge whose answer was lost is not
//! made twice: the retry gets the recorded answer (`Idempotent-Replayed: true`).

use std::time::Duration;

use idemgate_client::{attempts, idempotency_key, was_replayed, IdempotencyMiddleware};
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use serde::Serialize;

use crate::ledger::Charge;

/// A charge to request.
#[derive(Clone, Debug, Serialize)]
pub struct ChargeInput {
    /// Minor units.
    pub amount: i64,
    /// Currency code.
    pub currency: String,
    /// Customer id.
    pub customer: String,
}

/// The answer a client finally got.
#[derive(Clone, Debug)]
pub struct ChargeOutcome {
    /// The final status.
    pub status: u16,
    /// The charge, when the status was 201.
    pub charge: Option<Charge>,
    /// The key every attempt carried.
    pub key: Option<String>,
    /// Attempts made.
    pub attempts: u32,
    /// Whether the final answer was a replay.
    pub replayed: bool,
}

/// A client whose middleware retries with `middleware`'s settings.
pub fn client(middleware: IdempotencyMiddleware) -> Result<ClientWithMiddleware, reqwest::Error> {
    let inner = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .build()?;
    Ok(ClientBuilder::new(inner).with(middleware).build())
}

/// `POST {base}/charges` as `user`, through the middleware.
pub async fn charge(
    client: &ClientWithMiddleware,
    base: &str,
    user: &str,
    input: &ChargeInput,
) -> Result<ChargeOutcome, reqwest_middleware::Error> {
    let resp = client
        .post(format!("{base}/charges"))
        .bearer_auth(user)
        .json(input)
        .send()
        .await?;
    let status = resp.status().as_u16();
    let key = idempotency_key(&resp).map(str::to_string);
    let attempts = attempts(&resp).unwrap_or(1);
    let replayed = was_replayed(&resp);
    let charge = if status == 201 {
        Some(resp.json::<Charge>().await?)
    } else {
        None
    };
    Ok(ChargeOutcome {
        status,
        charge,
        key,
        attempts,
        replayed,
    })
}
