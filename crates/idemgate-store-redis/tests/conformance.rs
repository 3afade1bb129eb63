//! The store contract's conformance suite against a private `redis-server`, plus what only a
//! shared Redis store must do: cost two round trips per first request and one per replay, fence
//! off a gateway whose lease another gateway took over, refuse a different scope secret, and
//! answer quickly in an outage, then recover by itself when Redis is back.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use idemgate_core::{
    time, Claim, ClaimRequest, CompleteError, FencingToken, Fingerprint, Record, RecordId, Store, StoreError,
    StoredResponse,
};
use idemgate_store_redis::{record_key, OpenError, RedisOptions, RedisStore};
use idemgate_testkit::redis::RedisServer;

mod support;
use support::WithServer;

async fn fresh() -> Arc<WithServer<RedisServer>> {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url()).await.expect("connect");
    Arc::new(WithServer { store, guard: server })
}

idemgate_store_conformance::conformance_tests!(fresh());

/// The same suite with every claim made by the claim script (what a Redis before 7.0 gets, and
/// what a claim that finds an expired record runs).
mod claim_script_only {
    use super::*;

    async fn fresh() -> Arc<WithServer<RedisServer>> {
        let server = RedisServer::start();
        let opts = RedisOptions {
            set_nx_get: false,
            ..RedisOptions::default()
        };
        let store = RedisStore::connect_with(&server.url(), opts).await.expect("connect");
        Arc::new(WithServer { store, guard: server })
    }

    idemgate_store_conformance::conformance_tests!(fresh());
}

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

#[tokio::test]
async fn a_first_request_costs_two_round_trips_and_a_replay_one() {
    let server = RedisServer::start();
    let s = RedisStore::connect(&server.url()).await.unwrap();
    let now = time::now_ms();
    let id = RecordId([1; 32]);
    let before = s.round_trips();
    let Claim::Acquired { token, takeover: false } = s.claim(req(id, now, 10_000)).await.unwrap() else {
        panic!("expected to acquire")
    };
    s.complete(id, token, resp(b"done"), now + 60_000).await.unwrap();
    assert_eq!(s.round_trips() - before, 2, "claim + complete");
    let before = s.round_trips();
    match s.claim(req(id, now + 1, 10_000)).await.unwrap() {
        Claim::Completed { response, .. } => assert_eq!(&response.body()[..], b"done"),
        other => panic!("{other:?}"),
    }
    assert_eq!(s.round_trips() - before, 1, "a replay is one round trip");
}

#[tokio::test]
async fn records_are_one_string_under_a_hash_tagged_key_with_redis_ttls() {
    let server = RedisServer::start();
    let s = RedisStore::connect(&server.url()).await.unwrap();
    let probe = RedisStore::connect(&server.url()).await.unwrap();
    let now = time::now_ms();
    let id = RecordId([0xab; 32]);
    let key = record_key(&id);
    assert_eq!(key, format!("idemgate2:{{{}}}", "ab".repeat(32)));
    let Claim::Acquired { token, .. } = s.claim(req(id, now, 5_000)).await.unwrap() else {
        panic!()
    };
    // The in-flight record's Redis TTL is its lease plus the slack; a completed one's its TTL.
    let pttl = |c: redis::Client| async move {
        let mut con = c.get_multiplexed_async_connection().await.unwrap();
        let ttl: i64 = redis::cmd("PTTL")
            .arg(record_key(&id))
            .query_async(&mut con)
            .await
            .unwrap();
        ttl
    };
    let client = redis::Client::open(server.url()).unwrap();
    let ttl = pttl(client.clone()).await;
    assert!(ttl > 60_000 && ttl <= 65_000, "in-flight pttl {ttl}");
    s.complete(id, token, resp(b"x"), time::now_ms() + 30_000)
        .await
        .unwrap();
    let ttl = pttl(client.clone()).await;
    assert!(ttl > 25_000 && ttl <= 30_000, "completed pttl {ttl}");
    // The value is the record exactly as the other stores encode it (the completion was
    // assembled by the script from the in-flight record's fingerprint).
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let raw: Vec<u8> = redis::cmd("GET").arg(&key).query_async(&mut con).await.unwrap();
    let stored = probe.get(id).await.unwrap().expect("completed");
    assert_eq!(raw, stored.encode().to_vec());
    match stored {
        Record::Completed {
            fingerprint, response, ..
        } => {
            assert_eq!(fingerprint, Fingerprint([3; 32]));
            assert_eq!(&response.body()[..], b"x");
            assert_eq!(response.status(), http::StatusCode::CREATED);
        }
        other => panic!("{other:?}"),
    }
    // A replay does not extend anything; a deleted record is gone for every gateway.
    assert!(probe.delete(id).await.unwrap());
    assert!(s.get(id).await.unwrap().is_none());
}

