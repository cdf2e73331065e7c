//! Pure codec for the header of a Kafka record batch (format v2, magic 2).
//!
//! Sediment stores batches exactly as producers sent them; the broker only
//! reads the fixed 61-byte header, checks it, and writes three fields into it:
//! the base offset, the partition leader epoch, and (for topics whose
//! `message.timestamp.type` is `LogAppendTime`) the timestamp type and max
//! timestamp, after which the CRC is recomputed. Nothing here does I/O, so the
//! same code serves sockets, segment files, fuzzers and property tests.
//!
//! ```text
//! offset  size  field
//!      0     8  base offset              (written by the broker)
//!      8     4  batch length             (bytes after this field)
//!     12     4  partition leader epoch   (written by the broker)
//!     16     1  magic (= 2)
//!     17     4  crc32c of bytes 21..end
//!     21     2  attributes  (bits 0-2 codec, 3 timestamp type, 4 transactional, 5 control)
//!     23     4  last offset delta
//!     27     8  base timestamp
//!     35     8  max timestamp
//!     43     8  producer id
//!     51     2  producer epoch
//!     53     4  base sequence
//!     57     4  record count
//!     61     …  records (possibly compressed)
//! ```

use std::fmt;

/// Size of the fixed batch header.
pub const BATCH_HEADER_LEN: usize = 61;
/// Bytes before the length field's payload starts (base offset + length).
pub const LOG_OVERHEAD: usize = 12;
/// The only record batch format Sediment accepts.
pub const MAGIC_V2: i8 = 2;

const LENGTH_OFFSET: usize = 8;
const LEADER_EPOCH_OFFSET: usize = 12;
const MAGIC_OFFSET: usize = 16;
const CRC_OFFSET: usize = 17;
const ATTRIBUTES_OFFSET: usize = 21;
const LAST_OFFSET_DELTA_OFFSET: usize = 23;
const BASE_TIMESTAMP_OFFSET: usize = 27;
const MAX_TIMESTAMP_OFFSET: usize = 35;
const PRODUCER_ID_OFFSET: usize = 43;
const PRODUCER_EPOCH_OFFSET: usize = 51;
const BASE_SEQUENCE_OFFSET: usize = 53;
const RECORD_COUNT_OFFSET: usize = 57;

const COMPRESSION_MASK: i16 = 0x07;
/// Attributes bit: timestamps are the broker's LogAppendTime.
pub const TIMESTAMP_TYPE_BIT: i16 = 0x08;
const TRANSACTIONAL_BIT: i16 = 0x10;
const CONTROL_BIT: i16 = 0x20;

/// Why a batch was rejected. Every variant maps to Kafka's CORRUPT_MESSAGE
/// or INVALID_RECORD in `ingest/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchError {
    /// Fewer bytes than a batch header, or than the length field promises.
    Truncated { needed: usize, available: usize },
    /// The length field is below the header size or above the allowed maximum.
    BadLength { length: i64, max: usize },
    /// A magic other than 2 (Sediment does not convert old message formats).
    UnsupportedMagic { magic: i8 },
    /// The stored CRC does not match the bytes.
    CrcMismatch { stored: u32, computed: u32 },
    /// The header's record count disagrees with its last offset delta.
    CountMismatch {
        record_count: i32,
        last_offset_delta: i32,
    },
    /// Compression codec bits outside 0..=4.
    UnknownCodec { codec: i16 },
    /// Transactional or control batches: transactions are not supported yet.
    Transactional,
}

impl fmt::Display for BatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BatchError::Truncated { needed, available } => {
                write!(
                    f,
                    "record batch truncated: needs {needed} bytes, {available} available"
                )
            }
            BatchError::BadLength { length, max } => {
                write!(f, "record batch length {length} outside 49..={max}")
            }
            BatchError::UnsupportedMagic { magic } => {
                write!(f, "record batch magic {magic} is not supported (only v2)")
            }
            BatchError::CrcMismatch { stored, computed } => write!(
                f,
                "record batch CRC mismatch: stored {stored:#010x}, computed {computed:#010x}"
            ),
            BatchError::CountMismatch {
                record_count,
                last_offset_delta,
            } => write!(
                f,
                "record batch has {record_count} records but last offset delta {last_offset_delta}"
            ),
            BatchError::UnknownCodec { codec } => {
                write!(f, "record batch uses unknown compression codec {codec}")
            }
            BatchError::Transactional => {
                write!(f, "transactional and control batches are not supported")
            }
        }
    }
}

