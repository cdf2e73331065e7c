//! Idempotent-producer state of one partition.
//!
//! For each producer id the partition remembers the producer epoch and the
//! sequence ranges of its last [`MAX_CACHED_BATCHES`] batches, as Kafka does.
//! A retried batch whose sequence range matches a cached one is a duplicate:
//! it is not appended again and the producer is told the original offset.
//!
//! The state is snapshotted (framed file `<offset>.snapshot`, kind `PSNP`)
//! when a segment rolls and at a clean stop; after a crash it is rebuilt from
//! the newest snapshot plus the batches after it.

use std::collections::{HashMap, VecDeque};

use crate::batch::BatchHeader;
use crate::frame;

pub const MAX_CACHED_BATCHES: usize = 5;
pub const SNAPSHOT_KIND: &[u8; 4] = b"PSNP";
pub const SNAPSHOT_VERSION: u16 = 1;
pub const SNAPSHOT_LIMIT: usize = 256 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachedBatch {
    pub first_seq: i32,
    pub last_seq: i32,
    pub base_offset: i64,
    pub last_offset: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProducerEntry {
    pub epoch: i16,
    pub batches: VecDeque<CachedBatch>,
    pub last_timestamp: i64,
}

/// What the sequence check decided for a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceCheck {
    /// Append it.
    Accept,
    /// Already appended at this base offset; do not append again.
    Duplicate { base_offset: i64 },
    /// The epoch is older than the producer's current one.
    FencedEpoch { current: i16 },
    /// The sequence does not follow the last appended one.
    OutOfOrder { expected: i32, got: i32 },
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProducerState {
    pub producers: HashMap<i64, ProducerEntry>,
}

fn next_seq(s: i32) -> i32 {
    if s == i32::MAX {
        0
    } else {
        s + 1
    }
}

impl ProducerState {
    pub fn check(&self, h: &BatchHeader) -> SequenceCheck {
        if h.producer_id < 0 {
            return SequenceCheck::Accept;
        }
        let Some(entry) = self.producers.get(&h.producer_id) else {
            return SequenceCheck::Accept;
        };
        if h.producer_epoch < entry.epoch {
            return SequenceCheck::FencedEpoch {
                current: entry.epoch,
            };
        }
        if h.producer_epoch > entry.epoch {
            return if h.base_sequence == 0 {
                SequenceCheck::Accept
            } else {
                SequenceCheck::OutOfOrder {
                    expected: 0,
                    got: h.base_sequence,
                }
            };
        }
        let last_seq = h.last_sequence();
        if let Some(b) = entry
            .batches
            .iter()
            .find(|b| b.first_seq == h.base_sequence && b.last_seq == last_seq)
        {
            return SequenceCheck::Duplicate {
                base_offset: b.base_offset,
            };
        }
        match entry.batches.back() {
            Some(last) if next_seq(last.last_seq) != h.base_sequence => SequenceCheck::OutOfOrder {
                expected: next_seq(last.last_seq),
                got: h.base_sequence,
            },
            _ => SequenceCheck::Accept,
        }
    }

    /// Records an appended batch (with its broker-assigned base offset).
    pub fn update(&mut self, h: &BatchHeader) {
        if h.producer_id < 0 {
            return;
        }
        let entry = self.producers.entry(h.producer_id).or_default();
        if h.producer_epoch != entry.epoch {
            entry.epoch = h.producer_epoch;
            entry.batches.clear();
        }
        entry.batches.push_back(CachedBatch {
            first_seq: h.base_sequence,
            last_seq: h.last_sequence(),
            base_offset: h.base_offset,
            last_offset: h.last_offset(),
        });
        while entry.batches.len() > MAX_CACHED_BATCHES {
            entry.batches.pop_front();
        }
        entry.last_timestamp = h.max_timestamp;
    }

    pub fn encode(&self, offset: i64) -> Vec<u8> {
        let mut p = Vec::new();
        p.extend_from_slice(&offset.to_be_bytes());
        p.extend_from_slice(&(self.producers.len() as u32).to_be_bytes());
        let mut ids: Vec<_> = self.producers.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let e = &self.producers[&id];
            p.extend_from_slice(&id.to_be_bytes());
            p.extend_from_slice(&e.epoch.to_be_bytes());
            p.extend_from_slice(&e.last_timestamp.to_be_bytes());
            p.push(e.batches.len() as u8);
            for b in &e.batches {
                p.extend_from_slice(&b.first_seq.to_be_bytes());
                p.extend_from_slice(&b.last_seq.to_be_bytes());
                p.extend_from_slice(&b.base_offset.to_be_bytes());
                p.extend_from_slice(&b.last_offset.to_be_bytes());
            }
        }
        frame::encode(SNAPSHOT_KIND, SNAPSHOT_VERSION, &p)
    }

    /// Decodes a snapshot; returns the offset it covers up to and the state.
    pub fn decode(what: &str, buf: &[u8]) -> Result<(i64, Self), String> {
        let (_, p) = frame::decode(what, buf, SNAPSHOT_KIND, SNAPSHOT_VERSION, SNAPSHOT_LIMIT)
            .map_err(|e| e.to_string())?;
        let mut at = 0usize;
        let mut take = |n: usize| -> Result<&[u8], String> {
            let s = p
                .get(at..at + n)
                .ok_or_else(|| format!("{what}: snapshot truncated"))?;
            at += n;
            Ok(s)
        };
        let be64 = |s: &[u8]| i64::from_be_bytes(s.try_into().unwrap_or([0; 8]));
        let be32 = |s: &[u8]| i32::from_be_bytes(s.try_into().unwrap_or([0; 4]));
        let offset = be64(take(8)?);
        let n = u32::from_be_bytes(take(4)?.try_into().unwrap_or([0; 4])) as usize;
        if n > p.len() / 19 + 1 {
            return Err(format!("{what}: producer count {n} exceeds payload"));
        }
        let mut state = ProducerState::default();
        for _ in 0..n {
            let id = be64(take(8)?);
            let epoch = i16::from_be_bytes(take(2)?.try_into().unwrap_or([0; 2]));
            let last_timestamp = be64(take(8)?);
            let nb = take(1)?[0] as usize;
            let mut batches = VecDeque::with_capacity(nb.min(MAX_CACHED_BATCHES));
            for _ in 0..nb {
                batches.push_back(CachedBatch {
                    first_seq: be32(take(4)?),
                    last_seq: be32(take(4)?),
                    base_offset: be64(take(8)?),
                    last_offset: be64(take(8)?),
                });
            }
            state.producers.insert(
                id,
                ProducerEntry {
                    epoch,
                    batches,
                    last_timestamp,
                },
            );
        }
        Ok((offset, state))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn header(pid: i64, epoch: i16, seq: i32, n: i32, base: i64) -> BatchHeader {
        BatchHeader {
            base_offset: base,
            size: 100,
            leader_epoch: 0,
            attributes: 0,
            last_offset_delta: n - 1,
            base_timestamp: 0,
            max_timestamp: 0,
            producer_id: pid,
            producer_epoch: epoch,
            base_sequence: seq,
            record_count: n,
        }
    }

    #[test]
    fn retried_batch_is_a_duplicate_with_original_offset() {
        let mut s = ProducerState::default();
        let h = header(1, 0, 0, 5, 100);
        assert_eq!(s.check(&h), SequenceCheck::Accept);
        s.update(&h);
        assert_eq!(
            s.check(&header(1, 0, 0, 5, 999)),
            SequenceCheck::Duplicate { base_offset: 100 }
        );
        assert_eq!(s.check(&header(1, 0, 5, 1, 999)), SequenceCheck::Accept);
    }

    #[test]
    fn gap_in_sequence_is_out_of_order() {
        let mut s = ProducerState::default();
        s.update(&header(1, 0, 0, 5, 0));
        assert_eq!(
            s.check(&header(1, 0, 7, 1, 0)),
            SequenceCheck::OutOfOrder {
                expected: 5,
                got: 7
            }
        );
    }

    #[test]
    fn older_epoch_is_fenced_and_new_epoch_restarts_at_zero() {
        let mut s = ProducerState::default();
        s.update(&header(1, 3, 0, 1, 0));
        assert_eq!(
            s.check(&header(1, 2, 1, 1, 0)),
            SequenceCheck::FencedEpoch { current: 3 }
        );
        assert_eq!(s.check(&header(1, 4, 0, 1, 0)), SequenceCheck::Accept);
        assert!(matches!(
            s.check(&header(1, 4, 3, 1, 0)),
            SequenceCheck::OutOfOrder { .. }
        ));
    }

    #[test]
    fn snapshot_round_trips() {
        let mut s = ProducerState::default();
        for i in 0..8 {
            s.update(&header(1, 0, i * 2, 2, i64::from(i) * 2));
        }
        s.update(&header(9, 2, 0, 1, 50));
        let bytes = s.encode(51);
        let (off, back) = ProducerState::decode("t", &bytes).unwrap();
        assert_eq!(off, 51);
        assert_eq!(back, s);
        assert_eq!(back.producers[&1].batches.len(), MAX_CACHED_BATCHES);
    }
}
