//! The log file format: batch framing, entry encoding, and the recovery scan that tells a torn
//! tail from corruption.
//!
//! `records.log` starts with the 8-byte [`MAGIC`] (`IDEMLOG2`), then a sequence of batches, one
//! per group commit (compaction writes the live entries as batches of up to
//! [`COMPACT_BATCH_BYTES`]):
//!
//! ```text
//! batch   = [u32 LE body len][u32 LE crc32 of body][body]
//! body    = entry*
//! entry   = [u32 LE payload len][u32 LE crc32 of payload][payload]
//! payload = [u8 op][32-byte record id][Record::encode() bytes, PUT only]
//! ```
//!
//! Each entry keeps its own checksum because a replay reads one entry back by its offset (the
//! index points at entries, inside their batch) and verifies it alone. Format version 1
//! (`IDEMLOG1`: entries without batch frames) was never written outside tests; a file that starts
//! with it is refused as not a log.
//!
//! After the last batch the file may go on with zeros: the writer preallocates the file in
//! zero-filled steps (overwriting already-allocated, synced space makes each group commit's
//! `fdatasync` cheaper than growing the file every time). A batch header of all zeros (body length
//! 0, which the writer never writes) is therefore the clean end of the log.
//!
//! # Recovery
//!
//! The writer writes batch N+1 only after batch N's `fdatasync` returned. A crash can damage only
//! the batch being written, but in any way: the kernel writes its pages back in no particular
//! order, so any subset of them may be on disk, leaving a hole of zeros (or stale bytes) in the
//! middle of the batch with valid entries of the same batch after it. The scan therefore checks
//! whole batches, at each batch position:
//!
//! - fewer than 8 bytes left: the end of the log (a torn write if any of them is not zero);
//! - a header of zeros: the clean end of the log (a torn write if any later byte is not zero);
//! - a body that runs past the end of the file: a torn write;
//! - a batch checksum mismatch: a torn write, *unless* a complete batch with a valid checksum, a
//!   non-zero length and a body of valid entries starts right after this one: that batch was
//!   written after this one was synced, so the damage is to acknowledged data and the scan reports
//!   corruption. (A header across a page boundary can lose only its length: the "next batch" is
//!   then this batch's own first entry, framed like a batch; its payload is not entries, so the
//!   batch reads as torn);
//! - a valid batch checksum: every entry in the body must verify and the entries must fill the
//!   body exactly, else the scan reports corruption (a checksummed batch cannot be torn).
//!
//! Known limit: a damaged body length in the header of a batch before the last one cannot be told
//! from a torn tail (where the next batch starts is unknown), so the batches after it are dropped
//! as a torn write.

use std::io::{self, Read};

use bytes::Bytes;
use idemgate_core::RecordId;

/// The first bytes of every log file (format version 2: batch frames).
pub(crate) const MAGIC: &[u8; 8] = b"IDEMLOG2";

/// Bytes before the first batch.
pub(crate) const HEADER_LEN: u64 = MAGIC.len() as u64;

/// Bytes of a batch's length + checksum header.
pub(crate) const BATCH_HEAD: usize = 8;

/// Bytes of an entry's length + checksum prefix.
pub(crate) const ENTRY_HEAD: usize = 8;

/// Compaction starts a new batch before a body would grow past this (a single larger entry gets
/// a batch of its own).
pub(crate) const COMPACT_BATCH_BYTES: usize = 8 << 20;

/// Bytes of the op + id that start every payload.
const KEY_LEN: usize = 1 + 32;

/// Entry ops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    /// The record for the id is the payload's record bytes.
    Put,
    /// The id has no record.
    Del,
}

const OP_PUT: u8 = 1;
const OP_DEL: u8 = 2;

/// A payload too large for the format's `u32` length.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TooLarge(pub(crate) usize);

/// Appends a PUT entry for `id` with the encoded record; returns the entry's length in bytes.
pub(crate) fn append_put(buf: &mut Vec<u8>, id: &RecordId, record: &[u8]) -> Result<u32, TooLarge> {
    append(buf, OP_PUT, id, record)
}

/// Appends a DEL entry for `id`; returns the entry's length in bytes.
pub(crate) fn append_del(buf: &mut Vec<u8>, id: &RecordId) -> u32 {
    // 33 bytes of payload always fit.
    append(buf, OP_DEL, id, &[]).unwrap_or(0)
}

