//! `--header-timeout`: a client connection that goes too long without sending a complete request
//! head (counted from its opening, or from the end of its previous response) is closed. This is
//! what slow-header (slowloris) and idle keep-alive clients get.
//!
//! hyper's own `header_read_timeout` does the same with a timer allocated, registered and
//! cancelled for every request (callgrind: ~1,400 instructions of a replay's ~38,000). Here each
//! connection has one [`HeadClock`] and one watchdog task whose timer fires once per timeout
//! period at most: a request only bumps a counter when its head arrives ([`HeadClock::busy`])
//! and records the time when its response is done (the [`Busy`] guard, dropped with the
//! response body). A connection with a request in progress is never closed by this; one
//! without is closed once `timeout` has passed since its last response ended (or since it opened).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// One connection's request-head clock.
#[derive(Debug)]
pub struct HeadClock {
    opened: Instant,
    /// Requests whose head has arrived and whose response is not finished.
    in_progress: AtomicU32,
    /// When the last response finished, in ms since `opened`.
    idle_since_ms: AtomicU64,
    /// Responses finished so far (read by `parse_errors.rs`).
    ended: AtomicU32,
}

impl HeadClock {
    /// The clock of a connection opened now.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            opened: Instant::now(),
            in_progress: AtomicU32::new(0),
            idle_since_ms: AtomicU64::new(0),
            ended: AtomicU32::new(0),
        })
    }

    /// Requests whose head has arrived and whose response is not finished.
    pub fn in_progress(&self) -> u32 {
        self.in_progress.load(Ordering::Acquire)
    }

    /// How many responses have finished on this connection (wrapping).
    pub fn ended(&self) -> u32 {
        self.ended.load(Ordering::Acquire)
    }

    /// A request head has arrived: the connection is busy until the guard is dropped.
    pub fn busy(self: &Arc<Self>) -> Busy {
        self.in_progress.fetch_add(1, Ordering::AcqRel);
        Busy(Some(self.clone()))
    }

    /// Resolves when the connection has been without a request for `timeout`.
    pub async fn expired(&self, timeout: Duration) {
        let mut at = self.opened + timeout;
        loop {
            tokio::time::sleep_until(at).await;
            let now = Instant::now();
            if self.in_progress.load(Ordering::Acquire) > 0 {
                at = now + timeout;
                continue;
            }
            let idle_since = self.opened + Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
            let due = idle_since + timeout;
            if now >= due {
                return;
            }
            at = due;
        }
    }
}

/// A request in progress on its connection (see [`HeadClock::busy`]); ends when dropped.
#[derive(Debug)]
pub struct Busy(Option<Arc<HeadClock>>);

impl Busy {
    /// A guard with nothing to end.
    pub fn ended() -> Self {
        Self(None)
    }

    /// The request's response is done (also what dropping does).
    pub fn end(&mut self) {
        if let Some(clock) = self.0.take() {
            let ms = u64::try_from(clock.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
            clock.idle_since_ms.store(ms, Ordering::Release);
            clock.ended.fetch_add(1, Ordering::AcqRel);
            clock.in_progress.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.end();
    }
}

pin_project_lite::pin_project! {
    /// A response body that ends its request's [`Busy`] when it ends or is dropped.
    pub struct Guarded<B> {
        #[pin]
        body: B,
        busy: Busy,
    }
}

impl<B> Guarded<B> {
    /// `body`, ending `busy` with it.
    pub fn new(body: B, busy: Busy) -> Self {
        Self { body, busy }
    }
}

impl<B: http_body::Body> http_body::Body for Guarded<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.body.poll_frame(cx));
        if !matches!(frame, Some(Ok(_))) {
            this.busy.end();
        }
        std::task::Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn closes_only_after_the_timeout_without_a_request() {
        let t = Duration::from_secs(30);
        let clock = HeadClock::new();
        let start = Instant::now();
        // Never a request: the timeout from opening.
        clock.expired(t).await;
        assert_eq!(start.elapsed(), t);

        // A request in progress for 100 s holds it open; then 30 s after its end.
        let clock = HeadClock::new();
        let start = Instant::now();
        let mut busy = clock.busy();
        let waiting = tokio::spawn({
            let clock = clock.clone();
            async move { clock.expired(t).await }
        });
        tokio::time::sleep(Duration::from_secs(100)).await;
        assert!(!waiting.is_finished());
        busy.end();
        waiting.await.unwrap();
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_secs(130), "{elapsed:?}");
        assert!(elapsed <= Duration::from_secs(131), "{elapsed:?}");
    }
}
