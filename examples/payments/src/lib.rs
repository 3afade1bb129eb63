//! Example: a payments API whose charges execute once, however often clients retry.
//!
//! - [`ledger`]: a real SQLite ledger (one row per executed charge), driven from async code
//!   through `spawn_blocking`.
//! - [`api`]: the axum router (`POST /charges`, `GET /charges/count`) wrapped in
//!   `idemgate_tower::IdempotencyLayer`, with the caller's scope taken from an authenticated user
//!   id in the request extensions (`ScopeSource::Custom`).
//! - [`flaky`]: a TCP proxy that lets the server answer, then cuts a share of connections before
//!   the client sees the answer: the worst case for a payment (done, but the client cannot know).
//! - [`client`]: a `reqwest` client with `idemgate_client::IdempotencyMiddleware`, which retries
//!   those failures with the same key and gets the recorded answer back.
//!
//! The test `tests/thousand_charges.rs` puts the four together.

pub mod api;
pub mod client;
pub mod flaky;
pub mod ledger;
