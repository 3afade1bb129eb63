//! Purging expired records: the loop a layer starts for itself on its first protected request
//! ([`IdempotencyConfig::purge_interval`]), and the batch loop the gateway's housekeeping runs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use idemgate_core::{Store, StoreError};

use crate::config::{Clock, IdempotencyConfig};

/// Records deleted per store call, so that a purge never holds the store for long.
const BATCH: usize = 1000;

/// Deletes every record of `store` expired at `now_ms`, in batches, letting other tasks run
/// between them; returns how many were deleted. Expired records are already invisible (a claim
/// treats them as absent), so purging only frees their space.
pub async fn purge_expired(store: &dyn Store, now_ms: u64) -> Result<usize, StoreError> {
    let mut removed = 0;
    loop {
        let p = store.purge_expired(now_ms, BATCH).await?;
        removed += p.removed;
        if !p.more {
            return Ok(removed);
        }
        tokio::task::yield_now().await;
    }
}

/// Starts a layer's purge task once; the task ends when every service of the layer is gone.
#[derive(Debug, Default)]
pub(crate) struct Purger {
    started: AtomicBool,
}

impl Purger {
    /// Spawns the purge loop on the current tokio runtime, the first time only (a relaxed load
    /// on every later call). Nothing happens without a runtime or with `purge_interval: None`.
    pub(crate) fn start(self: &Arc<Self>, store: &Arc<dyn Store>, config: &IdempotencyConfig) {
        if self.started.load(Ordering::Relaxed) || self.started.swap(true, Ordering::Relaxed) {
            return;
        }
        let (Some(every), Ok(runtime)) = (config.purge_interval, tokio::runtime::Handle::try_current()) else {
            return;
        };
        runtime.spawn(run(Arc::downgrade(self), store.clone(), config.clock.clone(), every));
    }
}

async fn run(alive: Weak<Purger>, store: Arc<dyn Store>, clock: Clock, every: Duration) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        if alive.upgrade().is_none() {
            return;
        }
        match purge_expired(&*store, (clock.0)()).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(purged = n, "expired records purged"),
            Err(e) => tracing::warn!(error = %e, "purging expired records failed"),
        }
    }
}
