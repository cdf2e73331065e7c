//! `sediment consume TOPIC`: records to stdout, one per line.
//!
//! Start position per partition, first match wins: `--offset`,
//! `--from-time` (ListOffsets by timestamp), the group's committed offset
//! (with `--group`), earliest with `--from-beginning`, else latest. Then a
//! Fetch loop to each partition's leader. Fetched record bytes are cut into
//! whole RecordBatch v2 batches (a batch truncated by the fetch size limit
//! is dropped and fetched again next round), control batches are skipped,
//! and records below the position (the head of the first batch) are not
//! printed.
//!
//! With `--group`, positions are committed with OffsetCommit as a "simple
//! consumer" (generation -1, empty member id) after every fetch round that
//! moved them and on exit; the committed offset is the next record to read.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use clap::Args;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::{
    FetchRequest, GroupId, OffsetCommitRequest, OffsetFetchRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{Record, TimestampType};
use std::io::{BufWriter, Write};
use tokio::time::Instant;

use super::client::{check, describe_error, is_retriable, Client, PartitionInfo};

const FETCH_MAX_WAIT: Duration = Duration::from_millis(500);
const FETCH_MAX_BYTES: i32 = 50 * 1024 * 1024;
const PARTITION_MAX_BYTES: i32 = 1024 * 1024;
const RETRY_BACKOFF: Duration = Duration::from_millis(200);
const MAX_CONSECUTIVE_FAILURES: u32 = 10;

/// `sediment consume TOPIC`
#[derive(Debug, Clone, Args)]
pub struct ConsumeArgs {
    /// Topic to read.
    pub topic: String,
    /// Start at the earliest offset (when the group has no committed offset).
    #[arg(long)]
    pub from_beginning: bool,
    /// Start at this offset (in every consumed partition).
    #[arg(long, conflicts_with_all = ["from_beginning", "from_time"],
          value_parser = clap::value_parser!(i64).range(0..))]
    pub offset: Option<i64>,
    /// Start at the first record at or after this time: RFC 3339
    /// (`2024-05-01T12:00:00Z`) or epoch milliseconds.
    #[arg(long, conflicts_with = "from_beginning", value_parser = parse_time)]
    pub from_time: Option<i64>,
    /// Consumer group: start from its committed offsets and commit progress.
    #[arg(long)]
    pub group: Option<String>,
    /// Stop after this many records.
    #[arg(long)]
    pub max: Option<u64>,
    /// Read only this partition.
    #[arg(long, value_parser = clap::value_parser!(i32).range(0..))]
    pub partition: Option<i32>,
    /// Print each record's key before its value.
    #[arg(long)]
    pub print_key: bool,
    /// Separator between key and value with --print-key.
    #[arg(long, default_value = "\t")]
    pub key_separator: String,
    /// Exit after this long without new records (default: run until --max
    /// or Ctrl-C).
    #[arg(long)]
    pub timeout_ms: Option<u64>,
}

/// Parses epoch milliseconds or an RFC 3339 timestamp into epoch ms.
pub fn parse_time(s: &str) -> Result<i64, String> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse::<i64>().map_err(|e| format!("'{s}': {e}"));
    }
    parse_rfc3339(s).ok_or_else(|| {
        format!("'{s}' is neither epoch milliseconds nor RFC 3339 (e.g. 2024-05-01T12:00:00Z)")
    })
}

fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = b.get(r)?;
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(part).ok()?.parse().ok()
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    if !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut i = 19;
    let mut millis = 0i64;
    if b[i] == b'.' {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return None;
        }
        // Keep millisecond precision; pad or truncate the fraction.
        let frac = &s[start..i];
        let padded = format!("{frac:0<3}");
        millis = padded[..3].parse().ok()?;
    }
    let offset_secs = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
            let (h, m) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
            if h > 23 || m > 59 {
                return None;
            }
            let secs = h * 3600 + m * 60;
            if *sign == b'+' {
                secs
            } else {
                -secs
            }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second.min(59) - offset_secs;
    Some(secs * 1000 + millis)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The records of a fetched partition that are at or after `position`,
/// and the offset to fetch next.
#[derive(Debug, Default)]
pub struct Decoded {
    pub records: Vec<Record>,
    pub next_offset: Option<i64>,
}