#[tokio::test]
async fn a_gateway_whose_lease_was_taken_over_is_fenced_off() {
    let server = RedisServer::start();
    let a = RedisStore::connect(&server.url()).await.unwrap();
    let b = RedisStore::connect(&server.url()).await.unwrap();
    let id = RecordId([2; 32]);
    let now = time::now_ms();
    let Claim::Acquired { token: ta, .. } = a.claim(req(id, now, 200)).await.unwrap() else {
        panic!()
    };
    // While A's lease lasts, B waits.
    assert!(matches!(
        b.claim(req(id, now + 100, 200)).await.unwrap(),
        Claim::InFlight { .. }
    ));
    // A's lease runs out (real time, so both gateways' clocks agree).
    tokio::time::sleep(Duration::from_millis(250)).await;
    let Claim::Acquired { token: tb, takeover } = b.claim(req(id, time::now_ms(), 10_000)).await.unwrap() else {
        panic!("B takes the key over")
    };
    assert!(takeover);
    assert_ne!(ta, tb);
    assert!(matches!(
        a.complete(id, ta, resp(b"from A"), now + 60_000).await,
        Err(CompleteError::Fenced)
    ));
    assert!(!a.release(id, ta).await.unwrap());
    b.complete(id, tb, resp(b"from B"), time::now_ms() + 60_000)
        .await
        .unwrap();
    assert!(matches!(
        a.complete(id, ta, resp(b"from A"), now + 60_000).await,
        Err(CompleteError::Fenced)
    ));
    for s in [&a, &b] {
        match s.claim(req(id, time::now_ms(), 10_000)).await.unwrap() {
            Claim::Completed { response, .. } => assert_eq!(&response.body()[..], b"from B"),
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn tokens_beyond_two_to_the_53_are_compared_exactly() {
    // Lua numbers are doubles: 2^53 and 2^53 + 1 are equal as numbers, different as strings.
    let server = RedisServer::start();
    let s = RedisStore::connect(&server.url()).await.unwrap();
    let id = RecordId([4; 32]);
    let Claim::Acquired { token, .. } = s.claim(req(id, time::now_ms(), 10_000)).await.unwrap() else {
        panic!()
    };
    let client = redis::Client::open(server.url()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let big: u64 = (1 << 53) + 1;
    let rewritten = Record::InFlight {
        fingerprint: Fingerprint([3; 32]),
        token: FencingToken(big),
        lease_until_ms: time::now_ms() + 10_000,
    };
    let _: () = redis::cmd("SET")
        .arg(record_key(&id))
        .arg(&rewritten.encode()[..])
        .query_async(&mut con)
        .await
        .unwrap();
    assert_ne!(token.0, 1 << 53);
    assert!(matches!(
        s.complete(id, FencingToken(1 << 53), resp(b"x"), time::now_ms() + 60_000)
            .await,
        Err(CompleteError::Fenced)
    ));
    assert!(matches!(s.get(id).await.unwrap(), Some(Record::InFlight { token, .. }) if token.0 == big));
    s.complete(id, FencingToken(big), resp(b"x"), time::now_ms() + 60_000)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_different_scope_secret_is_refused() {
    let server = RedisServer::start();
    let a = RedisStore::connect(&server.url()).await.unwrap();
    let b = RedisStore::connect(&server.url()).await.unwrap();
    a.check_secret([1; 32]).await.unwrap();
    a.check_secret([1; 32]).await.unwrap();
    b.check_secret([1; 32]).await.unwrap();
    assert!(matches!(b.check_secret([2; 32]).await, Err(StoreError::SecretMismatch)));
}

#[tokio::test]
async fn corrupt_records_are_reported_not_panicked_on() {
    let server = RedisServer::start();
    let client = redis::Client::open(server.url()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let now = time::now_ms();
    // Not a record; a completed record cut short; an unknown kind; an unknown format.
    let cases: [(Vec<u8>, u8); 4] = [
        (b"short".to_vec(), 10),
        (vec![1, 2, 9, 9, 9], 11),
        ([&[1u8, 7][..], &[0; 48]].concat(), 12),
        (vec![9; 60], 13),
    ];
    for script_only in [false, true] {
        let s = if script_only {
            RedisStore::connect_with(
                &server.url(),
                RedisOptions {
                    set_nx_get: false,
                    ..RedisOptions::default()
                },
            )
            .await
            .unwrap()
        } else {
            RedisStore::connect(&server.url()).await.unwrap()
        };
        for (value, n) in cases.clone() {
            let id = RecordId([n; 32]);
            let _: () = redis::cmd("SET")
                .arg(record_key(&id))
                .arg(value)
                .query_async(&mut con)
                .await
                .unwrap();
            assert!(matches!(
                s.claim(req(id, now, 1_000)).await,
                Err(StoreError::Corrupt(_))
            ));
            assert!(matches!(s.get(id).await, Err(StoreError::Corrupt(_))));
            assert!(s.delete(id).await.unwrap(), "an operator can still delete it");
        }
    }
}

#[tokio::test]
async fn urls_are_checked() {
    for bad in [
        "http://127.0.0.1:1",
        "redis:/127.0.0.1:1",
        "redis+cluster://",
        "redis+cluster://127.0.0.1:1,,127.0.0.1:2",
        "redis+cluster://127.0.0.1:1/3",
        "redis://127.0.0.1:1?ca=/tmp/ca.pem",
        "rediss://127.0.0.1:1?ca=",
        "rediss://127.0.0.1:1#insecure",
    ] {
        assert!(
            matches!(RedisStore::connect(bad).await, Err(OpenError::Url { .. })),
            "{bad}"
        );
    }
    assert!(matches!(
        RedisStore::connect("rediss://127.0.0.1:1?ca=/nonexistent/ca.pem").await,
        Err(OpenError::Tls { .. })
    ));
    // TLS and cluster URLs are accepted; nothing listens there: refused quickly.
    for url in [
        "rediss://127.0.0.1:1",
        "redis+cluster://127.0.0.1:1,127.0.0.1:2",
        "rediss+cluster://127.0.0.1:1",
    ] {
        let started = Instant::now();
        let err = RedisStore::connect(url).await.unwrap_err();
        assert!(
            matches!(err, OpenError::Connect { .. } | OpenError::Timeout { .. }),
            "{url}: {err}"
        );
        assert!(started.elapsed() < Duration::from_secs(5), "{url}");
    }
    // Nothing listens there: refused quickly, not hung.
    let port = idemgate_testkit::free_port();
    let started = Instant::now();
    let err = RedisStore::connect(&format!("redis://127.0.0.1:{port}"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, OpenError::Connect { .. } | OpenError::Timeout { .. }),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    // A database number selects a separate keyspace.
    let server = RedisServer::start();
    let db0 = RedisStore::connect(&server.url()).await.unwrap();
    let db3 = RedisStore::connect(&format!("{}/3", server.url())).await.unwrap();
    let id = RecordId([5; 32]);
    let now = time::now_ms();
    assert!(matches!(
        db0.claim(req(id, now, 10_000)).await.unwrap(),
        Claim::Acquired { .. }
    ));
    assert!(matches!(
        db3.claim(req(id, now, 10_000)).await.unwrap(),
        Claim::Acquired { .. }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_answers_quickly_and_the_store_recovers_by_itself() {
    let mut server = RedisServer::start();
    let opts = RedisOptions {
        timeout: Duration::from_millis(500),
        ..RedisOptions::default()
    };
    let s = RedisStore::connect_with(&server.url(), opts).await.unwrap();
    s.ping().await.unwrap();
    let now = time::now_ms();

    server.stop();
    for n in 0..3u8 {
        let started = Instant::now();
        match s.claim(req(RecordId([20 + n; 32]), now, 10_000)).await {
            Err(StoreError::Unavailable(_) | StoreError::Timeout(_)) => {}
            other => panic!("expected the outage to be reported, got {other:?}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "answered in {:?}",
            started.elapsed()
        );
    }

    server.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    let token = loop {
        match s.claim(req(RecordId([30; 32]), time::now_ms(), 10_000)).await {
            Ok(Claim::Acquired { token, .. }) => break token,
            Ok(other) => panic!("{other:?}"),
            Err(e) => {
                assert!(Instant::now() < deadline, "did not recover within 15 s: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    // Scripts were lost with the restart and are reloaded transparently.
    s.complete(RecordId([30; 32]), token, resp(b"back"), time::now_ms() + 60_000)
        .await
        .unwrap();
    s.ping().await.unwrap();
}

#[tokio::test]
async fn an_evicting_redis_is_warned_about_not_refused() {
    let server = RedisServer::start();
    let client = redis::Client::open(server.url()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("allkeys-lru")
        .query_async(&mut con)
        .await
        .unwrap();
    let s = RedisStore::connect(&server.url()).await.unwrap();
    s.ping().await.unwrap();
}

/// A Redis at `maxmemory` under `noeviction` refuses every write: the store says "out of space"
/// (the layer's 503 `store-full`, never forwarded unprotected), not "unavailable", and works
/// again once memory is freed.
#[tokio::test]
async fn a_full_redis_is_out_of_space_not_down() {
    let server = RedisServer::start();
    let s = RedisStore::connect(&server.url()).await.unwrap();
    let (done, now) = (RecordId([1; 32]), time::now_ms());
    let Ok(Claim::Acquired { token, .. }) = s.claim(req(done, now, 60_000)).await else {
        panic!("first claim");
    };
    let client = redis::Client::open(server.url()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let set = |limit: &'static str| redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg(limit).clone();
    let _: () = set("1").query_async(&mut con).await.unwrap();
    let r = s.claim(req(RecordId([2; 32]), now, 60_000)).await;
    assert!(matches!(r, Err(StoreError::OutOfSpace(_))), "{r:?}");
    let r = s.complete(done, token, resp(b"paid"), now + 86_400_000).await;
    assert!(
        matches!(r, Err(CompleteError::Store(StoreError::OutOfSpace(_)))),
        "{r:?}"
    );
    let _: () = set("0").query_async(&mut con).await.unwrap();
    s.complete(done, token, resp(b"paid"), now + 86_400_000).await.unwrap();
    assert!(matches!(
        s.claim(req(done, now, 60_000)).await,
        Ok(Claim::Completed { .. })
    ));
}

/// Connections to Redis the server counts (`CLIENT LIST`), minus the asking one.
async fn clients(url: &str) -> usize {
    let client = redis::Client::open(url).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let list: String = redis::cmd("CLIENT").arg("LIST").query_async(&mut c).await.unwrap();
    list.lines().count() - 1
}

/// Runs `f` on a thread of its own as a gateway serving thread runs: a current-thread runtime with
/// a reply queue installed (what makes the store open that thread's own connection).
fn serving_thread<F, Fut>(f: F) -> std::thread::JoinHandle<()>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let _replies = tokio::spawn(idemgate_core::reply::ReplyQueue::install());
            f().await;
        });
    })
}

#[test]
fn each_serving_thread_gets_a_connection_of_its_own_that_survives_an_outage() {
    let mut server = RedisServer::start();
    let url = server.url();
    let main = tokio::runtime::Runtime::new().unwrap();
    let opts = RedisOptions {
        timeout: Duration::from_millis(500),
        ..RedisOptions::default()
    };
    let store = Arc::new(main.block_on(RedisStore::connect_with(&url, opts)).unwrap());
    assert_eq!(main.block_on(clients(&url)), 1, "the shared connection");
    let writers: Vec<_> = [0u8, 100]
        .into_iter()
        .map(|first| {
            let store = store.clone();
            serving_thread(move || async move {
                for n in first..first + 20 {
                    let id = RecordId([n; 32]);
                    let Claim::Acquired { token, .. } = store.claim(req(id, time::now_ms(), 10_000)).await.unwrap()
                    else {
                        panic!("expected to acquire {n}")
                    };
                    store
                        .complete(id, token, resp(&[n]), time::now_ms() + 60_000)
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for h in writers {
        h.join().unwrap();
    }
    // Every record written through the serving threads' connections is there.
    main.block_on(async {
        for n in (0..20).chain(100..120) {
            match store
                .claim(req(RecordId([n; 32]), time::now_ms(), 10_000))
                .await
                .unwrap()
            {
                Claim::Completed { response, .. } => assert_eq!(&response.body()[..], &[n]),
                other => panic!("record {n}: {other:?}"),
            }
        }
    });
    // A live serving thread's own connection: counted by Redis, and it survives an outage
    // (Redis stops, the thread is told it is down, then reconnects by itself once it is back).
    let (step_tx, step_rx) = std::sync::mpsc::channel::<&'static str>();
    let (go_tx, mut go_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let s = store.clone();
    let worker = serving_thread(move || async move {
        let claim = |n: u8| s.claim(req(RecordId([n; 32]), time::now_ms(), 10_000));
        assert!(matches!(claim(200).await, Ok(Claim::Acquired { .. })));
        step_tx.send("opened").unwrap();
        tokio::time::timeout(Duration::from_secs(10), go_rx.recv())
            .await
            .unwrap()
            .unwrap();
        match claim(201).await {
            Err(StoreError::Unavailable(_) | StoreError::Timeout(_)) => {}
            other => panic!("expected the outage to be reported, got {other:?}"),
        }
        step_tx.send("down").unwrap();
        tokio::time::timeout(Duration::from_secs(10), go_rx.recv())
            .await
            .unwrap()
            .unwrap();
        // Reconnecting has no signal of its own: retry, bounded, as a client would.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match claim(202).await {
                Ok(Claim::Acquired { .. }) => break,
                Ok(other) => panic!("{other:?}"),
                Err(e) => {
                    assert!(Instant::now() < deadline, "did not recover within 15 s: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        step_tx.send("recovered").unwrap();
    });
    let step = || step_rx.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(step(), "opened");
    assert_eq!(
        main.block_on(clients(&url)),
        2,
        "the shared connection and the live serving thread's own"
    );
    server.stop();
    go_tx.send(()).unwrap();
    assert_eq!(step(), "down");
    server.restart();
    go_tx.send(()).unwrap();
    assert_eq!(step(), "recovered");
    worker.join().unwrap();
}
