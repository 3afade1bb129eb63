//! The store contract's conformance suite against the log store, plus what only a durable store
//! must do: keep records across reopen, and fail cleanly once closed.

use std::sync::Arc;

use idemgate_core::{time, Claim, ClaimRequest, Fingerprint, RecordId, Store, StoreError, StoredResponse};
use idemgate_store_log::{LogStore, OpenError};

async fn fresh() -> Arc<LogStore> {
    let dir = tempfile::tempdir().unwrap().keep();
    Arc::new(LogStore::open(dir).unwrap())
}

idemgate_store_conformance::conformance_tests!(fresh());

#[tokio::test]
async fn records_survive_reopen_and_a_closed_store_reports_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    idemgate_store_conformance::survives_reopen_and_fails_once_closed(
        dir.path(),
        |d| LogStore::open(d),
        LogStore::close,
    )
    .await;
    let _open = LogStore::open(dir.path()).unwrap();
    assert!(
        matches!(LogStore::open(dir.path()), Err(OpenError::Locked { .. })),
        "the lock is the reason"
    );
}

/// Closed means closed, also for what the read fast path could answer without the writer.
#[tokio::test]
async fn a_closed_store_answers_nothing_from_its_index() {
    let dir = tempfile::tempdir().unwrap();
    let s = LogStore::open(dir.path()).unwrap();
    let now = time::now_ms();
    let req = ClaimRequest {
        id: RecordId([9; 32]),
        fingerprint: Fingerprint([1; 32]),
        now_ms: now,
        lease_ms: 10_000,
    };
    let Claim::Acquired { token, .. } = s.claim(req).await.unwrap() else {
        panic!()
    };
    let resp = StoredResponse::new(http::StatusCode::CREATED, &http::HeaderMap::new(), b"kept");
    s.complete(req.id, token, resp, now + 60_000).await.unwrap();
    s.close();
    assert!(matches!(s.claim(req).await, Err(StoreError::Unavailable(_))));
    assert!(matches!(s.get(req.id).await, Err(StoreError::Unavailable(_))));
}
