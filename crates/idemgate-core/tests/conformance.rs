//! The store contract's conformance suite against the memory store.

use std::sync::Arc;

use idemgate_core::MemoryStore;

idemgate_store_conformance::conformance_tests!(async { Arc::new(MemoryStore::default()) });

#[tokio::test]
async fn capacity_is_honoured_and_expired_records_make_room() {
    use idemgate_core::{time, ClaimRequest, Fingerprint, RecordId, Store, StoreError};
    let s = MemoryStore::with_capacity(100);
    let now = time::now_ms();
    let claim = |i: u32, now_ms: u64, lease_ms: u64| {
        let mut id = [0u8; 32];
        id[..4].copy_from_slice(&i.to_le_bytes());
        id[31] = (i % 64) as u8;
        ClaimRequest {
            id: RecordId(id),
            fingerprint: Fingerprint([0; 32]),
            now_ms,
            lease_ms,
        }
    };
    for i in 0..100 {
        s.claim(claim(i, now, 1_000)).await.unwrap();
    }
    assert_eq!(s.len_hint(), Some(100));
    assert!(matches!(
        s.claim(claim(100, now, 1_000)).await,
        Err(StoreError::Full { capacity: 100 })
    ));
    // Once leases have expired, a full store makes room from the expired records of the shard.
    let mut admitted = 0;
    for i in 100..200 {
        if s.claim(claim(i, now + 5_000, 1_000)).await.is_ok() {
            admitted += 1;
        }
    }
    assert!(admitted > 0);
    assert!(s.len_hint().unwrap() <= 100);
}
