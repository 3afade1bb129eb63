//! Shared by the test binaries: a store that keeps its server(s) alive.

#![allow(dead_code, unreachable_pub)]

use idemgate_core::{
    BoxFuture, Claim, ClaimRequest, CompleteError, FencingToken, Purged, Record, RecordId, Store, StoreError,
    StoredResponse,
};
use idemgate_store_redis::RedisStore;

/// A store and what keeps its server alive (a private server, or a share of one): the server
/// is killed when the last handle drops.
pub struct WithServer<G> {
    pub store: RedisStore,
    pub guard: G,
}

impl<G: Send + Sync + 'static> Store for WithServer<G> {
    fn kind(&self) -> &'static str {
        self.store.kind()
    }
    fn claim(&self, req: ClaimRequest) -> BoxFuture<'_, Result<Claim, StoreError>> {
        self.store.claim(req)
    }
    fn complete(
        &self,
        id: RecordId,
        token: FencingToken,
        response: StoredResponse,
        expires_at_ms: u64,
    ) -> BoxFuture<'_, Result<(), CompleteError>> {
        self.store.complete(id, token, response, expires_at_ms)
    }
    fn release(&self, id: RecordId, token: FencingToken) -> BoxFuture<'_, Result<bool, StoreError>> {
        self.store.release(id, token)
    }
    fn get(&self, id: RecordId) -> BoxFuture<'_, Result<Option<Record>, StoreError>> {
        self.store.get(id)
    }
    fn delete(&self, id: RecordId) -> BoxFuture<'_, Result<bool, StoreError>> {
        self.store.delete(id)
    }
    fn purge_expired(&self, now_ms: u64, limit: usize) -> BoxFuture<'_, Result<Purged, StoreError>> {
        self.store.purge_expired(now_ms, limit)
    }
    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        self.store.ping()
    }
    fn check_secret(&self, check: [u8; 32]) -> BoxFuture<'_, Result<(), StoreError>> {
        self.store.check_secret(check)
    }
}

/// `rediss://…` or `rediss+cluster://…` with `?ca=PATH`.
pub fn with_ca(url: &str, ca: &std::path::Path) -> String {
    format!("{url}?ca={}", ca.display())
}
