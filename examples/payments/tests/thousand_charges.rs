//! A thousand charges through a connection that loses 30% of answers after the server committed.
//!
//! The API (axum + SQLite ledger behind `idemgate-tower`) listens on a real socket; clients reach
//! it through the flaky proxy with `idemgate-client`'s middleware. Every lost answer is retried
//! with the same key and replayed from the record, so the ledger ends with exactly one row per
//! charge and every client got a 201 naming the row that was written for it.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use idemgate_client::IdempotencyMiddleware;
use payments::api;
use payments::client::{charge, client, ChargeInput, ChargeOutcome};
use payments::flaky::FlakyProxy;
use payments::ledger::Ledger;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

const CHARGES: usize = 1000;
const CONCURRENCY: usize = 32;
const DROP_RATE: f64 = 0.3;

async fn start_api(ledger: Ledger) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = api::router(ledger, b"test secret");
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_charges_through_a_flaky_connection_leave_one_row_each() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(&dir.path().join("ledger.db")).unwrap();
    let (api_addr, api_task) = start_api(ledger.clone()).await;
    let proxy = FlakyProxy::start(api_addr, DROP_RATE, 0x01de_6a7e).await.unwrap();
    let base = proxy.url();

    // 0.3^20: a charge failing every attempt is not a thing that happens in this test.
    let middleware = IdempotencyMiddleware::new()
        .max_attempts(20)
        .base_delay(Duration::from_millis(2))
        .max_delay(Duration::from_millis(50))
        .deadline(Duration::from_secs(20));
    let http = client(middleware).unwrap();

    let started = Instant::now();
    let limit = Arc::new(Semaphore::new(CONCURRENCY));
    let mut tasks = Vec::with_capacity(CHARGES);
    for i in 0..CHARGES {
        let (http, base, limit) = (http.clone(), base.clone(), limit.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = limit.acquire_owned().await.unwrap();
            let input = ChargeInput {
                amount: 100 + i as i64,
                currency: "usd".into(),
                customer: format!("cus_{i}"),
            };
            let user = format!("user-{}", i % 7);
            (i, charge(&http, &base, &user, &input).await)
        }));
    }
    let mut outcomes: Vec<(usize, ChargeOutcome)> = Vec::with_capacity(CHARGES);
    for t in tasks {
        let (i, result) = tokio::time::timeout(Duration::from_secs(50), t)
            .await
            .expect("a charge did not finish in time")
            .unwrap();
        let outcome = result.unwrap_or_else(|e| panic!("charge {i} failed: {e:?}"));
        outcomes.push((i, outcome));
    }
    let took = started.elapsed();

    // Every client got its answer: a 201 naming its charge, original or replayed.
    for (i, o) in &outcomes {
        assert_eq!(o.status, 201, "charge {i}: {o:?}");
        let c = o.charge.as_ref().expect("a charge body");
        assert_eq!(c.amount, 100 + *i as i64, "charge {i} got someone else's answer");
        assert_eq!(c.customer, format!("cus_{i}"));
        assert_eq!(c.user, format!("user-{}", i % 7));
        assert_eq!(
            c.idempotency_key, o.key,
            "the row was written with the key the client used"
        );
        // Every failure here is an answer lost after the commit, so a retried charge is always
        // answered from the record, and a charge answered first time never is.
        assert_eq!(o.replayed, o.attempts > 1, "charge {i}: {o:?}");
    }

    // The ledger: exactly one row per charge, one per key.
    let rows = ledger.all().await.unwrap();
    assert_eq!(rows.len(), CHARGES, "the ledger has {} rows", rows.len());
    assert_eq!(ledger.count().await.unwrap(), CHARGES as u64);
    let mut per_key: HashMap<&str, usize> = HashMap::new();
    for r in &rows {
        *per_key
            .entry(r.idempotency_key.as_deref().expect("every row has a key"))
            .or_default() += 1;
    }
    assert_eq!(per_key.len(), CHARGES);
    assert!(per_key.values().all(|n| *n == 1));
    let by_id: HashMap<&str, _> = rows.iter().map(|r| (r.id.as_str(), r)).collect();
    for (_, o) in &outcomes {
        let c = o.charge.as_ref().unwrap();
        assert_eq!(
            by_id.get(c.id.as_str()).copied(),
            Some(c),
            "the answer matches the ledger row"
        );
    }

    // The connection really was flaky, and every lost answer was made up by one retry.
    let stats = proxy.stats();
    let dropped = stats.dropped.load(Ordering::Relaxed);
    let retries: u64 = outcomes.iter().map(|(_, o)| u64::from(o.attempts - 1)).sum();
    let replays = outcomes.iter().filter(|(_, o)| o.replayed).count();
    assert!(dropped > 150, "only {dropped} answers were lost");
    assert_eq!(retries, dropped, "one retry per lost answer");
    println!(
        "{CHARGES} charges in {took:?}: {dropped} answers lost, {retries} retries, {replays} replays, \
         {} connections",
        stats.connections.load(Ordering::Relaxed)
    );
    assert!(took < Duration::from_secs(45), "{took:?}");
    api_task.abort();
}

#[tokio::test]
async fn keys_are_scoped_to_the_authenticated_user_and_reuse_is_refused() {
    let ledger = Ledger::in_memory().unwrap();
    let (addr, api_task) = start_api(ledger.clone()).await;
    let base = format!("http://{addr}");
    let http = reqwest::Client::new();
    let post = |user: &'static str, key: &'static str, amount: i64| {
        let http = http.clone();
        let url = format!("{base}/charges");
        async move {
            http.post(url)
                .bearer_auth(user)
                .header("idempotency-key", key)
                .json(&serde_json::json!({"amount": amount, "currency": "eur", "customer": "cus_1"}))
                .send()
                .await
                .unwrap()
        }
    };
    let first = post("alice", "k1", 500).await;
    assert_eq!(first.status(), 201);
    assert!(first.headers().get("location").is_some());
    let again = post("alice", "k1", 500).await;
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers().get("idempotent-replayed").unwrap(), "true");
    // Bob's k1 is another record: executed, not Alice's answer.
    let bob = post("bob", "k1", 500).await;
    assert_eq!(bob.status(), 201);
    assert!(bob.headers().get("idempotent-replayed").is_none());
    let bob: serde_json::Value = bob.json().await.unwrap();
    assert_eq!(bob["user"], "bob");
    // The same key with another body: 422, nothing charged.
    assert_eq!(post("alice", "k1", 999).await.status(), 422);
    assert_eq!(ledger.count().await.unwrap(), 2);
    // No credentials: 401 before the layer.
    let anon = http.post(format!("{base}/charges")).body("{}").send().await.unwrap();
    assert_eq!(anon.status(), 401);
    let count: serde_json::Value = http
        .get(format!("{base}/charges/count"))
        .bearer_auth("alice")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(count["charges"], 2);
    api_task.abort();
}
