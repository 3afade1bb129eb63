//! Natural batching: operations that arrive while the store's batch statements are busy wait in
//! a queue, and the next statement takes all of them at once.
//!
//! A [`Queue`] holds waiting jobs and counts its drivers (tasks that take jobs off it and run
//! them). Pushing a job starts a new driver only while fewer than the limit run, so under load
//! the jobs gather behind the running statements and the next statement carries them all; an
//! idle store runs every job alone, at once. A driver stops when it finds the queue empty (under
//! the same lock as the push that counts it), so a job is never left without a driver while the
//! runtime lives.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// A job that may share a statement with others.
pub(crate) trait Job {
    /// The key jobs of one batch must not share (a statement may change a row only once).
    type Key: PartialEq + Copy;
    /// This job's key.
    fn key(&self) -> Self::Key;
    /// Nobody waits for the answer any more (the caller timed out or went away).
    fn abandoned(&self) -> bool;
}

struct State<J> {
    jobs: VecDeque<J>,
    drivers: usize,
}

/// Jobs waiting for a batch statement.
pub(crate) struct Queue<J> {
    state: Mutex<State<J>>,
    max_drivers: usize,
    max_batch: usize,
}

impl<J: Job> Queue<J> {
    /// A queue run by at most `max_drivers` statements at once, each with at most `max_batch`
    /// jobs.
    pub(crate) fn new(max_drivers: usize, max_batch: usize) -> Self {
        Self {
            state: Mutex::new(State {
                jobs: VecDeque::new(),
                drivers: 0,
            }),
            max_drivers: max_drivers.max(1),
            max_batch: max_batch.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<J>> {
        // The state is a queue and a counter, consistent after every statement: a panic while
        // holding the lock leaves nothing half-done.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `job`; `true` when the caller must start a driver (and call [`Queue::next`] from
    /// it until that returns `None`).
    pub(crate) fn push(&self, job: J) -> bool {
        let mut st = self.lock();
        st.jobs.push_back(job);
        if st.drivers < self.max_drivers {
            st.drivers += 1;
            true
        } else {
            false
        }
    }

    /// Puts jobs back at the front (to be retried by the next statement), in their order.
    pub(crate) fn requeue(&self, jobs: Vec<J>) {
        let mut st = self.lock();
        for job in jobs.into_iter().rev() {
            st.jobs.push_front(job);
        }
    }

    /// The next batch for a driver: up to `max_batch` jobs in arrival order, no two with one key
    /// (later ones wait for the next statement), abandoned jobs dropped. `None` when the queue
    /// is empty: the driver is no longer counted and must stop.
    pub(crate) fn next(&self) -> Option<Vec<J>> {
        let mut st = self.lock();
        let mut batch: Vec<J> = Vec::new();
        let mut kept = VecDeque::new();
        while batch.len() < self.max_batch {
            let Some(job) = st.jobs.pop_front() else { break };
            if job.abandoned() {
                continue;
            }
            if batch.iter().any(|b| b.key() == job.key()) {
                kept.push_back(job);
            } else {
                batch.push(job);
            }
        }
        while let Some(job) = kept.pop_back() {
            st.jobs.push_front(job);
        }
        if batch.is_empty() && st.jobs.is_empty() {
            st.drivers -= 1;
            None
        } else {
            Some(batch)
        }
    }

    /// A driver ended without [`Queue::next`] returning `None` (its task was cancelled).
    pub(crate) fn driver_gone(&self) {
        let mut st = self.lock();
        st.drivers = st.drivers.saturating_sub(1);
    }
}

/// Counts a driver off its queue if its task is dropped before the queue ran dry.
pub(crate) struct DriverGuard<'a, J: Job> {
    queue: &'a Queue<J>,
    armed: bool,
}

impl<'a, J: Job> DriverGuard<'a, J> {
    pub(crate) fn new(queue: &'a Queue<J>) -> Self {
        Self { queue, armed: true }
    }

    /// The next batch ([`Queue::next`]); after `None` the guard has nothing left to do.
    pub(crate) fn next(&mut self) -> Option<Vec<J>> {
        let batch = self.queue.next();
        if batch.is_none() {
            self.armed = false;
        }
        batch
    }
}

impl<J: Job> Drop for DriverGuard<'_, J> {
    fn drop(&mut self) {
        if self.armed {
            self.queue.driver_gone();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct J(u8, bool);
    impl Job for J {
        type Key = u8;
        fn key(&self) -> u8 {
            self.0
        }
        fn abandoned(&self) -> bool {
            self.1
        }
    }

    fn keys(b: &[J]) -> Vec<u8> {
        b.iter().map(|j| j.0).collect()
    }

    #[test]
    fn the_first_push_starts_a_driver_and_later_ones_gather_behind_it() {
        let q = Queue::new(1, 8);
        assert!(q.push(J(1, false)));
        assert!(!q.push(J(2, false)), "one driver at most");
        assert!(!q.push(J(3, false)));
        assert_eq!(keys(&q.next().unwrap()), [1, 2, 3]);
        assert!(q.next().is_none(), "empty: the driver stops");
        assert!(q.push(J(4, false)), "and the next push starts one again");
    }

    #[test]
    fn a_batch_holds_each_key_once_and_at_most_max_batch_jobs() {
        let q = Queue::new(1, 3);
        for k in [1, 1, 2, 1, 3, 4] {
            q.push(J(k, false));
        }
        assert_eq!(keys(&q.next().unwrap()), [1, 2, 3]);
        assert_eq!(keys(&q.next().unwrap()), [1, 4], "the repeats keep their order");
        assert_eq!(keys(&q.next().unwrap()), [1]);
        assert!(q.next().is_none());
    }

    #[test]
    fn abandoned_jobs_are_dropped_and_requeued_ones_come_first() {
        let q = Queue::new(2, 8);
        q.push(J(1, true));
        q.push(J(2, false));
        assert_eq!(keys(&q.next().unwrap()), [2]);
        q.push(J(3, false));
        q.requeue(vec![J(5, false), J(6, false)]);
        assert_eq!(keys(&q.next().unwrap()), [5, 6, 3]);
    }

    #[test]
    fn a_cancelled_driver_is_counted_off() {
        let q = Queue::new(1, 8);
        assert!(q.push(J(1, false)));
        {
            let mut g = DriverGuard::new(&q);
            assert!(g.next().is_some());
        } // dropped mid-way, like a task cancelled with its runtime
        assert!(q.push(J(2, false)), "a new driver may start");
        let mut g = DriverGuard::new(&q);
        assert_eq!(keys(&g.next().unwrap()), [2]);
        assert!(g.next().is_none());
        drop(g);
        assert!(q.push(J(3, false)), "counted off once, not twice");
        assert!(!q.push(J(4, false)));
    }
}
