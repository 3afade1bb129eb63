//! The store over TLS (`rediss://`) against a private TLS-only `redis-server` with a throwaway
//! CA trusted through `?ca=PATH`: the contract's conformance cases, refusal of a server whose
//! CA is not trusted, refusal of a bad CA file, and a TLS cluster (`rediss+cluster://`).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use idemgate_core::{time, Claim, ClaimRequest, Fingerprint, RecordId, Store, StoredResponse};
use idemgate_store_redis::{OpenError, RedisOptions, RedisStore};
use idemgate_testkit::redis::cluster::RedisCluster;
use idemgate_testkit::redis::tls::TlsRedisServer;

mod support;
use support::{with_ca, WithServer};

async fn fresh() -> Arc<WithServer<TlsRedisServer>> {
    let server = tokio::task::spawn_blocking(TlsRedisServer::start).await.unwrap();
    let store = RedisStore::connect(&with_ca(&server.url(), &server.ca_path()))
        .await
        .expect("connect over TLS");
    Arc::new(WithServer { store, guard: server })
}

idemgate_store_conformance::conformance_tests!(fresh());

fn req(id: RecordId, now_ms: u64) -> ClaimRequest {
    ClaimRequest {
        id,
        fingerprint: Fingerprint([3; 32]),
        now_ms,
        lease_ms: 10_000,
    }
}

fn quick() -> RedisOptions {
    RedisOptions {
        timeout: Duration::from_millis(1_000),
        ..RedisOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_server_or_a_plain_client_is_refused() {
    let server = tokio::task::spawn_blocking(TlsRedisServer::start).await.unwrap();
    // The system's roots do not include the test CA.
    let started = Instant::now();
    let err = RedisStore::connect_with(&server.url(), quick()).await.unwrap_err();
    assert!(
        matches!(err, OpenError::Connect { .. } | OpenError::Timeout { .. }),
        "{err}"
    );
    // Another CA is not this one.
    let other = tokio::task::spawn_blocking(TlsRedisServer::start).await.unwrap();
    let err = RedisStore::connect_with(&with_ca(&server.url(), &other.ca_path()), quick())
        .await
        .unwrap_err();
    assert!(
        matches!(err, OpenError::Connect { .. } | OpenError::Timeout { .. }),
        "{err}"
    );
    // Plain Redis on a TLS port does not get through.
    let plain = format!("redis://127.0.0.1:{}", server.port());
    let err = RedisStore::connect_with(&plain, quick()).await.unwrap_err();
    assert!(
        matches!(err, OpenError::Connect { .. } | OpenError::Timeout { .. }),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    // The right CA, also given as `localhost` (the certificate names both).
    let by_name = format!("rediss://localhost:{}", server.port());
    let s = RedisStore::connect(&with_ca(&by_name, &server.ca_path()))
        .await
        .unwrap();
    s.ping().await.unwrap();
}

#[tokio::test]
async fn a_ca_file_without_certificates_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    let url = with_ca("rediss://127.0.0.1:1", &empty);
    assert!(matches!(RedisStore::connect(&url).await, Err(OpenError::Tls { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_works_end_to_end() {
    let cluster = tokio::task::spawn_blocking(RedisCluster::start_tls).await.unwrap();
    let ca = cluster.certs().expect("a TLS cluster").ca_path();
    let url = with_ca(&cluster.url(), &ca);
    assert!(url.starts_with("rediss+cluster://"));
    let a = Arc::new(RedisStore::connect(&url).await.unwrap());
    let b = Arc::new(RedisStore::connect(&url).await.unwrap());
    assert!(a.is_cluster());
    a.check_secret([7; 32]).await.unwrap();
    b.check_secret([7; 32]).await.unwrap();
    let now = time::now_ms();
    for round in 0..3u8 {
        let id = RecordId([0x50 + round; 32]);
        let tasks: Vec<_> = (0..64)
            .map(|i| {
                let s = if i % 2 == 0 { a.clone() } else { b.clone() };
                tokio::spawn(async move { s.claim(req(id, now)).await.unwrap() })
            })
            .collect();
        let mut winners = Vec::new();
        for t in tasks {
            if let Claim::Acquired { token, .. } = t.await.unwrap() {
                winners.push(token);
            }
        }
        assert_eq!(winners.len(), 1);
        let r = StoredResponse::new(http::StatusCode::OK, &http::HeaderMap::new(), b"tls");
        a.complete(id, winners[0], r, now + 60_000).await.unwrap();
        assert!(matches!(b.claim(req(id, now)).await.unwrap(), Claim::Completed { .. }));
    }
    // Without the CA the cluster is not trusted.
    let err = RedisStore::connect_with(&cluster.url(), quick()).await.unwrap_err();
    assert!(
        matches!(err, OpenError::Connect { .. } | OpenError::Timeout { .. }),
        "{err}"
    );
}