fn append(buf: &mut Vec<u8>, op: u8, id: &RecordId, record: &[u8]) -> Result<u32, TooLarge> {
    let payload_len = KEY_LEN + record.len();
    let total = ENTRY_HEAD + payload_len;
    let (Ok(len32), Ok(total32)) = (u32::try_from(payload_len), u32::try_from(total)) else {
        return Err(TooLarge(payload_len));
    };
    let mut crc = crc32fast::Hasher::new();
    crc.update(&[op]);
    crc.update(&id.0);
    crc.update(record);
    buf.reserve(total);
    buf.extend_from_slice(&len32.to_le_bytes());
    buf.extend_from_slice(&crc.finalize().to_le_bytes());
    buf.push(op);
    buf.extend_from_slice(&id.0);
    buf.extend_from_slice(record);
    Ok(total32)
}

/// Starts a batch in `buf`: a placeholder header that [`seal_batch`] fills in.
pub(crate) fn begin_batch(buf: &mut Vec<u8>) {
    buf.extend_from_slice(&[0; BATCH_HEAD]);
}

/// Fills in the header of the batch `batch` (started with [`begin_batch`], its entries appended
/// after the header) with the body's length and checksum.
pub(crate) fn seal_batch(batch: &mut [u8]) -> Result<(), TooLarge> {
    let (head, body) = batch.split_at_mut(BATCH_HEAD);
    let len = u32::try_from(body.len()).map_err(|_| TooLarge(body.len()))?;
    head[..4].copy_from_slice(&len.to_le_bytes());
    head[4..].copy_from_slice(&crc32fast::hash(body).to_le_bytes());
    Ok(())
}

/// The length of the entry [`append_put`] writes for a record of `record_len` bytes.
pub(crate) fn put_len(record_len: usize) -> usize {
    ENTRY_HEAD + KEY_LEN + record_len
}

/// One verified entry.
#[derive(Debug)]
pub(crate) struct Entry {
    /// Where the entry starts in the file.
    pub(crate) offset: u64,
    /// The entry's length, prefix included.
    pub(crate) len: u32,
    /// PUT or DEL.
    pub(crate) op: Op,
    /// The record id.
    pub(crate) id: RecordId,
    /// The encoded record (empty for DEL).
    pub(crate) record: Bytes,
}

/// Why an entry is not usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bad {
    /// The length prefix is impossible (shorter than op + id).
    Length,
    /// The payload does not match its checksum.
    Checksum,
    /// The checksum holds but the op is unknown, or a DEL carries a record.
    Op,
}

impl Bad {
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Bad::Length => "impossible entry length",
            Bad::Checksum => "entry checksum mismatch",
            Bad::Op => "unknown entry kind",
        }
    }
}

/// Verifies one whole entry (prefix + payload) read back from the file: its op and id.
pub(crate) fn check(data: &[u8]) -> Result<(Op, RecordId), Bad> {
    if data.len() < ENTRY_HEAD + KEY_LEN || u32::try_from(data.len()).is_err() {
        return Err(Bad::Length);
    }
    let len = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
    let crc = u32::from_le_bytes([data[4], data[5], data[6], data[7]]);
    if len as usize != data.len() - ENTRY_HEAD {
        return Err(Bad::Length);
    }
    let payload = &data[ENTRY_HEAD..];
    if crc32fast::hash(payload) != crc {
        return Err(Bad::Checksum);
    }
    let op = match payload[0] {
        OP_PUT => Op::Put,
        OP_DEL if payload.len() == KEY_LEN => Op::Del,
        _ => return Err(Bad::Op),
    };
    let mut id = [0u8; 32];
    id.copy_from_slice(&payload[1..KEY_LEN]);
    Ok((op, RecordId(id)))
}

/// Parses one whole entry read back from `offset`; the record bytes share `data`'s buffer.
pub(crate) fn parse_entry(offset: u64, data: Bytes) -> Result<Entry, Bad> {
    let (op, id) = check(&data)?;
    Ok(Entry {
        offset,
        len: data.len() as u32,
        op,
        id,
        record: data.slice(ENTRY_HEAD + KEY_LEN..),
    })
}

