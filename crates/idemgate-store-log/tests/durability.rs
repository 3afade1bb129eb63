//! What the log store promises beyond the store contract: records survive reopen, a torn tail
//! (also one with a hole in the last batch) is repaired, damage before the last batch is refused,
//! preallocated space is no damage, compaction keeps every live record (also while claims and
//! replays run), and the directory is locked against a second opener.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
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

/// The log file's length on disk (preallocated zeros included; see `LogStore::log_len`).
fn disk_len(dir: &Path) -> u64 {
    std::fs::metadata(dir.join(LOG)).unwrap().len()
}

/// Where each batch frame of a log file starts.
fn frames(bytes: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut pos = 8;
    while pos + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
        if len == 0 {
            break;
        }
        out.push(pos);
        pos += 8 + len;
    }
    out
}

/// A PUT entry (op 1) or, without a record, a DEL entry (op 2), as the store encodes them.
fn entry(id: &RecordId, record: Option<&Record>) -> Vec<u8> {
    let mut payload = vec![if record.is_some() { 1 } else { 2 }];
    payload.extend_from_slice(&id.0);
    if let Some(r) = record {
        payload.extend_from_slice(&r.encode());
    }
    let mut out = (payload.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// A batch frame of `entries`.
fn frame(entries: &[Vec<u8>]) -> Vec<u8> {
    let body = entries.concat();
    let mut out = (body.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// Counts the warnings (and errors) logged on this thread.
struct Warnings(Arc<AtomicUsize>);

impl tracing::Subscriber for Warnings {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        if *event.metadata().level() <= tracing::Level::WARN {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// Opens the store, counting the warnings the opening logs.
fn open_counting_warnings(dir: &Path, options: LogOptions) -> (LogStore, usize) {
    let count = Arc::new(AtomicUsize::new(0));
    let s = tracing::subscriber::with_default(Warnings(count.clone()), || LogStore::open_with(dir, options)).unwrap();
    (s, count.load(Ordering::Relaxed))
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
        // Where a crash leaves it: right after the log (in the preallocated zeros), or after
        // the preallocated zeros.
        for after_the_zeros in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let now = time::now_ms();
            let good = {
                let s = LogStore::open(dir.path()).unwrap();
                for n in 0..5 {
                    executed(&s, n, now, &body(n, 100)).await;
                }
                s.log_len()
            };
            let at = if after_the_zeros { disk_len(dir.path()) } else { good };
            assert!(disk_len(dir.path()) > good, "the log is preallocated");
            std::fs::OpenOptions::new()
                .write(true)
                .open(dir.path().join(LOG))
                .unwrap()
                .write_all_at(garbage, at)
                .unwrap();
            {
                let (s, warnings) = open_counting_warnings(dir.path(), LogOptions::default());
                assert_eq!(warnings, usize::from(garbage.iter().any(|&b| b != 0)), "{garbage:?}");
                assert_eq!(disk_len(dir.path()), good, "the torn bytes and the zeros are cut off");
                assert_eq!(s.log_len(), good);
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
}

#[tokio::test]
async fn a_bad_checksum_on_the_last_entry_is_a_torn_write() {
    let dir = tempfile::tempdir().unwrap();
    let now = time::now_ms();
    let token;
    let before_completion;
    let end;
    {
        let s = LogStore::open(dir.path()).unwrap();
        executed(&s, 1, now, b"one").await;
        token = acquire(&s, req(2, now)).await;
        before_completion = s.log_len();
        s.complete(id(2), token, response(b"two"), now + 60_000).await.unwrap();
        end = s.log_len();
    }
    let path = dir.path().join(LOG);
    let mut bytes = std::fs::read(&path).unwrap();
    // The last byte of the log (the file goes on with preallocated zeros).
    bytes[end as usize - 1] ^= 0x55;
    std::fs::write(&path, bytes).unwrap();
    let (s, warnings) = open_counting_warnings(dir.path(), LogOptions::default());
    assert_eq!(warnings, 1, "a torn write is reported");
    assert_eq!(disk_len(dir.path()), before_completion);
    assert_replays(&s, 1, now, b"one").await;
    // The completion was lost with the torn entry: the claim is in flight again.
    assert!(matches!(s.get(id(2)).await.unwrap(), Some(Record::InFlight { token: t, .. }) if t == token));
}

#[tokio::test]
async fn damage_before_the_last_batch_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let now = time::now_ms();
    {
        let s = LogStore::open(dir.path()).unwrap();
        for n in 0..3 {
            executed(&s, n, now, &body(n, 64)).await;
        }
    }
    let path = dir.path().join(LOG);
    let good = std::fs::read(&path).unwrap();
    // One batch per claim and per completion.
    let starts = frames(&good);
    assert_eq!(starts.len(), 6);
    assert_eq!(starts[0], 8);
    // Inside the first batch's record: magic (8), batch header (8), the entry's length +
    // checksum (8), op + id (33). And inside a middle batch, and inside its header's checksum.
    for at in [8 + 8 + 8 + 33 + 5, starts[3] + 8 + 8 + 33 + 20, starts[3] + 5] {
        let mut bytes = good.clone();
        bytes[at] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        let batch = *starts.iter().rev().find(|&&s| s <= at).unwrap();
        match LogStore::open(dir.path()) {
            Err(OpenError::Corrupt { offset, path: p, .. }) => {
                assert_eq!(offset, batch as u64, "damage at {at}");
                assert_eq!(p, path);
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
        // Nothing was truncated.
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
    }
    // The same damage in the last batch is a torn write: it alone is dropped.
    let mut bytes = good.clone();
    bytes[starts[5] + 8 + 8 + 33 + 20] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    {
        let s = LogStore::open(dir.path()).unwrap();
        assert_eq!(s.log_len(), starts[5] as u64);
        assert_replays(&s, 0, now, &body(0, 64)).await;
        assert_replays(&s, 1, now, &body(1, 64)).await;
        assert!(matches!(s.get(id(2)).await.unwrap(), Some(Record::InFlight { .. })));
    }
    // Not a log at all, or a log of the first format version.
    let mut v1 = good.clone();
    v1[..8].copy_from_slice(b"IDEMLOG1");
    for other in [&b"something else entirely"[..], &b"IDEMLOG1"[..], &v1[..]] {
        std::fs::write(&path, other).unwrap();
        assert!(matches!(LogStore::open(dir.path()), Err(OpenError::NotALog { .. })));
    }
}

#[tokio::test]
async fn a_hole_in_the_last_batch_is_a_torn_write() {
    let now = time::now_ms();
    // An unacknowledged batch: three records and the deletion of one written before.
    let completed = |n: u32, len: usize| Record::Completed {
        fingerprint: Fingerprint([n as u8; 32]),
        expires_at_ms: now + 3_600_000,
        response: response(&body(n, len)),
    };
    let batch = frame(&[
        entry(&id(100), Some(&completed(100, 5000))),
        entry(
            &id(101),
            Some(&Record::InFlight {
                fingerprint: Fingerprint([101; 32]),
                token: FencingToken(7),
                lease_until_ms: now + 60_000,
            }),
        ),
        entry(&id(0), None),
        entry(&id(102), Some(&completed(102, 8000))),
        entry(&id(103), Some(&completed(103, 100))),
    ]);
    assert!(batch.len() > 3 * 4096);
    // What of the batch reached the disk: all of it (the check that the hand-made batch is one
    // the store reads), or all but a page in the middle (zeros, or stale bytes), or all but its
    // first page.
    for hole in [
        None,
        Some((4096, 8192, 0u8)),
        Some((5000, 9000, 0xa5)),
        Some((0, 4096, 0)),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let good = {
            let s = LogStore::open(dir.path()).unwrap();
            for n in 0..5 {
                executed(&s, n, now, &body(n, 3000)).await;
            }
            s.log_len()
        };
        let mut torn = batch.clone();
        if let Some((from, to, byte)) = hole {
            torn[from..to].fill(byte);
        }
        // Where the writer would have put it: right after the log.
        std::fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join(LOG))
            .unwrap()
            .write_all_at(&torn, good)
            .unwrap();
        {
            let (s, warnings) = open_counting_warnings(dir.path(), LogOptions::default());
            if hole.is_none() {
                assert_eq!(warnings, 0);
                assert_eq!(s.log_len(), good + batch.len() as u64);
                assert!(s.get(id(0)).await.unwrap().is_none());
                assert_replays(&s, 100, now, &body(100, 5000)).await;
                assert!(
                    matches!(s.get(id(101)).await.unwrap(), Some(Record::InFlight { token, .. }) if token == FencingToken(7))
                );
                assert_replays(&s, 102, now, &body(102, 8000)).await;
                assert_replays(&s, 103, now, &body(103, 100)).await;
                continue;
            }
            assert_eq!(warnings, 1, "the torn write is reported");
            assert_eq!(s.log_len(), good, "{hole:?}");
            assert_eq!(disk_len(dir.path()), good);
            assert_eq!(s.len_hint(), Some(5));
            for n in 0..5 {
                assert_replays(&s, n, now, &body(n, 3000)).await;
            }
            for n in 100..104 {
                assert!(s.get(id(n)).await.unwrap().is_none(), "{n}");
            }
            executed(&s, 5, now, b"after").await;
        }
        let s = LogStore::open(dir.path()).unwrap();
        assert_eq!(s.len_hint(), Some(6));
        for n in 0..5 {
            assert_replays(&s, n, now, &body(n, 3000)).await;
        }
        assert_replays(&s, 5, now, b"after").await;
    }
}

#[tokio::test]
async fn the_log_is_preallocated_and_reopens_without_a_torn_write() {
    let now = time::now_ms();
    let mut small_steps = LogOptions::default();
    small_steps.prealloc_bytes = 1000;
    let mut off = LogOptions::default();
    off.prealloc_bytes = 0;
    for (options, step) in [(LogOptions::default(), 4u64 << 20), (small_steps, 1000), (off, 0)] {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = LogStore::open_with(dir.path(), options.clone()).unwrap();
            // A fresh log is the magic alone.
            assert_eq!(s.log_len(), 8);
            assert_eq!(disk_len(dir.path()), 8);
            for n in 0..30 {
                executed(&s, n, now, &body(n, 700)).await;
                let (logical, disk) = (s.log_len(), disk_len(dir.path()));
                if step == 0 {
                    assert_eq!(disk, logical);
                } else {
                    assert!(
                        disk > logical && disk <= logical + step,
                        "{disk} on disk, {logical} logical"
                    );
                }
            }
            // After the log: only zeros.
            let bytes = std::fs::read(dir.path().join(LOG)).unwrap();
            assert!(bytes[s.log_len() as usize..].iter().all(|&b| b == 0));
        }
        for round in 0..3u32 {
            let (s, warnings) = open_counting_warnings(dir.path(), options.clone());
            assert_eq!(warnings, 0, "preallocated zeros are no torn write");
            // Open dropped the zeros.
            assert_eq!(disk_len(dir.path()), s.log_len());
            assert_eq!(s.len_hint(), Some(30 + u64::from(round) * 10));
            for n in 0..30 {
                assert_replays(&s, n, now, &body(n, 700)).await;
            }
            for n in 0..round * 10 {
                assert_replays(&s, 1000 + n, now, &body(n, 50)).await;
            }
            // Writes after reopening land after the log, in newly preallocated space.
            for n in round * 10..round * 10 + 10 {
                executed(&s, 1000 + n, now, &body(n, 50)).await;
            }
            if step > 0 {
                assert!(disk_len(dir.path()) > s.log_len());
            }
        }
    }
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

/// With more live records than one purge call looks at, a caller that loops while `more` ends
/// after one pass (the gateway's purge loop does exactly that every interval).
#[tokio::test]
async fn a_purge_pass_over_a_large_store_ends() {
    let dir = tempfile::tempdir().unwrap();
    let now = time::now_ms();
    let s = std::sync::Arc::new(LogStore::open(dir.path()).unwrap());
    let claims: Vec<_> = (0..10_000u32)
        .map(|n| {
            let s = s.clone();
            tokio::spawn(async move { s.claim(req(n, now)).await.unwrap() })
        })
        .collect();
    for c in claims {
        c.await.unwrap();
    }
    for round in 0..2 {
        let mut calls = 0;
        loop {
            calls += 1;
            assert!(calls <= 64, "round {round}: a pass over 10k live records did not end");
            if !s.purge_expired(now, 1000).await.unwrap().more {
                break;
            }
        }
        assert!(calls > 1, "one call looked at every record: the bound per call is gone");
    }
    assert_eq!(s.len_hint(), Some(10_000));
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
        let len = s.log_len();
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

/// One key deleted and completed again, over and over, with compactions in between: every
/// replay is of its latest response (the store keeps recently read records decoded, and an
/// entry of the same size lands where an earlier one of the same key was before compaction).
#[tokio::test]
async fn a_key_completed_again_replays_its_latest_response_across_compactions() {
    let dir = tempfile::tempdir().unwrap();
    let now = time::now_ms();
    // Compacting whenever the log is more than twice its live entries: the same key's entries
    // then keep landing at the same few offsets of each new file.
    let s = LogStore::open_with(dir.path(), small(1)).unwrap();
    for round in 0..200u32 {
        let b = body(round, 1500);
        executed(&s, 7, now, &b).await;
        assert_replays(&s, 7, now, &b).await;
        assert_replays(&s, 7, now, &b).await;
        assert!(s.delete(id(7)).await.unwrap());
        assert!(s.get(id(7)).await.unwrap().is_none(), "round {round}");
    }
    let len = s.log_len();
    assert!(
        len < 20_000,
        "the log ({len} bytes after ~700 kB of entries) was compacted"
    );
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
    let len = s.log_len();
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
    std::fs::write(&tmp, b"IDEMLOG2\x10\x00\x00").unwrap();
    let s = LogStore::open(dir.path()).unwrap();
    assert!(!tmp.exists());
    assert_replays(&s, 1, now, b"one").await;
}

/// Serving threads that installed a reply queue (the gateway's): every operation of many
/// concurrent requests on two such threads is answered, through the queue, and correctly.
#[test]
fn replies_through_serving_threads_reply_queues_answer_every_operation() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(LogStore::open(dir.path()).unwrap());
    let now = time::now_ms();
    let threads: Vec<_> = (0..2u32)
        .map(|t| {
            let s = s.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let drain = tokio::spawn(idemgate_core::reply::ReplyQueue::install());
                    let mut tasks = tokio::task::JoinSet::new();
                    for n in (t * 1000)..(t * 1000 + 200) {
                        let s = s.clone();
                        tasks.spawn(async move { executed(&s, n, now, &body(n, 64)).await });
                    }
                    tokio::time::timeout(Duration::from_secs(30), tasks.join_all())
                        .await
                        .expect("every operation answered");
                    // Without its drain the thread's replies are sent directly.
                    drain.abort();
                    let _ = drain.await;
                    assert!(idemgate_core::reply::ReplyQueue::current().is_none());
                    executed(&s, t * 1000 + 999, now, b"after").await;
                });
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(async {
        for t in 0..2u32 {
            for n in (t * 1000)..(t * 1000 + 200) {
                assert_replays(&s, n, now, &body(n, 64)).await;
            }
            assert_replays(&s, t * 1000 + 999, now, b"after").await;
        }
    });
}
