//! Requests waiting for an in-flight key (`wait_in_flight`).
//!
//! A waiter never holds a store connection: it registers a [`Notify`] for the record id, then
//! re-claims the key when this process completes or releases it, or after a short poll interval
//! (the owner may be another gateway of the fleet). The number of waiters per key is bounded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use idemgate_core::RecordId;
use tokio::sync::Notify;

const SHARDS: usize = 16;

#[derive(Debug)]
pub(crate) struct Waiters {
    shards: Vec<Mutex<HashMap<RecordId, Arc<Notify>>>>,
    max_per_key: usize,
}

/// A registration; dropping it forgets the entry when no one else waits on it.
pub(crate) struct Waiting<'a> {
    waiters: &'a Waiters,
    id: RecordId,
    pub(crate) notify: Arc<Notify>,
}

impl Waiters {
    pub(crate) fn new(max_per_key: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            max_per_key,
        }
    }

    fn shard(&self, id: &RecordId) -> std::sync::MutexGuard<'_, HashMap<RecordId, Arc<Notify>>> {
        self.shards[id.0[0] as usize % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a waiter, or `None` when the key already has `max_per_key` waiters.
    pub(crate) fn register(&self, id: RecordId) -> Option<Waiting<'_>> {
        let mut shard = self.shard(&id);
        let notify = shard.entry(id).or_default();
        // One reference is the map's own.
        if Arc::strong_count(notify) > self.max_per_key {
            return None;
        }
        let notify = notify.clone();
        Some(Waiting {
            waiters: self,
            id,
            notify,
        })
    }

    /// Wakes every waiter of `id` in this process (the key was completed or released).
    pub(crate) fn wake(&self, id: &RecordId) {
        let notify = self.shard(id).get(id).cloned();
        if let Some(n) = notify {
            n.notify_waiters();
        }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut shard = self.waiters.shard(&self.id);
        if shard.get(&self.id).is_some_and(|n| Arc::strong_count(n) <= 2) {
            shard.remove(&self.id);
        }
    }
}