/// How the scanned log ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tail {
    /// Where the valid batches end: the log's logical length (0 for an empty file or a torn
    /// magic).
    pub(crate) valid_len: u64,
    /// Bytes after `valid_len` were dropped because of damage (a torn write), not only because
    /// they are zeros (preallocated space).
    pub(crate) torn: bool,
}

/// The scan could not finish.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ScanError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("not an idemgate log (bad magic)")]
    BadMagic,
    #[error("{reason} at offset {offset}")]
    Corrupt { offset: u64, reason: &'static str },
}

/// Bytes read at a time where the scan only checksums or checks for zeros.
const CHUNK: usize = 64 * 1024;

fn read_u32s(head: &[u8; 8]) -> (u32, u32) {
    (
        u32::from_le_bytes([head[0], head[1], head[2], head[3]]),
        u32::from_le_bytes([head[4], head[5], head[6], head[7]]),
    )
}

/// Whether the next `n` bytes of `r` are all zero (stops reading at the first that is not).
fn all_zero<R: Read>(r: &mut R, mut n: u64) -> io::Result<bool> {
    let mut buf = vec![0u8; CHUNK.min(n as usize)];
    while n > 0 {
        let take = CHUNK.min(n as usize);
        r.read_exact(&mut buf[..take])?;
        if buf[..take].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        n -= take as u64;
    }
    Ok(true)
}

/// Whether the next `remaining` bytes of `r` start with a complete batch of non-zero length whose
/// checksum holds and whose body is whole entries, each with a valid checksum. The entries
/// matter: an entry is framed like a batch (`[len][crc][payload]`), so when a torn batch's header
/// lost its length (a header across a page boundary whose first page never reached the disk),
/// the scan looks for the next batch at the torn batch's own first entry, whose frame holds; its
/// payload (`[op][record id]…`) does not parse as entries.
fn valid_batch_follows<R: Read>(r: &mut R, remaining: u64) -> io::Result<bool> {
    if remaining < BATCH_HEAD as u64 {
        return Ok(false);
    }
    let mut head = [0u8; BATCH_HEAD];
    r.read_exact(&mut head)?;
    let (len, crc) = read_u32s(&head);
    let len = u64::from(len);
    if len == 0 || len > remaining - BATCH_HEAD as u64 {
        return Ok(false);
    }
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body)?;
    if crc32fast::hash(&body) != crc {
        return Ok(false);
    }
    let mut at = 0usize;
    while at < body.len() {
        let Some(head) = body.get(at..at + ENTRY_HEAD) else {
            return Ok(false);
        };
        let entry_len = ENTRY_HEAD as u64 + u64::from(u32::from_le_bytes([head[0], head[1], head[2], head[3]]));
        if entry_len > (body.len() - at) as u64 {
            return Ok(false);
        }
        let entry_len = entry_len as usize;
        if check(&body[at..at + entry_len]).is_err() {
            return Ok(false);
        }
        at += entry_len;
    }
    Ok(true)
}

