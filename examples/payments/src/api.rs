//! The payments API: axum routes, an authentication step, and the idempotency layer.
//!
//! | route | what it does |
//! |---|---|
//! | `POST /charges` `{amount, currency, customer}` | records a charge in the ledger, 201 with the charge and `Location` |
//! | `GET /charges/{id}` | the charge, or 404 |
//! | `GET /charges/count` | `{"charges": N}` |
//!
//! Every request must carry `Authorization: Bearer <user id>` (a stand-in for real
//! authentication: the token *is* the user id). The authentication step puts the [`User`] into
//! the request extensions, and the idempotency layer scopes keys to it with
//! `ScopeSource::Custom`: two users who happen to send the same key get two separate records.
//!
//! Layer order matters: authentication runs first (outermost), so the scope function sees the
//! user; the idempotency layer runs next, so a replay never reaches the handler or the ledger.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use idemgate_core::{MemoryStore, ScopeHasher};
use idemgate_tower::{IdempotencyConfig, IdempotencyLayer, ScopeSource};
use serde::Deserialize;

use crate::ledger::{Ledger, NewCharge};

/// The authenticated caller, put into the request extensions by [`authenticate`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User(pub String);

/// The body of `POST /charges`.
#[derive(Clone, Debug, Deserialize)]
pub struct ChargeRequest {
    /// Minor units (cents); must be positive.
    pub amount: i64,
    /// Three-letter currency code.
    pub currency: String,
    /// Customer id; must not be empty.
    pub customer: String,
}

/// The idempotency layer the API runs behind: an in-memory store, keys scoped to the
/// authenticated [`User`].
///
/// A real deployment would use a shared store (Redis, PostgreSQL) and a secret from its secret
/// manager; the layer itself is the same.
pub fn idempotency_layer(secret: &[u8]) -> IdempotencyLayer {
    let config = IdempotencyConfig {
        // The scope is the authenticated user id, not a raw header: a caller re-authenticating
        // with a fresh token still finds its records, and nobody else can.
        scope: ScopeSource::Custom(Arc::new(|parts: &axum::http::request::Parts| {
            parts.extensions.get::<User>().map(|u| u.0.as_bytes().to_vec())
        })),
        ..IdempotencyConfig::default()
    };
    IdempotencyLayer::new(Arc::new(MemoryStore::default()), ScopeHasher::new(secret), config)
}

/// The API: routes, the idempotency layer, then authentication (outermost).
pub fn router(ledger: Ledger, secret: &[u8]) -> Router {
    Router::new()
        .route("/charges", post(create_charge))
        .route("/charges/count", get(count_charges))
        .route("/charges/{id}", get(get_charge))
        .with_state(ledger)
        .layer(idempotency_layer(secret))
        .layer(axum::middleware::from_fn(authenticate))
}

/// Reads `Authorization: Bearer <user id>` into a [`User`] extension; 401 without it.
pub async fn authenticate(mut req: Request, next: Next) -> Response {
    let user = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|u| !u.is_empty() && u.len() <= 128);
    let Some(user) = user else {
        return problem(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send Authorization: Bearer <user id>",
        );
    };
    let user = User(user.to_string());
    req.extensions_mut().insert(user);
    next.run(req).await
}

async fn create_charge(
    State(ledger): State<Ledger>,
    Extension(user): Extension<User>,
    headers: HeaderMap,
    Json(body): Json<ChargeRequest>,
) -> Response {
    if body.amount <= 0 {
        return problem(
            StatusCode::BAD_REQUEST,
            "invalid-charge",
            "amount must be a positive number of minor units",
        );
    }
    let currency = body.currency.to_ascii_lowercase();
    if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_lowercase()) {
        return problem(
            StatusCode::BAD_REQUEST,
            "invalid-charge",
            "currency must be a three-letter code",
        );
    }
    if body.customer.trim().is_empty() {
        return problem(StatusCode::BAD_REQUEST, "invalid-charge", "customer must not be empty");
    }
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let new = NewCharge {
        amount: body.amount,
        currency,
        customer: body.customer,
        user: user.0,
        idempotency_key: key,
    };
    match ledger.insert(new).await {
        Ok(charge) => {
            let mut resp = (StatusCode::CREATED, Json(&charge)).into_response();
            if let Ok(loc) = HeaderValue::from_str(&format!("/charges/{}", charge.id)) {
                resp.headers_mut().insert(header::LOCATION, loc);
            }
            resp
        }
        Err(e) => {
            tracing::error!(error = %e, "could not record the charge");
            problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "ledger-error",
                "the charge could not be recorded",
            )
        }
    }
}

async fn count_charges(State(ledger): State<Ledger>) -> Response {
    match ledger.count().await {
        Ok(n) => Json(serde_json::json!({ "charges": n })).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "could not count charges");
            problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "ledger-error",
                "the ledger could not be read",
            )
        }
    }
}

async fn get_charge(State(ledger): State<Ledger>, Path(id): Path<String>) -> Response {
    match ledger.get(&id).await {
        Ok(Some(charge)) => Json(charge).into_response(),
        Ok(None) => problem(StatusCode::NOT_FOUND, "not-found", "no such charge"),
        Err(e) => {
            tracing::error!(error = %e, "could not read a charge");
            problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "ledger-error",
                "the ledger could not be read",
            )
        }
    }
}

fn problem(status: StatusCode, slug: &str, detail: &str) -> Response {
    let body = serde_json::json!({
        "type": format!("https://payments.example/problems/{slug}"),
        "title": status.canonical_reason().unwrap_or("error"),
        "status": status.as_u16(),
        "detail": detail,
    });
    let mut resp = (status, body.to_string()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    resp
}
