//! # sediment-log: the storage engine for hot partitions
//!
//! Sediment keeps each partition as a directory of segment files holding Kafka
//! record batches (format v2) exactly as producers sent them, with the
//! broker's base offset and leader epoch written in. A Fetch is answered
//! from the file's bytes.
//!
//! ```text
//!  produce bytes ──► batch::validate_for_append (CRC32C, bounds, counts)
//!                      │
//!                      ▼
//!  Partition::append ──► active Segment (pwrite) + in-memory SegmentIndex
//!                      │                     │ roll at segment.bytes / segment.ms
//!                      ▼                     ▼
//!  FlushQueue ──► flusher threads: fdatasync (group commit), seal: index file
//!                      │                        + producer snapshot
//!                      ▼
//!               high watermark advances ──► acks answered, fetches see data
//! ```
//!
//! ## Invariants
//! - With [`FlushPolicy::Fsync`] (the default) an appended batch becomes
//!   visible (below the high watermark) and acknowledgeable only after an
//!   `fdatasync` covers it.
//! - Offsets are contiguous: every batch's base offset is the previous
//!   batch's last offset + 1; recovery enforces it.
//! - Nothing read from disk is trusted: every metadata file is framed with
//!   magic, kind, version, length bound and CRC ([`frame`]); batches are
//!   CRC-checked when recovered. Corrupt is never treated as empty.
//!
//! ## Types most users need
//! [`LogManager`] (open a data directory, create/delete/list topics),
//! [`Topic`], [`Partition`] (append, read, offsets), [`TopicConfig`].

pub mod batch;
mod config;
pub mod frame;
mod index;
pub mod keys;
mod manager;
mod partition;
mod producer;
pub mod records;
mod segment;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use config::{TimestampType, TopicConfig, CONFIG_NAMES, MAX_SEGMENT_BYTES};
pub use manager::{LogConfig, LogManager, Topic, TopicMeta};
pub use partition::{AppendResult, ArchiveRange, Partition, ReadResult, SegmentInfo};

/// When appended bytes are fsynced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushPolicy {
    /// fdatasync before acknowledging (acks=1/all) and before consumers see
    /// the data; concurrent producers share each fsync (group commit).
    Fsync,
    /// fdatasync every interval; acks are answered after the write to the
    /// page cache. A machine crash (not a process crash) can lose up to one
    /// interval of acknowledged records.
    Interval(Duration),
}

/// Errors of the storage engine. Mapped to Kafka error codes in `ingest/`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("corrupt data in {path} at byte {position}: {reason}")]
    Corrupt {
        path: PathBuf,
        position: u64,
        reason: String,
    },
    #[error("invalid record batch: {0}")]
    InvalidBatch(batch::BatchError),
    #[error("record batch of {size} bytes exceeds max.message.bytes {max}")]
    MessageTooLarge { size: usize, max: usize },
    #[error("offset {offset} is out of range [{start}, {end}]")]
    OffsetOutOfRange { offset: i64, start: i64, end: i64 },
    #[error("duplicate sequence inside a multi-batch request")]
    DuplicateSequence,
    #[error("producer {producer_id}: out of order sequence {got}, expected {expected}")]
    OutOfOrderSequence {
        producer_id: i64,
        expected: i32,
        got: i32,
    },
    #[error("producer {producer_id}: epoch {epoch} is older than current epoch {current}")]
    InvalidProducerEpoch {
        producer_id: i64,
        epoch: i16,
        current: i16,
    },
    #[error("{message}")]
    InvalidConfig { message: String },
    #[error("invalid topic name '{name}': {reason}")]
    InvalidTopic { name: String, reason: String },
    #[error("invalid partition count {count}: must be between 1 and {max}")]
    InvalidPartitions { count: i32, max: i32 },
    #[error("topic '{name}' already exists")]
    TopicExists { name: String },
    #[error("topic '{name}' does not exist")]
    UnknownTopic { name: String },
    #[error("partition {topic}-{partition} refuses writes after a failed fsync; restart the broker to recover it")]
    PartitionFailed { topic: String, partition: i32 },
    #[error("partition has no active segment")]
    NoActiveSegment,
    #[error("timed out waiting for the write to become durable")]
    Timeout,
    #[error("archive unavailable: {message}")]
    ArchiveUnavailable { message: String },
    #[error("the log is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    Frame(#[from] frame::FrameError),
}

impl LogError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        LogError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Partitions queued for fsync, each with when it was queued.
type Queued = VecDeque<(Arc<Partition>, Instant)>;

/// Partitions with unsynced appends, served by the flusher threads.
#[derive(Debug, Default)]
pub struct FlushQueue {
    /// The queue, and whether the log is closing.
    queue: parking_lot::Mutex<(Queued, bool)>,
    cv: parking_lot::Condvar,
    /// From a partition's queueing to a flusher taking it.
    wait: Histogram,
}

impl FlushQueue {
    pub fn push(&self, p: Arc<Partition>) {
        self.queue.lock().0.push_back((p, Instant::now()));
        self.cv.notify_one();
    }

    /// Blocks until a partition needs flushing; None once shut down and empty.
    fn pop(&self) -> Option<Arc<Partition>> {
        let mut q = self.queue.lock();
        loop {
            if let Some((p, at)) = q.0.pop_front() {
                self.wait.record(at.elapsed());
                return Some(p);
            }
            if q.1 {
                return None;
            }
            self.cv.wait(&mut q);
        }
    }

    fn drain(&self) -> Vec<Arc<Partition>> {
        let now = Instant::now();
        self.queue
            .lock()
            .0
            .drain(..)
            .map(|(p, at)| {
                self.wait.record(now.duration_since(at));
                p
            })
            .collect()
    }

    fn shutdown(&self) {
        self.queue.lock().1 = true;
        self.cv.notify_all();
    }

    fn is_shutdown(&self) -> bool {
        self.queue.lock().1
    }
}

/// A fixed-bucket latency histogram (Prometheus-style, cumulative when
/// exported), updated with relaxed atomics.
#[derive(Debug)]
pub struct Histogram {
    counts: [std::sync::atomic::AtomicU64; HISTOGRAM_BOUNDS_US.len() + 1],
    sum_us: std::sync::atomic::AtomicU64,
}

/// Upper bounds of the histogram buckets, in microseconds.
pub const HISTOGRAM_BOUNDS_US: [u64; 20] = [
    50, 100, 250, 500, 750, 1_000, 1_500, 2_000, 3_000, 4_000, 6_000, 8_000, 16_000, 32_000,
    64_000, 128_000, 512_000, 1_000_000, 5_000_000, 30_000_000,
];

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: std::array::from_fn(|_| std::sync::atomic::AtomicU64::new(0)),
            sum_us: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn record(&self, d: Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        let us = d.as_micros().min(u128::from(u64::MAX)) as u64;
        let i = HISTOGRAM_BOUNDS_US.partition_point(|&b| b < us);
        self.counts[i].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
    }

    /// (cumulative count per bucket bound, total count, sum in µs).
    pub fn snapshot(&self) -> (Vec<(u64, u64)>, u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let mut acc = 0;
        let mut buckets = Vec::with_capacity(HISTOGRAM_BOUNDS_US.len());
        for (i, b) in HISTOGRAM_BOUNDS_US.iter().enumerate() {
            acc += self.counts[i].load(Relaxed);
            buckets.push((*b, acc));
        }
        acc += self.counts[HISTOGRAM_BOUNDS_US.len()].load(Relaxed);
        (buckets, acc, self.sum_us.load(Relaxed))
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
