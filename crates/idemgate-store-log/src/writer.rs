//! The writer thread: group commit, purge and compaction.
//!
//! The writer owns every change to the log and the index. For each batch of queued operations it
//! decides them in arrival order against the index plus an overlay of the batch's own changes,
//! appends all their entries as one batch frame (see `format.rs`) with one positional write at
//! the end of the log that is durable when it returns (`pwritev2` with `RWF_DSYNC`; `pwrite` +
//! `fdatasync` where the kernel lacks the flag), and only then publishes the overlay to the index
//! and answers the callers. If a plain write fails the batch fails and the file is truncated back;
//! if the sync, a synced write (either half may have failed) or that truncation fails the store
//! stops, since the page cache may no longer match the disk. (A batch whose entries pass
//! [`BATCH_SPLIT_BYTES`] is committed in several frames, each synced before the next is written,
//! so a frame's body always fits its `u32` length.)
//!
//! **Preallocation.** Appending to a growing file makes every `fdatasync` journal the size change;
//! overwriting space that was already written with zeros and synced does not, and costs about
//! half as much. So the writer keeps `alloc_end`, the end of the zero-filled space, besides
//! `file_len`, the end of the log. Before a batch would pass `alloc_end` it writes zeros from
//! `alloc_end` to the batch's end plus [`LogOptions::prealloc_bytes`] and `fsync`s them once (the
//! size change), then writes and `fdatasync`s the batch as usual. A failure while preallocating
//! fails the batch like a failed write. The scan at open reads the zeros as the end of the log,
//! and open truncates them away.
//!
//! After a batch, when the log is larger than `compact_min_bytes` and more than twice the bytes
//! of the entries the index points at, the writer compacts: it copies those entries into
//! `records.log.compact`, syncs it, renames it over `records.log`, syncs the directory, and swaps
//! the file and every offset under the file lock. A crash before the rename leaves the old log
//! (the temp file is removed at open), after it the new one.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};

use idemgate_core::record::{decide_claim, decide_complete, decide_release};
use idemgate_core::reply::{Delivery, ReplyQueue};
use idemgate_core::{
    Claim, ClaimRequest, CompleteError, FencingToken, Purged, Record, RecordId, StoreError, StoredResponse,
};
use tokio::sync::oneshot;

use crate::format::{self, Op, BATCH_HEAD, COMPACT_BATCH_BYTES, HEADER_LEN, MAGIC};
use crate::index::{IdMap, Loc, PurgeCursor};
use crate::{LogError, LogOptions, Shared, COMPACT_FILE};

/// Most operations committed with one write and one fsync.
pub const MAX_BATCH: usize = 512;

/// Index records looked at per purge call, so a purge never holds the writer for long.
const PURGE_SCAN: usize = 4096;

/// Once a batch's entries reach this many bytes, the operations decided so far are committed
/// before the next one is decided (the rest of the batch goes into a new frame).
const BATCH_SPLIT_BYTES: usize = 64 << 20;

/// `EOPNOTSUPP` or `ENOSYS`: `pwritev2` or its `RWF_DSYNC` flag unknown to the kernel (nothing
/// was written).
fn dsync_unsupported(e: &std::io::Error) -> bool {
    let unsupported = [rustix::io::Errno::OPNOTSUPP, rustix::io::Errno::NOSYS];
    unsupported.iter().any(|u| e.raw_os_error() == Some(u.raw_os_error()))
}

