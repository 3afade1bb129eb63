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
    let now = time::now_ms();
    let req = ClaimRequest {
        id: RecordId([9; 32]),
        fingerprint: Fingerprint([1; 32]),
        now_ms: now,
        lease_ms: 10_000,
    };
    {
        let s = LogStore::open(dir.path()).unwrap();
        assert_eq!(s.kind(), "embedded");
        let Claim::Acquired { token, .. } = s.claim(req).await.unwrap() else {
            panic!()
        };
        let resp = StoredResponse::new(http::StatusCode::CREATED, &http::HeaderMap::new(), b"kept");
        s.complete(req.id, token, resp, now + 60_000).await.unwrap();
        s.close();
        assert!(matches!(
            s.claim(ClaimRequest {
                id: RecordId([8; 32]),
                ..req
            })
            .await,
            Err(StoreError::Unavailable(_))
        ));
        // Closed means closed, also for what the fast path could answer.
        assert!(matches!(s.claim(req).await, Err(StoreError::Unavailable(_))));
        assert!(matches!(s.get(req.id).await, Err(StoreError::Unavailable(_))));
        assert!(s.ping().await.is_err());
    }
    let s = LogStore::open(dir.path()).unwrap();
    assert_eq!(s.len_hint(), Some(1));
    match s.claim(req).await.unwrap() {
        Claim::Completed { response, .. } => assert_eq!(&response.body()[..], b"kept"),
        other => panic!("{other:?}"),
    }
    // A second process cannot open the same store.
    assert!(matches!(LogStore::open(dir.path()), Err(OpenError::Locked { .. })));
}
