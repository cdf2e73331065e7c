//! `sediment produce TOPIC`: lines from stdin become records.
//!
//! Lines are split into key and value at the first `--key-separator`,
//! assigned a partition (explicit, murmur2 of the key, or sticky for unkeyed
//! records), collected per partition into RecordBatch v2 batches of up to
//! `--batch-size` records and sent when a batch is full, when `--linger-ms`
//! has passed since the oldest unsent record, and at end of input.
//!
//! With `--acks all` the producer is idempotent: it gets a producer id and
//! epoch from InitProducerId and numbers each partition's records from 0, so
//! a batch retried after a lost response is written once. A batch is never
//! sent while an earlier batch of the same partition is unanswered, so the
//! sequence numbers the broker sees are always contiguous; after a batch
//! fails for good the producer takes a new producer id, which restarts every
//! partition's sequence at 0.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, ensure, Context, Result};
use bytes::{Bytes, BytesMut};
use clap::{Args, ValueEnum};
use indexmap::IndexMap;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{InitProducerIdRequest, ProduceRequest, ProducerId, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use std::io::Read;
use tokio::time::Instant;

use super::client::{describe_error, is_retriable, Client, PartitionInfo};
use super::partitioner::{partition_for_key, StickyPartitioner};

const READ_CHUNK: usize = 64 * 1024;
const PRODUCE_TIMEOUT_MS: i32 = 30_000;
const MAX_ATTEMPTS: u32 = 5;
const RETRY_BACKOFF: Duration = Duration::from_millis(200);
/// Kafka's DUPLICATE_SEQUENCE_NUMBER: the broker already has this batch.
const DUPLICATE_SEQUENCE_NUMBER: i16 = 46;

/// Which acknowledgement the producer waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Acks {
    /// Don't wait for the broker.
    #[value(name = "0")]
    None,
    /// Wait for the leader's write.
    #[value(name = "1")]
    Leader,
    /// Wait for all in-sync replicas (and make the producer idempotent).
    #[value(name = "all", alias = "-1")]
    All,
}

impl Acks {
    fn wire(self) -> i16 {
        match self {
            Acks::None => 0,
            Acks::Leader => 1,
            Acks::All => -1,
        }
    }
}

/// Record batch compression codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompressionArg {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl From<CompressionArg> for Compression {
    fn from(c: CompressionArg) -> Self {
        match c {
            CompressionArg::None => Compression::None,
            CompressionArg::Gzip => Compression::Gzip,
            CompressionArg::Snappy => Compression::Snappy,
            CompressionArg::Lz4 => Compression::Lz4,
            CompressionArg::Zstd => Compression::Zstd,
        }
    }
}

/// `sediment produce TOPIC`
#[derive(Debug, Clone, Args)]
pub struct ProduceArgs {
    /// Topic to write to.
    pub topic: String,
    /// Split each line into key and value at the first occurrence of this
    /// string; lines without it are rejected.
    #[arg(long, value_parser = non_empty)]
    pub key_separator: Option<String>,
    /// Write every record to this partition.
    #[arg(long, value_parser = clap::value_parser!(i32).range(0..))]
    pub partition: Option<i32>,
    /// Acknowledgements to wait for: 0, 1 or all.
    #[arg(long, value_enum, default_value_t = Acks::All, allow_hyphen_values = true)]
    pub acks: Acks,
    /// Compression codec for record batches.
    #[arg(long, value_enum, default_value_t = CompressionArg::None)]
    pub compression: CompressionArg,
    /// Maximum records per batch.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub batch_size: u32,
    /// How long to wait for more records before sending a partial batch.
    #[arg(long, default_value_t = 5)]
    pub linger_ms: u64,
}

fn non_empty(s: &str) -> Result<String, String> {
    if s.is_empty() {
        Err("must not be empty".to_owned())
    } else {
        Ok(s.to_owned())
    }
}