impl std::error::Error for BatchError {}

/// The decoded fixed header of one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    /// Total size of the batch including the 12-byte log overhead.
    pub size: usize,
    pub leader_epoch: i32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: i32,
}

impl BatchHeader {
    pub fn last_offset(&self) -> i64 {
        self.base_offset + i64::from(self.last_offset_delta)
    }
    pub fn next_offset(&self) -> i64 {
        self.last_offset() + 1
    }
    pub fn compression(&self) -> i16 {
        self.attributes & COMPRESSION_MASK
    }
    pub fn is_log_append_time(&self) -> bool {
        self.attributes & TIMESTAMP_TYPE_BIT != 0
    }
    pub fn is_transactional(&self) -> bool {
        self.attributes & TRANSACTIONAL_BIT != 0
    }
    pub fn is_control(&self) -> bool {
        self.attributes & CONTROL_BIT != 0
    }
    /// Last sequence number of an idempotent batch (sequences wrap at i32::MAX).
    pub fn last_sequence(&self) -> i32 {
        if self.base_sequence < 0 {
            return self.base_sequence;
        }
        let last = i64::from(self.base_sequence) + i64::from(self.last_offset_delta);
        if last > i64::from(i32::MAX) {
            (last - i64::from(i32::MAX) - 1) as i32
        } else {
            last as i32
        }
    }
}

fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}
fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be_i64(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(a)
}

/// Appends the 61-byte header of `h` to `out`, with the length and CRC
/// fields zero: append the records, then call [`finish_batch`].
pub fn put_header(out: &mut Vec<u8>, h: &BatchHeader) {
    out.extend_from_slice(&h.base_offset.to_be_bytes());
    out.extend_from_slice(&0i32.to_be_bytes());
    out.extend_from_slice(&h.leader_epoch.to_be_bytes());
    out.push(MAGIC_V2 as u8);
    out.extend_from_slice(&0u32.to_be_bytes());
    out.extend_from_slice(&h.attributes.to_be_bytes());
    out.extend_from_slice(&h.last_offset_delta.to_be_bytes());
    out.extend_from_slice(&h.base_timestamp.to_be_bytes());
    out.extend_from_slice(&h.max_timestamp.to_be_bytes());
    out.extend_from_slice(&h.producer_id.to_be_bytes());
    out.extend_from_slice(&h.producer_epoch.to_be_bytes());
    out.extend_from_slice(&h.base_sequence.to_be_bytes());
    out.extend_from_slice(&h.record_count.to_be_bytes());
}

