//! One wake-up per batch for replies that a store's own thread hands back to a serving thread.
//!
//! A store that does its work on a thread of its own (the record log's writer) answers each
//! operation through a oneshot channel. Waking a task that waits on another thread's tokio
//! runtime costs that runtime a system call (its eventfd) per reply, so a batch of replies costs
//! a batch of system calls and wake-ups. A serving thread that drives one current-thread runtime
//! can [`install`](ReplyQueue::install) a [`ReplyQueue`]: stores then take the queue
//! ([`ReplyQueue::current`]) with each operation, hand every reply of a batch meant for that
//! thread over at once ([`ReplyQueue::deliver`]) and wake one draining task, which completes them
//! on its own thread, where waking a task costs no system call.
//!
//! Without an installed queue (multi-thread runtimes, tests, other callers) stores answer
//! directly, as before. If the draining task is dropped (its runtime shuts down), the queue is
//! closed: what was queued and whatever is delivered later runs on the delivering thread.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

/// A reply to complete on the thread that asked (typically: send a result into a oneshot).
pub type Delivery = Box<dyn FnOnce() + Send>;

/// Replies waiting for one serving thread's draining task.
#[derive(Default)]
pub struct ReplyQueue {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    ready: Vec<Delivery>,
    waker: Option<Waker>,
    closed: bool,
}

thread_local! {
    static CURRENT: RefCell<Option<Arc<ReplyQueue>>> = const { RefCell::new(None) };
}

impl ReplyQueue {
    /// The queue installed on this thread, if any.
    pub fn current() -> Option<Arc<ReplyQueue>> {
        CURRENT.try_with(|c| c.borrow().clone()).ok().flatten()
    }

    /// Installs a queue for this thread and returns the task that drains it. Spawn the task on
    /// the current-thread runtime that this thread drives; while the queue is installed the
    /// thread must drive no other runtime (replies for it would wait on a task that is not
    /// polled). Dropping the task uninstalls the queue.
    pub fn install() -> Drain {
        let queue = Arc::new(ReplyQueue::default());
        CURRENT.with(|c| *c.borrow_mut() = Some(queue.clone()));
        Drain {
            queue,
            spare: Vec::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands `batch` to the queue's thread and wakes its draining task (once, whatever the batch's
    /// size). If the draining task is gone, runs the deliveries here instead.
    pub fn deliver(&self, batch: impl IntoIterator<Item = Delivery>) {
        let mut inner = self.lock();
        if inner.closed {
            drop(inner);
            batch.into_iter().for_each(|d| d());
            return;
        }
        inner.ready.extend(batch);
        let waker = inner.waker.take();
        drop(inner);
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// The task that completes a [`ReplyQueue`]'s deliveries on its thread; it never finishes.
#[must_use = "spawn the draining task, or replies for this thread are never completed"]
pub struct Drain {
    queue: Arc<ReplyQueue>,
    spare: Vec<Delivery>,
}

impl Future for Drain {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        {
            let mut inner = this.queue.lock();
            if inner.ready.is_empty() {
                if !inner.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    inner.waker = Some(cx.waker().clone());
                }
                return Poll::Pending;
            }
            std::mem::swap(&mut inner.ready, &mut this.spare);
        }
        this.spare.drain(..).for_each(|d| d());
        // Let the woken tasks run before the next pass; poll again soon.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl Drop for Drain {
    fn drop(&mut self) {
        let queued = {
            let mut inner = self.queue.lock();
            inner.closed = true;
            inner.waker = None;
            std::mem::take(&mut inner.ready)
        };
        queued.into_iter().for_each(|d| d());
        let _ = CURRENT.try_with(|c| {
            let mut c = c.borrow_mut();
            if c.as_ref().is_some_and(|q| Arc::ptr_eq(q, &self.queue)) {
                *c = None;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn replies_are_completed_on_the_draining_thread_and_after_it_on_the_caller() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            assert!(ReplyQueue::current().is_none());
            let drain = tokio::spawn(ReplyQueue::install());
            let queue = ReplyQueue::current().expect("installed");
            let here = std::thread::current().id();
            let (tx, rx) = tokio::sync::oneshot::channel();
            let (ran_tx, ran_rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let ran_tx2 = ran_tx.clone();
                queue.deliver([
                    Box::new(move || ran_tx.send(std::thread::current().id()).unwrap()) as Delivery,
                    Box::new(move || {
                        ran_tx2.send(std::thread::current().id()).unwrap();
                        tx.send(()).unwrap();
                    }),
                ]);
            });
            rx.await.unwrap();
            assert_eq!(ran_rx.recv().unwrap(), here);
            assert_eq!(ran_rx.recv().unwrap(), here);
            drain.abort();
            let _ = drain.await;
            assert!(
                ReplyQueue::current().is_none(),
                "dropping the drain uninstalls the queue"
            );
        });
    }

    #[test]
    fn a_closed_queue_runs_deliveries_on_the_delivering_thread() {
        let drain = ReplyQueue::install();
        let queue = ReplyQueue::current().unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let c = count.clone();
        queue.deliver([Box::new(move || {
            c.fetch_add(1, Ordering::SeqCst);
        }) as Delivery]);
        assert_eq!(count.load(Ordering::SeqCst), 0, "queued for the drain");
        drop(drain);
        assert_eq!(count.load(Ordering::SeqCst), 1, "run when the drain is dropped");
        let c = count.clone();
        queue.deliver([Box::new(move || {
            c.fetch_add(1, Ordering::SeqCst);
        }) as Delivery]);
        assert_eq!(count.load(Ordering::SeqCst), 2, "run at once once closed");
    }
}
