//! Run-once jobs against every store: the memory store, the embedded redb store, and private
//! Redis and PostgreSQL servers. Each scenario runs once per store (see `stores!` at the end).

use std::any::Any;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use idemgate_core::{MemoryStore, Store, StoreError};
use idemgate_jobs::{Failure, Run, RunError, RunOnce};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Notify};
use tokio::time::{timeout, Instant};

const SECRET: &[u8] = b"run-once test secret";

/// Every wait in these tests ends by then.
const BOUND: Duration = Duration::from_secs(20);

#[derive(Clone, Copy, Debug)]
enum Kind {
    Memory,
    Redb,
    Redis,
    Postgres,
}

/// A store and whatever must live as long as it (a directory, a server).
struct Env {
    store: Arc<dyn Store>,
    _keep: Box<dyn Any + Send>,
}

/// One PostgreSQL server for the whole test binary (its guard stops it when the process exits);
/// every test connects its own store and uses its own namespace.
fn postgres() -> &'static idemgate_testkit::postgres::Postgres {
    static PG: OnceLock<idemgate_testkit::postgres::Postgres> = OnceLock::new();
    PG.get_or_init(idemgate_testkit::postgres::Postgres::start)
}

async fn open(kind: Kind) -> Env {
    match kind {
        Kind::Memory => Env {
            store: Arc::new(MemoryStore::default()),
            _keep: Box::new(()),
        },
        Kind::Redb => {
            let dir = tempfile::tempdir().unwrap();
            let store = idemgate_store_redb::RedbStore::open(dir.path()).unwrap();
            Env {
                store: Arc::new(store),
                _keep: Box::new(dir),
            }
        }
        Kind::Redis => {
            let server = tokio::task::spawn_blocking(idemgate_testkit::redis::RedisServer::start)
                .await
                .unwrap();
            let store = idemgate_store_redis::RedisStore::connect(&server.url()).await.unwrap();
            Env {
                store: Arc::new(store),
                _keep: Box::new(server),
            }
        }
        Kind::Postgres => {
            let url = tokio::task::spawn_blocking(|| postgres().url()).await.unwrap();
            let store = idemgate_store_postgres::PostgresStore::connect(&url).await.unwrap();
            Env {
                store: Arc::new(store),
                _keep: Box::new(()),
            }
        }
    }
}

