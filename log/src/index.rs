//! Sparse offset and time indexes of one segment.
//!
//! The active segment keeps its index in memory and appends an entry every
//! `index.interval.bytes` of log; a sealed segment's index is written once,
//! atomically, as a framed file (`<base>.index`, kind `SIDX`, see
//! docs/FORMAT.md) that also records the segment's size, next offset and max
//! timestamp. On open the file is trusted only if its checksum is good and its
//! recorded size equals the segment file's size; otherwise the segment is
//! scanned and the index rebuilt.

use crate::batch::BatchHeader;
use crate::frame;

pub const INDEX_KIND: &[u8; 4] = b"SIDX";
pub const INDEX_VERSION: u16 = 1;
/// Upper bound on an index file's payload (an index of a 4 GiB segment at
/// one entry per 512 bytes would be 8M entries * 12 bytes).
pub const INDEX_LIMIT: usize = 128 << 20;

/// In-memory index of one segment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SegmentIndex {
    /// Bytes of the segment file that this index describes.
    pub size: u64,
    /// Offset after the last batch in the segment (= base offset if empty).
    pub next_offset: i64,
    /// Largest batch max-timestamp in the segment, -1 if none.
    pub max_timestamp: i64,
    /// Offset of the batch that carries `max_timestamp`.
    pub max_timestamp_offset: i64,
    /// (relative offset of a batch's base, byte position), ascending.
    pub offsets: Vec<(u32, u32)>,
    /// (max timestamp so far, relative offset of the batch that raised it),
    /// both ascending.
    pub times: Vec<(i64, u32)>,
    /// Bytes appended since the last offset entry.
    bytes_since_entry: u64,
}

impl SegmentIndex {
    pub fn new(base_offset: i64) -> Self {
        SegmentIndex {
            next_offset: base_offset,
            max_timestamp: -1,
            max_timestamp_offset: -1,
            ..Default::default()
        }
    }

    /// Records a batch appended at `position` (its base offset relative to
    /// the segment's `base`).
    pub fn on_append(&mut self, base: i64, batch: &BatchHeader, position: u64, interval: u64) {
        let (batch_base, next_offset, max_timestamp) =
            (batch.base_offset, batch.next_offset(), batch.max_timestamp);
        let size = batch.size as u64;
        let rel = (batch_base - base) as u32;
        if self.offsets.is_empty() || self.bytes_since_entry >= interval {
            self.offsets.push((rel, position as u32));
            self.bytes_since_entry = 0;
        }
        if max_timestamp > self.max_timestamp {
            self.max_timestamp = max_timestamp;
            self.max_timestamp_offset = batch_base;
            self.times.push((max_timestamp, rel));
        }
        self.bytes_since_entry += size;
        self.size = position + size;
        self.next_offset = next_offset;
    }

    /// Byte position of the last indexed batch whose base offset is at or
    /// before `offset` (0 if none).
    pub fn lookup(&self, base: i64, offset: i64) -> u64 {
        let rel = offset.saturating_sub(base).clamp(0, i64::from(u32::MAX)) as u32;
        let i = self.offsets.partition_point(|&(o, _)| o <= rel);
        if i == 0 {
            0
        } else {
            u64::from(self.offsets[i - 1].1)
        }
    }

    /// Offset from which to scan for the first record with timestamp >=
    /// `ts`: the batch that last raised the max timestamp below `ts`.
    pub fn lookup_time(&self, base: i64, ts: i64) -> i64 {
        let i = self.times.partition_point(|&(t, _)| t < ts);
        if i == 0 {
            base
        } else {
            base + i64::from(self.times[i - 1].1)
        }
    }

    /// Heap bytes held by the entries.
    pub fn entries_bytes(&self) -> usize {
        self.offsets.capacity() * std::mem::size_of::<(u32, u32)>()
            + self.times.capacity() * std::mem::size_of::<(i64, u32)>()
    }

    pub fn encode(&self, base: i64) -> Vec<u8> {
        let mut p = Vec::with_capacity(48 + self.offsets.len() * 8 + self.times.len() * 12);
        p.extend_from_slice(&base.to_be_bytes());
        p.extend_from_slice(&self.size.to_be_bytes());
        p.extend_from_slice(&self.next_offset.to_be_bytes());
        p.extend_from_slice(&self.max_timestamp.to_be_bytes());
        p.extend_from_slice(&self.max_timestamp_offset.to_be_bytes());
        p.extend_from_slice(&(self.offsets.len() as u32).to_be_bytes());
        p.extend_from_slice(&(self.times.len() as u32).to_be_bytes());
        for &(o, pos) in &self.offsets {
            p.extend_from_slice(&o.to_be_bytes());
            p.extend_from_slice(&pos.to_be_bytes());
        }
        for &(t, o) in &self.times {
            p.extend_from_slice(&t.to_be_bytes());
            p.extend_from_slice(&o.to_be_bytes());
        }
        frame::encode(INDEX_KIND, INDEX_VERSION, &p)
    }

    /// Bytes at the start of an index file that hold its summary.
    pub const SUMMARY_LEN: usize = frame::HEADER_LEN + 48;

