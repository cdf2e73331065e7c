//! Pure encoder/decoder for frames of the committed-offsets log.
//!
//! No I/O here: [`decode_frame`] looks at a byte slice and says whether it
//! starts with a valid frame, an incomplete one, or garbage, so the same code
//! serves recovery, tests and fuzzers. The layout is documented in
//! `FORMAT-offsets.md` (to be merged into `docs/FORMAT.md`).
//!
//! ```text
//! offset size field
//!   0     4   magic            b"SDOF"
//!   4     1   format version   1
//!   5     1   record type      1 = offset commit batch, 2 = group tombstone
//!   6     4   payload length   u32 big-endian, <= MAX_PAYLOAD_LEN
//!  10     4   crc32c           u32 big-endian over bytes 4..10 ++ payload
//!  14     N   payload
//! ```

/// Frame magic: "SeDiment Offsets File".
pub(crate) const MAGIC: [u8; 4] = *b"SDOF";
/// The only format version this build reads and writes.
pub(crate) const FORMAT_VERSION: u8 = 1;
/// Bytes before the payload.
pub(crate) const HEADER_LEN: usize = 14;
/// Upper bound on a payload; checked before anything is allocated.
pub(crate) const MAX_PAYLOAD_LEN: usize = 4 * 1024 * 1024;

const TYPE_COMMIT: u8 = 1;
const TYPE_TOMBSTONE: u8 = 2;

/// Smallest encoded commit entry (empty topic and metadata): used to bound
/// `Vec` pre-allocation by the bytes actually present.
const MIN_ENTRY_LEN: usize = 2 + 4 + 8 + 4 + 8 + 4;

/// One committed offset as stored on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EntryRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub leader_epoch: i32,
    pub commit_timestamp_ms: i64,
    pub metadata: String,
}

/// A logical record of the offsets log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Record {
    /// Offsets committed for one group (one request, or a part of a snapshot).
    Commit {
        group: String,
        entries: Vec<EntryRecord>,
    },
    /// The group was deleted: forget all its offsets.
    Tombstone { group: String },
}

/// What [`decode_frame`] found at the start of a slice.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decoded {
    /// A valid frame of `len` bytes.
    Record { record: Record, len: usize },
    /// The slice ends before the frame does (a torn write at the tail, if
    /// the slice runs to the end of the file).
    Incomplete,
    /// The bytes are not a valid frame. `frame_len` is the extent the header
    /// claims, when the header itself was readable.
    Invalid {
        reason: String,
        frame_len: Option<usize>,
    },
    /// A checksummed frame of a format version this build does not know:
    /// written by a newer Sediment. Never guessed at, never truncated.
    UnsupportedVersion { version: u8 },
}

/// Errors from encoding (a record too large for one frame).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum EncodeError {
    #[error("{what} is {len} bytes, more than the {max} a frame allows")]
    TooLarge {
        what: &'static str,
        len: usize,
        max: usize,
    },
}

