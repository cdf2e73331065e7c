//! `INSERT INTO stream ...`: rows become JSON records on the stream's
//! topic, appended like a Kafka producer's (acks=all: the statement
//! completes once the records are durable).
//!
//! The declared columns form the JSON value (NULLs written as `null`).
//! `_key` is the record key; `_partition` picks the partition, or else the
//! key does with Kafka's default partitioner (murmur2), so a Kafka producer
//! and an INSERT put a key in the same partition; keyless rows go round
//! robin. `_timestamp` is the record time (CreateTime), or now. `_offset`
//! is assigned by the log and may not be given.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{Int32Type, Int64Type, SchemaRef, TimestampMillisecondType};
use datafusion::common::{DataFusionError, Result};
use datafusion::datasource::sink::DataSink;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::{DisplayAs, DisplayFormatType};
use futures::StreamExt;
use sediment_log::{batch, LogManager};

use crate::SqlError;

/// How long an INSERT waits for its records to become durable.
const DURABLE_TIMEOUT: Duration = Duration::from_secs(30);

/// (key, JSON value, timestamp ms) of one record to append.
pub(crate) type OwnedRecord = (Option<Vec<u8>>, Option<Vec<u8>>, i64);

pub struct StreamSink {
    stream: String,
    topic: String,
    /// The stream's full schema (pseudo-columns first).
    schema: SchemaRef,
    log: Arc<LogManager>,
    round_robin: AtomicUsize,
}

impl fmt::Debug for StreamSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StreamSink({} -> {})", self.stream, self.topic)
    }
}

impl DisplayAs for StreamSink {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "StreamSink: stream={} topic={} format=JSON",
            self.stream, self.topic
        )
    }
}

impl StreamSink {
    pub fn new(stream: &str, topic: &str, schema: SchemaRef, log: Arc<LogManager>) -> Self {
        StreamSink {
            stream: stream.to_string(),
            topic: topic.to_string(),
            schema,
            log,
            round_robin: AtomicUsize::new(0),
        }
    }

    /// Tombstones (a key and no value) of `keys`, by partition.
    pub(crate) fn tombstones<'a>(
        keys: impl Iterator<Item = &'a String>,
        partitions: usize,
        now: i64,
    ) -> BTreeMap<i32, Vec<OwnedRecord>> {
        let mut out: BTreeMap<i32, Vec<_>> = BTreeMap::new();
        for k in keys {
            let k = k.as_bytes().to_vec();
            out.entry(key_partition(&k, partitions))
                .or_default()
                .push((Some(k), None, now));
        }
        out
    }

    /// Records of one batch, by partition: (key, JSON value, timestamp).
    pub(crate) fn records(
        &self,
        b: &RecordBatch,
        partitions: usize,
        now: i64,
    ) -> Result<BTreeMap<i32, Vec<OwnedRecord>>> {
        let rows = b.num_rows();
        let part = b.column(0).as_primitive::<Int32Type>();
        let offset = b.column(1).as_primitive::<Int64Type>();
        let ts = b.column(2).as_primitive::<TimestampMillisecondType>();
        let key = b.column(3).as_string::<i32>();
        if offset.null_count() < rows {
            return Err(DataFusionError::External(Box::new(SqlError::new(
                "428C9",
                "_offset is assigned by the log: leave it out of INSERT",
            ))));
        }
        let values = json_lines(&b.project(&(4..b.num_columns()).collect::<Vec<_>>())?)?;
        let mut out: BTreeMap<i32, Vec<_>> = BTreeMap::new();
        for (row, value) in values.into_iter().enumerate() {
            let k = key
                .is_valid(row)
                .then(|| key.value(row).as_bytes().to_vec());
            let p = if part.is_valid(row) {
                let p = part.value(row);
                if p < 0 || p as usize >= partitions {
                    return Err(DataFusionError::External(Box::new(
                        SqlError::invalid_option(format!(
                            "_partition {p} does not exist: topic '{}' has {partitions}",
                            self.topic
                        )),
                    )));
                }
                p
            } else if let Some(k) = &k {
                key_partition(k, partitions)
            } else {
                (self.round_robin.fetch_add(1, Ordering::Relaxed) % partitions) as i32
            };
            let t = if ts.is_valid(row) { ts.value(row) } else { now };
            out.entry(p).or_default().push((k, Some(value), t));
        }
        Ok(out)
    }
}

