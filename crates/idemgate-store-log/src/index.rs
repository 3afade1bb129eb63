//! The in-memory index: where each live record's entry is in the log, and what a claim needs
//! to know without reading it.
//!
//! 64 shards, each a `std::sync::Mutex` held for one map operation only; ids are uniform keyed
//! hashes, so the maps hash them with an identity hasher. A slot is 32 bytes: the deadline (lease
//! end or TTL end), the entry's offset and length in the log, and for an in-flight record a boxed
//! fingerprint + token. A completed record's response stays in the file (and the page cache) and
//! is read back only for a replay or a `get`.
//!
//! Only the writer thread changes the index, and only with entries that are already durable.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use idemgate_core::{FencingToken, Fingerprint, Record, RecordId};

const SHARDS: usize = 64;

/// Where the purge walk is: the next shard, and how many shards this pass has finished.
#[derive(Debug, Default)]
pub(crate) struct PurgeCursor {
    shard: usize,
    visited: usize,
}

/// Where an entry is in the log file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Loc {
    /// Offset of the entry's length prefix.
    pub(crate) offset: u64,
    /// Length of the whole entry.
    pub(crate) len: u32,
}

/// Hashes a [`RecordId`] by its first eight bytes (they are already a keyed hash).
#[derive(Default)]
pub(crate) struct IdHasher(u64);

/// A map keyed by record id, hashed with [`IdHasher`].
pub(crate) type IdMap<V> = HashMap<RecordId, V, BuildHasherDefault<IdHasher>>;

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

struct Lease {
    fingerprint: Fingerprint,
    token: FencingToken,
}

struct Slot {
    deadline_ms: u64,
    offset: u64,
    /// Present for an in-flight record.
    lease: Option<Box<Lease>>,
    len: u32,
}

type Shard = IdMap<Slot>;

/// What the index knows about one record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum View {
    /// In flight: everything the record holds.
    InFlight {
        fingerprint: Fingerprint,
        token: FencingToken,
        lease_until_ms: u64,
        loc: Loc,
    },
    /// Completed: the response is in the entry at `loc`.
    Completed { expires_at_ms: u64, loc: Loc },
}

impl View {
    pub(crate) fn loc(&self) -> Loc {
        match self {
            View::InFlight { loc, .. } | View::Completed { loc, .. } => *loc,
        }
    }

    pub(crate) fn deadline_ms(&self) -> u64 {
        match self {
            View::InFlight { lease_until_ms: d, .. } | View::Completed { expires_at_ms: d, .. } => *d,
        }
    }
}

impl Slot {
    fn view(&self) -> View {
        let loc = Loc {
            offset: self.offset,
            len: self.len,
        };
        match &self.lease {
            Some(l) => View::InFlight {
                fingerprint: l.fingerprint,
                token: l.token,
                lease_until_ms: self.deadline_ms,
                loc,
            },
            None => View::Completed {
                expires_at_ms: self.deadline_ms,
                loc,
            },
        }
    }
}

/// The sharded index.
pub(crate) struct Index {
    shards: Box<[Mutex<Shard>]>,
    count: AtomicU64,
}

impl Index {
    pub(crate) fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            count: AtomicU64::new(0),
        }
    }

    fn lock(&self, n: usize) -> MutexGuard<'_, Shard> {
        // Each map call is atomic, so a panic elsewhere cannot leave a shard half-changed.
        self.shards[n].lock().unwrap_or_else(|p| p.into_inner())
    }

    fn shard(&self, id: &RecordId) -> MutexGuard<'_, Shard> {
        self.lock(id.0[31] as usize % SHARDS)
    }

    pub(crate) fn get(&self, id: &RecordId) -> Option<View> {
        self.shard(id).get(id).map(Slot::view)
    }

    /// Points `id` at `record`'s entry; returns what it replaced.
    pub(crate) fn insert(&self, id: RecordId, record: &Record, loc: Loc) -> Option<View> {
        let lease = match record {
            Record::InFlight { fingerprint, token, .. } => Some(Box::new(Lease {
                fingerprint: *fingerprint,
                token: *token,
            })),
            Record::Completed { .. } => None,
        };
        let slot = Slot {
            deadline_ms: record.deadline_ms(),
            offset: loc.offset,
            lease,
            len: loc.len,
        };
        let old = self.shard(&id).insert(id, slot).map(|s| s.view());
        if old.is_none() {
            self.count.fetch_add(1, Ordering::Relaxed);
        }
        old
    }

    pub(crate) fn remove(&self, id: &RecordId) -> Option<View> {
        let old = self.shard(id).remove(id).map(|s| s.view());
        if old.is_some() {
            self.count.fetch_sub(1, Ordering::Relaxed);
        }
        old
    }

    pub(crate) fn len(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Up to `limit` expired ids, looking at about `budget` records, from where the last call
    /// stopped (`cursor`). The second value is `more`: true until a call finishes a whole pass
    /// over the shards, so a caller that loops while `more` makes at most one pass per round
    /// (with a bound per call) instead of looping forever on a large index.
    pub(crate) fn expired(
        &self,
        now_ms: u64,
        limit: usize,
        budget: usize,
        cursor: &mut PurgeCursor,
    ) -> (Vec<RecordId>, bool) {
        let mut found = Vec::new();
        let mut scanned = 0;
        while cursor.visited < SHARDS {
            let n = cursor.shard;
            let shard = self.lock(n);
            for (id, slot) in shard.iter() {
                if found.len() >= limit {
                    // Stay on this shard: the next call starts over on it, minus what is purged.
                    return (found, true);
                }
                if slot.deadline_ms <= now_ms {
                    found.push(*id);
                }
            }
            scanned += shard.len();
            cursor.shard = (n + 1) % SHARDS;
            cursor.visited += 1;
            if scanned >= budget && cursor.visited < SHARDS {
                return (found, true);
            }
        }
        // A whole pass: the next call starts another one.
        cursor.visited = 0;
        (found, false)
    }

    /// Every entry the index points at, in file order.
    pub(crate) fn locations(&self) -> Vec<(RecordId, Loc)> {
        let mut all = Vec::with_capacity(self.len() as usize);
        for n in 0..SHARDS {
            all.extend(self.lock(n).iter().map(|(id, s)| {
                (
                    *id,
                    Loc {
                        offset: s.offset,
                        len: s.len,
                    },
                )
            }));
        }
        all.sort_unstable_by_key(|(_, loc)| loc.offset);
        all
    }

    /// Moves entries to new offsets (after compaction). Ids no longer present are skipped.
    pub(crate) fn relocate(&self, moved: &[(RecordId, u64)]) {
        for (id, offset) in moved {
            if let Some(slot) = self.shard(id).get_mut(id) {
                slot.offset = *offset;
            }
        }
    }
}