fn put_str16(out: &mut Vec<u8>, what: &'static str, s: &str) -> Result<(), EncodeError> {
    let len = u16::try_from(s.len()).map_err(|_| EncodeError::TooLarge {
        what,
        len: s.len(),
        max: usize::from(u16::MAX),
    })?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

/// Encoded size of one entry (used by the writer to split large commits).
pub(crate) fn entry_len(e: &EntryRecord) -> usize {
    MIN_ENTRY_LEN + e.topic.len() + e.metadata.len()
}

/// Encoded size of a commit payload header for `group`.
pub(crate) fn commit_header_len(group: &str) -> usize {
    2 + group.len() + 4
}

fn encode_payload(record: &Record, out: &mut Vec<u8>) -> Result<u8, EncodeError> {
    match record {
        Record::Commit { group, entries } => {
            put_str16(out, "group id", group)?;
            let count = u32::try_from(entries.len()).map_err(|_| EncodeError::TooLarge {
                what: "entry count",
                len: entries.len(),
                max: u32::MAX as usize,
            })?;
            out.extend_from_slice(&count.to_be_bytes());
            for e in entries {
                put_str16(out, "topic name", &e.topic)?;
                out.extend_from_slice(&e.partition.to_be_bytes());
                out.extend_from_slice(&e.offset.to_be_bytes());
                out.extend_from_slice(&e.leader_epoch.to_be_bytes());
                out.extend_from_slice(&e.commit_timestamp_ms.to_be_bytes());
                let mlen = u32::try_from(e.metadata.len()).map_err(|_| EncodeError::TooLarge {
                    what: "offset metadata",
                    len: e.metadata.len(),
                    max: MAX_PAYLOAD_LEN,
                })?;
                out.extend_from_slice(&mlen.to_be_bytes());
                out.extend_from_slice(e.metadata.as_bytes());
            }
            Ok(TYPE_COMMIT)
        }
        Record::Tombstone { group } => {
            put_str16(out, "group id", group)?;
            Ok(TYPE_TOMBSTONE)
        }
    }
}

/// Appends one framed record to `out`.
pub(crate) fn encode_frame(record: &Record, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let start = out.len();
    out.extend_from_slice(&MAGIC);
    out.push(FORMAT_VERSION);
    out.push(0); // record type, patched below
    out.extend_from_slice(&[0; 8]); // length + crc, patched below
    let record_type = match encode_payload(record, out) {
        Ok(t) => t,
        Err(e) => {
            out.truncate(start);
            return Err(e);
        }
    };
    let payload_len = out.len() - start - HEADER_LEN;
    if payload_len > MAX_PAYLOAD_LEN {
        out.truncate(start);
        return Err(EncodeError::TooLarge {
            what: "record payload",
            len: payload_len,
            max: MAX_PAYLOAD_LEN,
        });
    }
    out[start + 5] = record_type;
    // Bounded by MAX_PAYLOAD_LEN above, so the cast cannot truncate.
    out[start + 6..start + 10].copy_from_slice(&(payload_len as u32).to_be_bytes());
    let crc = frame_crc(&out[start + 4..start + 10], &out[start + HEADER_LEN..]);
    out[start + 10..start + 14].copy_from_slice(&crc.to_be_bytes());
    Ok(())
}

fn frame_crc(header_fields: &[u8], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(header_fields), payload)
}

/// Decodes the frame at the start of `buf`.
pub(crate) fn decode_frame(buf: &[u8]) -> Decoded {
    if buf.len() < HEADER_LEN {
        // A prefix of the magic (or of a header) is a torn header.
        let n = buf.len().min(MAGIC.len());
        if buf[..n] == MAGIC[..n] {
            return Decoded::Incomplete;
        }
        return Decoded::Invalid {
            reason: "bad magic".to_string(),
            frame_len: None,
        };
    }
    if buf[..4] != MAGIC {
        return Decoded::Invalid {
            reason: format!("bad magic {:02x?}", &buf[..4]),
            frame_len: None,
        };
    }
    let version = buf[4];
    let record_type = buf[5];
    let payload_len = u32::from_be_bytes([buf[6], buf[7], buf[8], buf[9]]) as usize;
    if payload_len > MAX_PAYLOAD_LEN {
        return Decoded::Invalid {
            reason: format!("payload length {payload_len} exceeds the bound {MAX_PAYLOAD_LEN}"),
            frame_len: None,
        };
    }
    let frame_len = HEADER_LEN + payload_len;
    if buf.len() < frame_len {
        return Decoded::Incomplete;
    }
    let stored_crc = u32::from_be_bytes([buf[10], buf[11], buf[12], buf[13]]);
    let payload = &buf[HEADER_LEN..frame_len];
    let crc = frame_crc(&buf[4..10], payload);
    if crc != stored_crc {
        return Decoded::Invalid {
            reason: format!("crc32c mismatch: stored {stored_crc:#010x}, computed {crc:#010x}"),
            frame_len: Some(frame_len),
        };
    }
    if version != FORMAT_VERSION {
        return Decoded::UnsupportedVersion { version };
    }
    match decode_payload(record_type, payload) {
        Ok(record) => Decoded::Record {
            record,
            len: frame_len,
        },
        Err(reason) => Decoded::Invalid {
            reason,
            frame_len: Some(frame_len),
        },
    }
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        if self.buf.len() < n {
            return Err(format!("payload ends inside {what}"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }
    fn i32(&mut self, what: &str) -> Result<i32, String> {
        Ok(i32::from_be_bytes(self.array(what)?))
    }
    fn u32(&mut self, what: &str) -> Result<u32, String> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }
    fn i64(&mut self, what: &str) -> Result<i64, String> {
        Ok(i64::from_be_bytes(self.array(what)?))
    }
    fn str_with_len(&mut self, len: usize, what: &str) -> Result<String, String> {
        let bytes = self.take(len, what)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|e| format!("{what} is not UTF-8: {e}"))
    }
    fn str16(&mut self, what: &str) -> Result<String, String> {
        let len = u16::from_be_bytes(self.array(what)?) as usize;
        self.str_with_len(len, what)
    }
}