/// Stdin read in chunks by a dedicated thread.
///
/// Blocking reads on a thread of their own, because tokio's async stdin
/// needs its `io-std` feature (off in the workspace) and is itself a
/// blocking read on a helper thread. The thread ends at end of input, on a
/// read error, or once this handle is dropped and its current read returns;
/// it is detached so that an interactive stdin never holds up exit.
struct StdinChunks {
    rx: tokio::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
}

impl StdinChunks {
    fn spawn() -> Result<Self> {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        std::thread::Builder::new()
            .name("stdin-reader".to_owned())
            .spawn(move || {
                let mut stdin = std::io::stdin().lock();
                loop {
                    let mut chunk = vec![0u8; READ_CHUNK];
                    let item = match stdin.read(&mut chunk) {
                        Ok(0) => return,
                        Ok(n) => {
                            chunk.truncate(n);
                            Ok(chunk)
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => Err(e),
                    };
                    let failed = item.is_err();
                    if tx.blocking_send(item).is_err() || failed {
                        return;
                    }
                }
            })
            .context("starting the stdin reader thread")?;
        Ok(StdinChunks { rx })
    }

    /// The next chunk; `None` at end of input. Cancel-safe.
    async fn next(&mut self) -> Option<std::io::Result<Vec<u8>>> {
        self.rx.recv().await
    }
}

/// Takes the next complete line out of `buf`, without its `\n` (or `\r\n`).
pub fn take_line(buf: &mut BytesMut) -> Option<Bytes> {
    let pos = buf.iter().position(|&b| b == b'\n')?;
    let mut line = buf.split_to(pos + 1);
    line.truncate(pos);
    if line.last() == Some(&b'\r') {
        line.truncate(pos - 1);
    }
    Some(line.freeze())
}

/// Splits `line` at the first `sep` into (key, value).
pub fn split_key(line: &Bytes, sep: &[u8]) -> Option<(Bytes, Bytes)> {
    if sep.is_empty() || line.len() < sep.len() {
        return None;
    }
    let i = line.windows(sep.len()).position(|w| w == sep)?;
    Some((line.slice(..i), line.slice(i + sep.len()..)))
}

#[derive(Debug, Clone)]
struct PendingRecord {
    key: Option<Bytes>,
    value: Bytes,
    timestamp: i64,
}

/// Producer id and epoch of an idempotent producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerIdentity {
    pub id: i64,
    pub epoch: i16,
}

/// Encodes one RecordBatch v2 holding `records`; with `producer`, the batch
/// carries its id/epoch and sequences from `base_sequence`.
fn encode_batch(
    records: &[PendingRecord],
    producer: Option<ProducerIdentity>,
    base_sequence: i32,
    compression: Compression,
) -> Result<Bytes> {
    let (pid, epoch) = producer.map_or((-1, -1), |p| (p.id, p.epoch));
    let records: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let i = i32::try_from(i).unwrap_or(i32::MAX);
            Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id: pid,
                producer_epoch: epoch,
                timestamp_type: TimestampType::Creation,
                offset: i64::from(i),
                // Without a producer id the batch's base sequence must be -1.
                // The encoder starts a new batch whenever offset - sequence
                // changes, so sequences must step with offsets either way.
                sequence: if producer.is_some() {
                    base_sequence.wrapping_add(i)
                } else {
                    i - 1
                },
                timestamp: r.timestamp,
                key: r.key.clone(),
                value: Some(r.value.clone()),
                headers: IndexMap::new(),
            }
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )
    .context("encoding record batch")?;
    Ok(buf.freeze())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

struct Batch {
    partition: i32,
    count: u64,
    bytes: Bytes,
}

enum Outcome {
    Ok,
    Retry(String),
    Failed(String),
}

struct Producer {
    client: Client,
    topic: String,
    partitions: Vec<PartitionInfo>,
    acks: Acks,
    compression: Compression,
    batch_size: usize,
    identity: Option<ProducerIdentity>,
    pending: BTreeMap<i32, Vec<PendingRecord>>,
    sequences: BTreeMap<i32, i32>,
    produced: u64,
    failed: u64,
}

