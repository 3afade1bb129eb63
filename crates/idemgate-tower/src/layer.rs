//! [`IdempotencyLayer`]: the tower `Layer` that wraps a service in [`Idempotency`].

use std::sync::Arc;

use idemgate_core::{IdempotencyKey, RecordId, ScopeHasher, Store, StoreError};
use tower_layer::Layer;

use crate::config::{IdempotencyConfig, Policies};
use crate::future::DetachedTasks;
use crate::metrics::Metrics;
use crate::purge::Purger;
use crate::service::Idempotency;
use crate::waiters::Waiters;

/// Everything the service shares across requests.
///
/// Each [`Layer::layer`] call makes a `Shared` of its own (see there); what must be one for every
/// service of the layer (the store, the waiters, the detached exchanges, the metric handles'
/// targets) sits behind `Arc`s inside it.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: IdempotencyConfig,
    pub(crate) policies: Policies,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) hasher: ScopeHasher,
    pub(crate) metrics: Metrics,
    pub(crate) waiters: Arc<Waiters>,
    pub(crate) detached: DetachedTasks,
    /// Common to every service of the layer: its purge task, started by the first protected
    /// request, ends once they are all dropped.
    pub(crate) purger: Arc<Purger>,
}

/// Wraps a service so that keyed requests execute once and repeats are replayed.
#[derive(Clone, Debug)]
pub struct IdempotencyLayer {
    pub(crate) shared: Arc<Shared>,
}

impl IdempotencyLayer {
    /// A layer over `store`, deriving record ids with `hasher`.
    pub fn new(store: Arc<dyn Store>, hasher: ScopeHasher, config: IdempotencyConfig) -> Self {
        let policies = Policies::resolve(&config);
        let waiters = Arc::new(Waiters::new(config.max_waiters_per_key));
        Self {
            shared: Arc::new(Shared {
                config,
                policies,
                store,
                hasher,
                metrics: Metrics::new(),
                waiters,
                detached: DetachedTasks::default(),
                purger: Arc::default(),
            }),
        }
    }

    /// The store the layer records into.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.shared.store
    }

    /// The record id of `key` for the caller whose scope value is `scope` (admin look-ups).
    pub fn record_id(&self, scope: &[u8], key: &IdempotencyKey) -> RecordId {
        self.shared.hasher.record_id(scope, key)
    }

    /// Checks that the store was set up with this layer's scope secret (and records it in a new
    /// store), as the gateway does at start: replicas with different secrets derive different
    /// record ids, so none would ever replay another's keys. Call it once at start-up;
    /// `Err(StoreError::SecretMismatch)` means this replica's secret is not the fleet's.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use idemgate_core::{MemoryStore, ScopeHasher};
    /// # use idemgate_tower::{IdempotencyConfig, IdempotencyLayer};
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let layer = IdempotencyLayer::new(
    ///     Arc::new(MemoryStore::default()),
    ///     ScopeHasher::new(b"the fleet's secret, 16+ bytes"),
    ///     IdempotencyConfig::default(),
    /// );
    /// layer.check_secret().await.expect("this replica's secret is the store's");
    /// # });
    /// ```
    pub async fn check_secret(&self) -> Result<(), StoreError> {
        self.shared.store.check_secret(self.shared.hasher.check_value()).await
    }

    /// The configuration.
    pub fn config(&self) -> &IdempotencyConfig {
        &self.shared.config
    }
}

impl<S> Layer<S> for IdempotencyLayer {
    type Service = Idempotency<S>;

    /// The service and its clones share one `Shared` (and one set of policies), made for this
    /// call: every protected request clones that `Arc` and a policy's, and a server that calls
    /// `layer` once per serving thread (the gateway) so keeps those reference counts on the
    /// thread's own cache lines instead of passing one line between CPUs at every request. The
    /// store, waiters, detached exchanges and metrics stay common to every service of the layer.
    fn layer(&self, inner: S) -> Self::Service {
        let s = &self.shared;
        Idempotency {
            inner,
            shared: Arc::new(Shared {
                config: s.config.clone(),
                policies: Policies::resolve(&s.config),
                store: s.store.clone(),
                hasher: s.hasher.clone(),
                metrics: s.metrics.clone(),
                waiters: s.waiters.clone(),
                detached: s.detached.clone(),
                purger: s.purger.clone(),
            }),
        }
    }
}
