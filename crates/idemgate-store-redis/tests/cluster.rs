//! The store against a private three-primary Redis Cluster (`redis+cluster://`): the contract's
//! conformance cases, records spread over the primaries with claims still atomic, the same
//! round trips as on one Redis, a purge that visits every primary, and the scope-secret check.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};

use idemgate_core::{time, Claim, ClaimRequest, Fingerprint, Record, RecordId, Store, StoreError, StoredResponse};
use idemgate_store_redis::{record_key, RedisStore};
use idemgate_testkit::redis::cluster::{RedisCluster, NODES};

mod support;
use support::WithServer;

/// One cluster shared by the conformance cases that may share one (their ids are random); it
/// is killed when the last case using it ends.
fn shared_cluster() -> Arc<RedisCluster> {
    static SHARED: Mutex<Weak<RedisCluster>> = Mutex::new(Weak::new());
    let mut shared = SHARED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(cluster) = shared.upgrade() {
        return cluster;
    }
    let cluster = Arc::new(RedisCluster::start());
    *shared = Arc::downgrade(&cluster);
    cluster
}

async fn shared() -> Arc<WithServer<Arc<RedisCluster>>> {
    let cluster = tokio::task::spawn_blocking(shared_cluster).await.unwrap();
    let store = RedisStore::connect(&cluster.url()).await.expect("connect");
    assert!(store.is_cluster());
    Arc::new(WithServer { store, guard: cluster })
}

/// A cluster of its own: the purge case deletes whatever has expired, other cases' records too.
async fn private() -> Arc<WithServer<RedisCluster>> {
    let cluster = tokio::task::spawn_blocking(RedisCluster::start).await.unwrap();
    let store = RedisStore::connect(&cluster.url()).await.expect("connect");
    Arc::new(WithServer { store, guard: cluster })
}

idemgate_store_conformance::conformance_tests!(@cases shared();
    claim_complete_replay, fingerprint_is_reported_not_judged, concurrent_claims_one_winner,
    lease_expiry_and_takeover, fencing_rejects_a_stale_owner, release_frees_the_key,
    ttl_expiry, large_binary_responses, scopes_are_isolated, get_and_delete);
idemgate_store_conformance::conformance_tests!(@cases private(); purge_removes_only_expired);

fn req(id: RecordId, now_ms: u64, lease_ms: u64) -> ClaimRequest {
    ClaimRequest {
        id,
        fingerprint: Fingerprint([3; 32]),
        now_ms,
        lease_ms,
    }
}

fn resp(body: &[u8]) -> StoredResponse {
    StoredResponse::new(http::StatusCode::CREATED, &http::HeaderMap::new(), body)
}

fn ids(n: u8, tag: u8) -> Vec<RecordId> {
    (0..n)
        .map(|i| {
            let mut b = [tag; 32];
            b[0] = i;
            RecordId(b)
        })
        .collect()
}