/// A namespace no other test uses (tests share the PostgreSQL server).
fn unique(name: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("{name}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

fn jobs(env: &Env, name: &str) -> RunOnce {
    RunOnce::builder(env.store.clone(), SECRET)
        .namespace(unique(name))
        .build()
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Receipt {
    charge_id: String,
    cents: u64,
}

#[derive(Debug, PartialEq, thiserror::Error)]
enum JobError {
    #[error("provider unreachable")]
    Transient,
    #[error("card declined")]
    Declined,
}

fn classify(e: &JobError) -> Failure {
    match e {
        JobError::Transient => Failure::Retryable,
        JobError::Declined => Failure::Permanent,
    }
}

async fn never<T>() -> Result<T, JobError> {
    panic!("a duplicate must not run the job")
}

/// 50 concurrent duplicates: one executes; the 49 others see it in progress.
async fn concurrent_duplicates_run_once(kind: Kind) {
    let env = open(kind).await;
    let jobs = jobs(&env, "concurrent");
    let executed = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Notify::new());
    let started = Arc::new(Notify::new());
    let (tx, mut rx) = mpsc::unbounded_channel();
    for _ in 0..50 {
        let (jobs, executed, gate, tx, started) = (
            jobs.clone(),
            executed.clone(),
            gate.clone(),
            tx.clone(),
            started.clone(),
        );
        tokio::spawn(async move {
            let r = jobs
                .run("order-1", &("order-1", 500u64), || async move {
                    executed.fetch_add(1, Ordering::SeqCst);
                    started.notify_one();
                    // Hold the key until every duplicate has answered.
                    gate.notified().await;
                    Ok::<_, JobError>(Receipt {
                        charge_id: "ch_1".into(),
                        cents: 500,
                    })
                })
                .await;
            let _ = tx.send(r);
        });
    }
    drop(tx);
    for _ in 0..49 {
        let r = timeout(BOUND, rx.recv()).await.expect("duplicates answer").unwrap();
        match r {
            Err(RunError::InProgress { retry_after }) => assert!(retry_after <= idemgate_jobs::DEFAULT_LOCK_TIMEOUT),
            other => panic!("a duplicate got {other:?}"),
        }
    }
    // The owner's task may enter the function only after every duplicate has answered.
    timeout(BOUND, started.notified())
        .await
        .expect("the owner runs the job");
    assert_eq!(executed.load(Ordering::SeqCst), 1);
    gate.notify_one();
    let r = timeout(BOUND, rx.recv()).await.expect("the owner answers").unwrap();
    assert_eq!(
        r.unwrap(),
        Run::Executed(Receipt {
            charge_id: "ch_1".into(),
            cents: 500
        })
    );
    assert_eq!(executed.load(Ordering::SeqCst), 1);
}

/// 50 concurrent duplicates that wait: one executes, 49 get its result replayed.
async fn concurrent_duplicates_wait_for_the_result(kind: Kind) {
    let env = open(kind).await;
    let jobs = RunOnce::builder(env.store.clone(), SECRET)
        .namespace(unique("wait"))
        .wait(Some(BOUND))
        .build();
    let executed = Arc::new(AtomicUsize::new(0));
    let started = Arc::new(Notify::new());
    let gate = Arc::new(Notify::new());
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (jobs, executed, started, gate) = (jobs.clone(), executed.clone(), started.clone(), gate.clone());
        tasks.push(tokio::spawn(async move {
            jobs.run("order-2", &7u32, || async move {
                executed.fetch_add(1, Ordering::SeqCst);
                started.notify_one();
                gate.notified().await;
                Ok::<_, JobError>(42u64)
            })
            .await
        }));
    }
    timeout(BOUND, started.notified())
        .await
        .expect("one duplicate executes");
    gate.notify_one();
    let (mut executed_here, mut replayed) = (0, 0);
    for t in tasks {
        match timeout(BOUND, t).await.expect("bounded").unwrap().unwrap() {
            Run::Executed(42) => executed_here += 1,
            Run::Replayed(42) => replayed += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((executed_here, replayed), (1, 49));
    assert_eq!(executed.load(Ordering::SeqCst), 1);
}

async fn replay_returns_the_recorded_value(kind: Kind) {
    let env = open(kind).await;
    let jobs = jobs(&env, "replay");
    let receipt = Receipt {
        charge_id: "ch_9".into(),
        cents: 1234,
    };
    let first = jobs
        .run("k", &"payload", || async { Ok::<_, JobError>(receipt.clone()) })
        .await
        .unwrap();
    assert!(!first.was_replayed());
    for _ in 0..3 {
        let again = jobs.run("k", &"payload", never::<Receipt>).await.unwrap();
        assert!(again.was_replayed());
        assert_eq!(again.value(), &receipt);
        assert_eq!(again.into_value(), receipt);
    }
    // A result type that does not match the recorded JSON is a decode error, not a re-run.
    let wrong = jobs.run("k", &"payload", never::<u64>).await;
    assert!(matches!(wrong, Err(RunError::Decode(_))), "{wrong:?}");
}

async fn payload_mismatch_is_refused(kind: Kind) {
    let env = open(kind).await;
    let jobs = jobs(&env, "mismatch");
    jobs.run("k", &serde_json::json!({"amount": 5, "to": "a"}), || async {
        Ok::<_, JobError>(1u8)
    })
    .await
    .unwrap();
    // Object key order does not matter: the payload's canonical JSON is compared.
    let same = jobs
        .run("k", &serde_json::json!({"to": "a", "amount": 5}), never::<u8>)
        .await
        .unwrap();
    assert!(same.was_replayed());
    let r = jobs
        .run("k", &serde_json::json!({"amount": 6, "to": "a"}), never::<u8>)
        .await;
    assert!(matches!(r, Err(RunError::PayloadMismatch)), "{r:?}");

    // While the first run is in flight, a changed payload is a mismatch, not "in progress".
    let gate = Arc::new(Notify::new());
    let owner = {
        let (jobs, gate) = (jobs.clone(), gate.clone());
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            jobs.run("inflight", &1u8, || async move {
                let _ = tx.send(());
                gate.notified().await;
                Ok::<_, JobError>(())
            })
            .await
        });
        timeout(BOUND, rx).await.unwrap().unwrap();
        task
    };
    let r = jobs.run("inflight", &2u8, never::<()>).await;
    assert!(matches!(r, Err(RunError::PayloadMismatch)), "{r:?}");
    let r = jobs.run("inflight", &1u8, never::<()>).await;
    assert!(matches!(r, Err(RunError::InProgress { .. })), "{r:?}");
    gate.notify_one();
    assert_eq!(
        timeout(BOUND, owner).await.unwrap().unwrap().unwrap(),
        Run::Executed(())
    );
}

async fn retryable_error_releases_the_key(kind: Kind) {
    let env = open(kind).await;
    let jobs = jobs(&env, "retry");
    // `run`: every error releases.
    let r = jobs.run("a", &1, || async { Err::<u8, _>(JobError::Declined) }).await;
    assert!(matches!(r, Err(RunError::Failed(JobError::Declined))), "{r:?}");
    let r = jobs.run("a", &1, || async { Ok::<_, JobError>(3u8) }).await.unwrap();
    assert_eq!(r, Run::Executed(3));
    // `run_with`: errors classified as retryable release.
    let r = jobs
        .run_with("b", &1, classify, || async { Err::<u8, _>(JobError::Transient) })
        .await;
    assert!(matches!(r, Err(RunError::Failed(JobError::Transient))), "{r:?}");
    let r = jobs
        .run_with("b", &1, classify, || async { Ok::<_, JobError>(4u8) })
        .await
        .unwrap();
    assert_eq!(r, Run::Executed(4));
    assert!(jobs.run("b", &1, never::<u8>).await.unwrap().was_replayed());
}

async fn permanent_failure_is_recorded_and_replayed(kind: Kind) {
    let env = open(kind).await;
    let jobs = jobs(&env, "permanent");
    let r = jobs
        .run_with("c", &1, classify, || async { Err::<u8, _>(JobError::Declined) })
        .await;
    assert!(matches!(r, Err(RunError::Failed(JobError::Declined))), "{r:?}");
    for _ in 0..2 {
        let r = jobs.run_with("c", &1, classify, never::<u8>).await;
        assert!(
            matches!(&r, Err(RunError::FailedBefore(m)) if m == "card declined"),
            "{r:?}"
        );
        // `run` replays the recorded failure too.
        let r = jobs.run("c", &1, never::<u8>).await;
        assert!(
            matches!(&r, Err(RunError::FailedBefore(m)) if m == "card declined"),
            "{r:?}"
        );
    }
    // An operator forgets the key: the job runs again.
    assert!(jobs.forget("c").await.unwrap());
    assert!(!jobs.forget("c").await.unwrap());
    let r = jobs
        .run_with("c", &1, classify, || async { Ok::<_, JobError>(5u8) })
        .await
        .unwrap();
    assert_eq!(r, Run::Executed(5));
}

async fn ttl_expiry_runs_again(kind: Kind) {
    let env = open(kind).await;
    let jobs = RunOnce::builder(env.store.clone(), SECRET)
        .namespace(unique("ttl"))
        .ttl(Duration::from_millis(300))
        .build();
    let runs = AtomicUsize::new(0);
    let job = || async { Ok::<_, JobError>(runs.fetch_add(1, Ordering::SeqCst) + 1) };
    assert_eq!(jobs.run("t", &(), job).await.unwrap(), Run::Executed(1));
    let started = Instant::now();
    // Replayed while the record lives, executed again once it has expired (bounded poll).
    loop {
        let r = jobs.run("t", &(), job).await.unwrap();
        match r {
            Run::Replayed(1) => {}
            Run::Executed(2) => break,
            other => panic!("{other:?}"),
        }
        assert!(started.elapsed() < BOUND, "the record never expired");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

async fn namespaces_are_isolated(kind: Kind) {
    let env = open(kind).await;
    let emails = jobs(&env, "emails");
    let invoices = jobs(&env, "invoices");
    let e = emails
        .run("42", &"x", || async { Ok::<_, JobError>("mail".to_string()) })
        .await;
    let i = invoices.run("42", &7, || async { Ok::<_, JobError>(99u32) }).await;
    assert_eq!(e.unwrap(), Run::Executed("mail".to_string()));
    assert_eq!(i.unwrap(), Run::Executed(99));
    assert!(emails.run("42", &"x", never::<String>).await.unwrap().was_replayed());
    // Another secret is another deployment: it does not see these records either (on a shared
    // store it is refused outright).
    let other = RunOnce::builder(env.store.clone(), b"another secret")
        .namespace(emails.namespace())
        .build();
    let r = other
        .run("42", &"x", || async { Ok::<_, JobError>("again".to_string()) })
        .await;
    match r {
        Ok(r) => assert_eq!(r, Run::Executed("again".to_string())),
        Err(RunError::Store(StoreError::SecretMismatch)) => {}
        Err(e) => panic!("{e:?}"),
    }
}

/// A panic may come after the job's effect: the key stays locked (duplicates get `InProgress`)
/// until the lock timeout, then a duplicate takes it over.
async fn a_panic_keeps_the_key_locked_until_the_lock_timeout(kind: Kind) {
    let env = open(kind).await;
    let jobs = RunOnce::builder(env.store.clone(), SECRET)
        .namespace(unique("panic"))
        .lock_timeout(Duration::from_millis(300))
        .build();
    for key in ["p", "q"] {
        let j = jobs.clone();
        let task = tokio::spawn(async move {
            if key == "p" {
                j.run(key, &1, || async {
                    if true {
                        panic!("job crashed");
                    }
                    Ok::<u8, JobError>(0)
                })
                .await
            } else {
                // A panic while creating the future is the same.
                j.run(key, &1, || -> std::future::Ready<Result<u8, JobError>> {
                    panic!("no future")
                })
                .await
            }
        });
        let err = timeout(BOUND, task).await.unwrap().unwrap_err();
        assert!(err.is_panic(), "the panic reaches the caller");
        let started = Instant::now();
        let mut refused = 0;
        let rerun = loop {
            match jobs.run(key, &1, || async { Ok::<_, JobError>(1u8) }).await {
                Err(RunError::InProgress { retry_after }) => {
                    refused += 1;
                    assert!(started.elapsed() < BOUND, "the lock never ended");
                    tokio::time::sleep(retry_after.min(Duration::from_millis(50))).await;
                }
                other => break other.unwrap(),
            }
        };
        assert!(refused > 0, "{key}: a duplicate right after the panic must not run");
        assert_eq!(rerun, Run::Executed(1), "{key}: taken over after the lock timeout");
    }
}

async fn invalid_keys_are_refused(kind: Kind) {
    let env = open(kind).await;
    let jobs = jobs(&env, "keys");
    for key in ["", "a b", "é", &"k".repeat(256)] {
        let r = jobs.run(key, &1, never::<u8>).await;
        assert!(matches!(r, Err(RunError::InvalidKey(_))), "{key:?}: {r:?}");
    }
    assert!(jobs.forget("").await.is_err());
}

/// A job that outlives its lock timeout is taken over; the stale owner's outcome is fenced off
/// (returned to it, not recorded) and the new owner's result is what duplicates get.
async fn lost_lease_is_fenced(kind: Kind) {
    let env = open(kind).await;
    let jobs = RunOnce::builder(env.store.clone(), SECRET)
        .namespace(unique("fence"))
        .lock_timeout(Duration::from_millis(200))
        .build();
    let gate = Arc::new(Notify::new());
    let (tx, rx) = tokio::sync::oneshot::channel();
    let stale = {
        let (jobs, gate) = (jobs.clone(), gate.clone());
        tokio::spawn(async move {
            jobs.run("f", &1, || async move {
                let _ = tx.send(());
                gate.notified().await;
                Ok::<_, JobError>("stale".to_string())
            })
            .await
        })
    };
    timeout(BOUND, rx).await.unwrap().unwrap();
    let started = Instant::now();
    let fresh = loop {
        match jobs
            .run("f", &1, || async { Ok::<_, JobError>("fresh".to_string()) })
            .await
        {
            Err(RunError::InProgress { retry_after }) => {
                assert!(retry_after <= Duration::from_millis(200));
                assert!(started.elapsed() < BOUND, "the lease never ended");
                tokio::time::sleep(retry_after.min(Duration::from_millis(50))).await;
            }
            other => break other.unwrap(),
        }
    };
    assert_eq!(fresh, Run::Executed("fresh".to_string()));
    gate.notify_one();
    let stale = timeout(BOUND, stale).await.unwrap().unwrap().unwrap();
    assert_eq!(
        stale,
        Run::Executed("stale".to_string()),
        "the stale owner still gets its result"
    );
    let r = jobs.run("f", &1, never::<String>).await.unwrap();
    assert_eq!(r, Run::Replayed("fresh".to_string()));
}

/// A waiting duplicate whose owner fails retryably runs the job itself.
async fn waiter_runs_the_job_when_the_owner_releases(kind: Kind) {
    let env = open(kind).await;
    let jobs = RunOnce::builder(env.store.clone(), SECRET)
        .namespace(unique("wait-release"))
        .wait(Some(BOUND))
        .build();
    let gate = Arc::new(Notify::new());
    let (tx, rx) = tokio::sync::oneshot::channel();
    let owner = {
        let (jobs, gate) = (jobs.clone(), gate.clone());
        tokio::spawn(async move {
            jobs.run("w", &1, || async move {
                let _ = tx.send(());
                gate.notified().await;
                Err::<u8, _>(JobError::Transient)
            })
            .await
        })
    };
    timeout(BOUND, rx).await.unwrap().unwrap();
    let waiter = {
        let jobs = jobs.clone();
        tokio::spawn(async move { jobs.run("w", &1, || async { Ok::<_, JobError>(8u8) }).await })
    };
    gate.notify_one();
    let r = timeout(BOUND, owner).await.unwrap().unwrap();
    assert!(matches!(r, Err(RunError::Failed(JobError::Transient))), "{r:?}");
    assert_eq!(
        timeout(BOUND, waiter).await.unwrap().unwrap().unwrap(),
        Run::Executed(8)
    );

    // A bounded wait that runs out answers InProgress.
    let short = RunOnce::builder(env.store.clone(), SECRET)
        .namespace(jobs.namespace())
        .wait(Some(Duration::from_millis(100)))
        .build();
    let gate = Arc::new(Notify::new());
    let (tx, rx) = tokio::sync::oneshot::channel();
    let owner = {
        let (jobs, gate) = (jobs.clone(), gate.clone());
        tokio::spawn(async move {
            jobs.run("w2", &1, || async move {
                let _ = tx.send(());
                gate.notified().await;
                Ok::<_, JobError>(1u8)
            })
            .await
        })
    };
    timeout(BOUND, rx).await.unwrap().unwrap();
    let t = Instant::now();
    let r = short.run("w2", &1, never::<u8>).await;
    assert!(matches!(r, Err(RunError::InProgress { .. })), "{r:?}");
    assert!(t.elapsed() >= Duration::from_millis(100) && t.elapsed() < BOUND);
    gate.notify_one();
    timeout(BOUND, owner).await.unwrap().unwrap().unwrap();
}

macro_rules! stores {
    ($($kind:ident => $module:ident),* $(,)?) => {$(
        mod $module {
            use super::*;
            macro_rules! scenario {
                ($name:ident) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        super::$name(Kind::$kind).await;
                    }
                };
            }
            scenario!(concurrent_duplicates_run_once);
            scenario!(concurrent_duplicates_wait_for_the_result);
            scenario!(replay_returns_the_recorded_value);
            scenario!(payload_mismatch_is_refused);
            scenario!(retryable_error_releases_the_key);
            scenario!(permanent_failure_is_recorded_and_replayed);
            scenario!(ttl_expiry_runs_again);
            scenario!(namespaces_are_isolated);
            scenario!(a_panic_keeps_the_key_locked_until_the_lock_timeout);
            scenario!(invalid_keys_are_refused);
            scenario!(lost_lease_is_fenced);
            scenario!(waiter_runs_the_job_when_the_owner_releases);
        }
    )*};
}

stores! {
    Memory => memory,
    Redb => redb,
    Redis => redis,
    Postgres => postgres,
}