impl Producer {
    fn has_pending(&self) -> bool {
        self.pending.values().any(|p| !p.is_empty())
    }

    fn leader_of(&self, partition: i32) -> i32 {
        self.partitions
            .iter()
            .find(|p| p.partition == partition)
            .map_or(-1, |p| p.leader)
    }

    async fn init_producer_id(&mut self) -> Result<ProducerIdentity> {
        // An idempotent (non-transactional) producer: no transactional id,
        // and any broker can answer.
        let request = InitProducerIdRequest::default()
            .with_transactional_id(None)
            .with_transaction_timeout_ms(i32::MAX)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let response = self.client.bootstrap().send(&request).await?;
            match describe_error(response.error_code, None) {
                None => {
                    return Ok(ProducerIdentity {
                        id: response.producer_id.0,
                        epoch: response.producer_epoch,
                    })
                }
                Some(e) if is_retriable(response.error_code) && attempt < MAX_ATTEMPTS => {
                    tracing::debug!("InitProducerId: {e}; retrying");
                    tokio::time::sleep(RETRY_BACKOFF).await;
                }
                Some(e) => bail!("InitProducerId failed: {e}"),
            }
        }
    }

    fn push(&mut self, partition: i32, record: PendingRecord) -> bool {
        let batch = self.pending.entry(partition).or_default();
        batch.push(record);
        batch.len() >= self.batch_size
    }

    async fn flush_all(&mut self) -> Result<()> {
        let parts: Vec<i32> = self
            .pending
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(p, _)| *p)
            .collect();
        self.flush(&parts).await
    }

    /// Sends the pending records of `partitions`, retrying retriable
    /// failures, and counts what was produced and what failed.
    async fn flush(&mut self, partitions: &[i32]) -> Result<()> {
        let mut batches = Vec::new();
        for &p in partitions {
            let records = self.pending.remove(&p).unwrap_or_default();
            if records.is_empty() {
                continue;
            }
            let base_sequence = self.sequences.get(&p).copied().unwrap_or(0);
            let bytes = encode_batch(&records, self.identity, base_sequence, self.compression)?;
            batches.push(Batch {
                partition: p,
                count: records.len() as u64,
                bytes,
            });
        }
        let mut permanent_failure = false;
        let mut attempt = 0;
        while !batches.is_empty() {
            attempt += 1;
            let mut by_leader: BTreeMap<i32, Vec<Batch>> = BTreeMap::new();
            for b in batches.drain(..) {
                by_leader
                    .entry(self.leader_of(b.partition))
                    .or_default()
                    .push(b);
            }
            let mut retry = Vec::new();
            for (leader, group) in by_leader {
                let outcomes = match self.send(leader, &group).await {
                    Ok(o) => o,
                    Err(e) => {
                        let reason = format!("{e:#}");
                        if let Err(e) = self.client.reset(leader).await {
                            tracing::debug!("reconnecting to broker {leader}: {e:#}");
                        }
                        group
                            .iter()
                            .map(|_| Outcome::Retry(reason.clone()))
                            .collect()
                    }
                };
                for (batch, outcome) in group.into_iter().zip(outcomes) {
                    match outcome {
                        Outcome::Ok => {
                            self.produced += batch.count;
                            if self.identity.is_some() {
                                let seq = self.sequences.entry(batch.partition).or_insert(0);
                                let count = i32::try_from(batch.count).unwrap_or(i32::MAX);
                                *seq = seq.wrapping_add(count) & i32::MAX;
                            }
                        }
                        Outcome::Retry(reason) if attempt < MAX_ATTEMPTS => {
                            tracing::debug!(
                                "retrying {}-{}: {reason}",
                                self.topic,
                                batch.partition
                            );
                            retry.push(batch);
                        }
                        Outcome::Retry(reason) | Outcome::Failed(reason) => {
                            eprintln!(
                                "error: failed to produce {} record{} to {}-{}: {reason}",
                                batch.count,
                                if batch.count == 1 { "" } else { "s" },
                                self.topic,
                                batch.partition
                            );
                            self.failed += batch.count;
                            permanent_failure = true;
                        }
                    }
                }
            }
            if !retry.is_empty() {
                tokio::time::sleep(RETRY_BACKOFF).await;
                match self.client.topic_partitions(&self.topic).await {
                    Ok(p) => self.partitions = p,
                    Err(e) => tracing::debug!("refreshing metadata: {e:#}"),
                }
            }
            batches = retry;
        }
        if permanent_failure && self.identity.is_some() {
            // The broker may or may not hold the failed batch; a new producer
            // id makes the next batches' sequences unambiguous.
            self.identity = Some(self.init_producer_id().await?);
            self.sequences.clear();
        }
        Ok(())
    }

    /// One Produce request to `leader` carrying `batches`; one outcome per
    /// batch, in order.
    async fn send(&mut self, leader: i32, batches: &[Batch]) -> Result<Vec<Outcome>> {
        let request = ProduceRequest::default()
            .with_transactional_id(None)
            .with_acks(self.acks.wire())
            .with_timeout_ms(PRODUCE_TIMEOUT_MS)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_string(self.topic.clone())))
                .with_partition_data(
                    batches
                        .iter()
                        .map(|b| {
                            PartitionProduceData::default()
                                .with_index(b.partition)
                                .with_records(Some(b.bytes.clone()))
                        })
                        .collect(),
                )]);
        let conn = self.client.broker(leader).await?;
        let version = conn.version_for::<ProduceRequest>()?;
        if self.acks == Acks::None {
            conn.send_without_response(&request, version).await?;
            return Ok(batches.iter().map(|_| Outcome::Ok).collect());
        }
        let response = conn.send_version(&request, version).await?;
        let mut results: BTreeMap<i32, (i16, Option<StrBytes>)> = BTreeMap::new();
        for t in response.responses {
            if t.name.0.as_str() != self.topic {
                continue;
            }
            for p in t.partition_responses {
                results.insert(p.index, (p.error_code, p.error_message));
            }
        }
        Ok(batches
            .iter()
            .map(|b| match results.get(&b.partition) {
                None => Outcome::Retry("partition missing from Produce response".to_owned()),
                Some((0, _)) | Some((DUPLICATE_SEQUENCE_NUMBER, _)) => Outcome::Ok,
                Some((code, msg)) => {
                    let reason = describe_error(*code, msg.as_ref()).unwrap_or_default();
                    if is_retriable(*code) {
                        Outcome::Retry(reason)
                    } else {
                        Outcome::Failed(reason)
                    }
                }
            })
            .collect())
    }
}