/// Decodes the whole v2 batches in `data` (a Fetch response's record
/// bytes), ignoring a truncated trailing batch, skipping control batches
/// and records below `position`.
pub fn decode_fetched(data: Bytes, position: i64) -> Result<Decoded> {
    use sediment_log::batch::{BatchError, BatchIter};
    use sediment_log::records;
    let mut out = Decoded::default();
    let mut batches = BatchIter::new(&data, i32::MAX as usize, false);
    for (at, h) in batches.by_ref() {
        let next = h.next_offset();
        out.next_offset = Some(out.next_offset.map_or(next, |n: i64| n.max(next)));
        if h.is_control() || next <= position {
            continue;
        }
        let bytes = &data[at..at + h.size];
        let base = h.base_offset;
        let payload = records::payload(bytes, &h)
            .with_context(|| format!("decompressing record batch at offset {base}"))?;
        let decoded = records::decode(&h, &payload)
            .with_context(|| format!("decoding record batch at offset {base}"))?;
        for r in decoded.into_iter().filter(|r| r.offset >= position) {
            out.records.push(Record {
                transactional: h.is_transactional(),
                control: false,
                delete_horizon: false,
                partition_leader_epoch: h.leader_epoch,
                producer_id: h.producer_id,
                producer_epoch: h.producer_epoch,
                timestamp_type: if h.is_log_append_time() {
                    TimestampType::LogAppend
                } else {
                    TimestampType::Creation
                },
                offset: r.offset,
                sequence: -1,
                timestamp: r.timestamp,
                key: r.key.map(Bytes::copy_from_slice),
                value: r.value.map(Bytes::copy_from_slice),
                headers: Default::default(),
            });
        }
    }
    match batches.error {
        // A batch cut by the fetch size limit is fetched again next round.
        None | Some(BatchError::Truncated { .. }) => Ok(out),
        Some(BatchError::UnsupportedMagic { magic }) => {
            bail!("record batch uses message format v{magic}; only v2 is supported")
        }
        Some(e) => bail!("malformed record batch in fetch response: {e}"),
    }
}

/// One output line: `[key SEP] value`, with `null` for a missing key or
/// value, as Kafka's console consumer prints them.
pub fn format_record(record: &Record, print_key: bool, separator: &str, out: &mut Vec<u8>) {
    if print_key {
        out.extend_from_slice(record.key.as_deref().unwrap_or(b"null"));
        out.extend_from_slice(separator.as_bytes());
    }
    out.extend_from_slice(record.value.as_deref().unwrap_or(b"null"));
    out.push(b'\n');
}

struct Group {
    id: String,
    coordinator: (i32, String),
}

struct Consumer {
    client: Client,
    topic: String,
    partitions: Vec<PartitionInfo>,
    positions: BTreeMap<i32, i64>,
    group: Option<Group>,
    committed: BTreeMap<i32, i64>,
    failures: u32,
}

/// Why a fetch round stopped writing.
enum Stop {
    Continue,
    OutputClosed,
}

impl Consumer {
    fn topic_name(&self) -> TopicName {
        TopicName(StrBytes::from_string(self.topic.clone()))
    }

    async fn refresh_leaders(&mut self) {
        match self.client.topic_partitions(&self.topic).await {
            Ok(all) => {
                for p in &mut self.partitions {
                    if let Some(n) = all.iter().find(|n| n.partition == p.partition) {
                        *p = *n;
                    }
                }
            }
            Err(e) => tracing::debug!("refreshing metadata: {e:#}"),
        }
    }