/// Writes all of `buf` at `at` with `RWF_DSYNC`: each call returns once its bytes are durable,
/// as if followed by `fdatasync`.
fn write_all_dsync(file: &File, mut buf: &[u8], mut at: u64) -> std::io::Result<()> {
    while !buf.is_empty() {
        match rustix::io::pwritev2(
            file,
            &[std::io::IoSlice::new(buf)],
            at,
            rustix::io::ReadWriteFlags::DSYNC,
        ) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                buf = &buf[n..];
                at += n as u64;
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// What preallocation writes from.
static ZEROS: [u8; 1 << 20] = [0; 1 << 20];

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// An operation and, when the caller's thread has one, the queue its reply goes through (see
/// `idemgate_core::reply`: one wake-up per batch and thread instead of one per operation).
pub(crate) struct Envelope {
    pub(crate) op: Request,
    pub(crate) reply_to: Option<Arc<ReplyQueue>>,
    /// When the caller stops waiting (`Shared::clock_ms`).
    pub(crate) deadline_ms: u64,
}

/// An operation for the writer.
pub(crate) enum Request {
    Claim(ClaimRequest, Reply<Claim>),
    Complete(
        RecordId,
        FencingToken,
        StoredResponse,
        u64,
        oneshot::Sender<Result<(), CompleteError>>,
    ),
    Release(RecordId, FencingToken, Reply<bool>),
    Delete(RecordId, Reply<bool>),
    Purge(u64, usize, Reply<Purged>),
}

/// An operation's outcome, sent once its batch is durable.
enum Done {
    Claim(Reply<Claim>, Result<Claim, StoreError>),
    Complete(oneshot::Sender<Result<(), CompleteError>>, Result<(), CompleteError>),
    Bool(Reply<bool>, Result<bool, StoreError>),
    Purged(Reply<Purged>, Result<Purged, StoreError>),
}

impl Done {
    fn send(self) {
        match self {
            Done::Claim(tx, r) => drop(tx.send(r)),
            Done::Complete(tx, r) => drop(tx.send(r)),
            Done::Bool(tx, r) => drop(tx.send(r)),
            Done::Purged(tx, r) => drop(tx.send(r)),
        }
    }

    /// Answers with `err()` instead of the decided outcome.
    fn fail(self, err: impl Fn() -> StoreError) {
        match self {
            Done::Claim(tx, _) => drop(tx.send(Err(err()))),
            Done::Complete(tx, _) => drop(tx.send(Err(err().into()))),
            Done::Bool(tx, _) => drop(tx.send(Err(err()))),
            Done::Purged(tx, _) => drop(tx.send(Err(err()))),
        }
    }
}

impl Request {
    /// Whether a late operation is dropped rather than applied: a completion or release only
    /// settles a key, so it is applied however late.
    fn may_lapse(&self) -> bool {
        matches!(self, Request::Claim(..) | Request::Delete(..) | Request::Purge(..))
    }

    /// The request answered with a placeholder, for [`Done::fail`].
    fn undecided(self) -> Done {
        match self {
            Request::Claim(_, tx) => Done::Claim(tx, Err(crate::gone())),
            Request::Complete(_, _, _, _, tx) => Done::Complete(tx, Err(crate::gone().into())),
            Request::Release(_, _, tx) | Request::Delete(_, tx) => Done::Bool(tx, Err(crate::gone())),
            Request::Purge(_, _, tx) => Done::Purged(tx, Err(crate::gone())),
        }
    }
}

/// Sends a batch's outcomes: directly to callers without a reply queue, and to each caller
/// thread's queue as one delivery (one wake-up) per thread.
fn answer(done: Vec<(Done, Option<Arc<ReplyQueue>>)>) {
    let mut queues: Vec<(Arc<ReplyQueue>, Vec<Delivery>)> = Vec::new();
    for (d, reply_to) in done {
        let Some(q) = reply_to else {
            d.send();
            continue;
        };
        let delivery: Delivery = Box::new(move || d.send());
        match queues.iter_mut().find(|(known, _)| Arc::ptr_eq(known, &q)) {
            Some((_, batch)) => batch.push(delivery),
            None => queues.push((q, vec![delivery])),
        }
    }
    for (q, batch) in queues {
        q.deliver(batch);
    }
}

/// One batch's changes before they are durable: entries to append and the records they set
/// (`None`: deleted).
struct Pending {
    overlay: IdMap<Option<(Record, Loc)>>,
    buf: Vec<u8>,
    base: u64,
}

impl Pending {
    /// An empty batch that will start at `base`.
    fn new(base: u64) -> Self {
        let mut buf = Vec::new();
        format::begin_batch(&mut buf);
        Self {
            overlay: IdMap::default(),
            buf,
            base,
        }
    }

    /// Bytes of the entries so far.
    fn body_len(&self) -> usize {
        self.buf.len() - BATCH_HEAD
    }

    fn put(&mut self, id: RecordId, record: Record) -> Result<(), StoreError> {
        let too_large = |len| StoreError::Backend(Box::new(LogError::TooLarge { len }));
        let encoded = record.encode();
        // The batch's body must fit its u32 length (checked before the entry is appended).
        if self.body_len().saturating_add(format::put_len(encoded.len())) > u32::MAX as usize {
            return Err(too_large(encoded.len()));
        }
        // Offsets point at the entry, inside the batch: the buffer starts with the batch header.
        let offset = self.base + self.buf.len() as u64;
        let len = format::append_put(&mut self.buf, &id, &encoded).map_err(|t| too_large(t.0))?;
        self.overlay.insert(id, Some((record, Loc { offset, len })));
        Ok(())
    }

    fn del(&mut self, id: RecordId) {
        format::append_del(&mut self.buf, &id);
        self.overlay.insert(id, None);
    }
}

/// The writer thread's state.
pub(crate) struct Writer {
    shared: Arc<Shared>,
    /// The current log (the same file as `shared.file`; only this thread swaps it).
    file: Arc<File>,
    /// Where the next batch goes: the end of the durable log (its logical length).
    file_len: u64,
    /// The end of the file: zeros from `file_len` on, written and synced ahead of the log.
    alloc_end: u64,
    /// Bytes of the entries the index points at.
    live_bytes: u64,
    options: LogOptions,
    purge_cursor: PurgeCursor,
    /// No compaction before the log reaches this size (raised after a failed compaction).
    compact_floor: u64,
    /// Whether batches are written with `pwritev2(RWF_DSYNC)` (a write and its flush in one
    /// call) rather than `pwrite` + `fdatasync`; cleared if the kernel refuses the flag.
    dsync_writes: bool,
}

impl Writer {
    pub(crate) fn new(
        shared: Arc<Shared>,
        file: Arc<File>,
        file_len: u64,
        live_bytes: u64,
        options: LogOptions,
    ) -> Self {
        Self {
            shared,
            file,
            file_len,
            alloc_end: file_len,
            live_bytes,
            compact_floor: options.compact_min_bytes,
            dsync_writes: true,
            options,
            purge_cursor: PurgeCursor::default(),
        }
    }

    /// Serves batches until every sender is gone.
    pub(crate) fn run(mut self, rx: &mpsc::Receiver<Envelope>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while let Ok(first) = rx.recv() {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            let since = self.shared.clock_ms();
            self.shared.busy_since_ms.store(since, Ordering::Relaxed);
            #[cfg(test)]
            self.shared.stall.wait_while_on();
            self.batch(&mut batch);
            self.maybe_compact();
            self.shared.busy_since_ms.store(0, Ordering::Relaxed);
        }
    }

    fn batch(&mut self, ops: &mut Vec<Envelope>) {
        if self.shared.failure.get().is_some() {
            for op in ops.drain(..) {
                op.op
                    .undecided()
                    .fail(|| self.shared.failed().unwrap_or_else(crate::gone));
            }
            return;
        }
        let mut pending = Pending::new(self.file_len);
        let mut done = Vec::with_capacity(ops.len());
        let now_ms = self.shared.clock_ms();
        for op in ops.drain(..) {
            // At its deadline the caller is timing out: it gets this same Timeout either way.
            if op.deadline_ms <= now_ms && op.op.may_lapse() {
                // Its caller has given up with a timeout: a claim applied now would lock a key
                // whose request was already refused (a delete or purge would surprise as much).
                let timeout = self.options.op_timeout;
                op.op.undecided().fail(|| StoreError::Timeout(timeout));
                continue;
            }
            if pending.body_len() >= BATCH_SPLIT_BYTES {
                let full = std::mem::replace(&mut pending, Pending::new(0));
                self.commit(full, std::mem::take(&mut done));
                pending = Pending::new(self.file_len);
            }
            done.push((self.decide(&mut pending, op.op), op.reply_to));
        }
        self.commit(pending, done);
    }

    /// Writes the batch's entries as one frame, syncs them, then publishes and answers.
    fn commit(&mut self, mut pending: Pending, done: Vec<(Done, Option<Arc<ReplyQueue>>)>) {
        if self.shared.failure.get().is_some() {
            for (d, _) in done {
                d.fail(|| self.shared.failed().unwrap_or_else(crate::gone));
            }
            return;
        }
        if pending.body_len() > 0 {
            let written = format::seal_batch(&mut pending.buf)
                .map_err(|t| LogError::TooLarge { len: t.0 })
                .and_then(|()| self.append(&pending.buf));
            if let Err(e) = written {
                tracing::error!(error = %e, "embedded store write failed; {} operations failed", done.len());
                for (d, _) in done {
                    d.fail(|| StoreError::Backend(Box::new(e.clone())));
                }
                return;
            }
        }
        self.publish(pending.overlay);
        answer(done);
    }

    /// The record as the batch so far leaves it.
    fn load(&self, p: &Pending, id: &RecordId) -> Result<Option<Record>, StoreError> {
        if let Some(o) = p.overlay.get(id) {
            return Ok(o.as_ref().map(|(r, _)| r.clone()));
        }
        match self.shared.index.get(id) {
            // Only this thread swaps the file, so no lock is needed to read it here.
            Some(view) => self.shared.materialize(&self.file, id, view).map(Some),
            None => Ok(None),
        }
    }

    fn deadline(&self, p: &Pending, id: &RecordId) -> Option<u64> {
        match p.overlay.get(id) {
            Some(o) => o.as_ref().map(|(r, _)| r.deadline_ms()),
            None => self.shared.index.get(id).map(|v| v.deadline_ms()),
        }
    }

    fn decide(&mut self, p: &mut Pending, op: Request) -> Done {
        match op {
            Request::Claim(req, tx) => {
                let r = (|| {
                    let existing = self.load(p, &req.id)?;
                    let (claim, write) = decide_claim(existing.as_ref(), &req);
                    if let Some(rec) = write {
                        p.put(req.id, rec)?;
                    }
                    Ok(claim)
                })();
                Done::Claim(tx, r)
            }
            Request::Complete(id, token, response, expires_at_ms, tx) => {
                let r = (|| {
                    let existing = self.load(p, &id)?;
                    let rec = decide_complete(existing.as_ref(), token, response, expires_at_ms)
                        .map_err(|()| CompleteError::Fenced)?;
                    p.put(id, rec)?;
                    Ok(())
                })();
                Done::Complete(tx, r)
            }
            Request::Release(id, token, tx) => {
                let r = self.load(p, &id).map(|existing| {
                    let release = decide_release(existing.as_ref(), token);
                    if release {
                        p.del(id);
                    }
                    release
                });
                Done::Bool(tx, r)
            }
            Request::Delete(id, tx) => {
                let exists = self.deadline(p, &id).is_some();
                if exists {
                    p.del(id);
                }
                Done::Bool(tx, Ok(exists))
            }
            Request::Purge(now_ms, limit, tx) => {
                let (candidates, more) = self
                    .shared
                    .index
                    .expired(now_ms, limit, PURGE_SCAN, &mut self.purge_cursor);
                let mut removed = 0;
                for id in candidates {
                    // Earlier operations of this batch may have replaced the record.
                    if self.deadline(p, &id).is_some_and(|d| d <= now_ms) {
                        p.del(id);
                        removed += 1;
                    }
                }
                Done::Purged(tx, Ok(Purged { removed, more }))
            }
        }
    }

    /// Appends the sealed batch `buf` at the end of the log and syncs it.
    fn append(&mut self, buf: &[u8]) -> Result<(), LogError> {
        let end = self.file_len + buf.len() as u64;
        if let Err(err) = self.preallocate(end) {
            return Err(self.cut_back(err));
        }
        if self.dsync_writes {
            match write_all_dsync(&self.file, buf, self.file_len) {
                Ok(()) => {
                    self.set_file_len(end);
                    return Ok(());
                }
                Err(e) if dsync_unsupported(&e) => {
                    // Nothing was written: use a plain write and `fdatasync` from now on.
                    tracing::debug!("pwritev2(RWF_DSYNC) is not supported here; using write + fdatasync");
                    self.dsync_writes = false;
                }
                Err(e) => {
                    // Written and flushed in one call: whether the data reached the disk is
                    // unknown, as after a failed fsync.
                    let err = LogError::io("append and sync a batch to", &self.shared.path, e);
                    self.shared.fail(err.to_string());
                    return Err(err);
                }
            }
        }
        if let Err(e) = self.file.write_all_at(buf, self.file_len) {
            return Err(self.cut_back(LogError::io("append a batch to", &self.shared.path, e)));
        }
        if let Err(e) = self.file.sync_data() {
            let err = LogError::io("fsync", &self.shared.path, e);
            // After a failed fsync the kernel may have dropped the dirty pages: what a read
            // returns can differ from the disk, so nothing more may be written or served.
            self.shared.fail(err.to_string());
            return Err(err);
        }
        self.set_file_len(end);
        Ok(())
    }

    /// Cuts a partial batch (and any preallocation) off after a failed write, so the next batch
    /// continues after the last good one; returns `err`.
    fn cut_back(&mut self, err: LogError) -> LogError {
        self.alloc_end = self.file_len;
        if let Err(e2) = self.file.set_len(self.file_len).and_then(|()| self.file.sync_all()) {
            self.shared
                .fail(format!("{err}, and truncating the partial write away failed: {e2}"));
        }
        err
    }

    /// Makes sure the file is zero-filled (and its size synced) up to at least `end`, growing it
    /// by `prealloc_bytes` beyond `end` when it must grow.
    fn preallocate(&mut self, end: u64) -> Result<(), LogError> {
        let step = self.options.prealloc_bytes;
        if end <= self.alloc_end || step == 0 {
            return Ok(());
        }
        let path = &self.shared.path;
        let target = end.max(self.alloc_end).saturating_add(step);
        let mut at = self.alloc_end;
        while at < target {
            let n = (target - at).min(ZEROS.len() as u64) as usize;
            self.file
                .write_all_at(&ZEROS[..n], at)
                .map_err(|e| LogError::io("preallocate space in", path, e))?;
            at += n as u64;
        }
        self.file
            .sync_all()
            .map_err(|e| LogError::io("fsync the preallocated space of", path, e))?;
        self.alloc_end = target;
        Ok(())
    }

    fn set_file_len(&mut self, len: u64) {
        self.file_len = len;
        self.shared.log_len.store(len, Ordering::Release);
    }

    /// Makes the batch's durable changes visible.
    fn publish(&mut self, overlay: IdMap<Option<(Record, Loc)>>) {
        for (id, change) in overlay {
            let old = match change {
                Some((record, loc)) => {
                    self.live_bytes += u64::from(loc.len);
                    self.shared.index.insert(id, &record, loc)
                }
                None => self.shared.index.remove(&id),
            };
            if let Some(old) = old {
                self.live_bytes = self.live_bytes.saturating_sub(u64::from(old.loc().len));
            }
        }
    }

    fn maybe_compact(&mut self) {
        let live = HEADER_LEN + self.live_bytes;
        if self.file_len <= self.compact_floor || self.file_len <= live.saturating_mul(2) {
            return;
        }
        if self.shared.failure.get().is_some() {
            return;
        }
        let before = self.file_len;
        match self.compact() {
            Ok(()) => tracing::info!(
                path = %self.shared.path.display(),
                before_bytes = before,
                after_bytes = self.file_len,
                "compacted the record log"
            ),
            Err(e) => {
                // Try again once the log has grown by another `compact_min_bytes`.
                self.compact_floor = self.file_len.saturating_add(self.options.compact_min_bytes);
                tracing::warn!(error = %e, "record log compaction failed; the log keeps growing");
            }
        }
    }

    /// Rewrites the live entries into a new log and swaps it in.
    fn compact(&mut self) -> Result<(), LogError> {
        let dir = &self.shared.dir;
        let tmp_path = dir.join(COMPACT_FILE);
        let written = self.write_compacted(&tmp_path);
        let renamed = written.and_then(|w| {
            std::fs::rename(&tmp_path, &self.shared.path)
                .map(|()| w)
                .map_err(|e| LogError::io("rename the compacted log over", &self.shared.path, e))
        });
        let (file, len, live, moved) = match renamed {
            Ok(w) => w,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp_path);
                return Err(e);
            }
        };
        // The new file is the log from here on, whatever happens next: appending to the old,
        // unlinked one would lose writes.
        let synced = File::open(dir).and_then(|d| d.sync_all());
        let file = Arc::new(file);
        {
            let mut current = self.shared.file.write().unwrap_or_else(|p| p.into_inner());
            self.shared.index.relocate(&moved);
            self.shared.hot.clear();
            *current = file.clone();
        }
        self.file = file;
        self.set_file_len(len);
        self.alloc_end = len;
        self.live_bytes = live;
        self.compact_floor = self.options.compact_min_bytes;
        if let Err(e) = synced {
            let err = LogError::io("fsync the directory of", &self.shared.path, e);
            self.shared
                .fail(format!("{err} after compacting: the rename may not survive a crash"));
            return Err(err);
        }
        Ok(())
    }

    /// Copies every live entry into a synced file at `tmp_path`, in batches of up to
    /// [`COMPACT_BATCH_BYTES`]: the file, its length, the bytes of its entries, and each record's
    /// new offset.
    #[allow(clippy::type_complexity)]
    fn write_compacted(&self, tmp_path: &std::path::Path) -> Result<(File, u64, u64, Vec<(RecordId, u64)>), LogError> {
        let err = |action| move |e| LogError::io(action, tmp_path, e);
        let tmp = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(tmp_path)
            .map_err(err("create"))?;
        let entries = self.shared.index.locations();
        let mut moved = Vec::with_capacity(entries.len());
        let mut out = &tmp;
        out.write_all(MAGIC).map_err(err("write"))?;
        // Where the batch being filled starts.
        let mut pos = HEADER_LEN;
        let mut live = 0u64;
        let mut batch = Vec::new();
        format::begin_batch(&mut batch);
        let mut flush = |batch: &mut Vec<u8>, pos: &mut u64| -> Result<(), LogError> {
            format::seal_batch(batch).map_err(|t| LogError::TooLarge { len: t.0 })?;
            out.write_all(batch).map_err(err("write"))?;
            *pos += batch.len() as u64;
            batch.clear();
            format::begin_batch(batch);
            Ok(())
        };
        for (id, loc) in entries {
            let len = loc.len as usize;
            if batch.len() > BATCH_HEAD && batch.len() - BATCH_HEAD + len > COMPACT_BATCH_BYTES {
                flush(&mut batch, &mut pos)?;
            }
            let start = batch.len();
            batch.resize(start + len, 0);
            self.file
                .read_exact_at(&mut batch[start..], loc.offset)
                .map_err(|e| LogError::io("read an entry of", &self.shared.path, e))?;
            // Never carry damage over into the new log: it would be refused there.
            match format::check(&batch[start..]) {
                Ok((Op::Put, got)) if got == id => {}
                _ => {
                    return Err(LogError::io(
                        "compact",
                        &self.shared.path,
                        std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            format!("the entry at offset {} does not verify", loc.offset),
                        ),
                    ))
                }
            }
            moved.push((id, pos + start as u64));
            live += u64::from(loc.len);
        }
        if batch.len() > BATCH_HEAD {
            flush(&mut batch, &mut pos)?;
        }
        tmp.sync_all().map_err(err("fsync"))?;
        Ok((tmp, pos, live, moved))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn a_synced_write_lands_at_its_offset_and_leaves_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        file.write_all_at(&[7; 64], 0).unwrap();
        match write_all_dsync(&file, b"batch", 16) {
            Ok(()) => {}
            // A kernel without the flag: the writer falls back to pwrite + fdatasync.
            Err(e) if dsync_unsupported(&e) => return,
            Err(e) => panic!("{e}"),
        }
        let mut back = Vec::new();
        File::open(&path).unwrap().read_to_end(&mut back).unwrap();
        let mut want = vec![7; 64];
        want[16..21].copy_from_slice(b"batch");
        assert_eq!(back, want);
    }
}
