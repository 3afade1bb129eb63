//! Engine comparison for the embedded store (docs/PERFORMANCE.md, "Choosing the embedded engine").
//!
//! Workload: C concurrent tasks, each doing claim → complete (two durable writes, the gateway's
//! new-key path) with a ~200-byte response, for D seconds. Both engines sit behind the same
//! design: one writer thread that takes every queued operation, applies it in one transaction
//! and commits durably once (group commit), answering callers only after the commit.
//! - redb: the real `idemgate_store_redb::RedbStore` (Durability::Immediate).
//! - SQLite: WAL mode, `synchronous=FULL` (durable at each commit), a writer thread doing
//!   `BEGIN IMMEDIATE; read; upsert…; COMMIT` per batch, and readers on their own connections.
//!
//! Usage: cargo run --release -- [concurrency=32] [seconds=5]
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use idemgate_core::{time, Claim, ClaimRequest, Fingerprint, RecordId, ScopeHasher, Store, StoredResponse};

fn response() -> StoredResponse {
    let mut h = http::HeaderMap::new();
    h.insert("content-type", http::HeaderValue::from_static("application/json"));
    StoredResponse::new(http::StatusCode::CREATED, &h, &[b'x'; 150])
}

async fn redb_run(conc: usize, secs: u64) -> (f64, Vec<u64>) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(idemgate_store_redb::RedbStore::open(dir.path()).unwrap());
    let hasher = ScopeHasher::new(b"bench");
    drive(conc, secs, move |i| {
        let store = store.clone();
        let id = hasher.record_id(b"", &idemgate_core::parse_key(format!("k{i}").as_bytes()).unwrap());
        async move {
            let now = time::now_ms();
            let req = ClaimRequest { id, fingerprint: Fingerprint([1; 32]), now_ms: now, lease_ms: 60_000 };
            let Claim::Acquired { token, .. } = store.claim(req).await.unwrap() else { panic!() };
            store.complete(id, token, response(), now + 86_400_000).await.unwrap();
        }
    })
    .await
}

enum SqlOp {
    Claim(RecordId, tokio::sync::oneshot::Sender<u64>),
    Complete(RecordId, u64, Vec<u8>, tokio::sync::oneshot::Sender<bool>),
}

async fn sqlite_run(conc: usize, secs: u64) -> (f64, Vec<u64>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("records.sqlite");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;
         CREATE TABLE records (id BLOB PRIMARY KEY, state INTEGER NOT NULL, token INTEGER, deadline INTEGER NOT NULL, data BLOB) WITHOUT ROWID;",
    )
    .unwrap();
    let (tx, rx) = mpsc::channel::<SqlOp>();
    std::thread::spawn(move || {
        let mut conn = conn;
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            while let Ok(op) = rx.try_recv() {
                batch.push(op);
                if batch.len() >= 512 {
                    break;
                }
            }
            let t = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).unwrap();
            let mut done: Vec<Box<dyn FnOnce()>> = Vec::new();
            for op in batch {
                match op {
                    SqlOp::Claim(id, reply) => {
                        let exists: Option<i64> = t
                            .query_row("SELECT deadline FROM records WHERE id = ?1", [&id.0[..]], |r| r.get(0))
                            .ok();
                        let now = time::now_ms() as i64;
                        let token = 7u64;
                        if exists.map_or(true, |d| d <= now) {
                            t.execute(
                                "INSERT OR REPLACE INTO records (id, state, token, deadline) VALUES (?1, 1, ?2, ?3)",
                                rusqlite::params![&id.0[..], token as i64, now + 60_000],
                            )
                            .unwrap();
                        }
                        done.push(Box::new(move || drop(reply.send(token))));
                    }
                    SqlOp::Complete(id, token, data, reply) => {
                        let n = t
                            .execute(
                                "UPDATE records SET state = 2, token = NULL, deadline = ?3, data = ?4 WHERE id = ?1 AND state = 1 AND token = ?2",
                                rusqlite::params![&id.0[..], token as i64, time::now_ms() as i64 + 86_400_000, data],
                            )
                            .unwrap();
                        done.push(Box::new(move || drop(reply.send(n == 1))));
                    }
                }
            }
            t.commit().unwrap();
            for d in done {
                d();
            }
        }
    });
    let hasher = ScopeHasher::new(b"bench");
    let r = drive(conc, secs, move |i| {
        let tx = tx.clone();
        let id = hasher.record_id(b"", &idemgate_core::parse_key(format!("k{i}").as_bytes()).unwrap());
        async move {
            let (a, b) = tokio::sync::oneshot::channel();
            tx.send(SqlOp::Claim(id, a)).unwrap();
            let token = b.await.unwrap();
            let (a, b) = tokio::sync::oneshot::channel();
            tx.send(SqlOp::Complete(id, token, response().as_bytes().to_vec(), a)).unwrap();
            assert!(b.await.unwrap());
        }
    })
    .await;
    drop(dir);
    r
}

async fn drive<F, Fut>(conc: usize, secs: u64, op: F) -> (f64, Vec<u64>)
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..conc)
        .map(|_| {
            let (op, next) = (op.clone(), next.clone());
            tokio::spawn(async move {
                let mut lat = Vec::new();
                while Instant::now() < end {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let t = Instant::now();
                    op(i).await;
                    lat.push(t.elapsed().as_micros() as u64);
                }
                lat
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let rate = all.len() as f64 / start.elapsed().as_secs_f64();
    all.sort_unstable();
    (rate, all)
}

fn pct(v: &[u64], p: f64) -> u64 {
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let conc: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(32);
    let secs: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(5);
    println!("| engine | round | concurrency | claim+complete/s | p50 µs | p99 µs |");
    println!("|---|---:|---:|---:|---:|---:|");
    for round in 1..=3 {
        for engine in ["redb", "sqlite-wal"] {
            let (rate, lat) = if engine == "redb" { redb_run(conc, secs).await } else { sqlite_run(conc, secs).await };
            println!("| {engine} | {round} | {conc} | {rate:.0} | {} | {} |", pct(&lat, 0.5), pct(&lat, 0.99));
        }
    }
}
