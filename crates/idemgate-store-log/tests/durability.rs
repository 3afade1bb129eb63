//! What the log store promises beyond the store contract: records survive reopen, a torn tail
//! is repaired, damage before the tail is refused, compaction keeps every live record (also
//! while claims and replays run), and the directory is locked against a second opener.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, StatusCode};
use idemgate_core::{
    time, Claim, ClaimRequest, FencingToken, Fingerprint, Purged, Record, RecordId, Store, StoredResponse,
};
use idemgate_store_log::{LogOptions, LogStore, OpenError};

const LOG: &str = "records.log";

fn id(n: u32) -> RecordId {
    let mut b = [0u8; 32];
    b[..4].copy_from_slice(&n.to_le_bytes());
    b[31] = n as u8;
    RecordId(b)
}

fn req(n: u32, now_ms: u64) -> ClaimRequest {
    ClaimRequest {
        id: id(n),
        fingerprint: Fingerprint([n as u8; 32]),
        now_ms,
        lease_ms: 60_000,
    }
}

fn body(n: u32, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(31).wrapping_add(n) as u8)
        .collect()
}

fn response(b: &[u8]) -> StoredResponse {
    let mut h = HeaderMap::new();
    h.insert("content-type", "application/octet-stream".parse().unwrap());
    StoredResponse::new(StatusCode::OK, &h, b)
}

async fn acquire(s: &LogStore, r: ClaimRequest) -> FencingToken {
    match s.claim(r).await.unwrap() {
        Claim::Acquired { token, .. } => token,
        other => panic!("expected to acquire, got {other:?}"),
    }
}

async fn executed(s: &LogStore, n: u32, now: u64, b: &[u8]) {
    let t = acquire(s, req(n, now)).await;
    s.complete(id(n), t, response(b), now + 3_600_000).await.unwrap();
}

async fn assert_replays(s: &LogStore, n: u32, now: u64, b: &[u8]) {
    match s.claim(req(n, now)).await.unwrap() {
        Claim::Completed { fingerprint, response } => {
            assert_eq!(fingerprint, Fingerprint([n as u8; 32]));
            assert_eq!(&response.body()[..], b, "record {n}");
        }
        other => panic!("record {n}: expected a replay, got {other:?}"),
    }
}

fn log_len(dir: &Path) -> u64 {
    std::fs::metadata(dir.join(LOG)).unwrap().len()
}

fn small(min: u64) -> LogOptions {
    let mut o = LogOptions::default();
    o.compact_min_bytes = min;
    o
}

#[tokio::test]
async fn in_flight_completed_and_deleted_records_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let now = time::now_ms();
    let big = body(1, 256 * 1024);
    let flying;
    {
        let s = LogStore::open(dir.path()).unwrap();
        executed(&s, 1, now, &big).await;
        flying = acquire(&s, req(2, now)).await;
        let released = acquire(&s, req(3, now)).await;
        assert!(s.release(id(3), released).await.unwrap());
        executed(&s, 4, now, b"deleted").await;
        assert!(s.delete(id(4)).await.unwrap());
        s.flush().await.unwrap();
    }
    let s = LogStore::open(dir.path()).unwrap();
    assert_eq!(s.len_hint(), Some(2));
    assert_replays(&s, 1, now, &big).await;
    match s.get(id(2)).await.unwrap() {
        Some(Record::InFlight {
            token, lease_until_ms, ..
        }) => {
            assert_eq!(token, flying);
            assert_eq!(lease_until_ms, now + 60_000);
        }
        other => panic!("{other:?}"),
    }
    assert!(s.get(id(3)).await.unwrap().is_none());
    assert!(s.get(id(4)).await.unwrap().is_none());
    // The in-flight owner can still complete after the restart.
    s.complete(id(2), flying, response(b"later"), now + 60_000)
        .await
        .unwrap();
    drop(s);
    let s = LogStore::open(dir.path()).unwrap();
    assert_replays(&s, 2, now, b"later").await;
}

#[tokio::test]
async fn a_torn_tail_is_truncated_and_the_log_keeps_working() {
    for garbage in [
        &[0x31u8, 0, 0][..],
        &[0xff, 0xff, 0, 0, 1, 2, 3, 4, 5, 6, 7][..],
        &[0; 8][..],
    ] {
        let dir = tempfile::tempdir().unwrap();
        let now = time::now_ms();
        {
            let s = LogStore::open(dir.path()).unwrap();
            for n in 0..5 {
                executed(&s, n, now, &body(n, 100)).await;
            }
        }
        let good = log_len(dir.path());
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join(LOG))
            .unwrap()
            .write_all(garbage)
            .unwrap();
        {
            let s = LogStore::open(dir.path()).unwrap();
            assert_eq!(log_len(dir.path()), good, "the torn bytes are cut off");
            for n in 0..5 {
                assert_replays(&s, n, now, &body(n, 100)).await;
            }
            executed(&s, 5, now, b"after").await;
        }
        let s = LogStore::open(dir.path()).unwrap();
        assert_eq!(s.len_hint(), Some(6));
        for n in 0..5 {
            assert_replays(&s, n, now, &body(n, 100)).await;
        }
        assert_replays(&s, 5, now, b"after").await;
    }
}

