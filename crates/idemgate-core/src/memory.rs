//! The in-memory store: sharded hash tables, no global lock, one allocation per record.
//!
//! Records are kept in 64 shards, each a `std::sync::Mutex` held only for one table operation
//! (never across an await) and on cache lines of its own; a claim probes its table once. A
//! record is one exactly-sized allocation, `id ++ Record::encode()`, and a table slot is that
//! one pointer, so a stored record costs its bytes plus about 16 bytes
//! of table (twice that just after the table doubles) — the hash table never holds
//! response-sized slots, and a stored record never pins a network buffer. Ids are already
//! uniform keyed hashes, so the tables hash them by their first eight bytes. A claim decodes the
//! record it finds (a replay copies the response out once). A capacity bounds the number of
//! records: when it is reached, expired records are purged from the shard first, and a claim
//! that would still exceed it fails with [`StoreError::Full`] (records are never evicted:
//! forgetting a live record would let a repeat execute twice). Records live as long as the
//! process.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use hashbrown::hash_table::{Entry, HashTable};

use crate::record::{decide_claim, decide_complete, decide_release, Claim, ClaimRequest, FencingToken, Record};
use crate::response::StoredResponse;
use crate::scope::RecordId;
use crate::store::{BoxFuture, CompleteError, Purged, Store, StoreError};

const SHARDS: usize = 64;
const ID: usize = 32;

/// One stored record: its id, then [`Record::encode`]'s bytes.
type Slot = Box<[u8]>;

fn hash(id: &[u8]) -> u64 {
    // Ids are keyed hashes: any eight of their bytes are uniform.
    u64::from_le_bytes(id[..8].try_into().unwrap_or([0; 8]))
}

fn slot_hash(slot: &Slot) -> u64 {
    hash(&slot[..ID])
}

fn slot(id: &RecordId, record: &Record) -> Slot {
    let mut v = Vec::with_capacity(ID + record.encoded_len());
    v.extend_from_slice(&id.0);
    record.encode_to(&mut v);
    v.into_boxed_slice()
}

fn decode(slot: &Slot) -> Result<Record, StoreError> {
    Ok(Record::decode(Bytes::copy_from_slice(&slot[ID..]))?)
}

/// Unreadable deadlines count as expired, so a damaged slot can never pin the store full.
fn expired(slot: &Slot, now_ms: u64) -> bool {
    Record::encoded_deadline_ms(&slot[ID..]).map_or(true, |d| d <= now_ms)
}

#[derive(Default)]
struct Shard(HashTable<Slot>);

/// A shard's lock and table on cache lines of their own (a `Mutex<Shard>` is 40 bytes): two
/// serving threads working on neighbouring shards would otherwise hand one line back and forth
/// at every claim. 128, not 64: Intel's adjacent-line prefetcher pairs lines.
#[derive(Default)]
#[repr(align(128))]
struct Padded(Mutex<Shard>);

impl Shard {
    fn entry(&mut self, id: &RecordId) -> Entry<'_, Slot> {
        self.0.entry(hash(&id.0), |s| s[..ID] == id.0, slot_hash)
    }

    fn find(&self, id: &RecordId) -> Option<&Slot> {
        self.0.find(hash(&id.0), |s| s[..ID] == id.0)
    }
}

/// The in-memory store.
pub struct MemoryStore {
    shards: Box<[Padded]>,
    count: AtomicUsize,
    capacity: usize,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("records", &self.count.load(Ordering::Relaxed))
            .field("capacity", &self.capacity)
            .finish()
    }
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
            shards: (0..SHARDS).map(|_| Padded::default()).collect(),
            count: AtomicUsize::new(0),
            capacity,
        }
    }

    fn shard(&self, id: &RecordId) -> MutexGuard<'_, Shard> {
        let m = &self.shards[id.0[31] as usize % SHARDS].0;
        // A panic while holding a shard cannot leave a record half-written (each table call is
        // atomic), so a poisoned lock is safe to keep using.
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn claim_now(&self, req: &ClaimRequest) -> Result<Claim, StoreError> {
        let mut shard = self.shard(&req.id);
        // One probe of the table: a new key's claim costs one miss on its control bytes.
        let vacant = match shard.entry(&req.id) {
            Entry::Occupied(mut e) => {
                let existing = decode(e.get())?;
                let (claim, write) = decide_claim(Some(&existing), req);
                if let Some(record) = write {
                    *e.get_mut() = slot(&req.id, &record);
                }
                return Ok(claim);
            }
            Entry::Vacant(v) => v,
        };
        let (claim, write) = decide_claim(None, req);
        let Some(record) = write else { return Ok(claim) };
        let new = slot(&req.id, &record);
        // Reserve a slot first, so concurrent claims on other shards cannot overshoot.
        if self.count.fetch_add(1, Ordering::AcqRel) < self.capacity {
            vacant.insert(new);
            return Ok(claim);
        }
        let before = shard.0.len();
        shard.0.retain(|s| !expired(s, req.now_ms));
        let freed = before - shard.0.len();
        let now_count = self.count.fetch_sub(freed, Ordering::AcqRel) - freed;
        if now_count > self.capacity {
            self.count.fetch_sub(1, Ordering::AcqRel);
            return Err(StoreError::Full {
                capacity: self.capacity,
            });
        }
        // Still absent: the shard's lock has been held since the probe.
        shard.0.insert_unique(hash(&req.id.0), new, slot_hash);
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
        let Entry::Occupied(mut e) = shard.entry(&id) else {
            return Err(CompleteError::Fenced);
        };
        let existing = decode(e.get())?;
        let done =
            decide_complete(Some(&existing), token, response, expires_at_ms).map_err(|()| CompleteError::Fenced)?;
        *e.get_mut() = slot(&id, &done);
        Ok(())
    }

    fn remove(&self, id: &RecordId, only_if: impl FnOnce(&Record) -> bool) -> Result<bool, StoreError> {
        let mut shard = self.shard(id);
        let Entry::Occupied(e) = shard.entry(id) else {
            return Ok(false);
        };
        // A slot that does not decode may still be deleted by an operator.
        if decode(e.get()).ok().is_none_or(|r| only_if(&r)) {
            e.remove();
            self.count.fetch_sub(1, Ordering::Relaxed);
            Ok(true)
        } else {
            Ok(false)
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
        Box::pin(std::future::ready(r))
    }

    fn get(&self, id: RecordId) -> BoxFuture<'_, Result<Option<Record>, StoreError>> {
        let r = self.shard(&id).find(&id).map(decode).transpose();
        Box::pin(std::future::ready(r))
    }

    fn delete(&self, id: RecordId) -> BoxFuture<'_, Result<bool, StoreError>> {
        let r = self.remove(&id, |_| true);
        Box::pin(std::future::ready(r))
    }

    fn purge_expired(&self, now_ms: u64, limit: usize) -> BoxFuture<'_, Result<Purged, StoreError>> {
        // One shard at a time, so traffic on the other 63 shards is never stalled.
        let mut purged = 0;
        for shard in self.shards.iter() {
            if purged >= limit {
                break;
            }
            let mut shard = shard.0.lock().unwrap_or_else(|p| p.into_inner());
            let before = shard.0.len();
            let mut budget = limit - purged;
            shard.0.retain(|s| {
                if budget > 0 && expired(s, now_ms) {
                    budget -= 1;
                    false
                } else {
                    true
                }
            });
            let n = before - shard.0.len();
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
