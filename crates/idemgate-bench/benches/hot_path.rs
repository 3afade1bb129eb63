//! Micro-benchmarks of the per-request hot path (issue 7).
//!
//! ```text
//! cargo bench -p idemgate-bench                    # everything (~2-3 min)
//! cargo bench -p idemgate-bench -- 'key|fingerprint' # a subset (regex on the ids)
//! ```
//!
//! Groups: `key` (parse a bare UUID and a quoted one), `fingerprint` (100 B, 4 KiB and 256 KiB
//! bodies; canonical JSON of a 1 KiB body), `response` (build and decode a stored response with a
//! 1 KiB body and 8 headers), `record` (encode/decode a completed record), `store` (claim +
//! complete of a new key on the memory store; on the embedded stores (the record log, and redb
//! for directories of earlier versions) in temporary directories; and on Redis and PostgreSQL,
//! private servers started here as their tests start them (skipped with a note when not
//! installed); each durable one with 1 and 32 concurrent callers sharing group commit, pipeline
//! or pool).
//!
//! Sample counts are modest so the whole run stays short on a 2-core machine; `cargo test
//! --all-targets` runs each benchmark once (criterion's test mode).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use idemgate_core::{
    parse_key, Claim, ClaimRequest, Fingerprint, FingerprintOptions, MemoryStore, Record, RecordId, Store,
    StoredResponse,
};
use idemgate_store_log::LogStore;
use idemgate_store_postgres::PostgresStore;
use idemgate_store_redb::RedbStore;
use idemgate_store_redis::RedisStore;
use idemgate_testkit::postgres::Postgres;
use idemgate_testkit::redis::RedisServer;

const TTL_MS: u64 = 24 * 3600 * 1000;
const LEASE_MS: u64 = 60_000;

fn now_ms() -> u64 {
    idemgate_core::time::now_ms()
}

/// A distinct record id per call (the counter in the first bytes, a run salt in the rest).
fn fresh_id(counter: &AtomicU64, salt: u64) -> RecordId {
    let n = counter.fetch_add(1, Ordering::Relaxed);
    let mut id = [0u8; 32];
    id[..8].copy_from_slice(&n.to_le_bytes());
    id[8..16].copy_from_slice(&salt.to_le_bytes());
    RecordId(id)
}

fn upstream_headers(n: usize) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(http::header::CONTENT_LENGTH, HeaderValue::from_static("1024"));
    h.insert(
        http::header::DATE,
        HeaderValue::from_static("Tue, 24 Nov 2026 12:00:00 GMT"),
    );
    h.insert(
        http::header::LOCATION,
        HeaderValue::from_static("/payments/pay_0000000001"),
    );
    for i in h.len()..n {
        h.insert(
            HeaderName::from_bytes(format!("x-bench-header-{i}").as_bytes()).expect("header name"),
            HeaderValue::from_static("a-typical-header-value-0123456789"),
        );
    }
    h
}

fn response_1k() -> StoredResponse {
    StoredResponse::new(StatusCode::CREATED, &upstream_headers(8), &[b'x'; 1024])
}

fn key(c: &mut Criterion) {
    let mut g = c.benchmark_group("key");
    let bare = b"550e8400-e29b-41d4-a716-446655440000".as_slice();
    let quoted = b"\"550e8400-e29b-41d4-a716-446655440000\"".as_slice();
    g.bench_function("parse_bare_uuid", |b| b.iter(|| parse_key(std::hint::black_box(bare))));
    g.bench_function("parse_quoted_uuid", |b| {
        b.iter(|| parse_key(std::hint::black_box(quoted)))
    });
    g.finish();
}

fn fingerprint(c: &mut Criterion) {
    let mut g = c.benchmark_group("fingerprint");
    let method = Method::POST;
    let uri: Uri = "/payments?source=bench".parse().expect("uri");
    let mut headers = HeaderMap::new();
    headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let opts = FingerprintOptions::default();
    for size in [100usize, 4096, 256 * 1024] {
        let body = vec![b'a'; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::new("raw", size), &body, |b, body| {
            b.iter(|| opts.fingerprint(&method, &uri, &headers, std::hint::black_box(body)))
        });
    }
    // canonical JSON: about 1 KiB, nested, keys out of order
    let mut json = String::from("{\"currency\":\"usd\",\"amount\":1999,\"metadata\":{");
    let mut i = 0;
    while json.len() < 1000 {
        json.push_str(&format!("\"k{:03}\":\"value-{i}\",", 999 - i));
        i += 1;
    }
    json.pop();
    json.push_str("},\"items\":[1,2,3,{\"b\":2,\"a\":1}]}");
    let canonical = FingerprintOptions {
        canonical_json: true,
        ..FingerprintOptions::default()
    };
    g.throughput(Throughput::Bytes(json.len() as u64));
    g.bench_function(BenchmarkId::new("canonical_json", json.len()), |b| {
        b.iter(|| canonical.fingerprint(&method, &uri, &headers, std::hint::black_box(json.as_bytes())))
    });
    g.finish();
}

fn response(c: &mut Criterion) {
    let mut g = c.benchmark_group("response");
    let headers = upstream_headers(8);
    let body = vec![b'x'; 1024];
    g.bench_function("build_1k_8_headers", |b| {
        b.iter(|| {
            // as the proxy does it: headers first, then the body in two chunks
            let mut rb = StoredResponse::builder(StatusCode::CREATED, &headers, |_| true, body.len());
            rb.extend_body(&body[..512]);
            rb.extend_body(&body[512..]);
            rb.finish()
        })
    });
    let stored: Bytes = response_1k().as_bytes().clone();
    g.bench_function("decode_1k_8_headers", |b| {
        b.iter(|| {
            let r = StoredResponse::from_bytes(std::hint::black_box(stored.clone())).expect("valid");
            (r.status(), r.headers().expect("valid headers"), r.body())
        })
    });
    g.finish();
}