/// Fills in the length and CRC32C of the one whole batch in `batch`
/// (header from [`put_header`] followed by its records).
pub fn finish_batch(batch: &mut [u8]) {
    let len = (batch.len() - LOG_OVERHEAD) as i32;
    batch[LENGTH_OFFSET..LENGTH_OFFSET + 4].copy_from_slice(&len.to_be_bytes());
    let crc = crc32c::crc32c(&batch[ATTRIBUTES_OFFSET..]);
    batch[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
}

/// `(key, value, timestamp ms)` of a record for [`encode_simple`].
pub type SimpleRecord<'a> = (Option<&'a [u8]>, Option<&'a [u8]>, i64);

/// One uncompressed batch of records `(key, value, timestamp ms)` with no
/// producer id and base offset 0 (the log assigns offsets on append): how
/// Sediment itself produces (SQL `INSERT`).
pub fn encode_simple(records: &[SimpleRecord<'_>]) -> Vec<u8> {
    encode_records(records, None)
}

/// An idempotent producer's identity and the sequence of a batch's first
/// record, as Kafka's idempotent producers write them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerSeq {
    pub producer_id: i64,
    pub epoch: i16,
    pub base_sequence: i32,
}

/// [`encode_simple`] from an idempotent producer: the log appends a batch
/// with the same producer and sequences only once (persistent queries'
/// output).
pub fn encode_idempotent(records: &[SimpleRecord<'_>], producer: ProducerSeq) -> Vec<u8> {
    encode_records(records, Some(producer))
}

fn encode_records(records: &[SimpleRecord<'_>], producer: Option<ProducerSeq>) -> Vec<u8> {
    let first_ts = records.first().map_or(0, |r| r.2);
    let max_ts = records.iter().map(|r| r.2).max().unwrap_or(first_ts);
    let mut out = Vec::with_capacity(
        61 + records
            .iter()
            .map(|r| 16 + r.0.map_or(0, <[u8]>::len) + r.1.map_or(0, <[u8]>::len))
            .sum::<usize>(),
    );
    put_header(
        &mut out,
        &BatchHeader {
            base_offset: 0,
            size: 0,
            leader_epoch: -1,
            attributes: 0,
            last_offset_delta: i32::try_from(records.len().saturating_sub(1)).unwrap_or(i32::MAX),
            base_timestamp: first_ts,
            max_timestamp: max_ts,
            producer_id: producer.map_or(-1, |p| p.producer_id),
            producer_epoch: producer.map_or(-1, |p| p.epoch),
            base_sequence: producer.map_or(-1, |p| p.base_sequence),
            record_count: i32::try_from(records.len()).unwrap_or(i32::MAX),
        },
    );
    let mut scratch = Vec::new();
    for (i, (key, value, ts)) in records.iter().enumerate() {
        crate::records::put_record(
            &mut out,
            &mut scratch,
            ts - first_ts,
            i as i64,
            *key,
            *value,
            std::iter::empty(),
        );
    }
    finish_batch(&mut out);
    out
}

/// Reads the batch size (including log overhead) from the first 12 bytes,
/// bounded by `max_size`. Needs at least [`LOG_OVERHEAD`] bytes.
pub fn peek_size(buf: &[u8], max_size: usize) -> Result<usize, BatchError> {
    if buf.len() < LOG_OVERHEAD {
        return Err(BatchError::Truncated {
            needed: LOG_OVERHEAD,
            available: buf.len(),
        });
    }
    let length = i64::from(be_i32(buf, LENGTH_OFFSET));
    let min = (BATCH_HEADER_LEN - LOG_OVERHEAD) as i64;
    let max_len = max_size.saturating_sub(LOG_OVERHEAD) as i64;
    if length < min || length > max_len {
        return Err(BatchError::BadLength {
            length,
            max: max_size,
        });
    }
    Ok(length as usize + LOG_OVERHEAD)
}

/// Parses the header of the batch at the start of `buf` without checking the
/// CRC. `buf` must hold at least the header; the batch body may be absent.
pub fn parse_header(buf: &[u8], max_size: usize) -> Result<BatchHeader, BatchError> {
    let size = peek_size(buf, max_size)?;
    if buf.len() < BATCH_HEADER_LEN {
        return Err(BatchError::Truncated {
            needed: BATCH_HEADER_LEN,
            available: buf.len(),
        });
    }
    let magic = buf[MAGIC_OFFSET] as i8;
    if magic != MAGIC_V2 {
        return Err(BatchError::UnsupportedMagic { magic });
    }
    Ok(BatchHeader {
        base_offset: be_i64(buf, 0),
        size,
        leader_epoch: be_i32(buf, LEADER_EPOCH_OFFSET),
        attributes: be_i16(buf, ATTRIBUTES_OFFSET),
        last_offset_delta: be_i32(buf, LAST_OFFSET_DELTA_OFFSET),
        base_timestamp: be_i64(buf, BASE_TIMESTAMP_OFFSET),
        max_timestamp: be_i64(buf, MAX_TIMESTAMP_OFFSET),
        producer_id: be_i64(buf, PRODUCER_ID_OFFSET),
        producer_epoch: be_i16(buf, PRODUCER_EPOCH_OFFSET),
        base_sequence: be_i32(buf, BASE_SEQUENCE_OFFSET),
        record_count: be_i32(buf, RECORD_COUNT_OFFSET),
    })
}

/// Fully validates the batch at the start of `buf`: bounds, magic, CRC32C,
/// codec bits. Returns its header; the batch occupies `header.size` bytes.
pub fn validate(buf: &[u8], max_size: usize) -> Result<BatchHeader, BatchError> {
    let header = parse_header(buf, max_size)?;
    if buf.len() < header.size {
        return Err(BatchError::Truncated {
            needed: header.size,
            available: buf.len(),
        });
    }
    let stored = be_i32(buf, CRC_OFFSET) as u32;
    let computed = crc32c::crc32c(&buf[ATTRIBUTES_OFFSET..header.size]);
    if stored != computed {
        return Err(BatchError::CrcMismatch { stored, computed });
    }
    let codec = header.compression();
    if codec > 4 {
        return Err(BatchError::UnknownCodec { codec });
    }
    Ok(header)
}

/// Validates a batch arriving from a producer: everything [`validate`]
/// checks, plus producer-side rules (record count matches the offset delta,
/// no transactional/control batches).
pub fn validate_for_append(buf: &[u8], max_size: usize) -> Result<BatchHeader, BatchError> {
    let header = validate(buf, max_size)?;
    if header.record_count < 1
        || header.last_offset_delta < 0
        || i64::from(header.record_count) != i64::from(header.last_offset_delta) + 1
    {
        return Err(BatchError::CountMismatch {
            record_count: header.record_count,
            last_offset_delta: header.last_offset_delta,
        });
    }
    if header.is_transactional() || header.is_control() {
        return Err(BatchError::Transactional);
    }
    Ok(header)
}

/// Writes the broker-assigned base offset and leader epoch into a batch.
/// Neither field is covered by the CRC.
pub fn assign(buf: &mut [u8], base_offset: i64, leader_epoch: i32) {
    buf[0..8].copy_from_slice(&base_offset.to_be_bytes());
    buf[LEADER_EPOCH_OFFSET..LEADER_EPOCH_OFFSET + 4].copy_from_slice(&leader_epoch.to_be_bytes());
}

/// Marks a batch as LogAppendTime with `now_ms` as its max timestamp and
/// recomputes the CRC. `buf` must hold exactly one validated batch.
pub fn set_log_append_time(buf: &mut [u8], now_ms: i64) {
    let (head, body) = buf.split_at_mut(BATCH_HEADER_LEN);
    set_log_append_time_split(head, body, now_ms);
}

/// [`set_log_append_time`] for a batch whose 61-byte header and body are
/// held apart (the body is not modified).
pub fn set_log_append_time_split(head: &mut [u8], body: &[u8], now_ms: i64) {
    let attrs = be_i16(head, ATTRIBUTES_OFFSET) | TIMESTAMP_TYPE_BIT;
    head[ATTRIBUTES_OFFSET..ATTRIBUTES_OFFSET + 2].copy_from_slice(&attrs.to_be_bytes());
    head[MAX_TIMESTAMP_OFFSET..MAX_TIMESTAMP_OFFSET + 8].copy_from_slice(&now_ms.to_be_bytes());
    let crc = crc32c::crc32c_append(
        crc32c::crc32c(&head[ATTRIBUTES_OFFSET..BATCH_HEADER_LEN]),
        body,
    );
    head[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
}

/// Iterates the complete batches at the start of a buffer, stopping at the
/// first incomplete or malformed one (whose error, if any, is kept).
pub struct BatchIter<'a> {
    buf: &'a [u8],
    pos: usize,
    max_size: usize,
    verify_crc: bool,
    pub error: Option<BatchError>,
}

impl<'a> BatchIter<'a> {
    pub fn new(buf: &'a [u8], max_size: usize, verify_crc: bool) -> Self {
        BatchIter {
            buf,
            pos: 0,
            max_size,
            verify_crc,
            error: None,
        }
    }
    /// Bytes consumed by the batches yielded so far.
    pub fn position(&self) -> usize {
        self.pos
    }
}

impl Iterator for BatchIter<'_> {
    /// The batch's position in the buffer and its header.
    type Item = (usize, BatchHeader);
    fn next(&mut self) -> Option<Self::Item> {
        let rest = &self.buf[self.pos..];
        if rest.is_empty() {
            return None;
        }
        let parsed = if self.verify_crc {
            validate(rest, self.max_size)
        } else {
            parse_header(rest, self.max_size).and_then(|h| {
                if rest.len() < h.size {
                    Err(BatchError::Truncated {
                        needed: h.size,
                        available: rest.len(),
                    })
                } else {
                    Ok(h)
                }
            })
        };
        match parsed {
            Ok(h) => {
                let at = self.pos;
                self.pos += h.size;
                Some((at, h))
            }
            Err(e) => {
                self.error = Some(e);
                None
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    /// Builds a valid uncompressed batch with `n` records of `value_len` bytes.
    pub fn make_batch(n: i32, value_len: usize, ts: i64, producer: (i64, i16, i32)) -> Vec<u8> {
        let mut records = Vec::new();
        for i in 0..n {
            let mut body = Vec::new();
            body.push(0u8); // attributes
            put_varlong(&mut body, i64::from(i)); // timestamp delta
            put_varlong(&mut body, i64::from(i)); // offset delta
            put_varlong(&mut body, -1); // key null
            put_varlong(&mut body, value_len as i64);
            body.extend(std::iter::repeat_n(b'v', value_len));
            put_varlong(&mut body, 0); // headers
            put_varlong(&mut records, body.len() as i64);
            records.extend(body);
        }
        let mut b = Vec::new();
        b.extend(0i64.to_be_bytes());
        b.extend(0i32.to_be_bytes()); // length placeholder
        b.extend((-1i32).to_be_bytes());
        b.push(2);
        b.extend(0u32.to_be_bytes());
        b.extend(0i16.to_be_bytes());
        b.extend((n - 1).to_be_bytes());
        b.extend(ts.to_be_bytes());
        b.extend((ts + i64::from(n) - 1).to_be_bytes());
        b.extend(producer.0.to_be_bytes());
        b.extend(producer.1.to_be_bytes());
        b.extend(producer.2.to_be_bytes());
        b.extend(n.to_be_bytes());
        b.extend(records);
        let len = (b.len() - LOG_OVERHEAD) as i32;
        b[8..12].copy_from_slice(&len.to_be_bytes());
        let crc = crc32c::crc32c(&b[ATTRIBUTES_OFFSET..]);
        b[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
        b
    }

    fn put_varlong(out: &mut Vec<u8>, v: i64) {
        let mut z = ((v << 1) ^ (v >> 63)) as u64;
        loop {
            if z < 0x80 {
                out.push(z as u8);
                return;
            }
            out.push((z as u8 & 0x7f) | 0x80);
            z >>= 7;
        }
    }

    #[test]
    fn simple_batches_validate_and_decode() {
        let b = encode_simple(&[
            (Some(b"k".as_slice()), Some(b"v1".as_slice()), 1000),
            (None, Some(b"v2".as_slice()), 1005),
            (Some(b"k3".as_slice()), None, 999),
        ]);
        let h = validate_for_append(&b, 1 << 20).unwrap();
        assert_eq!(
            (h.record_count, h.max_timestamp, h.producer_id),
            (3, 1005, -1)
        );
        let payload = crate::records::payload(&b, &h).unwrap();
        let recs = crate::records::decode(&h, &payload).unwrap();
        let got: Vec<_> = recs
            .iter()
            .map(|r| (r.offset, r.timestamp, r.key, r.value))
            .collect();
        assert_eq!(
            got,
            vec![
                (0, 1000, Some(b"k".as_slice()), Some(b"v1".as_slice())),
                (1, 1005, None, Some(b"v2".as_slice())),
                (2, 999, Some(b"k3".as_slice()), None),
            ]
        );
    }

    #[test]
    fn valid_batch_round_trips_its_header() {
        let b = make_batch(3, 10, 1000, (7, 1, 5));
        let h = validate_for_append(&b, 1 << 20).unwrap();
        assert_eq!(h.record_count, 3);
        assert_eq!(h.last_offset_delta, 2);
        assert_eq!(h.max_timestamp, 1002);
        assert_eq!(
            (h.producer_id, h.producer_epoch, h.base_sequence),
            (7, 1, 5)
        );
        assert_eq!(h.last_sequence(), 7);
        assert_eq!(h.size, b.len());
    }

    #[test]
    fn assign_keeps_crc_valid_and_sets_offset() {
        let mut b = make_batch(2, 4, 0, (-1, -1, -1));
        assign(&mut b, 42, 3);
        let h = validate(&b, 1 << 20).unwrap();
        assert_eq!(h.base_offset, 42);
        assert_eq!(h.leader_epoch, 3);
        assert_eq!(h.next_offset(), 44);
    }

    #[test]
    fn log_append_time_rewrites_crc() {
        let mut b = make_batch(2, 4, 5, (-1, -1, -1));
        set_log_append_time(&mut b, 99_999);
        let h = validate(&b, 1 << 20).unwrap();
        assert!(h.is_log_append_time());
        assert_eq!(h.max_timestamp, 99_999);
    }

    #[test]
    fn flipped_byte_fails_crc() {
        let mut b = make_batch(2, 4, 5, (-1, -1, -1));
        let last = b.len() - 1;
        b[last] ^= 0xff;
        assert!(matches!(
            validate(&b, 1 << 20),
            Err(BatchError::CrcMismatch { .. })
        ));
    }

    #[test]
    fn oversized_length_is_rejected_before_reading_body() {
        let mut b = make_batch(1, 4, 5, (-1, -1, -1));
        b[8..12].copy_from_slice(&i32::MAX.to_be_bytes());
        assert!(matches!(
            validate(&b, 1 << 20),
            Err(BatchError::BadLength { .. })
        ));
    }

    #[test]
    fn count_mismatch_is_rejected() {
        let mut b = make_batch(2, 4, 5, (-1, -1, -1));
        b[RECORD_COUNT_OFFSET..RECORD_COUNT_OFFSET + 4].copy_from_slice(&5i32.to_be_bytes());
        let crc = crc32c::crc32c(&b[ATTRIBUTES_OFFSET..]);
        b[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
        assert!(matches!(
            validate_for_append(&b, 1 << 20),
            Err(BatchError::CountMismatch { .. })
        ));
    }

    #[test]
    fn sequence_wraps_at_i32_max() {
        let mut b = make_batch(3, 1, 0, (1, 0, i32::MAX - 1));
        assign(&mut b, 0, 0);
        let h = validate(&b, 1 << 20).unwrap();
        assert_eq!(h.last_sequence(), 0);
    }

    proptest! {
        #[test]
        fn iter_never_panics_and_stops_at_damage(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            let mut it = BatchIter::new(&data, 1 << 20, true);
            for _ in it.by_ref() {}
            prop_assert!(it.position() <= data.len());
        }

        #[test]
        fn truncation_at_every_byte_is_detected(n in 1i32..5, len in 0usize..40, cut_frac in 0.0f64..1.0) {
            let b = make_batch(n, len, 0, (-1, -1, -1));
            let cut = ((b.len() as f64) * cut_frac) as usize;
            prop_assert!(validate(&b[..cut], 1 << 20).is_err());
            let mut it = BatchIter::new(&b[..cut], 1 << 20, true);
            prop_assert!(it.next().is_none());
        }
    }
}