    /// Reads the summary (size, next offset, max timestamp) from the first
    /// [`Self::SUMMARY_LEN`] bytes of an index file, without its entries and
    /// without verifying its checksum (done when the entries are loaded).
    pub fn decode_summary(what: &str, prefix: &[u8], base: i64) -> Result<Self, IndexError> {
        let (_, len) = frame::peek_header(what, prefix, INDEX_KIND, INDEX_VERSION)?;
        if len < 48 || prefix.len() < Self::SUMMARY_LEN {
            return Err(IndexError::Mismatch(format!(
                "{what}: index summary truncated"
            )));
        }
        let mut r = Reader {
            p: &prefix[frame::HEADER_LEN..Self::SUMMARY_LEN],
            at: 0,
        };
        if r.i64()? != base {
            return Err(IndexError::Mismatch(format!(
                "{what}: index is for another segment"
            )));
        }
        Ok(SegmentIndex {
            size: r.u64()?,
            next_offset: r.i64()?,
            max_timestamp: r.i64()?,
            max_timestamp_offset: r.i64()?,
            ..Default::default()
        })
    }

    /// Decodes an index file written by [`SegmentIndex::encode`] for the
    /// segment based at `base`.
    pub fn decode(what: &str, buf: &[u8], base: i64) -> Result<Self, IndexError> {
        let (_, p) = frame::decode(what, buf, INDEX_KIND, INDEX_VERSION, INDEX_LIMIT)?;
        let mut r = Reader { p, at: 0 };
        let file_base = r.i64()?;
        if file_base != base {
            return Err(IndexError::Mismatch(format!(
                "{what}: index is for base offset {file_base}, segment is {base}"
            )));
        }
        let size = r.u64()?;
        let next_offset = r.i64()?;
        let max_timestamp = r.i64()?;
        let max_timestamp_offset = r.i64()?;
        let n_off = r.u32()? as usize;
        let n_time = r.u32()? as usize;
        if n_off * 8 + n_time * 12 != p.len() - r.at {
            return Err(IndexError::Mismatch(format!(
                "{what}: entry counts do not match payload length"
            )));
        }
        let mut offsets = Vec::with_capacity(n_off);
        for _ in 0..n_off {
            offsets.push((r.u32()?, r.u32()?));
        }
        let mut times = Vec::with_capacity(n_time);
        for _ in 0..n_time {
            times.push((r.i64()?, r.u32()?));
        }
        Ok(SegmentIndex {
            size,
            next_offset,
            max_timestamp,
            max_timestamp_offset,
            offsets,
            times,
            bytes_since_entry: 0,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error(transparent)]
    Frame(#[from] frame::FrameError),
    #[error("{0}")]
    Mismatch(String),
}

struct Reader<'a> {
    p: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], IndexError> {
        let end = self.at + N;
        let s = self
            .p
            .get(self.at..end)
            .ok_or_else(|| IndexError::Mismatch("index payload truncated".into()))?;
        self.at = end;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    fn u32(&mut self) -> Result<u32, IndexError> {
        Ok(u32::from_be_bytes(self.take()?))
    }
    fn u64(&mut self) -> Result<u64, IndexError> {
        Ok(u64::from_be_bytes(self.take()?))
    }
    fn i64(&mut self) -> Result<i64, IndexError> {
        Ok(i64::from_be_bytes(self.take()?))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn build(n: usize) -> SegmentIndex {
        let mut idx = SegmentIndex::new(100);
        let mut pos = 0;
        for i in 0..n as i64 {
            let h = BatchHeader {
                base_offset: 100 + i * 10,
                size: 300,
                leader_epoch: 0,
                attributes: 0,
                last_offset_delta: 9,
                base_timestamp: 1000 + i,
                max_timestamp: 1000 + i,
                producer_id: -1,
                producer_epoch: -1,
                base_sequence: -1,
                record_count: 10,
            };
            idx.on_append(100, &h, pos, 1000);
            pos += 300;
        }
        idx
    }

    #[test]
    fn lookup_finds_indexed_position_at_or_before() {
        let idx = build(20);
        assert_eq!(idx.lookup(100, 100), 0);
        assert_eq!(idx.lookup(100, 99), 0);
        // entries every 4 batches (1200 bytes >= 1000): offsets 0,40,80,...
        assert_eq!(idx.offsets[1], (40, 1200));
        assert_eq!(idx.lookup(100, 145), 1200);
        assert_eq!(
            idx.lookup(100, 10_000),
            u64::from(idx.offsets.last().unwrap().1)
        );
    }

    #[test]
    fn time_lookup_starts_before_first_match() {
        let idx = build(20);
        assert_eq!(idx.lookup_time(100, 0), 100);
        assert_eq!(idx.lookup_time(100, 1005), 140);
    }

    proptest! {
        #[test]
        fn encode_decode_round_trip(n in 0usize..200) {
            let idx = build(n);
            let bytes = idx.encode(100);
            let back = SegmentIndex::decode("t", &bytes, 100).unwrap();
            prop_assert_eq!(back.offsets, idx.offsets);
            prop_assert_eq!(back.times, idx.times);
            prop_assert_eq!(back.size, idx.size);
            prop_assert_eq!(back.next_offset, idx.next_offset);
        }

        #[test]
        fn corrupted_index_is_rejected(n in 1usize..50, flip in any::<prop::sample::Index>()) {
            let bytes = build(n).encode(100);
            let mut bad = bytes.clone();
            let i = flip.index(bad.len());
            bad[i] ^= 0x40;
            prop_assert!(SegmentIndex::decode("t", &bad, 100).is_err());
        }
    }
}
