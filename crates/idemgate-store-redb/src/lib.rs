//! idemgate's embedded durable store: one directory, one redb file, group commit.
//!
//! - **Durability.** Every write (claim, complete, release, delete, purge) is committed with
//!   `Durability::Immediate` (fsync) before its future resolves, so a record whose response a
//!   client received survives `kill -9` and power loss. redb is copy-on-write with checksummed
//!   commits: a crash mid-commit leaves the previous commit intact.
//! - **Group commit.** One writer thread owns all write transactions. It takes every operation
//!   waiting in its queue (up to [`MAX_BATCH`]), applies them in one transaction in arrival order,
//!   commits once, and only then answers each caller. Concurrent requests share an fsync instead
//!   of paying one each; ordering within a batch keeps claims atomic (the second claim of a key
//!   in a batch sees the first).
//! - **Reads.** A claim first looks in a read transaction (MVCC, concurrent, no fsync): a live
//!   completed record is answered from there, so replays never wait for the writer.
//! - **Purge.** Expired records are removed in small batches from a cursor that walks the table,
//!   so a purge never holds the writer for long.

#![deny(missing_docs)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;

use bytes::Bytes;
use idemgate_core::record::{decide_claim, decide_complete, decide_release};
use idemgate_core::{
    BoxFuture, Claim, ClaimRequest, CompleteError, FencingToken, Purged, Record, RecordId, Store, StoreError,
    StoredResponse,
};
use redb::{Database, Durability, ReadableTable, ReadableTableMetadata, TableDefinition};
use tokio::sync::oneshot;

/// Most operations committed in one transaction.
pub const MAX_BATCH: usize = 512;

/// Records scanned per purge step.
const PURGE_SCAN: usize = 2048;

const RECORDS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("records");

/// Opening the store failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The directory could not be created.
    #[error("cannot create store directory {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// redb refused the file (in use by another process, damaged, or unreadable).
    #[error("cannot open embedded store {path}: {source}")]
    Database {
        /// The database file.
        path: PathBuf,
        /// The cause.
        source: Box<redb::Error>,
    },
}

enum Op {
    Claim(ClaimRequest, oneshot::Sender<Result<Claim, StoreError>>),
    Complete(
        RecordId,
        FencingToken,
        StoredResponse,
        u64,
        oneshot::Sender<Result<(), CompleteError>>,
    ),
    Release(RecordId, FencingToken, oneshot::Sender<Result<bool, StoreError>>),
    Delete(RecordId, oneshot::Sender<Result<bool, StoreError>>),
    Purge(u64, usize, oneshot::Sender<Result<Purged, StoreError>>),
}

/// The outcome of one op, sent once the batch has committed.
enum Done {
    Claim(oneshot::Sender<Result<Claim, StoreError>>, Result<Claim, StoreError>),
    Complete(oneshot::Sender<Result<(), CompleteError>>, Result<(), CompleteError>),
    Bool(oneshot::Sender<Result<bool, StoreError>>, Result<bool, StoreError>),
    Count(oneshot::Sender<Result<Purged, StoreError>>, Result<Purged, StoreError>),
}

/// The embedded durable store.
pub struct RedbStore {
    db: Arc<Database>,
    tx: std::sync::Mutex<Option<mpsc::Sender<Op>>>,
    writer: std::sync::Mutex<Option<thread::JoinHandle<()>>>,
    count: Arc<AtomicU64>,
    path: PathBuf,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn backend(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Backend(Box::new(e.into()))
}

fn gone() -> StoreError {
    StoreError::Unavailable("the embedded store is shut down".into())
}

impl RedbStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, OpenError> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|source| OpenError::Dir {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join("records.redb");
        let db_err = |e: redb::Error| OpenError::Database {
            path: path.clone(),
            source: Box::new(e),
        };
        let db = Database::create(&path).map_err(|e| db_err(e.into()))?;
        // Make sure the table exists and count what is there.
        let wtx = db.begin_write().map_err(|e| db_err(e.into()))?;
        let n = {
            let table = wtx.open_table(RECORDS).map_err(|e| db_err(e.into()))?;
            table.len().map_err(|e| db_err(e.into()))?
        };
        wtx.commit().map_err(|e| db_err(e.into()))?;
        let db = Arc::new(db);
        let count = Arc::new(AtomicU64::new(n));
        let (tx, rx) = mpsc::channel();
        let writer = {
            let db = db.clone();
            let count = count.clone();
            thread::Builder::new()
                .name("idemgate-redb-writer".into())
                .spawn(move || writer_loop(&db, &rx, &count))
                .map_err(|e| OpenError::Dir {
                    path: dir.to_path_buf(),
                    source: e,
                })?
        };
        Ok(Self {
            db,
            tx: std::sync::Mutex::new(Some(tx)),
            writer: std::sync::Mutex::new(Some(writer)),
            count,
            path,
        })
    }

    fn send(&self, op: Op) -> bool {
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        tx.as_ref().is_some_and(|tx| tx.send(op).is_ok())
    }