#[tokio::test]
async fn a_bad_checksum_on_the_last_entry_is_a_torn_write() {
    let dir = tempfile::tempdir().unwrap();
    let now = time::now_ms();
    let token;
    let before_completion;
    {
        let s = LogStore::open(dir.path()).unwrap();
        executed(&s, 1, now, b"one").await;
        token = acquire(&s, req(2, now)).await;
        before_completion = log_len(dir.path());
        s.complete(id(2), token, response(b"two"), now + 60_000).await.unwrap();
    }
    let path = dir.path().join(LOG);
    let mut bytes = std::fs::read(&path).unwrap();
    *bytes.last_mut().unwrap() ^= 0x55;
    std::fs::write(&path, bytes).unwrap();
    let s = LogStore::open(dir.path()).unwrap();
    assert_eq!(log_len(dir.path()), before_completion);
    assert_replays(&s, 1, now, b"one").await;
    // The completion was lost with the torn entry: the claim is in flight again.
    assert!(matches!(s.get(id(2)).await.unwrap(), Some(Record::InFlight { token: t, .. }) if t == token));
}

#[tokio::test]
async fn damage_before_the_tail_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let now = time::now_ms();
    {
        let s = LogStore::open(dir.path()).unwrap();
        for n in 0..3 {
            executed(&s, n, now, &body(n, 64)).await;
        }
    }
    let path = dir.path().join(LOG);
    let mut bytes = std::fs::read(&path).unwrap();
    // Magic (8), the first entry's length + checksum (8), op + id (33): inside its record.
    bytes[8 + 8 + 33 + 5] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    match LogStore::open(dir.path()) {
        Err(OpenError::Corrupt { offset, path: p, .. }) => {
            assert_eq!(offset, 8);
            assert_eq!(p, path);
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // Nothing was truncated.
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    // Not a log at all.
    std::fs::write(&path, b"something else entirely").unwrap();
    assert!(matches!(LogStore::open(dir.path()), Err(OpenError::NotALog { .. })));
}

#[tokio::test]
async fn a_second_open_of_the_directory_fails_until_the_first_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let first = LogStore::open(dir.path()).unwrap();
    let err = LogStore::open(dir.path()).unwrap_err();
    assert!(matches!(err, OpenError::Locked { .. }), "{err:?}");
    assert!(err.to_string().contains("in use"), "{err}");
    drop(first);
    LogStore::open(dir.path()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claims_of_one_id_acquire_once() {
    let s = Arc::new(LogStore::open(tempfile::tempdir().unwrap().keep()).unwrap());
    let now = time::now_ms();
    for round in 0..3u32 {
        let tasks: Vec<_> = (0..200)
            .map(|_| {
                let s = s.clone();
                tokio::spawn(async move { s.claim(req(round, now)).await.unwrap() })
            })
            .collect();
        let mut acquired = 0;
        for t in tasks {
            let claim = tokio::time::timeout(Duration::from_secs(30), t).await.unwrap().unwrap();
            match claim {
                Claim::Acquired { .. } => acquired += 1,
                Claim::InFlight { .. } => {}
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(acquired, 1);
    }
}

#[tokio::test]
async fn purge_is_bounded_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let now = time::now_ms();
    let s = LogStore::open(dir.path()).unwrap();
    for n in 0..10 {
        let t = acquire(&s, req(n, now)).await;
        s.complete(id(n), t, response(b"x"), now + 1_000).await.unwrap();
    }
    executed(&s, 100, now, b"live").await;
    let mut removed = 0;
    for _ in 0..20 {
        let Purged { removed: r, more } = s.purge_expired(now + 2_000, 3).await.unwrap();
        assert!(r <= 3);
        removed += r;
        if !more {
            break;
        }
    }
    assert_eq!(removed, 10);
    assert_eq!(s.len_hint(), Some(1));
    drop(s);
    let s = LogStore::open(dir.path()).unwrap();
    assert_eq!(s.len_hint(), Some(1));
    assert_replays(&s, 100, now, b"live").await;
}

#[tokio::test]
async fn compaction_shrinks_the_log_and_keeps_every_live_record() {
    let dir = tempfile::tempdir().unwrap();
    let now = time::now_ms();
    let written;
    {
        let s = LogStore::open_with(dir.path(), small(16 * 1024)).unwrap();
        for n in 0..400 {
            executed(&s, n, now, &body(n, 1000)).await;
            // Keep one in ten; delete, or release, the others.
            if n % 10 == 0 {
                continue;
            }
            assert!(s.delete(id(n)).await.unwrap());
        }
        let flying = acquire(&s, req(1000, now)).await;
        let released = acquire(&s, req(1001, now)).await;
        assert!(s.release(id(1001), released).await.unwrap());
        written = 400 * 1000;
        let len = log_len(dir.path());
        // Only compaction shrinks a log: without it, it would hold every body written.
        assert!(len < written / 3, "log is {len} bytes after {written} bytes of bodies");
        for n in (0..400).step_by(10) {
            assert_replays(&s, n, now, &body(n, 1000)).await;
        }
        assert!(matches!(s.get(id(1000)).await.unwrap(), Some(Record::InFlight { token, .. }) if token == flying));
        assert!(s.get(id(1)).await.unwrap().is_none());
        // Writes after compaction land in the new file.
        s.complete(id(1000), flying, response(b"after"), now + 60_000)
            .await
            .unwrap();
    }
    assert!(!dir.path().join("records.log.compact").exists());
    let s = LogStore::open_with(dir.path(), small(16 * 1024)).unwrap();
    assert_eq!(s.len_hint(), Some(41));
    for n in (0..400).step_by(10) {
        assert_replays(&s, n, now, &body(n, 1000)).await;
    }
    assert_replays(&s, 1000, now, b"after").await;
    assert!(s.get(id(1)).await.unwrap().is_none());
    assert!(s.get(id(1001)).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn claims_and_replays_stay_correct_while_compacting() {
    let dir = tempfile::tempdir().unwrap();
    let now = time::now_ms();
    let s = Arc::new(LogStore::open_with(dir.path(), small(8 * 1024)).unwrap());
    for n in 0..20 {
        executed(&s, n, now, &body(n, 2000)).await;
    }
    // Churn: records written and deleted again, so the writer compacts over and over.
    let churn = {
        let s = s.clone();
        tokio::spawn(async move {
            for n in 1000..1600 {
                executed(&s, n, now, &body(n, 1500)).await;
                assert_replays(&s, n, now, &body(n, 1500)).await;
                assert!(s.delete(id(n)).await.unwrap());
            }
        })
    };
    // Meanwhile: replays of the live records, and four readers claiming the same new keys.
    let readers: Vec<_> = (0..4u32)
        .map(|r| {
            let s = s.clone();
            tokio::spawn(async move {
                let mut acquired = 0;
                for i in 0..300u32 {
                    let n = (i + r) % 20;
                    assert_replays(&s, n, now, &body(n, 2000)).await;
                    if i % 50 == 0 {
                        match s.claim(req(10_000 + i, now)).await.unwrap() {
                            Claim::Acquired { .. } => acquired += 1,
                            Claim::InFlight { .. } => {}
                            other => panic!("{other:?}"),
                        }
                    }
                }
                acquired
            })
        })
        .collect();
    let limit = Duration::from_secs(120);
    tokio::time::timeout(limit, churn).await.unwrap().unwrap();
    let mut acquired = 0;
    for r in readers {
        acquired += tokio::time::timeout(limit, r).await.unwrap().unwrap();
    }
    assert_eq!(acquired, 6, "each of the six contended keys was acquired exactly once");
    let len = log_len(dir.path());
    assert!(
        len < 300_000,
        "the log ({len} bytes after 900 kB of churn) was compacted"
    );
    for n in 0..20 {
        assert_replays(&s, n, now, &body(n, 2000)).await;
    }
    assert_eq!(s.len_hint(), Some(26));
}

#[tokio::test]
async fn an_unfinished_compaction_is_ignored_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let now = time::now_ms();
    {
        let s = LogStore::open(dir.path()).unwrap();
        executed(&s, 1, now, b"one").await;
    }
    // A crash before the rename leaves a partial temp file next to the whole log.
    let tmp = dir.path().join("records.log.compact");
    std::fs::write(&tmp, b"IDEMLOG1\x10\x00\x00").unwrap();
    let s = LogStore::open(dir.path()).unwrap();
    assert!(!tmp.exists());
    assert_replays(&s, 1, now, b"one").await;
}
