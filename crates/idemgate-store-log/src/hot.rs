//! Completed records read back recently, kept decoded: the retries of one key arrive in bursts
//! (a client's timeout, a redelivered batch), and each would otherwise read and check the same
//! entry from the log again.
//!
//! A small direct-mapped table: a record id always maps to the same slot, and a slot holds one
//! record with the location it was read from. A hit needs both the id and the location to match
//! the index's view, so a record deleted, taken over or completed again (a new entry elsewhere in
//! the log) is never answered from here; only compaction, which moves entries to new offsets in a
//! new file, could make an old location mean another entry, and it empties the table under the
//! file's write lock. Entries larger than [`MAX_ENTRY`] are not kept, which bounds the table at
//! [`SLOTS`] × [`MAX_ENTRY`].

use std::sync::Mutex;

use idemgate_core::record::Record;
use idemgate_core::scope::RecordId;

use crate::index::Loc;

/// Slots in the table.
pub(crate) const SLOTS: usize = 64;
/// The largest entry kept (bytes in the log).
pub(crate) const MAX_ENTRY: u32 = 16 * 1024;

struct Hot {
    id: RecordId,
    loc: Loc,
    record: Record,
}

/// See the module docs.
pub(crate) struct HotEntries {
    slots: Box<[Mutex<Option<Hot>>]>,
}

impl Default for HotEntries {
    fn default() -> Self {
        Self {
            slots: (0..SLOTS).map(|_| Mutex::new(None)).collect(),
        }
    }
}

impl HotEntries {
    fn slot(&self, id: &RecordId) -> std::sync::MutexGuard<'_, Option<Hot>> {
        // Record ids are keyed hashes already: their first bytes are as good as any hash.
        let i = u64::from_le_bytes(id.0[..8].try_into().unwrap_or_default()) as usize % SLOTS;
        self.slots[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The record read from `loc` for `id`, if it is still here.
    pub(crate) fn get(&self, id: &RecordId, loc: Loc) -> Option<Record> {
        match &*self.slot(id) {
            Some(h) if h.id == *id && h.loc == loc => Some(h.record.clone()),
            _ => None,
        }
    }

    /// Keeps `record`, just read from `loc` for `id` (and checked), unless its entry is large.
    pub(crate) fn put(&self, id: &RecordId, loc: Loc, record: &Record) {
        if loc.len <= MAX_ENTRY {
            *self.slot(id) = Some(Hot {
                id: *id,
                loc,
                record: record.clone(),
            });
        }
    }

    /// Forgets everything (the entries' offsets are about to change).
    pub(crate) fn clear(&self) {
        for s in self.slots.iter() {
            *s.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| s.lock().unwrap_or_else(|p| p.into_inner()).is_some())
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, StatusCode};
    use idemgate_core::fingerprint::Fingerprint;
    use idemgate_core::response::StoredResponse;

    fn record(body: &[u8]) -> Record {
        Record::Completed {
            fingerprint: Fingerprint([1; 32]),
            expires_at_ms: 10,
            response: StoredResponse::new(StatusCode::OK, &HeaderMap::new(), body),
        }
    }

    fn id(n: u8) -> RecordId {
        RecordId([n; 32])
    }

    #[test]
    fn a_hit_needs_the_same_id_and_location() {
        let hot = HotEntries::default();
        let at = Loc { offset: 100, len: 50 };
        hot.put(&id(1), at, &record(b"one"));
        assert_eq!(hot.get(&id(1), at), Some(record(b"one")));
        assert_eq!(
            hot.get(&id(1), Loc { offset: 200, len: 50 }),
            None,
            "completed again elsewhere"
        );
        assert_eq!(hot.get(&id(2), at), None);
        // The same id read from its new entry replaces the old one.
        hot.put(&id(1), Loc { offset: 200, len: 50 }, &record(b"two"));
        assert_eq!(hot.get(&id(1), at), None);
        assert_eq!(hot.get(&id(1), Loc { offset: 200, len: 50 }), Some(record(b"two")));
    }

    #[test]
    fn large_entries_are_not_kept_and_clear_forgets_everything() {
        let hot = HotEntries::default();
        hot.put(
            &id(1),
            Loc {
                offset: 8,
                len: MAX_ENTRY + 1,
            },
            &record(b"big"),
        );
        assert_eq!(hot.len(), 0);
        for n in 0..10 {
            hot.put(
                &id(n),
                Loc {
                    offset: u64::from(n) * 64,
                    len: 64,
                },
                &record(&[n]),
            );
        }
        assert_eq!(hot.len(), 10);
        hot.clear();
        assert_eq!(hot.len(), 0);
        assert_eq!(hot.get(&id(3), Loc { offset: 192, len: 64 }), None);
    }
}