    async fn fetch_committed(&mut self) -> Result<BTreeMap<i32, i64>> {
        let Some(group) = &self.group else {
            return Ok(BTreeMap::new());
        };
        let group_id = group.id.clone();
        let (node, addr) = group.coordinator.clone();
        let request = OffsetFetchRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(group_id.clone())))
            .with_topics(Some(vec![OffsetFetchRequestTopic::default()
                .with_name(self.topic_name())
                .with_partition_indexes(
                    self.partitions.iter().map(|p| p.partition).collect(),
                )]))
            .with_require_stable(false);
        let response = self
            .client
            .connection_to(node, &addr)
            .await?
            .send(&request)
            .await?;
        check(
            response.error_code,
            None,
            format_args!("OffsetFetch for group '{group_id}'"),
        )?;
        let mut out = BTreeMap::new();
        for t in response.topics {
            for p in t.partitions {
                check(
                    p.error_code,
                    None,
                    format_args!(
                        "OffsetFetch for group '{group_id}', {}-{}",
                        self.topic, p.partition_index
                    ),
                )?;
                if p.committed_offset >= 0 {
                    out.insert(p.partition_index, p.committed_offset);
                }
            }
        }
        Ok(out)
    }

    async fn commit(&mut self) -> Result<()> {
        let Some(group) = &self.group else {
            return Ok(());
        };
        let changed: Vec<(i32, i64)> = self
            .positions
            .iter()
            .filter(|(p, o)| self.committed.get(p) != Some(o))
            .map(|(p, o)| (*p, *o))
            .collect();
        if changed.is_empty() {
            return Ok(());
        }
        let group_id = group.id.clone();
        let (node, addr) = group.coordinator.clone();
        let request = OffsetCommitRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(group_id.clone())))
            .with_generation_id_or_member_epoch(-1)
            .with_member_id(StrBytes::from_static_str(""))
            .with_group_instance_id(None)
            .with_retention_time_ms(-1)
            .with_topics(vec![OffsetCommitRequestTopic::default()
                .with_name(self.topic_name())
                .with_partitions(
                    changed
                        .iter()
                        .map(|(p, o)| {
                            OffsetCommitRequestPartition::default()
                                .with_partition_index(*p)
                                .with_committed_offset(*o)
                                .with_committed_leader_epoch(-1)
                                .with_committed_metadata(Some(StrBytes::from_static_str("")))
                        })
                        .collect(),
                )]);
        let response = self
            .client
            .connection_to(node, &addr)
            .await?
            .send(&request)
            .await?;
        for t in response.topics {
            for p in t.partitions {
                check(
                    p.error_code,
                    None,
                    format_args!(
                        "OffsetCommit for group '{group_id}', {}-{}",
                        self.topic, p.partition_index
                    ),
                )?;
                if let Some(o) = self.positions.get(&p.partition_index) {
                    self.committed.insert(p.partition_index, *o);
                }
            }
        }
        Ok(())
    }

    /// Moves an out-of-range position to the nearest end of the log.
    async fn reset_out_of_range(&mut self, partition: i32) -> Result<()> {
        let Some(info) = self
            .partitions
            .iter()
            .find(|p| p.partition == partition)
            .copied()
        else {
            return Ok(());
        };
        let topic = self.topic.clone();
        let earliest = self.client.list_offsets(&topic, &[info], -2).await?;
        let latest = self.client.list_offsets(&topic, &[info], -1).await?;
        let pos = self.positions.get(&partition).copied().unwrap_or(0);
        let lo = earliest.get(&partition).copied().unwrap_or(0);
        let hi = latest.get(&partition).copied().unwrap_or(lo);
        let new = if pos < lo { lo } else { hi };
        eprintln!(
            "warning: offset {pos} is out of range for {topic}-{partition}; resetting to {new}"
        );
        self.positions.insert(partition, new);
        Ok(())
    }

    /// One Fetch to every leader; writes records and advances positions.
    async fn fetch_round<W: Write>(
        &mut self,
        max_wait: Duration,
        args: &ConsumeArgs,
        out: &mut W,
        remaining: &mut Option<u64>,
    ) -> Result<(u64, Stop)> {
        let mut by_leader: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
        for p in &self.partitions {
            by_leader.entry(p.leader).or_default().push(p.partition);
        }
        let mut printed = 0u64;
        let mut line = Vec::new();
        for (leader, parts) in by_leader {
            let request = FetchRequest::default()
                .with_replica_id((-1).into())
                .with_max_wait_ms(i32::try_from(max_wait.as_millis()).unwrap_or(i32::MAX))
                .with_min_bytes(1)
                .with_max_bytes(FETCH_MAX_BYTES)
                .with_isolation_level(0)
                .with_session_id(0)
                .with_session_epoch(-1)
                .with_topics(vec![FetchTopic::default()
                    .with_topic(self.topic_name())
                    .with_partitions(
                        parts
                            .iter()
                            .map(|p| {
                                FetchPartition::default()
                                    .with_partition(*p)
                                    .with_current_leader_epoch(-1)
                                    .with_fetch_offset(self.positions.get(p).copied().unwrap_or(0))
                                    .with_last_fetched_epoch(-1)
                                    .with_log_start_offset(-1)
                                    .with_partition_max_bytes(PARTITION_MAX_BYTES)
                            })
                            .collect(),
                    )]);
            let sent = match self.client.broker(leader).await {
                Ok(conn) => conn.send(&request).await,
                Err(e) => Err(e),
            };
            let response = match sent {
                Ok(r) => {
                    self.failures = 0;
                    r
                }
                Err(e) => {
                    self.failures += 1;
                    if self.failures >= MAX_CONSECUTIVE_FAILURES {
                        return Err(e.context("Fetch keeps failing"));
                    }
                    tracing::debug!("Fetch from broker {leader}: {e:#}");
                    if let Err(e) = self.client.reset(leader).await {
                        tracing::debug!("reconnecting to broker {leader}: {e:#}");
                    }
                    tokio::time::sleep(RETRY_BACKOFF).await;
                    self.refresh_leaders().await;
                    continue;
                }
            };
            check(response.error_code, None, "Fetch")?;
            for t in response.responses {
                for p in t.partitions {
                    let partition = p.partition_index;
                    let Some(position) = self.positions.get(&partition).copied() else {
                        continue;
                    };
                    if p.error_code == ResponseError::OffsetOutOfRange.code() {
                        self.reset_out_of_range(partition).await?;
                        continue;
                    }
                    if p.error_code != 0 {
                        let e = describe_error(p.error_code, None).unwrap_or_default();
                        if is_retriable(p.error_code) {
                            tracing::debug!("Fetch {}-{partition}: {e}", self.topic);
                            tokio::time::sleep(RETRY_BACKOFF).await;
                            self.refresh_leaders().await;
                            continue;
                        }
                        bail!("Fetch for {}-{partition} failed: {e}", self.topic);
                    }
                    let Some(data) = p.records else { continue };
                    let decoded = decode_fetched(data, position)
                        .with_context(|| format!("{}-{partition}", self.topic))?;
                    let mut new_position = position;
                    let mut cut_short = false;
                    for r in &decoded.records {
                        if *remaining == Some(0) {
                            cut_short = true;
                            break;
                        }
                        line.clear();
                        format_record(r, args.print_key, &args.key_separator, &mut line);
                        if let Err(e) = out.write_all(&line) {
                            if e.kind() == std::io::ErrorKind::BrokenPipe {
                                return Ok((printed, Stop::OutputClosed));
                            }
                            return Err(e).context("writing to stdout");
                        }
                        new_position = r.offset + 1;
                        printed += 1;
                        if let Some(n) = remaining.as_mut() {
                            *n -= 1;
                        }
                    }
                    if !cut_short {
                        if let Some(next) = decoded.next_offset {
                            new_position = new_position.max(next);
                        }
                    }
                    self.positions.insert(partition, new_position);
                }
            }
        }
        match out.flush() {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                Ok((printed, Stop::OutputClosed))
            }
            r => {
                r.context("writing to stdout")?;
                Ok((printed, Stop::Continue))
            }
        }
    }
}

