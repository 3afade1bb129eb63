//! The log file format: entry encoding, and the recovery scan that tells a torn tail from
//! corruption.
//!
//! `records.log` starts with the 8-byte [`MAGIC`], then entries:
//!
//! ```text
//! [u32 LE payload len][u32 LE crc32 of payload][payload]
//! payload = [u8 op][32-byte record id][Record::encode() bytes, PUT only]
//! ```
//!
//! A crash can only damage the end of the file (the batch being written), so the scan treats a
//! damaged *last* entry (a header or payload that runs past the end of the file, an impossible
//! length, or a checksum mismatch with nothing valid after it) as a torn write to truncate. A
//! checksum mismatch followed by a valid entry is damage to acknowledged data: the scan reports it
//! as corruption instead of silently dropping the records after it.

use std::io::{self, Read};

use bytes::Bytes;
use idemgate_core::RecordId;

/// The first bytes of every log file (format version 1).
pub(crate) const MAGIC: &[u8; 8] = b"IDEMLOG1";

/// Bytes before the first entry.
pub(crate) const HEADER_LEN: u64 = MAGIC.len() as u64;

/// Bytes of an entry's length + checksum prefix.
pub(crate) const ENTRY_HEAD: usize = 8;

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

/// How the scanned file ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tail {
    /// Every byte belongs to a valid entry.
    Clean,
    /// The entries end at `valid_len`; the bytes after it are a torn write.
    Torn {
        /// Where the valid entries end.
        valid_len: u64,
    },
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

