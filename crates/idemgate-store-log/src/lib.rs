//! idemgate's embedded durable store: an append-only log with an in-memory index (bitcask
//! style), with group commit.
//!
//! - **Layout.** One directory: `records.log` (see `format.rs`), `lock` (held with an exclusive
//!   file lock while the store is open, so a second process cannot open it), `scope-check` (the
//!   scope secret's check value, written by the first `check_secret`), and during compaction
//!   `records.log.compact`.
//! - **Format.** `records.log` is the magic `IDEMLOG2`, then one frame per group commit:
//!   `[u32 body len][u32 crc32 of body][body]`, the body being the batch's entries, each
//!   `[u32 len][u32 crc32][op, record id, encoded record]`. The index points at entries inside
//!   their frame; a replay reads one entry back and checks its own checksum.
//! - **Durability.** Every write (claim, complete, release, delete, purge) is appended and
//!   synced (`RWF_DSYNC`, or `fdatasync`) before its future resolves, and only then published
//!   to the index: nothing a crash could still lose is ever visible, so a replay is never served
//!   from such a record.
//! - **Group commit.** One writer thread owns all writes. It takes every operation waiting in its
//!   queue (up to [`MAX_BATCH`]), decides each in arrival order against the index plus the batch's
//!   own changes (so the second claim of a key in one batch sees the first), appends all entries
//!   as one frame with one write, syncs once, then publishes and answers. Concurrent requests
//!   share an fsync.
//! - **Preallocation.** The writer grows the file ahead of the log by writing zeros
//!   ([`LogOptions::prealloc_bytes`], 4 MiB by default) and syncing them once, so that a group
//!   commit overwrites allocated space instead of growing the file: its `fdatasync` then need not
//!   journal a size change, which roughly halves its cost. The file on disk is therefore longer
//!   than the log ([`LogStore::log_len`]); the zeros after the last frame read as the end of the
//!   log, and opening truncates them away.
//! - **Reads.** The index holds in-flight records whole, but for a completed record only its TTL
//!   and where its entry is: a replay or `get` reads the entry back (page cache) and decodes it.
//!   A claim of a live completed record is answered this way without the writer. The last
//!   record read of each of 64 slots is kept decoded (`hot.rs`), so a burst of retries of one
//!   key reads its entry once; a hit needs the index's current location, and compaction empties
//!   the table.
//! - **Recovery.** Opening reads the log once, rebuilding the index (later entries win, DEL
//!   removes). A frame is written only after the previous one was synced, so only the last frame
//!   can be torn by a crash, in any way (any subset of its pages may have reached the disk): a
//!   damaged last frame is an unacknowledged batch, truncated away with a warning. A damaged
//!   frame followed by a valid frame, or a frame whose checksum holds over bad entries, is
//!   corruption and the store refuses to open ([`OpenError::Corrupt`]). Known limit: a damaged
//!   length in the header of a frame before the last cannot be told from a torn tail, and the
//!   frames after it are dropped as torn.
//! - **Compaction.** When the log is larger than [`LogOptions::compact_min_bytes`] and more than
//!   twice the live entries, the writer copies the live entries into a new file, syncs it, renames
//!   it over the log and syncs the directory: a crash leaves the old or the new log, both whole.
//! - **Failures.** A failed write fails its batch ([`StoreError::Backend`]) and is truncated
//!   away; a failed fsync (or a failed truncation) stops the store: every later operation gets
//!   [`StoreError::Unavailable`] saying why, and a restart recovers from the log.
//! - **Stalls.** A caller waits at most [`LogOptions::op_timeout`] for the writer
//!   ([`StoreError::Timeout`]; the operation may still be applied afterwards, as with a network
//!   store's timeout), and `ping` fails while the writer has been in one batch (or compaction)
//!   for longer than that, so a stalled disk turns readiness off instead of hanging requests.
//!   A claim, delete or purge that the writer reaches after its caller gave up is answered
//!   without being applied (a late claim would lock a key whose request was already refused);
//!   a completion or release is applied however late, since it only settles a key.
//!   Reads of completed records (`get`, a claim's replay) are not bounded: they read the log
//!   file in the caller's thread, from the page cache unless the entry was evicted.

#![deny(missing_docs)]

mod format;
mod hot;
mod index;
mod writer;

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock, RwLock};
use std::thread;