/// Consumes `args.topic`, printing records to stdout until `--max`,
/// `--timeout-ms` of silence, Ctrl-C, or a closed stdout.
pub async fn run(args: ConsumeArgs, bootstrap: &str) -> Result<()> {
    let mut client = Client::connect(bootstrap).await?;
    let all = client.topic_partitions(&args.topic).await?;
    let partitions: Vec<PartitionInfo> = match args.partition {
        Some(p) => vec![all
            .iter()
            .find(|i| i.partition == p)
            .copied()
            .ok_or_else(|| {
                anyhow!(
                    "topic '{}' has no partition {p} (it has {})",
                    args.topic,
                    all.len()
                )
            })?],
        None => all,
    };
    let mut consumer = Consumer {
        client,
        topic: args.topic.clone(),
        partitions,
        positions: BTreeMap::new(),
        group: None,
        committed: BTreeMap::new(),
        failures: 0,
    };
    if let Some(g) = &args.group {
        let coordinator = consumer.client.find_coordinator(g).await?;
        consumer.group = Some(Group {
            id: g.clone(),
            coordinator,
        });
        consumer.committed = consumer.fetch_committed().await?;
    }

    // Start positions.
    let topic = args.topic.clone();
    let mut by_spec: BTreeMap<i64, Vec<PartitionInfo>> = BTreeMap::new();
    for p in &consumer.partitions {
        if let Some(o) = args.offset {
            consumer.positions.insert(p.partition, o);
        } else if let Some(t) = args.from_time {
            by_spec.entry(t).or_default().push(*p);
        } else if let Some(o) = consumer.committed.get(&p.partition) {
            consumer.positions.insert(p.partition, *o);
        } else {
            let spec = if args.from_beginning { -2 } else { -1 };
            by_spec.entry(spec).or_default().push(*p);
        }
    }
    for (spec, parts) in by_spec {
        let offsets = consumer.client.list_offsets(&topic, &parts, spec).await?;
        let mut past_end = Vec::new();
        for (p, o) in offsets {
            if o < 0 {
                past_end.push(parts.iter().find(|i| i.partition == p).copied());
            } else {
                consumer.positions.insert(p, o);
            }
        }
        // A time after the last record: start at the end.
        let past_end: Vec<PartitionInfo> = past_end.into_iter().flatten().collect();
        if !past_end.is_empty() {
            for (p, o) in consumer.client.list_offsets(&topic, &past_end, -1).await? {
                consumer.positions.insert(p, o);
            }
        }
    }
    tracing::debug!("start positions: {:?}", consumer.positions);

    // Plain blocking writes: a console tool should be slowed down by a slow
    // reader of its stdout, and tokio's async stdout needs its `io-std`
    // feature, which the workspace does not enable.
    let mut out = BufWriter::with_capacity(256 * 1024, std::io::stdout().lock());
    let mut remaining = args.max;
    let mut total = 0u64;
    let timeout = args.timeout_ms.map(Duration::from_millis);
    let mut last_progress = Instant::now();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let result: Result<()> = loop {
        if remaining == Some(0) {
            break Ok(());
        }
        let wait = match timeout {
            Some(t) => {
                let left = t.saturating_sub(last_progress.elapsed());
                if left.is_zero() {
                    break Ok(());
                }
                left.min(FETCH_MAX_WAIT)
            }
            None => FETCH_MAX_WAIT,
        };
        let round = tokio::select! {
            r = consumer.fetch_round(wait, &args, &mut out, &mut remaining) => r,
            _ = &mut ctrl_c => break Ok(()),
        };
        match round {
            Ok((n, stop)) => {
                total += n;
                if n > 0 {
                    last_progress = Instant::now();
                }
                if let Err(e) = consumer.commit().await {
                    break Err(e);
                }
                if matches!(stop, Stop::OutputClosed) {
                    break Ok(());
                }
            }
            Err(e) => break Err(e),
        }
    };
    if let Err(e) = out.flush() {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            tracing::debug!("flushing stdout: {e}");
        }
    }
    let committed = consumer.commit().await;
    eprintln!(
        "consumed {total} record{} from {}",
        if total == 1 { "" } else { "s" },
        args.topic
    );
    result?;
    committed
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use bytes::BytesMut;
    use clap::Parser;
    use indexmap::IndexMap;
    use kafka_protocol::records::{
        Compression, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: ConsumeArgs,
    }

    #[test]
    fn args_defaults_and_flags() {
        let a = Cli::try_parse_from(["x", "t"]).unwrap().args;
        assert!(!a.from_beginning && !a.print_key);
        assert_eq!(a.key_separator, "\t");
        assert_eq!(
            (a.offset, a.from_time, a.max, a.timeout_ms),
            (None, None, None, None)
        );
        let a = Cli::try_parse_from([
            "x",
            "t",
            "--from-beginning",
            "--group",
            "g",
            "--max",
            "10",
            "--partition",
            "1",
            "--print-key",
            "--key-separator",
            "=",
            "--timeout-ms",
            "2000",
        ])
        .unwrap()
        .args;
        assert!(a.from_beginning && a.print_key);
        assert_eq!(a.group.as_deref(), Some("g"));
        assert_eq!(
            (a.max, a.partition, a.timeout_ms),
            (Some(10), Some(1), Some(2000))
        );
        assert_eq!(a.key_separator, "=");
        let a = Cli::try_parse_from(["x", "t", "--from-time", "2024-01-01T00:00:00Z"])
            .unwrap()
            .args;
        assert_eq!(a.from_time, Some(1_704_067_200_000));
    }

    #[test]
    fn conflicting_start_positions_are_rejected() {
        assert!(Cli::try_parse_from(["x", "t", "--offset", "5", "--from-beginning"]).is_err());
        assert!(Cli::try_parse_from(["x", "t", "--offset", "5", "--from-time", "0"]).is_err());
        assert!(Cli::try_parse_from(["x", "t", "--from-time", "0", "--from-beginning"]).is_err());
        assert!(Cli::try_parse_from(["x", "t", "--offset", "-1"]).is_err());
        assert!(Cli::try_parse_from(["x", "t", "--from-time", "yesterday"]).is_err());
    }

    #[test]
    fn time_parses_epoch_ms_and_rfc3339() {
        assert_eq!(parse_time("1700000000123"), Ok(1_700_000_000_123));
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(
            parse_time("2024-02-29T12:34:56.789Z"),
            Ok(1_709_210_096_789)
        );
        assert_eq!(parse_time("2024-02-29T12:34:56.7Z"), Ok(1_709_210_096_700));
        assert_eq!(
            parse_time("2024-02-29T12:34:56.789123Z"),
            Ok(1_709_210_096_789)
        );
        assert_eq!(
            parse_time("2024-02-29T14:34:56+02:00"),
            Ok(1_709_210_096_000)
        );
        assert_eq!(
            parse_time("2024-02-29t07:04:56-05:30"),
            Ok(1_709_210_096_000)
        );
        assert_eq!(parse_time("1969-12-31T23:59:59Z"), Ok(-1000));
        for bad in [
            "",
            "2023-02-29T00:00:00Z",
            "2024-13-01T00:00:00Z",
            "2024-01-01T00:00:00",
            "2024-01-01T00:00:00+0200",
            "2024-01-01X00:00:00Z",
            "2024-01-01T00:00:00.Z",
            "-5",
        ] {
            assert!(parse_time(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    fn batch(base: i64, values: &[&str], control: bool, compression: Compression) -> Bytes {
        let records: Vec<Record> = values
            .iter()
            .enumerate()
            .map(|(i, v)| Record {
                transactional: control,
                control,
                delete_horizon: false,
                partition_leader_epoch: 0,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: base + i as i64,
                sequence: i as i32 - 1,
                timestamp: 0,
                key: (i == 0).then(|| Bytes::from_static(b"key")),
                value: Some(Bytes::from(v.to_string())),
                headers: IndexMap::new(),
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
        .unwrap();
        buf.freeze()
    }

    fn values(d: &Decoded) -> Vec<String> {
        d.records
            .iter()
            .map(|r| String::from_utf8(r.value.clone().unwrap().to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn truncated_trailing_batch_is_ignored() {
        let mut data = BytesMut::new();
        data.extend_from_slice(&batch(0, &["a", "b"], false, Compression::None));
        let second = batch(2, &["c", "d"], false, Compression::Lz4);
        for cut in [1, 11, 12, 30, second.len() - 1] {
            let mut d = data.clone();
            d.extend_from_slice(&second[..cut]);
            let decoded = decode_fetched(d.freeze(), 0).unwrap();
            assert_eq!(values(&decoded), ["a", "b"], "cut at {cut}");
            assert_eq!(decoded.next_offset, Some(2));
        }
        data.extend_from_slice(&second);
        let decoded = decode_fetched(data.freeze(), 0).unwrap();
        assert_eq!(values(&decoded), ["a", "b", "c", "d"]);
        assert_eq!(decoded.next_offset, Some(4));
    }

    #[test]
    fn records_below_position_and_control_batches_are_skipped() {
        let mut data = BytesMut::new();
        data.extend_from_slice(&batch(10, &["a", "b", "c"], false, Compression::Gzip));
        data.extend_from_slice(&batch(13, &["marker"], true, Compression::None));
        data.extend_from_slice(&batch(14, &["d"], false, Compression::Zstd));
        data.extend_from_slice(&batch(15, &["e"], false, Compression::Snappy));
        let decoded = decode_fetched(data.freeze(), 11).unwrap();
        assert_eq!(values(&decoded), ["b", "c", "d", "e"]);
        assert_eq!(decoded.next_offset, Some(16));
    }

    #[test]
    fn a_control_batch_alone_still_advances_the_position() {
        let decoded = decode_fetched(batch(7, &["m"], true, Compression::None), 7).unwrap();
        assert!(decoded.records.is_empty());
        assert_eq!(decoded.next_offset, Some(8));
        let empty = decode_fetched(Bytes::new(), 0).unwrap();
        assert_eq!(empty.next_offset, None);
    }

    #[test]
    fn legacy_message_format_is_rejected_clearly() {
        let mut b = BytesMut::from(&batch(0, &["a"], false, Compression::None)[..]);
        b[16] = 1; // magic
        let err = decode_fetched(b.freeze(), 0).unwrap_err();
        assert!(err.to_string().contains("message format v1"), "{err}");
    }

    #[test]
    fn records_format_like_the_console_consumer() {
        let d = decode_fetched(batch(0, &["v0", "v1"], false, Compression::None), 0).unwrap();
        let mut out = Vec::new();
        for r in &d.records {
            format_record(r, true, ":", &mut out);
        }
        assert_eq!(out, b"key:v0\nnull:v1\n");
        out.clear();
        format_record(&d.records[0], false, ":", &mut out);
        assert_eq!(out, b"v0\n");
    }
}