fn decode_payload(record_type: u8, payload: &[u8]) -> Result<Record, String> {
    let mut r = Reader { buf: payload };
    let record = match record_type {
        TYPE_COMMIT => {
            let group = r.str16("group id")?;
            let count = r.u32("entry count")? as usize;
            // Never trust `count` for allocation: bound it by the bytes left.
            let mut entries = Vec::with_capacity(count.min(r.buf.len() / MIN_ENTRY_LEN));
            for _ in 0..count {
                let topic = r.str16("topic name")?;
                let partition = r.i32("partition")?;
                let offset = r.i64("offset")?;
                let leader_epoch = r.i32("leader epoch")?;
                let commit_timestamp_ms = r.i64("commit timestamp")?;
                let mlen = r.u32("metadata length")? as usize;
                let metadata = r.str_with_len(mlen, "metadata")?;
                entries.push(EntryRecord {
                    topic,
                    partition,
                    offset,
                    leader_epoch,
                    commit_timestamp_ms,
                    metadata,
                });
            }
            Record::Commit { group, entries }
        }
        TYPE_TOMBSTONE => Record::Tombstone {
            group: r.str16("group id")?,
        },
        other => return Err(format!("unknown record type {other}")),
    };
    if !r.buf.is_empty() {
        return Err(format!("{} trailing bytes after the record", r.buf.len()));
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sample() -> Record {
        Record::Commit {
            group: "g1".into(),
            entries: vec![
                EntryRecord {
                    topic: "orders".into(),
                    partition: 3,
                    offset: 42,
                    leader_epoch: 7,
                    commit_timestamp_ms: 1_700_000_000_000,
                    metadata: "meta".into(),
                },
                EntryRecord {
                    topic: "t".into(),
                    partition: 0,
                    offset: -1,
                    leader_epoch: -1,
                    commit_timestamp_ms: 0,
                    metadata: String::new(),
                },
            ],
        }
    }

    #[test]
    fn frames_round_trip() {
        for record in [sample(), Record::Tombstone { group: "g".into() }] {
            let mut buf = Vec::new();
            encode_frame(&record, &mut buf).unwrap();
            assert_eq!(
                decode_frame(&buf),
                Decoded::Record {
                    record,
                    len: buf.len()
                }
            );
        }
    }

    #[test]
    fn every_strict_prefix_is_incomplete() {
        let mut buf = Vec::new();
        encode_frame(&sample(), &mut buf).unwrap();
        for cut in 0..buf.len() {
            assert_eq!(
                decode_frame(&buf[..cut]),
                Decoded::Incomplete,
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn any_flipped_bit_is_detected() {
        let mut buf = Vec::new();
        encode_frame(&sample(), &mut buf).unwrap();
        for i in 0..buf.len() {
            for bit in 0..8 {
                let mut bad = buf.clone();
                bad[i] ^= 1 << bit;
                assert!(
                    !matches!(decode_frame(&bad), Decoded::Record { .. }),
                    "flip of bit {bit} in byte {i} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn absurd_length_is_rejected_before_allocating() {
        let mut buf = Vec::new();
        encode_frame(&sample(), &mut buf).unwrap();
        buf[6..10].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            decode_frame(&buf),
            Decoded::Invalid {
                frame_len: None,
                ..
            }
        ));
    }

    #[test]
    fn unknown_version_with_valid_crc_is_reported_not_guessed() {
        let mut buf = Vec::new();
        encode_frame(&sample(), &mut buf).unwrap();
        buf[4] = 9;
        let crc = frame_crc(&buf[4..10], &buf[HEADER_LEN..]);
        buf[10..14].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(
            decode_frame(&buf),
            Decoded::UnsupportedVersion { version: 9 }
        );
    }

    #[test]
    fn huge_entry_count_does_not_allocate_or_panic() {
        // A checksummed payload that lies about its entry count.
        let mut payload = Vec::new();
        put_str16(&mut payload, "g", "g").unwrap();
        payload.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode_payload(TYPE_COMMIT, &payload).is_err());
    }
}