use bytes::Bytes;
use idemgate_core::record::{decide_claim, CorruptRecord};
use idemgate_core::{
    BoxFuture, Claim, ClaimRequest, CompleteError, FencingToken, Purged, Record, RecordId, Store, StoreError,
    StoredResponse,
};
use tokio::sync::oneshot;

use crate::format::{Op, HEADER_LEN, MAGIC};
use crate::index::{Index, Loc, View};
use crate::writer::{Envelope, Request, Writer};

pub use crate::writer::MAX_BATCH;

const LOG_FILE: &str = "records.log";
const COMPACT_FILE: &str = "records.log.compact";
const LOCK_FILE: &str = "lock";

/// Tuning for [`LogStore::open_with`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct LogOptions {
    /// The log is never compacted while smaller than this (bytes). Default 64 MiB.
    pub compact_min_bytes: u64,
    /// When a batch would pass the end of the file, the file is extended with zeros to this many
    /// bytes past the batch's end (see the crate docs). Default 4 MiB; 0 turns preallocation off
    /// (every batch then grows the file).
    pub prealloc_bytes: u64,
    /// The longest a caller waits for the writer to make its operation durable. Default 30 s:
    /// far above a healthy disk's batch (milliseconds) and a compaction of a large log (seconds).
    pub op_timeout: std::time::Duration,
}

/// The default [`LogOptions::prealloc_bytes`].
const PREALLOC: u64 = 4 << 20;

impl Default for LogOptions {
    fn default() -> Self {
        Self {
            compact_min_bytes: 64 << 20,
            prealloc_bytes: PREALLOC,
            op_timeout: std::time::Duration::from_secs(30),
        }
    }
}

/// Opening the store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// A [`LogOptions`] value cannot work.
    #[error("invalid store option `{name}`: {why}")]
    InvalidOption {
        /// The option.
        name: &'static str,
        /// Why.
        why: &'static str,
    },
    /// The directory could not be created.
    #[error("cannot create store directory {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Another process (or another store in this one) has the directory open.
    #[error("embedded store {path} is in use by another process (its lock file is held)")]
    Locked {
        /// The directory.
        path: PathBuf,
    },
    /// A file of the store could not be opened, read, repaired or written.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The log file does not start with the log's magic bytes.
    #[error("{path} is not an idemgate record log (unknown header)")]
    NotALog {
        /// The log file.
        path: PathBuf,
    },
    /// The log is damaged before its end: refusing to drop the acknowledged records after it.
    #[error("record log {path} is corrupt at offset {offset} ({reason}) and valid records follow; restore it from a backup or truncate it at that offset by hand")]
    Corrupt {
        /// The log file.
        path: PathBuf,
        /// Where the damaged frame starts (for a bad entry inside a frame whose checksum holds:
        /// where the entry starts).
        offset: u64,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// An I/O failure of the running store, boxed into [`StoreError::Backend`].
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// A file operation failed.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: Arc<io::Error>,
    },
    /// An encoded record does not fit one entry (4 GiB).
    #[error("record of {len} bytes is too large for the record log")]
    TooLarge {
        /// The record's size.
        len: usize,
    },
}

impl LogError {
    pub(crate) fn io(action: &'static str, path: &Path, source: io::Error) -> Self {
        LogError::Io {
            action,
            path: path.to_path_buf(),
            source: Arc::new(source),
        }
    }
}

/// What the store's users and its writer thread share.
/// The writer is a plain thread, and a test's paused tokio clock must not move its stall
/// detector: this is the real monotonic clock.
#[allow(clippy::disallowed_types)]
pub(crate) type MonotonicClock = std::time::Instant;

pub(crate) struct Shared {
    pub(crate) index: Index,
    /// The current log file. Readers hold the read lock from the index lookup until the entry is
    /// read; compaction swaps the file and every offset under the write lock.
    pub(crate) file: RwLock<Arc<File>>,
    /// Set once when the store stops after a failure it cannot undo.
    pub(crate) failure: OnceLock<String>,
    pub(crate) closed: AtomicBool,
    /// The log's logical length (the writer's `file_len`).
    pub(crate) log_len: AtomicU64,
    pub(crate) dir: PathBuf,
    pub(crate) path: PathBuf,
    /// Completed records read back recently, so that a burst of retries of one key reads its
    /// entry once. Filled by reads under the file's read lock, emptied by compaction under its
    /// write lock.
    pub(crate) hot: hot::HotEntries,
    /// When the writer took up its current batch ([`Shared::clock_ms`]), 0 while it waits.
    pub(crate) busy_since_ms: AtomicU64,
    /// The origin of [`Shared::clock_ms`].
    pub(crate) opened: MonotonicClock,
    /// Set by a test to stall the writer before its next batch, as a hung disk would.
    #[cfg(test)]
    pub(crate) stall: tests::Stall,
}