/// Reads a log of `file_len` bytes from `r` (positioned at its start) and calls `each` for every
/// valid entry in order. `each` may refuse an entry (an undecodable record): the scan then fails
/// with [`ScanError::Corrupt`] at that entry. Never panics, whatever the bytes.
pub(crate) fn scan<R: Read>(
    mut r: R,
    file_len: u64,
    mut each: impl FnMut(Entry) -> Result<(), &'static str>,
) -> Result<Tail, ScanError> {
    let mut magic = [0u8; 8];
    if file_len < HEADER_LEN {
        let mut head = vec![0u8; file_len as usize];
        r.read_exact(&mut head)?;
        // A crash while the file was being created leaves a prefix of the magic.
        return if MAGIC.starts_with(&head) {
            Ok(Tail::Torn { valid_len: 0 })
        } else {
            Err(ScanError::BadMagic)
        };
    }
    r.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(ScanError::BadMagic);
    }
    let mut pos = HEADER_LEN;
    // The first damaged entry, while checking whether valid data follows it.
    let mut damaged: Option<(u64, Bad)> = None;
    loop {
        let remaining = file_len - pos;
        if remaining == 0 {
            break;
        }
        if remaining < ENTRY_HEAD as u64 {
            break;
        }
        let mut head = [0u8; ENTRY_HEAD];
        r.read_exact(&mut head)?;
        let len = u64::from(u32::from_le_bytes([head[0], head[1], head[2], head[3]]));
        if len < KEY_LEN as u64 || len > remaining - ENTRY_HEAD as u64 || len > u64::from(u32::MAX) - 8 {
            // Where the next entry starts is unknown: nothing after this can be checked.
            break;
        }
        let mut data = vec![0u8; ENTRY_HEAD + len as usize];
        data[..ENTRY_HEAD].copy_from_slice(&head);
        r.read_exact(&mut data[ENTRY_HEAD..])?;
        match parse_entry(pos, Bytes::from(data)) {
            Ok(entry) => match damaged {
                // Valid data after a damaged entry: not a torn write.
                Some((offset, bad)) => {
                    return Err(ScanError::Corrupt {
                        offset,
                        reason: bad.reason(),
                    })
                }
                None => each(entry).map_err(|reason| ScanError::Corrupt { offset: pos, reason })?,
            },
            Err(Bad::Checksum) if damaged.is_none() => damaged = Some((pos, Bad::Checksum)),
            Err(Bad::Checksum) => {}
            // A valid checksum over an unknown op is not a torn write.
            Err(bad) => {
                return Err(ScanError::Corrupt {
                    offset: damaged.map_or(pos, |d| d.0),
                    reason: bad.reason(),
                })
            }
        }
        pos += ENTRY_HEAD as u64 + len;
    }
    let valid_len = damaged.map_or(pos, |d| d.0);
    Ok(if valid_len == file_len {
        Tail::Clean
    } else {
        Tail::Torn { valid_len }
    })
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

    fn log(entries: &[(u8, Vec<u8>)]) -> Vec<u8> {
        let mut buf = MAGIC.to_vec();
        for (n, rec) in entries {
            if rec.is_empty() {
                append_del(&mut buf, &RecordId([*n; 32]));
            } else {
                append_put(&mut buf, &RecordId([*n; 32]), rec).unwrap();
            }
        }
        buf
    }

    #[test]
    fn torn_and_corrupt_are_told_apart() {
        let good = log(&[(1, vec![1; 10]), (2, vec![]), (3, vec![3; 5])]);
        assert_eq!(collect(&good).unwrap().1, Tail::Clean);
        // A partial last entry is torn.
        let mut torn = good.clone();
        torn.extend_from_slice(&log(&[(4, vec![4; 20])])[8..30]);
        let (entries, tail) = collect(&torn).unwrap();
        assert_eq!(entries.len(), 3);
        assert_eq!(
            tail,
            Tail::Torn {
                valid_len: good.len() as u64
            }
        );
        // A bad checksum on the last entry is torn.
        let mut last = good.clone();
        *last.last_mut().unwrap() ^= 1;
        let (entries, tail) = collect(&last).unwrap();
        assert_eq!(entries.len(), 2);
        assert!(matches!(tail, Tail::Torn { .. }));
        // A bad checksum followed by a valid entry is corruption.
        let mut early = good.clone();
        early[8 + ENTRY_HEAD + 33] ^= 1;
        assert!(matches!(collect(&early), Err(ScanError::Corrupt { offset: 8, .. })));
        assert!(matches!(collect(b"NOTALOG!xx"), Err(ScanError::BadMagic)));
        assert_eq!(collect(b"IDEM").unwrap().1, Tail::Torn { valid_len: 0 });
    }

    proptest! {
        #[test]
        fn scan_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512), magic in any::<bool>()) {
            let mut bytes = if magic { MAGIC.to_vec() } else { Vec::new() };
            bytes.extend_from_slice(&data);
            let _ = collect(&bytes);
        }

        #[test]
        fn encode_then_scan_round_trips(entries in proptest::collection::vec((any::<u8>(), proptest::collection::vec(any::<u8>(), 0..300)), 0..20), cut in any::<prop::sample::Index>()) {
            let bytes = log(&entries);
            let (got, tail) = collect(&bytes).unwrap();
            prop_assert_eq!(tail, Tail::Clean);
            prop_assert_eq!(got.len(), entries.len());
            let mut offset = HEADER_LEN;
            for (e, (n, rec)) in got.iter().zip(&entries) {
                prop_assert_eq!(e.id, RecordId([*n; 32]));
                prop_assert_eq!(e.op, if rec.is_empty() { Op::Del } else { Op::Put });
                prop_assert_eq!(&e.record[..], &rec[..]);
                prop_assert_eq!(e.offset, offset);
                offset += u64::from(e.len);
            }
            // Cutting the file anywhere after the magic loses at most the entry that was cut.
            let at = 8 + cut.index(bytes.len() - 7);
            let (got, tail) = collect(&bytes[..at]).unwrap();
            let valid = match tail { Tail::Clean => at as u64, Tail::Torn { valid_len } => valid_len };
            prop_assert!(at as u64 - valid < 8 + 33 + 300);
            prop_assert!(got.iter().all(|e| e.offset + u64::from(e.len) <= valid));
        }
    }
}
