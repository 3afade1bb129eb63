//! The in-memory store: sharded hash maps, no global lock.
//!
//! Records are kept in 64 shards, each a `std::sync::Mutex` held only for one map operation (never
//! across an await). Ids are already uniform keyed hashes, so the maps hash them with an identity
//! hasher. A capacity bounds the number of records: when it is reached, expired records are purged
//! from the shard first, and a claim that would still exceed it fails with [`StoreError::Full`]
//! (records are never evicted: forgetting a live record would let a repeat execute twice).
//! Records live as long as the process.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::record::{decide_claim, decide_complete, decide_release, Claim, ClaimRequest, FencingToken, Record};
use crate::response::StoredResponse;
use crate::scope::RecordId;
use crate::store::{BoxFuture, CompleteError, Purged, Store, StoreError};

const SHARDS: usize = 64;

/// Hashes a [`RecordId`] by its first eight bytes (they are already a keyed hash).
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        if bytes.len() >= 8 {
            self.0 = u64::from_le_bytes(bytes[..8].try_into().unwrap_or([0; 8]));
        }
    }
    fn write_usize(&mut self, _: usize) {}
}

type Shard = HashMap<RecordId, Record, BuildHasherDefault<IdHasher>>;

/// The in-memory store.
#[derive(Debug)]
pub struct MemoryStore {
    shards: Box<[Mutex<Shard>]>,
    count: AtomicUsize,
    capacity: usize,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::with_capacity(usize::MAX)
    }
}

impl MemoryStore {
    /// A store holding at most `capacity` records.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            count: AtomicUsize::new(0),
            capacity,
        }
    }

    fn shard(&self, id: &RecordId) -> MutexGuard<'_, Shard> {
        let m = &self.shards[id.0[31] as usize % SHARDS];
        // A panic while holding a shard cannot leave a record half-written (each map call is
        // atomic), so a poisoned lock is safe to keep using.
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn claim_now(&self, req: &ClaimRequest) -> Result<Claim, StoreError> {
        let mut shard = self.shard(&req.id);
        let existing = shard.get(&req.id);
        let (claim, write) = decide_claim(existing, req);
        if let Some(record) = write {
            if existing.is_none() {
                // Reserve a slot first, so concurrent claims on other shards cannot overshoot.
                if self.count.fetch_add(1, Ordering::AcqRel) >= self.capacity {
                    let before = shard.len();
                    shard.retain(|_, r| !r.is_expired(req.now_ms));
                    let freed = before - shard.len();
                    let now_count = self.count.fetch_sub(freed, Ordering::AcqRel) - freed;
                    if now_count > self.capacity {
                        self.count.fetch_sub(1, Ordering::AcqRel);
                        return Err(StoreError::Full {
                            capacity: self.capacity,
                        });
                    }
                }
            }
            shard.insert(req.id, record);
        }
        Ok(claim)
    }

    fn complete_now(
        &self,
        id: RecordId,
        token: FencingToken,
        response: StoredResponse,
        expires_at_ms: u64,
    ) -> Result<(), CompleteError> {
        let mut shard = self.shard(&id);
        let done =
            decide_complete(shard.get(&id), token, response, expires_at_ms).map_err(|()| CompleteError::Fenced)?;
        shard.insert(id, done);
        Ok(())
    }

    fn remove(&self, id: &RecordId, only_if: impl FnOnce(&Record) -> bool) -> bool {
        let mut shard = self.shard(id);
        if shard.get(id).is_some_and(only_if) {
            shard.remove(id);
            self.count.fetch_sub(1, Ordering::Relaxed);
            true
        } else {
            false
        }
    }
}

impl Store for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn claim(&self, req: ClaimRequest) -> BoxFuture<'_, Result<Claim, StoreError>> {
        let r = self.claim_now(&req);
        Box::pin(std::future::ready(r))
    }

    fn complete(
        &self,
        id: RecordId,
        token: FencingToken,
        response: StoredResponse,
        expires_at_ms: u64,
    ) -> BoxFuture<'_, Result<(), CompleteError>> {
        let r = self.complete_now(id, token, response, expires_at_ms);
        Box::pin(std::future::ready(r))
    }

    fn release(&self, id: RecordId, token: FencingToken) -> BoxFuture<'_, Result<bool, StoreError>> {
        let r = self.remove(&id, |r| decide_release(Some(r), token));
        Box::pin(std::future::ready(Ok(r)))
    }

    fn get(&self, id: RecordId) -> BoxFuture<'_, Result<Option<Record>, StoreError>> {
        let r = self.shard(&id).get(&id).cloned();
        Box::pin(std::future::ready(Ok(r)))
    }

    fn delete(&self, id: RecordId) -> BoxFuture<'_, Result<bool, StoreError>> {
        let r = self.remove(&id, |_| true);
        Box::pin(std::future::ready(Ok(r)))
    }

    fn purge_expired(&self, now_ms: u64, limit: usize) -> BoxFuture<'_, Result<Purged, StoreError>> {
        // One shard at a time, so traffic on the other 63 shards is never stalled.
        let mut purged = 0;
        for shard in self.shards.iter() {
            if purged >= limit {
                break;
            }
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            let before = shard.len();
            let mut budget = limit - purged;
            shard.retain(|_, r| {
                if budget > 0 && r.is_expired(now_ms) {
                    budget -= 1;
                    false
                } else {
                    true
                }
            });
            let n = before - shard.len();
            self.count.fetch_sub(n, Ordering::Relaxed);
            purged += n;
        }
        let report = Purged {
            removed: purged,
            more: purged >= limit,
        };
        Box::pin(std::future::ready(Ok(report)))
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn len_hint(&self) -> Option<u64> {
        Some(self.count.load(Ordering::Relaxed) as u64)
    }
}
