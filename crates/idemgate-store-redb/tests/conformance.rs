//! The store contract's conformance suite against the embedded store, plus what only a durable
//! store must do: keep records across reopen, and fail cleanly once closed.

use std::sync::Arc;

use idemgate_store_redb::RedbStore;

async fn fresh() -> Arc<RedbStore> {
    let dir = tempfile::tempdir().unwrap().keep();
    Arc::new(RedbStore::open(dir).unwrap())
}

idemgate_store_conformance::conformance_tests!(fresh());

#[tokio::test]
async fn records_survive_reopen_and_a_closed_store_reports_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    idemgate_store_conformance::survives_reopen_and_fails_once_closed(
        dir.path(),
        |d| RedbStore::open(d),
        RedbStore::close,
    )
    .await;
}