impl Shared {
    /// The error every operation gets once the store has failed.
    pub(crate) fn failed(&self) -> Option<StoreError> {
        self.failure.get().map(|why| {
            StoreError::Unavailable(format!(
                "the embedded store stopped after a failure: {why}; restart to recover from the log"
            ))
        })
    }

    /// Milliseconds since the store opened, plus one (so that 0 can mean "idle"), on the real
    /// monotonic clock: wall-clock steps must not hide a stall or invent one.
    pub(crate) fn clock_ms(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1
    }

    /// `status`, and whether the writer has been stuck in one batch for longer than `limit`.
    pub(crate) fn health(&self, limit: std::time::Duration) -> Result<(), StoreError> {
        self.status()?;
        self.writer_health(limit, self.clock_ms())
    }

    /// Whether the writer had been in one batch for longer than `limit` at `now_ms`.
    fn writer_health(&self, limit: std::time::Duration, now_ms: u64) -> Result<(), StoreError> {
        let since = self.busy_since_ms.load(Ordering::Relaxed);
        let busy = now_ms.saturating_sub(since);
        if since != 0 && u128::from(busy) > limit.as_millis() {
            return Err(StoreError::Unavailable(format!(
                "the embedded store's writer has been in one batch for {busy} ms (a stalled disk?)"
            )));
        }
        Ok(())
    }

    pub(crate) fn status(&self) -> Result<(), StoreError> {
        if let Some(e) = self.failed() {
            return Err(e);
        }
        if self.closed.load(Ordering::Acquire) {
            return Err(gone());
        }
        Ok(())
    }

    /// The record `view` describes, reading a completed record's entry from `file`.
    pub(crate) fn materialize(&self, file: &File, id: &RecordId, view: View) -> Result<Record, StoreError> {
        match view {
            View::InFlight {
                fingerprint,
                token,
                lease_until_ms,
                ..
            } => Ok(Record::InFlight {
                fingerprint,
                token,
                lease_until_ms,
            }),
            View::Completed { loc, .. } => self.read_entry(file, id, loc),
        }
    }

    fn read_entry(&self, file: &File, id: &RecordId, loc: Loc) -> Result<Record, StoreError> {
        if let Some(record) = self.hot.get(id, loc) {
            return Ok(record);
        }
        let record = self.read_entry_from(file, id, loc)?;
        self.hot.put(id, loc, &record);
        Ok(record)
    }

    fn read_entry_from(&self, file: &File, id: &RecordId, loc: Loc) -> Result<Record, StoreError> {
        let mut buf = vec![0u8; loc.len as usize];
        file.read_exact_at(&mut buf, loc.offset)
            .map_err(|e| StoreError::Backend(Box::new(LogError::io("read an entry of", &self.path, e))))?;
        let entry = format::parse_entry(loc.offset, Bytes::from(buf)).map_err(|b| CorruptRecord(b.reason()))?;
        if entry.op != Op::Put || entry.id != *id {
            return Err(CorruptRecord("the index points at another record's entry").into());
        }
        Ok(Record::decode(entry.record)?)
    }

    /// The stored record, read under the file lock so compaction cannot move it meanwhile.
    fn get(&self, id: &RecordId, live_completed_at: Option<u64>) -> Result<Option<Record>, StoreError> {
        let file = self.file.read().unwrap_or_else(|p| p.into_inner());
        let Some(view) = self.index.get(id) else {
            return Ok(None);
        };
        if let Some(now_ms) = live_completed_at {
            if !matches!(view, View::Completed { .. }) || view.deadline_ms() <= now_ms {
                return Ok(None);
            }
        }
        self.materialize(&file, id, view).map(Some)
    }

    /// Stops the store for good after a failure that leaves the file in doubt.
    pub(crate) fn fail(&self, why: String) {
        tracing::error!(path = %self.path.display(), "embedded store stopped: {why}");
        let _ = self.failure.set(why);
    }
}

fn gone() -> StoreError {
    StoreError::Unavailable("the embedded store is shut down".into())
}