fn record(c: &mut Criterion) {
    let mut g = c.benchmark_group("record");
    let rec = Record::Completed {
        fingerprint: Fingerprint([7; 32]),
        expires_at_ms: now_ms() + TTL_MS,
        response: response_1k(),
    };
    g.bench_function("encode_completed_1k", |b| {
        b.iter(|| std::hint::black_box(&rec).encode())
    });
    let encoded = rec.encode();
    g.bench_function("decode_completed_1k", |b| {
        b.iter(|| Record::decode(std::hint::black_box(encoded.clone())).expect("valid"))
    });
    let inflight = Record::InFlight {
        fingerprint: Fingerprint([7; 32]),
        token: idemgate_core::FencingToken(42),
        lease_until_ms: now_ms() + LEASE_MS,
    };
    g.bench_function("encode_in_flight", |b| {
        b.iter(|| std::hint::black_box(&inflight).encode())
    });
    g.finish();
}

/// One new key through the store: claim (acquired), then complete with a 1 KiB response.
async fn claim_complete(store: &dyn Store, id: RecordId, response: StoredResponse) {
    let now = now_ms();
    let claim = store
        .claim(ClaimRequest {
            id,
            fingerprint: Fingerprint([1; 32]),
            now_ms: now,
            lease_ms: LEASE_MS,
        })
        .await
        .expect("claim");
    let Claim::Acquired { token, .. } = claim else {
        panic!("a new key must be acquired, got {claim:?}")
    };
    store
        .complete(id, token, response, now + TTL_MS)
        .await
        .expect("complete");
}

fn store(c: &mut Criterion) {
    let mut g = c.benchmark_group("store");
    let salt = fastrand_salt();
    let counter = Arc::new(AtomicU64::new(0));
    let response = response_1k();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let memory = MemoryStore::default();
    g.bench_function("memory_claim_complete", |b| {
        b.to_async(&rt)
            .iter(|| claim_complete(&memory, fresh_id(&counter, salt), response.clone()))
    });
    drop(memory);

    // The embedded store: every claim and complete is a durable (fsync'd) commit shared by group
    // commit, so these run much longer per iteration; fewer samples.
    g.sample_size(10).measurement_time(Duration::from_secs(4));
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let log_dir = tempfile::tempdir().expect("tempdir");
    let log = Arc::new(
        rt.block_on(async { LogStore::open(log_dir.path()) })
            .expect("open log store"),
    );
    let redb = Arc::new(rt.block_on(async { RedbStore::open(dir.path()) }).expect("open redb"));
    let mut durable: Vec<(&str, Arc<dyn Store>)> = vec![("log", log.clone()), ("redb", redb.clone())];
    // The shared stores, on private servers (idemgate-testkit, as their tests run them): the
    // server's own binaries must be installed (scripts/test.sh installs them); skipped otherwise.
    let servers = shared_servers();
    if let Some((redis, postgres)) = &servers {
        let redis_store = rt
            .block_on(RedisStore::connect(&redis.url()))
            .expect("connect to redis");
        let pg_store = rt
            .block_on(PostgresStore::connect(&postgres.url()))
            .expect("connect to postgres");
        durable.push(("redis", Arc::new(redis_store)));
        durable.push(("postgres", Arc::new(pg_store)));
    }
    for (name, store) in durable {
        for callers in [1usize, 32] {
            g.throughput(Throughput::Elements(1));
            g.bench_function(
                BenchmarkId::new(format!("{name}_claim_complete_callers"), callers),
                |b| {
                    b.iter_custom(|iters| {
                        // `iters` claim+complete operations split over `callers` concurrent tasks; the
                        // reported time per iteration is wall time / iters (throughput under concurrency)
                        let per = iters.div_ceil(callers as u64);
                        let start = Instant::now();
                        rt.block_on(async {
                            let mut tasks = Vec::with_capacity(callers);
                            for _ in 0..callers {
                                let (store, counter, response) = (store.clone(), counter.clone(), response.clone());
                                tasks.push(tokio::spawn(async move {
                                    for _ in 0..per {
                                        claim_complete(&*store, fresh_id(&counter, salt), response.clone()).await;
                                    }
                                }));
                            }
                            for t in tasks {
                                t.await.expect("task");
                            }
                        });
                        start.elapsed().mul_f64(iters as f64 / (per * callers as u64) as f64)
                    })
                },
            );
        }
    }
    log.close();
    redb.close();
    g.finish();
}

/// A private `redis-server` and PostgreSQL, or `None` (with a note) when either is not installed.
fn shared_servers() -> Option<(RedisServer, Postgres)> {
    let redis_installed = std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !redis_installed {
        eprintln!("store/redis_* and store/postgres_* skipped: redis-server is not installed");
        return None;
    }
    match std::panic::catch_unwind(Postgres::start) {
        Ok(pg) => Some((RedisServer::start(), pg)),
        Err(_) => {
            eprintln!("store/redis_* and store/postgres_* skipped: PostgreSQL could not be started");
            None
        }
    }
}

fn fastrand_salt() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = key, fingerprint, response, record, store
}
criterion_main!(benches);