/// Reads a log of `file_len` bytes from `r` (positioned at its start) and calls `each` for every
/// entry of every valid batch, in order. `each` may refuse an entry (an undecodable record): the
/// scan then fails with [`ScanError::Corrupt`] at that entry. Batch damage is reported at the
/// batch's offset, a bad entry inside a valid batch at the entry's. Never panics, whatever the
/// bytes (see the module docs for the rules).
pub(crate) fn scan<R: Read>(
    mut r: R,
    file_len: u64,
    mut each: impl FnMut(Entry) -> Result<(), &'static str>,
) -> Result<Tail, ScanError> {
    if file_len < HEADER_LEN {
        let mut head = vec![0u8; file_len as usize];
        r.read_exact(&mut head)?;
        // A crash while the file was being created leaves a prefix of the magic.
        return if MAGIC.starts_with(&head) {
            Ok(Tail {
                valid_len: 0,
                torn: file_len > 0,
            })
        } else {
            Err(ScanError::BadMagic)
        };
    }
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(ScanError::BadMagic);
    }
    let mut pos = HEADER_LEN;
    loop {
        let remaining = file_len - pos;
        if remaining < BATCH_HEAD as u64 {
            let torn = !all_zero(&mut r, remaining)?;
            return Ok(Tail { valid_len: pos, torn });
        }
        let mut head = [0u8; BATCH_HEAD];
        r.read_exact(&mut head)?;
        let (len, crc) = read_u32s(&head);
        if len == 0 && crc == 0 {
            // Preallocated space, unless a torn batch lost only its first page.
            let torn = !all_zero(&mut r, remaining - BATCH_HEAD as u64)?;
            return Ok(Tail { valid_len: pos, torn });
        }
        let len = u64::from(len);
        if len > remaining - BATCH_HEAD as u64 {
            return Ok(Tail {
                valid_len: pos,
                torn: true,
            });
        }
        let mut body = vec![0u8; len as usize];
        r.read_exact(&mut body)?;
        let next = pos + BATCH_HEAD as u64 + len;
        if crc32fast::hash(&body) != crc {
            // Only the last batch can be torn: one after it was written once this one was synced.
            if valid_batch_follows(&mut r, file_len - next)? {
                return Err(ScanError::Corrupt {
                    offset: pos,
                    reason: "batch checksum mismatch",
                });
            }
            return Ok(Tail {
                valid_len: pos,
                torn: true,
            });
        }
        let body = Bytes::from(body);
        let mut at = 0usize;
        while at < body.len() {
            let offset = pos + (BATCH_HEAD + at) as u64;
            let corrupt = |reason| ScanError::Corrupt { offset, reason };
            let Some(head) = body.get(at..at + ENTRY_HEAD) else {
                return Err(corrupt("entry runs past the end of its batch"));
            };
            let entry_len = ENTRY_HEAD + u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
            if entry_len > body.len() - at {
                return Err(corrupt("entry runs past the end of its batch"));
            }
            let entry = parse_entry(offset, body.slice(at..at + entry_len)).map_err(|b| corrupt(b.reason()))?;
            each(entry).map_err(corrupt)?;
            at += entry_len;
        }
        pos = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn collect(bytes: &[u8]) -> Result<(Vec<Entry>, Tail), ScanError> {
        let mut out = Vec::new();
        let tail = scan(bytes, bytes.len() as u64, |e| {
            out.push(e);
            Ok(())
        })?;
        Ok((out, tail))
    }

    /// Entries: (id byte, record bytes; empty for a DEL).
    type Batch = Vec<(u8, Vec<u8>)>;

    fn push_batch(buf: &mut Vec<u8>, entries: &[(u8, Vec<u8>)]) {
        let start = buf.len();
        begin_batch(buf);
        for (n, rec) in entries {
            if rec.is_empty() {
                append_del(buf, &RecordId([*n; 32]));
            } else {
                append_put(buf, &RecordId([*n; 32]), rec).unwrap();
            }
        }
        seal_batch(&mut buf[start..]).unwrap();
    }

    /// A log of `batches`, and where each batch starts.
    fn log(batches: &[Batch]) -> (Vec<u8>, Vec<usize>) {
        let mut buf = MAGIC.to_vec();
        let mut starts = Vec::new();
        for b in batches {
            starts.push(buf.len());
            push_batch(&mut buf, b);
        }
        (buf, starts)
    }

    fn clean(valid_len: usize) -> Tail {
        Tail {
            valid_len: valid_len as u64,
            torn: false,
        }
    }

    fn torn(valid_len: usize) -> Tail {
        Tail {
            valid_len: valid_len as u64,
            torn: true,
        }
    }

    fn three() -> (Vec<u8>, Vec<usize>) {
        log(&[
            vec![(1, vec![1; 10]), (2, vec![])],
            vec![(3, vec![3; 5])],
            vec![(4, vec![4; 3000]), (5, vec![5; 3000]), (6, vec![6; 3000]), (7, vec![])],
        ])
    }

    #[test]
    fn torn_and_corrupt_are_told_apart() {
        let (good, starts) = three();
        let (entries, tail) = collect(&good).unwrap();
        assert_eq!(tail, clean(good.len()));
        assert_eq!(entries.len(), 7);
        // A partial last batch is torn.
        let mut cut = good.clone();
        cut.truncate(good.len() - 100);
        let (entries, tail) = collect(&cut).unwrap();
        assert_eq!(entries.len(), 3);
        assert_eq!(tail, torn(starts[2]));
        // A bad checksum in the last batch is torn.
        let mut last = good.clone();
        *last.last_mut().unwrap() ^= 1;
        let (entries, tail) = collect(&last).unwrap();
        assert_eq!(entries.len(), 3);
        assert_eq!(tail, torn(starts[2]));
        // A bad checksum in a batch followed by a valid batch is corruption, at the batch.
        let mut early = good.clone();
        early[starts[1] + BATCH_HEAD + ENTRY_HEAD + 33] ^= 1;
        match collect(&early) {
            Err(ScanError::Corrupt { offset, .. }) => assert_eq!(offset, starts[1] as u64),
            other => panic!("{other:?}"),
        }
        // A garbled batch length with nothing valid where it points: torn (the known limit).
        let mut head = good.clone();
        head[starts[1]] ^= 0x40;
        assert_eq!(collect(&head).unwrap().1, torn(starts[1]));
        assert!(matches!(collect(b"NOTALOG!xx"), Err(ScanError::BadMagic)));
        assert!(matches!(collect(b"IDEMLOG1"), Err(ScanError::BadMagic)));
        assert_eq!(collect(b"IDEM").unwrap().1, torn(0));
        assert_eq!(collect(b"").unwrap().1, clean(0));
        assert_eq!(collect(MAGIC).unwrap().1, clean(8));
    }

    #[test]
    fn a_hole_in_the_last_batch_is_a_torn_write() {
        let (good, starts) = three();
        let last = starts[2];
        // The second entry of the last batch's body, and a "page" of the third.
        let second = last + BATCH_HEAD + ENTRY_HEAD + 33 + 3000;
        for (from, to, byte) in [
            (second, second + 3041, 0u8),
            (second + 1000, second + 5096, 0),
            (second + 10, second + 500, 0xa5),
            // The batch's first page lost: its header reads as zeros, later entries are there.
            (last, last + 4096, 0),
            // A header across a page boundary whose first page was lost: the length (or part
            // of it) reads as zeros, the checksum and the body are there.
            (last, last + 4, 0),
            (last, last + 2, 0),
            (last, last + 6, 0),
        ] {
            let mut holed = good.clone();
            holed[from..to].fill(byte);
            // Later entries of the same batch are intact.
            assert_eq!(&holed[to..], &good[to..]);
            let (entries, tail) = collect(&holed).unwrap();
            assert_eq!(tail, torn(last), "hole {from}..{to}");
            assert_eq!(entries.len(), 3);
            assert_eq!(entries[2].id, RecordId([3; 32]));
            // And so it is with preallocated zeros after it.
            holed.resize(holed.len() + 10_000, 0);
            assert_eq!(collect(&holed).unwrap().1, torn(last));
        }
    }

    #[test]
    fn a_valid_batch_checksum_over_bad_entries_is_corruption() {
        let (good, starts) = three();
        let body = starts[2] + BATCH_HEAD;
        let reseal = |bytes: &mut Vec<u8>| {
            let end = bytes.len();
            seal_batch(&mut bytes[starts[2]..end]).unwrap();
        };
        // An entry checksum mismatch (the second entry).
        let mut bad = good.clone();
        bad[body + ENTRY_HEAD + 33 + 3000 + ENTRY_HEAD + 40] ^= 1;
        reseal(&mut bad);
        match collect(&bad) {
            Err(ScanError::Corrupt { offset, reason }) => {
                assert_eq!(offset, (body + ENTRY_HEAD + 33 + 3000) as u64);
                assert_eq!(reason, Bad::Checksum.reason());
            }
            other => panic!("{other:?}"),
        }
        // Entries that do not fill the body exactly.
        let mut short = good.clone();
        short.extend_from_slice(&[1, 2, 3]);
        reseal(&mut short);
        assert!(matches!(collect(&short), Err(ScanError::Corrupt { .. })));
        // An entry length past the body.
        let mut long = good.clone();
        long[body] = 0xff;
        long[body + 1] = 0xff;
        reseal(&mut long);
        assert!(matches!(
            collect(&long),
            Err(ScanError::Corrupt { offset, .. }) if offset == body as u64
        ));
        // A refused entry is corruption at that entry.
        let refused = scan(&good[..], good.len() as u64, |e| {
            if e.id == RecordId([3; 32]) {
                Err("undecodable")
            } else {
                Ok(())
            }
        });
        assert!(matches!(
            refused,
            Err(ScanError::Corrupt { offset, reason: "undecodable" }) if offset == (starts[1] + BATCH_HEAD) as u64
        ));
    }

    #[test]
    fn zeros_after_the_last_batch_are_a_clean_end() {
        let (good, _) = three();
        for zeros in [1, 7, 8, 9, 4096, 100_000] {
            let mut padded = good.clone();
            padded.resize(good.len() + zeros, 0);
            let (entries, tail) = collect(&padded).unwrap();
            assert_eq!(entries.len(), 7);
            assert_eq!(tail, clean(good.len()), "{zeros} zeros");
            // A stray byte anywhere in them is a torn write.
            *padded.last_mut().unwrap() = 1;
            assert_eq!(collect(&padded).unwrap().1, torn(good.len()), "{zeros} zeros");
        }
        let mut fresh = MAGIC.to_vec();
        fresh.resize(1000, 0);
        assert_eq!(collect(&fresh).unwrap().1, clean(8));
    }

    fn batches() -> impl Strategy<Value = Vec<Batch>> {
        let entry = (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..300));
        proptest::collection::vec(proptest::collection::vec(entry, 1..6), 0..8)
    }

    proptest! {
        #[test]
        fn scan_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512), magic in any::<bool>()) {
            let mut bytes = if magic { MAGIC.to_vec() } else { Vec::new() };
            bytes.extend_from_slice(&data);
            let _ = collect(&bytes);
        }

        #[test]
        fn scan_never_panics_on_damaged_logs(batches in batches(), at in any::<prop::sample::Index>(), junk in proptest::collection::vec(any::<u8>(), 1..64)) {
            let (mut bytes, _) = log(&batches);
            let at = at.index(bytes.len() + 1);
            let end = (at + junk.len()).min(bytes.len());
            bytes[at..end].copy_from_slice(&junk[..end - at]);
            let _ = collect(&bytes);
        }

        #[test]
        fn encode_then_scan_round_trips(batches in batches(), cut in any::<prop::sample::Index>(), zeros in 0usize..100) {
            let (mut bytes, starts) = log(&batches);
            let (got, tail) = collect(&bytes).unwrap();
            prop_assert_eq!(tail, clean(bytes.len()));
            let flat: Vec<_> = batches.iter().flatten().collect();
            prop_assert_eq!(got.len(), flat.len());
            let mut n = 0;
            for (b, batch) in batches.iter().enumerate() {
                let mut offset = (starts[b] + BATCH_HEAD) as u64;
                for (id, rec) in batch {
                    let e = &got[n];
                    prop_assert_eq!(e.id, RecordId([*id; 32]));
                    prop_assert_eq!(e.op, if rec.is_empty() { Op::Del } else { Op::Put });
                    prop_assert_eq!(&e.record[..], &rec[..]);
                    prop_assert_eq!(e.offset, offset);
                    // The entry reads back alone from its offset.
                    let alone = &bytes[offset as usize..offset as usize + e.len as usize];
                    prop_assert!(check(alone).is_ok());
                    offset += u64::from(e.len);
                    n += 1;
                }
            }
            // Cutting the file anywhere after the magic loses at most the batch that was cut.
            let at = 8 + cut.index(bytes.len() - 7);
            let (got, tail) = collect(&bytes[..at]).unwrap();
            let ends: Vec<usize> = (0..starts.len()).map(|b| starts.get(b + 1).copied().unwrap_or(bytes.len())).collect();
            let whole = ends.iter().filter(|&&e| e <= at).count();
            let boundary = if whole == 0 { 8 } else { ends[whole - 1] };
            prop_assert_eq!(tail.valid_len, boundary as u64);
            prop_assert_eq!(got.len(), batches[..whole].iter().map(Vec::len).sum::<usize>());
            // Dropped bytes are reported as torn, unless they are only zeros.
            prop_assert_eq!(tail.torn, bytes[boundary..at].iter().any(|&b| b != 0));
            // Zeros after the last batch are a clean end.
            bytes.resize(bytes.len() + zeros, 0);
            let (got, tail) = collect(&bytes).unwrap();
            prop_assert_eq!(tail, clean(bytes.len() - zeros));
            prop_assert_eq!(got.len(), flat.len());
        }
    }
}