/// The embedded durable store (see the crate docs).
pub struct LogStore {
    shared: Arc<Shared>,
    op_timeout: std::time::Duration,
    /// `op_timeout` in ms, for each operation's deadline.
    op_timeout_ms: u64,
    tx: Mutex<Option<mpsc::Sender<Envelope>>>,
    writer: Mutex<Option<thread::JoinHandle<()>>>,
    /// Holds the directory's lock while the store is open.
    _lock: File,
}

impl std::fmt::Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore")
            .field("path", &self.shared.path)
            .finish_non_exhaustive()
    }
}

impl LogStore {
    /// Opens (or creates) the store in `dir` with default options.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use idemgate_core::Store;
    /// use idemgate_store_log::LogStore;
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store: Arc<dyn Store> = Arc::new(LogStore::open(dir.path())?);
    /// // For `IdempotencyLayer::new(store, hasher, config)` or `RunOnce::builder(store, secret)`.
    /// assert_eq!(store.kind(), "embedded");
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, OpenError> {
        Self::open_with(dir, LogOptions::default())
    }

    /// Opens (or creates) the store in `dir`, recovering the index from its log.
    pub fn open_with(dir: impl AsRef<Path>, options: LogOptions) -> Result<Self, OpenError> {
        if options.op_timeout.is_zero() {
            return Err(OpenError::InvalidOption {
                name: "op_timeout",
                why: "must be longer than 0s",
            });
        }
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|source| OpenError::Dir {
            path: dir.to_path_buf(),
            source,
        })?;
        let io_err = |action, path: &Path| {
            let path = path.to_path_buf();
            move |source| OpenError::Io { action, path, source }
        };
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(io_err("open", &lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(OpenError::Locked {
                    path: dir.to_path_buf(),
                })
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_err("lock", &lock_path)(e)),
        }
        // A compaction that did not reach its rename: the log itself is whole.
        let compact_path = dir.join(COMPACT_FILE);
        match std::fs::remove_file(&compact_path) {
            Ok(()) => tracing::info!(path = %compact_path.display(), "removed an unfinished compaction"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove", &compact_path)(e)),
        }
        let path = dir.join(LOG_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err("open", &path))?;
        let file_len = file.metadata().map_err(io_err("stat", &path))?.len();
        let index = Index::new();
        let mut live_bytes = 0u64;
        let tail = format::scan(BufReader::with_capacity(1 << 20, &file), file_len, |e| {
            let loc = Loc {
                offset: e.offset,
                len: e.len,
            };
            let old = match e.op {
                Op::Put => {
                    let record = Record::decode(e.record).map_err(|c| c.0)?;
                    live_bytes += u64::from(e.len);
                    index.insert(e.id, &record, loc)
                }
                Op::Del => index.remove(&e.id),
            };
            if let Some(old) = old {
                live_bytes -= u64::from(old.loc().len);
            }
            Ok(())
        })
        .map_err(|e| match e {
            format::ScanError::Io(source) => io_err("read", &path)(source),
            format::ScanError::BadMagic => OpenError::NotALog { path: path.clone() },
            format::ScanError::Corrupt { offset, reason } => OpenError::Corrupt {
                path: path.clone(),
                offset,
                reason,
            },
        })?;
        let valid_len = tail.valid_len;
        let file_len = if valid_len >= HEADER_LEN {
            // Drop what follows the log: a torn batch, or preallocated zeros (the writer starts
            // with no preallocated space).
            if file_len > valid_len {
                if tail.torn {
                    tracing::warn!(
                        path = %path.display(),
                        dropped_bytes = file_len - valid_len,
                        "record log ends with a torn write (a crash during an unacknowledged write); truncating it"
                    );
                } else {
                    tracing::debug!(
                        path = %path.display(),
                        preallocated_bytes = file_len - valid_len,
                        "dropping the preallocated space after the end of the record log"
                    );
                }
                file.set_len(valid_len).map_err(io_err("truncate", &path))?;
                file.sync_all().map_err(io_err("fsync", &path))?;
            }
            valid_len
        } else {
            // New (or torn while being created): start it. (The scan moved the file's cursor:
            // write the magic at offset 0.)
            file.set_len(0).map_err(io_err("truncate", &path))?;
            file.write_all_at(MAGIC, 0).map_err(io_err("write", &path))?;
            file.sync_all().map_err(io_err("fsync", &path))?;
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err("fsync", dir))?;
            HEADER_LEN
        };
        let file = Arc::new(file);
        let shared = Arc::new(Shared {
            index,
            file: RwLock::new(file.clone()),
            failure: OnceLock::new(),
            closed: AtomicBool::new(false),
            log_len: AtomicU64::new(file_len),
            dir: dir.to_path_buf(),
            path,
            hot: hot::HotEntries::default(),
            busy_since_ms: AtomicU64::new(0),
            opened: MonotonicClock::now(),
            #[cfg(test)]
            stall: tests::Stall::default(),
        });
        let op_timeout = options.op_timeout;
        let writer = Writer::new(shared.clone(), file, file_len, live_bytes, options);
        let (tx, rx) = mpsc::channel();
        let handle = thread::Builder::new()
            .name("idemgate-log-writer".into())
            .spawn(move || writer.run(&rx))
            .map_err(|source| OpenError::Io {
                action: "start the writer thread for",
                path: dir.to_path_buf(),
                source,
            })?;
        Ok(Self {
            shared,
            op_timeout,
            op_timeout_ms: u64::try_from(op_timeout.as_millis()).unwrap_or(u64::MAX),
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(handle)),
            _lock: lock,
        })
    }

    /// The log's logical length in bytes: the end of its last synced batch, where the next one
    /// goes. The file on disk is usually longer: the zeros preallocated after the log.
    pub fn log_len(&self) -> u64 {
        self.shared.log_len.load(Ordering::Acquire)
    }

    /// Stops the writer after the operations already queued; later operations fail with
    /// [`StoreError::Unavailable`].
    pub fn close(&self) {
        self.shared.closed.store(true, Ordering::Release);
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(w) = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = w.join();
        }
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Request,
    ) -> Result<T, StoreError> {
        self.shared.status()?;
        let (tx, rx) = oneshot::channel();
        if !self.send(make(tx)) {
            return Err(gone());
        }
        self.reply(rx).await?.unwrap_or_else(|_| Err(gone()))
    }

    /// The writer's answer, or [`StoreError::Timeout`] after [`LogOptions::op_timeout`].
    async fn reply<T>(&self, rx: oneshot::Receiver<T>) -> Result<Result<T, oneshot::error::RecvError>, StoreError> {
        tokio::time::timeout(self.op_timeout, rx)
            .await
            .map_err(|_| StoreError::Timeout(self.op_timeout))
    }

    fn send(&self, op: Request) -> bool {
        let envelope = Envelope {
            op,
            reply_to: idemgate_core::reply::ReplyQueue::current(),
            deadline_ms: self.shared.clock_ms().saturating_add(self.op_timeout_ms),
        };
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        tx.as_ref().is_some_and(|tx| tx.send(envelope).is_ok())
    }
}