    fn read(&self, id: &RecordId) -> Result<Option<Record>, StoreError> {
        let rtx = self.db.begin_read().map_err(backend)?;
        let table = rtx.open_table(RECORDS).map_err(backend)?;
        let v = table.get(&id.0[..]).map_err(backend)?;
        match v {
            Some(v) => Ok(Some(Record::decode(Bytes::copy_from_slice(v.value()))?)),
            None => Ok(None),
        }
    }

    /// Stops the writer after the operations already queued; later operations fail.
    pub fn close(&self) {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(w) = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = w.join();
        }
    }
}

impl Drop for RedbStore {
    fn drop(&mut self) {
        self.close();
    }
}

async fn reply<T>(rx: oneshot::Receiver<Result<T, StoreError>>) -> Result<T, StoreError> {
    rx.await.unwrap_or_else(|_| Err(gone()))
}

impl Store for RedbStore {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    fn claim(&self, req: ClaimRequest) -> BoxFuture<'_, Result<Claim, StoreError>> {
        Box::pin(async move {
            // Fast path: a live completed record needs no write.
            if let Some(rec @ Record::Completed { .. }) = self.read(&req.id)? {
                if !rec.is_expired(req.now_ms) {
                    return Ok(decide_claim(Some(&rec), &req).0);
                }
            }
            let (tx, rx) = oneshot::channel();
            if !self.send(Op::Claim(req, tx)) {
                return Err(gone());
            }
            reply(rx).await
        })
    }

    fn complete(
        &self,
        id: RecordId,
        token: FencingToken,
        response: StoredResponse,
        expires_at_ms: u64,
    ) -> BoxFuture<'_, Result<(), CompleteError>> {
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            if !self.send(Op::Complete(id, token, response, expires_at_ms, tx)) {
                return Err(gone().into());
            }
            rx.await.unwrap_or_else(|_| Err(gone().into()))
        })
    }

    fn release(&self, id: RecordId, token: FencingToken) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            if !self.send(Op::Release(id, token, tx)) {
                return Err(gone());
            }
            reply(rx).await
        })
    }

    fn get(&self, id: RecordId) -> BoxFuture<'_, Result<Option<Record>, StoreError>> {
        Box::pin(async move { self.read(&id) })
    }

    fn delete(&self, id: RecordId) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            if !self.send(Op::Delete(id, tx)) {
                return Err(gone());
            }
            reply(rx).await
        })
    }

    fn purge_expired(&self, now_ms: u64, limit: usize) -> BoxFuture<'_, Result<Purged, StoreError>> {
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            if !self.send(Op::Purge(now_ms, limit, tx)) {
                return Err(gone());
            }
            reply(rx).await
        })
    }

    fn check_secret(&self, check: [u8; 32]) -> BoxFuture<'_, Result<(), StoreError>> {
        let path = self.path.with_file_name(idemgate_core::SECRET_CHECK_FILE);
        Box::pin(std::future::ready(idemgate_core::check_secret_file(&path, check)))
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            if self.tx.lock().unwrap_or_else(|p| p.into_inner()).is_none() {
                return Err(gone());
            }
            self.db.begin_read().map(|_| ()).map_err(backend)
        })
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        // Every acknowledged write is already committed; closing drains what is queued.
        self.close();
        Box::pin(async { Ok(()) })
    }

    fn len_hint(&self) -> Option<u64> {
        Some(self.count.load(Ordering::Relaxed))
    }
}

fn writer_loop(db: &Database, rx: &mpsc::Receiver<Op>, count: &AtomicU64) {
    let mut purge_cursor: Vec<u8> = Vec::new();
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Ok(first) = rx.recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let mut done = Vec::with_capacity(batch.len());
        let mut delta: i64 = 0;
        let committed = apply(db, &mut batch, &mut done, &mut delta, &mut purge_cursor);
        match committed {
            Ok(()) => {
                if delta >= 0 {
                    count.fetch_add(delta as u64, Ordering::Relaxed);
                } else {
                    count.fetch_sub(delta.unsigned_abs(), Ordering::Relaxed);
                }
                for d in done {
                    send_done(d);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "embedded store commit failed; {} operations failed", done.len());
                for d in done {
                    fail_done(d, &e);
                }
            }
        }
    }
}

fn apply(
    db: &Database,
    batch: &mut Vec<Op>,
    done: &mut Vec<Done>,
    delta: &mut i64,
    purge_cursor: &mut Vec<u8>,
) -> Result<(), String> {
    let mut wtx = match db.begin_write() {
        Ok(w) => w,
        Err(e) => {
            // Nothing was applied: fail every op with the error.
            let msg = e.to_string();
            for op in batch.drain(..) {
                done.push(pending(op));
            }
            return Err(msg);
        }
    };
    wtx.set_durability(Durability::Immediate);
    {
        let mut table = match wtx.open_table(RECORDS) {
            Ok(t) => t,
            Err(e) => {
                let msg = e.to_string();
                for op in batch.drain(..) {
                    done.push(pending(op));
                }
                return Err(msg);
            }
        };
        for op in batch.drain(..) {
            done.push(apply_one(&mut table, op, delta, purge_cursor));
        }
    }
    wtx.commit().map_err(|e| e.to_string())
}

