//! A fleet of gateway processes sharing one Redis or PostgreSQL store, each started privately by
//! the test: a key executes once whichever instance each copy reaches; a store outage fails closed
//! and recovers without a restart; a killed instance's locks are taken over after the lock timeout.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::{eventually, Gateway, Http, Upstream};
use idemgate_testkit::postgres::Postgres;
use idemgate_testkit::redis::RedisServer;

const SECRET: &str = "fleet-secret-0123456789abcdef";

fn gateway(up: &Upstream, store: &str, extra: &[&str]) -> Gateway {
    let upstream = up.url();
    let mut args = vec!["--upstream", upstream.as_str(), "--store", store];
    args.extend_from_slice(extra);
    Gateway::start_env(&args, &[("IDEMGATE_SCOPE_SECRET", SECRET)])
}

async fn three_instances_execute_each_key_once(store: &str) {
    let up = Upstream::start().await;
    let gws: Vec<Gateway> = (0..3).map(|_| gateway(&up, store, &[])).collect();
    let http = Http::default();
    let urls: Arc<Vec<String>> = Arc::new(gws.iter().map(|g| g.url("/pay?delay_ms=5")).collect());
    const KEYS: usize = 500;
    const COPIES: usize = 10;
    let mut statuses: HashMap<u16, usize> = HashMap::new();
    let mut bodies: HashMap<String, Vec<bytes::Bytes>> = HashMap::new();
    // Waves of 25 keys: the 10 copies of each key go out at once, spread over the three instances.
    for wave in 0..KEYS / 25 {
        let mut tasks = Vec::new();
        for k in 0..25 {
            let key = format!("fleet-{}", wave * 25 + k);
            for copy in 0..COPIES {
                let (http, urls, key) = (http.clone(), urls.clone(), key.clone());
                tasks.push(tokio::spawn(async move {
                    let url = &urls[copy % urls.len()];
                    (key.clone(), http.post(url, &key, r#"{"amount":1}"#).await)
                }));
            }
        }
        for t in tasks {
            let (key, r) = t.await.unwrap();
            *statuses.entry(r.status).or_default() += 1;
            assert!(r.status == 201 || r.status == 409, "{key}: {r:?}");
            if r.status == 201 {
                bodies.entry(key).or_default().push(r.body);
            }
        }
    }
    assert_eq!(up.executions(), KEYS as u64, "{statuses:?}");
    assert_eq!(statuses.values().sum::<usize>(), KEYS * COPIES);
    for (key, bs) in &bodies {
        assert!(
            bs.windows(2).all(|w| w[0] == w[1]),
            "{key}: every 201 is the original or its replay"
        );
    }
    // Every key replays through every instance afterwards.
    for url in urls.iter() {
        assert!(http.post(url, "fleet-7", r#"{"amount":1}"#).await.replayed());
    }
    assert_eq!(up.executions(), KEYS as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_fleet_executes_each_key_once() {
    let redis = RedisServer::start();
    three_instances_execute_each_key_once(&redis.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_fleet_executes_each_key_once() {
    let pg = Postgres::start();
    three_instances_execute_each_key_once(&pg.url()).await;
}

async fn outage_fails_closed_and_recovers(stop: impl Fn(), restart: impl Fn(), store: &str) {
    let up = Upstream::start().await;
    let gw = gateway(&up, store, &["--admin-listen", "127.0.0.1:0"]);
    let http = Http::default();
    assert_eq!(http.post(&gw.url("/pay"), "before", "{}").await.status, 201);
    stop();
    let executions = up.executions();
    for i in 0..20 {
        let r = http.post(&gw.url("/pay"), &format!("during-{i}"), "{}").await;
        r.assert_problem(503, "store-unavailable");
        assert_eq!(r.header("retry-after"), Some("1"));
    }
    assert_eq!(
        up.executions(),
        executions,
        "fail closed: nothing forwarded without a lock"
    );
    http.send("GET", &gw.admin_url("/readyz"), &[], "")
        .await
        .assert_problem(503, "store-unavailable");
    restart();
    let recovered = eventually(Duration::from_secs(20), || async {
        http.post(&gw.url("/pay"), "after", "{}").await.status == 201
    })
    .await;
    assert!(recovered, "the gateway recovers by itself once the store is back");
    assert_eq!(http.send("GET", &gw.admin_url("/readyz"), &[], "").await.status, 200);
    assert!(http.post(&gw.url("/pay"), "after", "{}").await.replayed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_fails_closed_and_recovers() {
    let redis = std::sync::Mutex::new(RedisServer::start());
    let url = redis.lock().unwrap().url();
    outage_fails_closed_and_recovers(
        || redis.lock().unwrap().stop(),
        || redis.lock().unwrap().restart(),
        &url,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_fails_closed_and_recovers() {
    let pg = std::sync::Mutex::new(Postgres::start());
    let url = pg.lock().unwrap().url();
    outage_fails_closed_and_recovers(|| pg.lock().unwrap().stop(), || pg.lock().unwrap().restart(), &url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_open_forwards_unprotected_and_counts_it() {
    let mut redis = RedisServer::start();
    let up = Upstream::start().await;
    let gw = gateway(
        &up,
        &redis.url(),
        &["--on-store-error", "open", "--admin-listen", "127.0.0.1:0"],
    );
    let http = Http::default();
    redis.stop();
    let r = http.post(&gw.url("/pay"), "open-1", "{}").await;
    assert_eq!(r.status, 201, "forwarded without protection");
    assert_eq!(up.executions(), 1);
    let metrics = http.send("GET", &gw.admin_url("/metrics"), &[], "").await;
    let metrics = String::from_utf8_lossy(&metrics.body);
    assert!(
        metrics.contains("idemgate_requests_total{outcome=\"store_error\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instances_locks_are_taken_over_and_its_records_kept() {
    let redis = RedisServer::start();
    let up = Upstream::start().await;
    let store = redis.url();
    let mut a = gateway(&up, &store, &["--lock-timeout", "4s"]);
    let b = gateway(&up, &store, &[]);
    let http = Http::default();
    let done = http.post(&a.url("/pay"), "done", "{}").await;
    assert_eq!(done.status, 201);
    // A claims "held" and forwards; it dies before the upstream answers.
    let url = "/pay?delay_ms=1500";
    let held = tokio::spawn({
        let (http, url) = (http.clone(), a.url(url));
        async move { http.try_send("POST", &url, &[("idempotency-key", "held")], "{}").await }
    });
    assert!(up.wait_for_executions(2).await);
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    assert!(
        held.await.unwrap().is_err(),
        "the client of the killed instance got no answer"
    );
    // B refuses the key while A's lease lasts, then takes it over and executes it.
    let b_url = b.url(url);
    let retry = || http.send("POST", &b_url, &[("idempotency-key", "held")], "{}");
    retry().await.assert_problem(409, "request-in-progress");
    let taken = eventually(Duration::from_secs(20), || async { retry().await.status == 201 }).await;
    assert!(taken, "taken over after the lock timeout");
    assert_eq!(up.executions(), 3);
    assert!(retry().await.replayed());
    assert!(
        http.post(&b.url("/pay"), "done", "{}").await.replayed(),
        "A's completed record survives A"
    );
}

#[test]
fn a_gateway_with_another_secret_is_refused_at_start() {
    let redis = RedisServer::start();
    let store = redis.url();
    let run = |secret: &str| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_idemgate"));
        cmd.args([
            "serve",
            "--upstream",
            "http://127.0.0.1:9",
            "--listen",
            "127.0.0.1:0",
            "--store",
            &store,
        ])
        .env("IDEMGATE_SCOPE_SECRET", secret);
        cmd
    };
    let first = Gateway::spawn(run(SECRET));
    let out = run("another-secret-0123456789").output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("different scope secret"),
        "{out:?}"
    );
    drop(first);
    // Shared stores need an explicit secret.
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_idemgate"));
    cmd.args([
        "serve",
        "--upstream",
        "http://127.0.0.1:9",
        "--listen",
        "127.0.0.1:0",
        "--store",
        &store,
    ]);
    let out = cmd.env_remove("IDEMGATE_SCOPE_SECRET").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("scope secret"), "{out:?}");
}
