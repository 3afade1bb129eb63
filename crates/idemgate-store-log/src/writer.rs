//! The writer thread: group commit, purge and compaction.
//!
//! The writer owns every change to the log and the index. For each batch of queued operations it
//! decides them in arrival order against the index plus an overlay of the batch's own changes,
//! appends all their entries with one positional write at the end of the log, `fdatasync`s once,
//! and only then publishes the overlay to the index and answers the callers. If the write fails
//! the batch fails and the file is truncated back; if the sync (or that truncation) fails the
//! store stops, since the page cache may no longer match the disk.
//!
//! After a batch, when the log is larger than `compact_min_bytes` and more than twice the bytes
//! of the entries the index points at, the writer compacts: it copies those entries into
//! `records.log.compact`, syncs it, renames it over `records.log`, syncs the directory, and swaps
//! the file and every offset under the file lock. A crash before the rename leaves the old log
//! (the temp file is removed at open), after it the new one.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::sync::{mpsc, Arc};

use idemgate_core::record::{decide_claim, decide_complete, decide_release};
use idemgate_core::{
    Claim, ClaimRequest, CompleteError, FencingToken, Purged, Record, RecordId, StoreError, StoredResponse,
};
use tokio::sync::oneshot;

use crate::format::{self, Op, HEADER_LEN, MAGIC};
use crate::index::Loc;
use crate::{LogError, LogOptions, Shared, COMPACT_FILE};

/// Most operations committed with one write and one fsync.
pub const MAX_BATCH: usize = 512;

/// Index records looked at per purge call, so a purge never holds the writer for long.
const PURGE_SCAN: usize = 4096;

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

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

/// One batch's changes before they are durable: entries to append and the records they set
/// (`None`: deleted).
struct Pending {
    overlay: HashMap<RecordId, Option<(Record, Loc)>>,
    buf: Vec<u8>,
    base: u64,
}

impl Pending {
    fn put(&mut self, id: RecordId, record: Record) -> Result<(), StoreError> {
        let offset = self.base + self.buf.len() as u64;
        let len = format::append_put(&mut self.buf, &id, &record.encode())
            .map_err(|t| StoreError::Backend(Box::new(LogError::TooLarge { len: t.0 })))?;
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
    /// Where the next entry goes: the end of the durable log.
    file_len: u64,
    /// Bytes of the entries the index points at.
    live_bytes: u64,
    options: LogOptions,
    purge_cursor: usize,
    /// No compaction before the log reaches this size (raised after a failed compaction).
    compact_floor: u64,
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
            live_bytes,
            compact_floor: options.compact_min_bytes,
            options,
            purge_cursor: 0,
        }
    }

    /// Serves batches until every sender is gone.
    pub(crate) fn run(mut self, rx: &mpsc::Receiver<Request>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while let Ok(first) = rx.recv() {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            self.batch(&mut batch);
            self.maybe_compact();
        }
    }

    fn batch(&mut self, ops: &mut Vec<Request>) {
        if self.shared.failure.get().is_some() {
            for op in ops.drain(..) {
                op.undecided().fail(|| self.shared.failed().unwrap_or_else(crate::gone));
            }
            return;
        }
        let mut pending = Pending {
            overlay: HashMap::new(),
            buf: Vec::new(),
            base: self.file_len,
        };
        let done: Vec<Done> = ops.drain(..).map(|op| self.decide(&mut pending, op)).collect();
        if !pending.buf.is_empty() {
            if let Err(e) = self.append(&pending.buf) {
                tracing::error!(error = %e, "embedded store write failed; {} operations failed", done.len());
                for d in done {
                    d.fail(|| StoreError::Backend(Box::new(e.clone())));
                }
                return;
            }
        }
        self.publish(pending.overlay);
        for d in done {
            d.send();
        }
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

    /// Appends `buf` at the end of the log and syncs it.
    fn append(&mut self, buf: &[u8]) -> Result<(), LogError> {
        let path = &self.shared.path;
        if let Err(e) = self.file.write_all_at(buf, self.file_len) {
            let err = LogError::io("append a batch to", path, e);
            // Cut the partial batch off, so the next one continues after the last good entry.
            if let Err(e2) = self.file.set_len(self.file_len).and_then(|()| self.file.sync_data()) {
                self.shared
                    .fail(format!("{err}, and truncating the partial write away failed: {e2}"));
            }
            return Err(err);
        }
        if let Err(e) = self.file.sync_data() {
            let err = LogError::io("fsync", path, e);
            // After a failed fsync the kernel may have dropped the dirty pages: what a read
            // returns can differ from the disk, so nothing more may be written or served.
            self.shared.fail(err.to_string());
            return Err(err);
        }
        self.file_len += buf.len() as u64;
        Ok(())
    }

    /// Makes the batch's durable changes visible.
    fn publish(&mut self, overlay: HashMap<RecordId, Option<(Record, Loc)>>) {
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
        let (file, len, moved) = match renamed {
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
            *current = file.clone();
        }
        self.file = file;
        self.file_len = len;
        self.live_bytes = len - HEADER_LEN;
        self.compact_floor = self.options.compact_min_bytes;
        if let Err(e) = synced {
            let err = LogError::io("fsync the directory of", &self.shared.path, e);
            self.shared
                .fail(format!("{err} after compacting: the rename may not survive a crash"));
            return Err(err);
        }
        Ok(())
    }

    /// Copies every live entry into a synced file at `tmp_path`: the file, its length, and each
    /// record's new offset.
    #[allow(clippy::type_complexity)]
    fn write_compacted(&self, tmp_path: &std::path::Path) -> Result<(File, u64, Vec<(RecordId, u64)>), LogError> {
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
        let mut out = BufWriter::with_capacity(1 << 20, &tmp);
        out.write_all(MAGIC).map_err(err("write"))?;
        let mut pos = HEADER_LEN;
        let mut buf = Vec::new();
        for (id, loc) in entries {
            buf.resize(loc.len as usize, 0);
            self.file
                .read_exact_at(&mut buf, loc.offset)
                .map_err(|e| LogError::io("read an entry of", &self.shared.path, e))?;
            // Never carry damage over into the new log: it would look like a torn write there.
            match format::check(&buf) {
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
            out.write_all(&buf).map_err(err("write"))?;
            moved.push((id, pos));
            pos += u64::from(loc.len);
        }
        out.flush().map_err(err("write"))?;
        drop(out);
        tmp.sync_all().map_err(err("fsync"))?;
        Ok((tmp, pos, moved))
    }
}