impl Drop for LogStore {
    fn drop(&mut self) {
        self.close();
    }
}

impl Store for LogStore {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    fn claim(&self, req: ClaimRequest) -> BoxFuture<'_, Result<Claim, StoreError>> {
        Box::pin(async move {
            self.shared.status()?;
            // Fast path: a live completed record needs no write.
            if let Some(rec) = self.shared.get(&req.id, Some(req.now_ms))? {
                return Ok(decide_claim(Some(&rec), &req).0);
            }
            self.call(|tx| Request::Claim(req, tx)).await
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
            self.shared.status()?;
            let (tx, rx) = oneshot::channel();
            if !self.send(Request::Complete(id, token, response, expires_at_ms, tx)) {
                return Err(gone().into());
            }
            self.reply(rx).await?.unwrap_or_else(|_| Err(gone().into()))
        })
    }

    fn release(&self, id: RecordId, token: FencingToken) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(self.call(move |tx| Request::Release(id, token, tx)))
    }

    fn get(&self, id: RecordId) -> BoxFuture<'_, Result<Option<Record>, StoreError>> {
        Box::pin(async move {
            self.shared.status()?;
            self.shared.get(&id, None)
        })
    }

    fn delete(&self, id: RecordId) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(self.call(move |tx| Request::Delete(id, tx)))
    }

    fn purge_expired(&self, now_ms: u64, limit: usize) -> BoxFuture<'_, Result<Purged, StoreError>> {
        Box::pin(self.call(move |tx| Request::Purge(now_ms, limit, tx)))
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(std::future::ready(self.shared.health(self.op_timeout)))
    }

    fn check_secret(&self, check: [u8; 32]) -> BoxFuture<'_, Result<(), StoreError>> {
        let path = self.shared.dir.join(idemgate_core::SECRET_CHECK_FILE);
        Box::pin(std::future::ready(idemgate_core::check_secret_file(&path, check)))
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        // Every acknowledged write is already synced; closing drains what is queued.
        self.close();
        Box::pin(std::future::ready(Ok(())))
    }

    fn len_hint(&self) -> Option<u64> {
        Some(self.shared.index.len())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use idemgate_core::Fingerprint;

    use super::*;

    /// A switch that holds the writer before its next batch, as a hung disk would.
    #[derive(Default)]
    pub(crate) struct Stall {
        on: std::sync::Mutex<bool>,
        changed: std::sync::Condvar,
        /// Notified when the writer starts waiting (a permit is kept if nobody listens yet).
        entered: tokio::sync::Notify,
    }

    impl Stall {
        fn set(&self, on: bool) {
            *self.on.lock().unwrap() = on;
            self.changed.notify_all();
        }

        /// Called by the writer before each batch.
        pub(crate) fn wait_while_on(&self) {
            let mut on = self.on.lock().unwrap();
            if *on {
                self.entered.notify_one();
            }
            while *on {
                on = self.changed.wait(on).unwrap();
            }
        }

        /// Until the writer is held (bounded).
        async fn entered(&self) {
            tokio::time::timeout(Duration::from_secs(10), self.entered.notified())
                .await
                .expect("the writer reached the stall");
        }
    }

    #[tokio::test]
    async fn a_stalled_writer_times_callers_out_and_turns_ping_off_then_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let limit = Duration::from_millis(300);
        let options = LogOptions {
            op_timeout: limit,
            ..LogOptions::default()
        };
        let store = LogStore::open_with(dir.path(), options).unwrap();
        store.ping().await.unwrap();
        let claim = ClaimRequest {
            id: RecordId([7; 32]),
            fingerprint: Fingerprint([1; 32]),
            now_ms: idemgate_core::time::now_ms(),
            lease_ms: 60_000,
        };
        let bounded = |f| tokio::time::timeout(Duration::from_secs(10), f);
        store.shared.stall.set(true);
        let err = bounded(store.claim(claim))
            .await
            .expect("the caller's wait is bounded")
            .unwrap_err();
        assert!(matches!(err, StoreError::Timeout(d) if d == limit), "{err}");
        // The writer is held in the batch with that claim: readiness turns off once the batch
        // is older than the limit.
        store.shared.stall.entered().await;
        let since = store.shared.busy_since_ms.load(Ordering::Relaxed);
        assert_ne!(since, 0, "the writer is in a batch");
        let health = |now| store.shared.writer_health(limit, now);
        assert!(health(since + 300).is_ok(), "not yet past the limit");
        assert!(health(since + 301).unwrap_err().to_string().contains("stalled disk"));
        // A completion queued behind the stall is applied however late; first, a key to complete.
        let done = RecordId([8; 32]);
        let owned = ClaimRequest { id: done, ..claim };
        store.shared.stall.set(false);
        let Claim::Acquired { token, .. } = store.claim(owned).await.unwrap() else {
            panic!("a fresh key is acquired")
        };
        store.shared.stall.set(true);
        let response =
            StoredResponse::builder(http::StatusCode::CREATED, &http::HeaderMap::new(), |_| true, 0).finish();
        let expires = idemgate_core::time::now_ms() + 60_000;
        let err = store.complete(done, token, response, expires).await.unwrap_err();
        assert!(matches!(err, CompleteError::Store(StoreError::Timeout(_))), "{err}");
        store.shared.stall.entered().await;
        // The disk comes back: nothing is lost. The claim whose caller timed out was dropped,
        // not applied, so its key is free; the late completion was recorded.
        store.shared.stall.set(false);
        let again = store.claim(claim).await.unwrap();
        assert!(matches!(again, Claim::Acquired { .. }), "{again:?}");
        // That answer came after the held batch: the writer is no longer stuck.
        store.ping().await.unwrap();
        let completed = store.claim(owned).await.unwrap();
        assert!(matches!(completed, Claim::Completed { .. }), "{completed:?}");
        drop(store);
        let reopened = LogStore::open(dir.path()).unwrap();
        assert!(reopened.get(RecordId([7; 32])).await.unwrap().is_some(), "durable");
        assert!(matches!(
            reopened.get(done).await.unwrap(),
            Some(Record::Completed { .. })
        ));
        drop(reopened);
        let zero = LogOptions {
            op_timeout: Duration::ZERO,
            ..LogOptions::default()
        };
        let err = LogStore::open_with(dir.path(), zero).unwrap_err();
        assert!(
            matches!(err, OpenError::InvalidOption { name: "op_timeout", .. }),
            "{err}"
        );
    }
}
