//! Requests waiting for an in-flight key (`wait_in_flight`).
//!
//! A waiter never holds a store connection: it registers a [`Notify`] for the record id, then
//! re-claims the key when this process completes or releases it, or after a short poll interval
//! (the owner may be another gateway of the fleet). The number of waiters per key is bounded.

use std::collections::HashMap;
use std::sync::atomic::{fence, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use idemgate_core::RecordId;
use tokio::sync::Notify;

const SHARDS: usize = 16;

/// Per key: the wake-up and how many requests wait on it.
type Shard = HashMap<RecordId, (Arc<Notify>, usize)>;

#[derive(Debug)]
pub(crate) struct Waiters {
    /// Per key: the wake-up and how many requests wait on it.
    shards: Vec<Mutex<Shard>>,
    /// Registrations alive in every shard: [`Waiters::wake`] reads it instead of locking a
    /// shard that both serving threads would otherwise pass back and forth at every completion.
    registered: AtomicUsize,
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
            registered: AtomicUsize::new(0),
            max_per_key,
        }
    }

    fn shard(&self, id: &RecordId) -> std::sync::MutexGuard<'_, Shard> {
        self.shards[id.0[0] as usize % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a waiter, or `None` when the key already has `max_per_key` waiters.
    pub(crate) fn register(&self, id: RecordId) -> Option<Waiting<'_>> {
        if self.max_per_key == 0 {
            // Before the entry is made: a refused waiter must not leave one behind.
            return None;
        }
        let mut shard = self.shard(&id);
        let (notify, count) = shard.entry(id).or_default();
        if *count >= self.max_per_key {
            return None;
        }
        *count += 1;
        // Before the waiter looks at the store again (the caller claims next): a completion
        // that this claim misses reads a non-zero count after it (the fence in `wake`).
        self.registered.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let notify = notify.clone();
        Some(Waiting {
            waiters: self,
            id,
            notify,
        })
    }

    /// Wakes every waiter of `id` in this process (the key was completed or released).
    ///
    /// Called after the store has the outcome. Either the waiter's next claim sees the outcome,
    /// or its registration was counted before this load (the two fences order each side's
    /// write before its read); and the poll interval catches anything else.
    pub(crate) fn wake(&self, id: &RecordId) {
        fence(Ordering::SeqCst);
        if self.registered.load(Ordering::Relaxed) == 0 {
            return;
        }
        if let Some((n, _)) = self.shard(id).get(id) {
            n.notify_waiters();
        }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut shard = self.waiters.shard(&self.id);
        if let Some((_, count)) = shard.get_mut(&self.id) {
            self.waiters.registered.fetch_sub(1, Ordering::Relaxed);
            *count -= 1;
            if *count == 0 {
                shard.remove(&self.id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_per_key_and_forgotten_when_the_last_waiter_leaves() {
        let w = Waiters::new(3);
        let id = RecordId([1; 32]);
        let a = w.register(id).unwrap();
        let b = w.register(id).unwrap();
        let c = w.register(id).unwrap();
        assert!(w.register(id).is_none(), "a fourth waiter is refused");
        assert_eq!(
            w.registered.load(Ordering::Relaxed),
            3,
            "a refused waiter is not counted"
        );
        assert!(w.register(RecordId([2; 32])).is_some(), "other keys are independent");
        drop((a, b));
        assert!(w.register(id).is_some());
        drop(c);
        assert!(
            w.shards.iter().all(|s| s.lock().unwrap().is_empty()),
            "no entry outlives its waiters"
        );
        assert_eq!(w.registered.load(Ordering::Relaxed), 0, "wake() skips the shards again");
    }

    #[test]
    fn no_waiters_allowed_leaves_no_entry() {
        let w = Waiters::new(0);
        for i in 0..100u8 {
            assert!(w.register(RecordId([i; 32])).is_none());
        }
        assert!(
            w.shards.iter().all(|s| s.lock().unwrap().is_empty()),
            "nothing kept per key"
        );
    }
}