/// How many record keys each node holds (asked of each node directly).
async fn keys_per_node(cluster: &RedisCluster) -> BTreeMap<usize, usize> {
    let mut out = BTreeMap::new();
    for n in 0..NODES {
        let client = redis::Client::open(cluster.node_url(n)).unwrap();
        let mut con = client.get_multiplexed_async_connection().await.unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}{{*", idemgate_store_redis::KEY_PREFIX))
            .query_async(&mut con)
            .await
            .unwrap();
        out.insert(n, keys.len());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_spread_over_the_primaries_and_claims_stay_atomic() {
    let cluster = tokio::task::spawn_blocking(RedisCluster::start).await.unwrap();
    // Two gateways.
    let a = Arc::new(RedisStore::connect(&cluster.url()).await.unwrap());
    let b = Arc::new(RedisStore::connect(&cluster.url()).await.unwrap());
    let now = time::now_ms();
    let spread = ids(48, 0x11);
    for id in &spread {
        assert!(matches!(
            a.claim(req(*id, now, 10_000)).await.unwrap(),
            Claim::Acquired { .. }
        ));
        assert!(matches!(b.get(*id).await.unwrap(), Some(Record::InFlight { .. })));
    }
    let per_node = keys_per_node(&cluster).await;
    assert_eq!(per_node.values().sum::<usize>(), spread.len(), "{per_node:?}");
    assert!(
        per_node.values().filter(|n| **n > 0).count() >= 2,
        "records land on several primaries: {per_node:?}"
    );
    // Every key of a record hashes to one slot: the braces are a hash tag.
    let key = record_key(&spread[0]);
    assert!(key.starts_with(&format!("{}{{", idemgate_store_redis::KEY_PREFIX)) && key.ends_with('}'));

    // 64 concurrent claims of one key from two gateways: exactly one wins, on every round.
    for round in 0..4u8 {
        let id = RecordId([0x40 + round; 32]);
        let tasks: Vec<_> = (0..64)
            .map(|i| {
                let s = if i % 2 == 0 { a.clone() } else { b.clone() };
                tokio::spawn(async move { s.claim(req(id, now, 10_000)).await.unwrap() })
            })
            .collect();
        let mut winners = Vec::new();
        for t in tasks {
            if let Claim::Acquired { token, .. } = t.await.unwrap() {
                winners.push(token);
            }
        }
        assert_eq!(winners.len(), 1, "round {round}");
        a.complete(id, winners[0], resp(b"once"), now + 60_000).await.unwrap();
        match b.claim(req(id, now + 1, 10_000)).await.unwrap() {
            Claim::Completed { response, .. } => assert_eq!(&response.body()[..], b"once"),
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_request_costs_two_round_trips_and_a_replay_one_on_a_cluster() {
    let cluster = shared_cluster_blocking().await;
    let s = RedisStore::connect(&cluster.url()).await.unwrap();
    let now = time::now_ms();
    for id in ids(8, 0x22) {
        let before = s.round_trips();
        let Claim::Acquired { token, takeover: false } = s.claim(req(id, now, 10_000)).await.unwrap() else {
            panic!("expected to acquire")
        };
        s.complete(id, token, resp(b"done"), now + 60_000).await.unwrap();
        assert_eq!(s.round_trips() - before, 2, "claim + complete");
        let before = s.round_trips();
        assert!(matches!(
            s.claim(req(id, now + 1, 10_000)).await.unwrap(),
            Claim::Completed { .. }
        ));
        assert_eq!(s.round_trips() - before, 1, "a replay is one round trip");
    }
}

async fn shared_cluster_blocking() -> Arc<RedisCluster> {
    tokio::task::spawn_blocking(shared_cluster).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_purge_visits_every_primary() {
    let cluster = tokio::task::spawn_blocking(RedisCluster::start).await.unwrap();
    let s = RedisStore::connect(&cluster.url()).await.unwrap();
    let now = time::now_ms();
    let (old, live) = (ids(24, 0x33), ids(24, 0x44));
    for id in &old {
        let Claim::Acquired { token, .. } = s.claim(req(*id, now, 1_000)).await.unwrap() else {
            panic!()
        };
        s.complete(*id, token, resp(b"old"), now + 1_000).await.unwrap();
    }
    for id in &live {
        s.claim(req(*id, now, 1_000_000)).await.unwrap();
    }
    let before = keys_per_node(&cluster).await;
    assert!(before.values().filter(|n| **n > 0).count() >= 2, "{before:?}");
    // A pass over three primaries takes a few calls (one SCAN step each): bounded.
    let mut removed = 0;
    for _ in 0..20 {
        removed += s.purge_expired(now + 2_000, 1_000).await.unwrap().removed;
        if removed == old.len() {
            break;
        }
    }
    assert_eq!(removed, old.len());
    for id in &old {
        assert!(s.get(*id).await.unwrap().is_none());
    }
    for id in &live {
        assert!(matches!(s.get(*id).await.unwrap(), Some(Record::InFlight { .. })));
    }
    // Nothing more to find: further passes remove nothing.
    for _ in 0..6 {
        assert_eq!(s.purge_expired(now + 2_000, 1_000).await.unwrap().removed, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_different_scope_secret_is_refused_on_a_cluster() {
    let cluster = tokio::task::spawn_blocking(RedisCluster::start).await.unwrap();
    let a = RedisStore::connect(&cluster.url()).await.unwrap();
    let b = RedisStore::connect(&cluster.url()).await.unwrap();
    a.check_secret([1; 32]).await.unwrap();
    b.check_secret([1; 32]).await.unwrap();
    assert!(matches!(b.check_secret([2; 32]).await, Err(StoreError::SecretMismatch)));
    a.ping().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_primary_answers_quickly() {
    let mut cluster = tokio::task::spawn_blocking(RedisCluster::start).await.unwrap();
    let opts = idemgate_store_redis::RedisOptions {
        timeout: std::time::Duration::from_millis(500),
        ..Default::default()
    };
    let s = RedisStore::connect_with(&cluster.url(), opts).await.unwrap();
    s.ping().await.unwrap();
    cluster.stop_node(0);
    let now = time::now_ms();
    let mut failed = 0;
    // Some of these keys live on the lost primary: those fail, quickly; none hangs.
    for id in ids(12, 0x55) {
        let started = tokio::time::Instant::now();
        match s.claim(req(id, now, 10_000)).await {
            Ok(_) => {}
            Err(StoreError::Unavailable(_) | StoreError::Timeout(_)) => failed += 1,
            Err(other) => panic!("unexpected error {other:?}"),
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(3),
            "answered in {:?}",
            started.elapsed()
        );
    }
    assert!(failed > 0, "the lost primary's keys cannot be claimed");
}