/// One JSON object per row (explicit nulls), in row order.
fn json_lines(b: &RecordBatch) -> Result<Vec<Vec<u8>>> {
    let mut buf = Vec::new();
    {
        let mut w = arrow_json::WriterBuilder::new()
            .with_explicit_nulls(true)
            .build::<_, arrow_json::writer::LineDelimited>(&mut buf);
        w.write(b)?;
        w.finish()?;
    }
    let mut lines: Vec<Vec<u8>> = buf
        .split(|c| *c == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    // A batch with no declared columns still makes one (empty) object a row.
    if lines.len() != b.num_rows() {
        lines = vec![b"{}".to_vec(); b.num_rows()];
    }
    Ok(lines)
}

/// The partition of a keyed record, as Kafka's default partitioner picks.
fn key_partition(key: &[u8], partitions: usize) -> i32 {
    (murmur2(key) & 0x7fff_ffff) as i32 % partitions as i32
}

/// Kafka's murmur2 (the Java client's default partitioner for keyed
/// records).
pub fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len() as u32;
    let mut h: u32 = 0x9747_b28c ^ len;
    let chunks = data.chunks_exact(4);
    let tail = chunks.remainder();
    for c in chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    match tail.len() {
        3 => {
            h ^= u32::from(tail[2]) << 16;
            h ^= u32::from(tail[1]) << 8;
            h ^= u32::from(tail[0]);
            h = h.wrapping_mul(M);
        }
        2 => {
            h ^= u32::from(tail[1]) << 8;
            h ^= u32::from(tail[0]);
            h = h.wrapping_mul(M);
        }
        1 => {
            h ^= u32::from(tail[0]);
            h = h.wrapping_mul(M);
        }
        _ => {}
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

fn external(e: impl std::error::Error + Send + Sync + 'static) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

#[async_trait]
impl DataSink for StreamSink {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    async fn write_all(
        &self,
        mut data: SendableRecordBatchStream,
        _context: &Arc<TaskContext>,
    ) -> Result<u64> {
        let topic = self.log.topic(&self.topic).ok_or_else(|| {
            external(SqlError::new(
                "42P01",
                format!(
                    "topic '{}' of stream '{}' no longer exists",
                    self.topic, self.stream
                ),
            ))
        })?;
        let partitions = topic.partitions.len();
        let mut written = 0u64;
        // Offsets to wait for, per partition.
        let mut ends: BTreeMap<i32, i64> = BTreeMap::new();
        while let Some(b) = data.next().await {
            let b = b?;
            let now = sediment_log::now_ms();
            for (p, recs) in self.records(&b, partitions, now)? {
                let refs: Vec<batch::SimpleRecord<'_>> = recs
                    .iter()
                    .map(|(k, v, t)| (k.as_deref(), v.as_deref(), *t))
                    .collect();
                let bytes = batch::encode_simple(&refs);
                let partition = topic
                    .partition(p)
                    .cloned()
                    .ok_or_else(|| DataFusionError::Internal(format!("partition {p}")))?;
                let res = tokio::task::spawn_blocking(move || partition.append(&bytes, now))
                    .await
                    .map_err(external)?
                    .map_err(external)?;
                ends.insert(p, res.end_offset);
                written += recs.len() as u64;
            }
        }
        for (p, end) in ends {
            if let Some(partition) = topic.partition(p) {
                partition
                    .wait_durable(end, DURABLE_TIMEOUT)
                    .await
                    .map_err(external)?;
            }
        }
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::murmur2;

    #[test]
    fn murmur2_matches_the_java_client() {
        // Values from Kafka's UtilsTest.testMurmur2.
        let cases: [(&[u8], i32); 3] = [
            (b"21", -973932308),
            (b"foobar", -790332482),
            (b"a-little-bit-long-string", -985981536),
        ];
        for (input, want) in cases {
            assert_eq!(
                murmur2(input) as i32,
                want,
                "{:?}",
                std::str::from_utf8(input)
            );
        }
    }
}