/// Reads stdin to the end, producing one record per line to `args.topic`.
/// Prints `produced N records to TOPIC` to stderr; fails if any record
/// failed.
pub async fn run(args: ProduceArgs, bootstrap: &str) -> Result<()> {
    let mut client = Client::connect(bootstrap).await?;
    let partitions = client.topic_partitions(&args.topic).await?;
    let num_partitions = i32::try_from(partitions.len()).context("too many partitions")?;
    if let Some(p) = args.partition {
        ensure!(
            partitions.iter().any(|i| i.partition == p),
            "topic '{}' has no partition {p} (it has {num_partitions})",
            args.topic
        );
    }
    let mut producer = Producer {
        client,
        topic: args.topic.clone(),
        partitions,
        acks: args.acks,
        compression: args.compression.into(),
        batch_size: args.batch_size as usize,
        identity: None,
        pending: BTreeMap::new(),
        sequences: BTreeMap::new(),
        produced: 0,
        failed: 0,
    };
    if args.acks == Acks::All {
        if producer
            .client
            .bootstrap()
            .supports::<InitProducerIdRequest>()
        {
            producer.identity = Some(producer.init_producer_id().await?);
        } else {
            eprintln!(
                "warning: broker does not support InitProducerId; producing without idempotence"
            );
        }
    }

    let separator = args.key_separator.as_ref().map(|s| s.as_bytes().to_vec());
    let mut sticky = StickyPartitioner::new(num_partitions);
    let linger = Duration::from_millis(args.linger_ms);
    let mut stdin = StdinChunks::spawn()?;
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut line_no: u64 = 0;
    let mut deadline: Option<Instant> = None;
    let mut eof = false;
    while !eof {
        let chunk = match deadline {
            Some(d) => {
                tokio::select! {
                    r = stdin.next() => r,
                    () = tokio::time::sleep_until(d) => {
                        producer.flush_all().await?;
                        deadline = None;
                        continue;
                    }
                }
            }
            None => stdin.next().await,
        };
        let n = match chunk {
            Some(Ok(c)) => {
                buf.extend_from_slice(&c);
                c.len()
            }
            Some(Err(e)) => return Err(e).context("reading stdin"),
            None => 0,
        };
        let mut lines = Vec::new();
        while let Some(line) = take_line(&mut buf) {
            lines.push(line);
        }
        if n == 0 {
            eof = true;
            if !buf.is_empty() {
                lines.push(buf.split().freeze());
            }
        }
        for line in lines {
            line_no += 1;
            let (key, value) = match &separator {
                None => (None, line),
                Some(sep) => match split_key(&line, sep) {
                    Some((k, v)) => (Some(k), v),
                    None => {
                        eprintln!(
                            "error: line {line_no} has no key separator {:?}; skipped",
                            args.key_separator.as_deref().unwrap_or_default()
                        );
                        producer.failed += 1;
                        continue;
                    }
                },
            };
            let partition = match (args.partition, &key) {
                (Some(p), _) => p,
                (None, Some(k)) => partition_for_key(k, num_partitions),
                (None, None) => sticky.current(),
            };
            let record = PendingRecord {
                key,
                value,
                timestamp: now_ms(),
            };
            if producer.push(partition, record) {
                producer.flush(&[partition]).await?;
                if partition == sticky.current() {
                    sticky.batch_complete();
                }
            }
        }
        if linger.is_zero() || eof {
            producer.flush_all().await?;
        } else if deadline.is_none() && producer.has_pending() {
            deadline = Some(Instant::now() + linger);
        }
    }
    producer.flush_all().await?;
    eprintln!(
        "produced {} record{} to {}",
        producer.produced,
        if producer.produced == 1 { "" } else { "s" },
        args.topic
    );
    if producer.failed > 0 {
        return Err(anyhow!(
            "{} record{} could not be produced",
            producer.failed,
            if producer.failed == 1 { "" } else { "s" }
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use clap::Parser;
    use kafka_protocol::records::RecordBatchDecoder;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: ProduceArgs,
    }

    #[test]
    fn args_defaults() {
        let a = Cli::try_parse_from(["x", "t"]).unwrap().args;
        assert_eq!(a.topic, "t");
        assert_eq!(a.acks, Acks::All);
        assert_eq!(a.compression, CompressionArg::None);
        assert_eq!(a.batch_size, 1000);
        assert_eq!(a.key_separator, None);
        assert_eq!(a.partition, None);
    }

    #[test]
    fn args_parse_acks_compression_and_separator() {
        let a = Cli::try_parse_from([
            "x",
            "t",
            "--acks",
            "1",
            "--compression",
            "zstd",
            "--key-separator",
            ":",
            "--partition",
            "2",
            "--batch-size",
            "10",
            "--linger-ms",
            "0",
        ])
        .unwrap()
        .args;
        assert_eq!(a.acks, Acks::Leader);
        assert_eq!(a.compression, CompressionArg::Zstd);
        assert_eq!(a.key_separator.as_deref(), Some(":"));
        assert_eq!(a.partition, Some(2));
        assert_eq!(a.batch_size, 10);
        assert_eq!(a.linger_ms, 0);
        let a = Cli::try_parse_from(["x", "t", "--acks", "-1"])
            .unwrap()
            .args;
        assert_eq!(a.acks, Acks::All);
        assert_eq!(
            Cli::try_parse_from(["x", "t", "--acks", "0"])
                .unwrap()
                .args
                .acks,
            Acks::None
        );
        assert!(Cli::try_parse_from(["x", "t", "--acks", "2"]).is_err());
        assert!(Cli::try_parse_from(["x", "t", "--batch-size", "0"]).is_err());
        assert!(Cli::try_parse_from(["x", "t", "--key-separator", ""]).is_err());
        assert!(Cli::try_parse_from(["x", "t", "--compression", "brotli"]).is_err());
    }

    #[test]
    fn lines_are_split_on_newlines_and_crlf() {
        let mut buf = BytesMut::from(&b"a\r\nbb\n\ncc"[..]);
        assert_eq!(take_line(&mut buf).unwrap(), Bytes::from_static(b"a"));
        assert_eq!(take_line(&mut buf).unwrap(), Bytes::from_static(b"bb"));
        assert_eq!(take_line(&mut buf).unwrap(), Bytes::from_static(b""));
        assert!(take_line(&mut buf).is_none());
        assert_eq!(&buf[..], b"cc");
    }

    #[test]
    fn key_is_text_before_first_separator() {
        let line = Bytes::from_static(b"k1::v::1");
        let (k, v) = split_key(&line, b"::").unwrap();
        assert_eq!((&k[..], &v[..]), (&b"k1"[..], &b"v::1"[..]));
        let (k, v) = split_key(&Bytes::from_static(b":v"), b":").unwrap();
        assert_eq!((&k[..], &v[..]), (&b""[..], &b"v"[..]));
        assert!(split_key(&Bytes::from_static(b"novalue"), b":").is_none());
    }

    fn records(n: usize) -> Vec<PendingRecord> {
        (0..n)
            .map(|i| PendingRecord {
                key: (i % 2 == 0).then(|| Bytes::from(format!("k{i}"))),
                value: Bytes::from(format!("v{i}")),
                timestamp: 1_700_000_000_000 + i as i64,
            })
            .collect()
    }

    #[test]
    fn idempotent_batch_carries_producer_id_and_base_sequence() {
        let pid = ProducerIdentity { id: 42, epoch: 3 };
        for compression in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let mut bytes = encode_batch(&records(5), Some(pid), 17, compression).unwrap();
            let info = RecordBatchDecoder::decode_batch_info(&mut bytes.clone()).unwrap();
            assert_eq!(info.len(), 1, "one batch for {compression:?}");
            assert_eq!(info[0].record_count, 5);
            assert_eq!(info[0].producer_id, 42);
            assert_eq!(info[0].producer_epoch, 3);
            assert_eq!(info[0].base_sequence, 17);
            assert_eq!(info[0].compression, compression);
            let set = RecordBatchDecoder::decode(&mut bytes).unwrap();
            let values: Vec<_> = set
                .records
                .iter()
                .map(|r| r.value.clone().unwrap())
                .collect();
            assert_eq!(values[4], Bytes::from_static(b"v4"));
            assert_eq!(set.records[0].key, Some(Bytes::from_static(b"k0")));
            assert_eq!(set.records[1].key, None);
            assert_eq!(set.records[3].offset, 3);
        }
    }

    #[test]
    fn plain_batch_has_no_producer_id_and_no_sequence() {
        let bytes = encode_batch(&records(4), None, 0, Compression::None).unwrap();
        let info = RecordBatchDecoder::decode_batch_info(&mut bytes.clone()).unwrap();
        assert_eq!(info.len(), 1);
        assert_eq!(info[0].record_count, 4);
        assert_eq!(info[0].producer_id, -1);
        assert_eq!(info[0].producer_epoch, -1);
        assert_eq!(info[0].base_sequence, -1);
    }
}