/// An op that was not applied, to be failed.
fn pending(op: Op) -> Done {
    match op {
        Op::Claim(_, tx) => Done::Claim(tx, Err(gone())),
        Op::Complete(_, _, _, _, tx) => Done::Complete(tx, Err(gone().into())),
        Op::Release(_, _, tx) | Op::Delete(_, tx) => Done::Bool(tx, Err(gone())),
        Op::Purge(_, _, tx) => Done::Count(tx, Err(gone())),
    }
}

type Table<'t> = redb::Table<'t, &'static [u8], &'static [u8]>;

fn load(table: &Table<'_>, id: &RecordId) -> Result<Option<Record>, StoreError> {
    match table.get(&id.0[..]).map_err(backend)? {
        Some(v) => Ok(Some(Record::decode(Bytes::copy_from_slice(v.value()))?)),
        None => Ok(None),
    }
}

fn apply_one(table: &mut Table<'_>, op: Op, delta: &mut i64, purge_cursor: &mut Vec<u8>) -> Done {
    match op {
        Op::Claim(req, tx) => {
            let r = (|| {
                let existing = load(table, &req.id)?;
                let (claim, write) = decide_claim(existing.as_ref(), &req);
                if let Some(rec) = write {
                    table.insert(&req.id.0[..], &rec.encode()[..]).map_err(backend)?;
                    if existing.is_none() {
                        *delta += 1;
                    }
                }
                Ok(claim)
            })();
            Done::Claim(tx, r)
        }
        Op::Complete(id, token, response, expires_at_ms, tx) => {
            let r = (|| {
                let existing = load(table, &id)?;
                let rec = decide_complete(existing.as_ref(), token, response, expires_at_ms)
                    .map_err(|()| CompleteError::Fenced)?;
                table.insert(&id.0[..], &rec.encode()[..]).map_err(backend)?;
                Ok(())
            })();
            Done::Complete(tx, r)
        }
        Op::Release(id, token, tx) => {
            let r = (|| {
                let existing = load(table, &id)?;
                if decide_release(existing.as_ref(), token) {
                    table.remove(&id.0[..]).map_err(backend)?;
                    *delta -= 1;
                    Ok(true)
                } else {
                    Ok(false)
                }
            })();
            Done::Bool(tx, r)
        }
        Op::Delete(id, tx) => {
            let r = table.remove(&id.0[..]).map_err(backend).map(|old| old.is_some());
            if matches!(r, Ok(true)) {
                *delta -= 1;
            }
            Done::Bool(tx, r)
        }
        Op::Purge(now_ms, limit, tx) => {
            let r = purge(table, now_ms, limit, purge_cursor);
            if let Ok(p) = r {
                *delta -= p.removed as i64;
            }
            Done::Count(tx, r)
        }
    }
}

/// Removes expired records among the next [`PURGE_SCAN`] after the cursor (wrapping around).
fn purge(table: &mut Table<'_>, now_ms: u64, limit: usize, cursor: &mut Vec<u8>) -> Result<Purged, StoreError> {
    let mut expired = Vec::new();
    let mut last = None;
    let mut scanned = 0;
    {
        let range = table.range(&cursor[..]..).map_err(backend)?;
        for entry in range {
            let (k, v) = entry.map_err(backend)?;
            scanned += 1;
            let key = k.value().to_vec();
            // A record that does not decode is left for an operator, never silently deleted.
            if let Ok(rec) = Record::decode(Bytes::copy_from_slice(v.value())) {
                if rec.is_expired(now_ms) && expired.len() < limit {
                    expired.push(key.clone());
                }
            }
            last = Some(key);
            if scanned >= PURGE_SCAN || expired.len() >= limit {
                break;
            }
        }
    }
    match last {
        // Continue after the last key scanned next time; start over once the end is reached.
        Some(mut k) if scanned >= PURGE_SCAN || expired.len() >= limit => {
            k.push(0);
            *cursor = k;
        }
        _ => cursor.clear(),
    }
    for k in &expired {
        table.remove(&k[..]).map_err(backend)?;
    }
    Ok(Purged {
        removed: expired.len(),
        more: !cursor.is_empty(),
    })
}

fn send_done(d: Done) {
    match d {
        Done::Claim(tx, r) => drop(tx.send(r)),
        Done::Complete(tx, r) => drop(tx.send(r)),
        Done::Bool(tx, r) => drop(tx.send(r)),
        Done::Count(tx, r) => drop(tx.send(r)),
    }
}

fn fail_done(d: Done, e: &str) {
    let err = || StoreError::Unavailable(format!("embedded store commit failed: {e}"));
    match d {
        Done::Claim(tx, _) => drop(tx.send(Err(err()))),
        Done::Complete(tx, _) => drop(tx.send(Err(err().into()))),
        Done::Bool(tx, _) => drop(tx.send(Err(err()))),
        Done::Count(tx, _) => drop(tx.send(Err(err()))),
    }
}
