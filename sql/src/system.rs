//! System tables in schema `sediment`: what the broker knows about its
//! topics, partitions, segments, streams, consumer groups and decode
//! errors, computed when a query scans them.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMillisecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::Result;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::TableType;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;

use crate::Engine;

/// Table names in schema `sediment`.
pub const SYSTEM_TABLES: [&str; 8] = [
    "topics",
    "partitions",
    "segments",
    "streams",
    "consumer_groups",
    "consumer_lag",
    "decode_errors",
    "queries",
];

/// What the SQL engine needs to know about consumer groups (kept by the
/// Kafka front door).
pub trait GroupSource: Send + Sync + fmt::Debug {
    /// Every group: (group id, state, protocol type, protocol, members).
    fn groups(&self) -> Vec<GroupInfo>;
    /// Committed offsets: (group, topic, partition, offset).
    fn committed(&self) -> Vec<(String, String, i32, i64)>;
}

#[derive(Debug, Clone)]
pub struct GroupInfo {
    pub group_id: String,
    pub state: String,
    pub protocol_type: String,
    pub protocol: String,
    pub members: i32,
}

#[derive(Debug)]
pub struct SystemTable {
    name: &'static str,
    schema: SchemaRef,
    engine: std::sync::Weak<Engine>,
}

fn ts(name: &str, nullable: bool) -> Field {
    Field::new(
        name,
        DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
        nullable,
    )
}

fn text(name: &str) -> Field {
    Field::new(name, DataType::Utf8, false)
}

fn int(name: &str) -> Field {
    Field::new(name, DataType::Int32, false)
}

fn big(name: &str, nullable: bool) -> Field {
    Field::new(name, DataType::Int64, nullable)
}

fn schema_of(name: &str) -> Option<SchemaRef> {
    let fields = match name {
        "topics" => vec![
            text("name"),
            text("topic_id"),
            int("partitions"),
            Field::new("remote_storage", DataType::Boolean, false),
            big("retention_ms", false),
            big("retention_bytes", false),
            Field::new("stream", DataType::Utf8, true),
            ts("created", false),
        ],
        "partitions" => vec![
            text("topic"),
            int("partition"),
            big("log_start_offset", false),
            big("archive_start_offset", true),
            big("archive_end_offset", true),
            big("local_start_offset", false),
            big("high_watermark", false),
            big("log_end_offset", false),
            big("archive_bytes", false),
            big("local_bytes", false),
            int("local_segments"),
            int("archive_files"),
        ],
        "segments" => vec![
            text("topic"),
            int("partition"),
            text("tier"),
            big("base_offset", false),
            big("next_offset", false),
            ts("min_timestamp", true),
            ts("max_timestamp", true),
            big("rows", true),
            big("bytes", false),
            text("path"),
        ],
        "streams" => vec![
            text("name"),
            text("topic"),
            text("value_format"),
            text("columns"),
            Field::new("timestamp_column", DataType::Utf8, true),
            ts("created", false),
        ],
        "consumer_groups" => vec![
            text("group_id"),
            text("state"),
            text("protocol_type"),
            text("protocol"),
            int("members"),
        ],
        "consumer_lag" => vec![
            text("group_id"),
            text("topic"),
            int("partition"),
            big("committed_offset", false),
            big("high_watermark", false),
            big("lag", false),
        ],
        "decode_errors" => vec![
            text("stream"),
            int("partition"),
            big("offset", false),
            text("reason"),
            ts("at", false),
        ],
        "queries" => vec![
            text("query_id"),
            text("kind"),
            text("sql"),
            ts("started", false),
            big("rows", false),
            big("late_records", false),
        ],
        _ => return None,
    };
    Some(Arc::new(Schema::new(fields)))
}

impl SystemTable {
    pub fn new(name: &str, engine: std::sync::Weak<Engine>) -> Option<Self> {
        let name = SYSTEM_TABLES.iter().find(|n| **n == name)?;
        Some(SystemTable {
            name,
            schema: schema_of(name)?,
            engine,
        })
    }

    fn rows(&self) -> Result<RecordBatch> {
        let Some(engine) = self.engine.upgrade() else {
            return Ok(RecordBatch::new_empty(self.schema.clone()));
        };
        let columns: Vec<ArrayRef> = match self.name {
            "topics" => topics(&engine),
            "partitions" => partitions(&engine),
            "segments" => segments(&engine),
            "streams" => streams(&engine),
            "consumer_groups" => groups(&engine),
            "consumer_lag" => lag(&engine),
            "queries" => queries(&engine),
            _ => decode_errors(&engine),
        };
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }
}

#[async_trait]
impl TableProvider for SystemTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let batch = self.rows()?;
        Ok(MemorySourceConfig::try_new_exec(
            &[vec![batch]],
            self.schema.clone(),
            projection.cloned(),
        )?)
    }
}

fn strings<I: IntoIterator<Item = S>, S: AsRef<str>>(v: I) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(v))
}

fn opt_strings(v: Vec<Option<String>>) -> ArrayRef {
    Arc::new(StringArray::from(v))
}

fn i32s(v: Vec<i32>) -> ArrayRef {
    Arc::new(Int32Array::from(v))
}

fn i64s(v: Vec<i64>) -> ArrayRef {
    Arc::new(Int64Array::from(v))
}

fn opt_i64s(v: Vec<Option<i64>>) -> ArrayRef {
    Arc::new(Int64Array::from(v))
}

fn times(v: Vec<Option<i64>>) -> ArrayRef {
    Arc::new(TimestampMillisecondArray::from(v).with_timezone("UTC"))
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

fn sorted_topics(e: &Engine) -> Vec<Arc<sediment_log::Topic>> {
    let mut topics = e.log.topics();
    topics.sort_by(|a, b| a.meta.name.cmp(&b.meta.name));
    topics
}

fn topics(e: &Engine) -> Vec<ArrayRef> {
    let topics = sorted_topics(e);
    let streams = e.streams.all();
    let stream_of = |t: &str| {
        let names: Vec<&str> = streams
            .iter()
            .filter(|s| s.topic == t)
            .map(|s| s.name.as_str())
            .collect();
        (!names.is_empty()).then(|| names.join(", "))
    };
    vec![
        strings(topics.iter().map(|t| t.meta.name.as_str())),
        strings(topics.iter().map(|t| t.meta.id.as_str())),
        i32s(topics.iter().map(|t| t.meta.partitions).collect()),
        Arc::new(BooleanArray::from(
            topics
                .iter()
                .map(|t| t.config.remote_storage_enable)
                .collect::<Vec<_>>(),
        )),
        i64s(topics.iter().map(|t| t.config.retention_ms).collect()),
        i64s(topics.iter().map(|t| t.config.retention_bytes).collect()),
        opt_strings(topics.iter().map(|t| stream_of(&t.meta.name)).collect()),
        times(topics.iter().map(|t| Some(t.meta.created_ms)).collect()),
    ]
}

fn partitions(e: &Engine) -> Vec<ArrayRef> {
    let topics = sorted_topics(e);
    let mut c = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    for t in &topics {
        for (i, p) in t.partitions.iter().enumerate() {
            let index = count(i);
            let manifest = e.archive.manifest(&t.meta.name, index);
            let local_start = p.log_start_offset();
            let archived = manifest.as_ref().filter(|m| !m.files.is_empty());
            c.0.push(t.meta.name.clone());
            c.1.push(index);
            c.2.push(p.earliest_offset().unwrap_or(local_start));
            c.3.push(archived.map(|m| m.start_offset));
            c.4.push(archived.map(|m| m.end_offset));
            c.5.push(local_start);
            c.6.push(p.high_watermark());
            c.7.push(p.log_end_offset());
            c.8.push(manifest.as_ref().map_or(0, |m| m.bytes() as i64));
            c.9.push(p.size_bytes() as i64);
            c.10.push(count(p.segment_count()));
            c.11.push(manifest.as_ref().map_or(0, |m| count(m.files.len())));
        }
    }
    vec![
        strings(c.0),
        i32s(c.1),
        i64s(c.2),
        opt_i64s(c.3),
        opt_i64s(c.4),
        i64s(c.5),
        i64s(c.6),
        i64s(c.7),
        i64s(c.8),
        i64s(c.9),
        i32s(c.10),
        i32s(c.11),
    ]
}

fn segments(e: &Engine) -> Vec<ArrayRef> {
    let topics = sorted_topics(e);
    let (mut topic, mut part, mut tier, mut base, mut next) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut min_ts, mut max_ts, mut rows, mut bytes, mut path) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for t in &topics {
        for (i, p) in t.partitions.iter().enumerate() {
            let index = count(i);
            if let Some(m) = e.archive.manifest(&t.meta.name, index) {
                for f in &m.files {
                    topic.push(t.meta.name.clone());
                    part.push(index);
                    tier.push("archive");
                    base.push(f.base_offset);
                    next.push(f.next_offset);
                    min_ts.push((f.rows > 0).then_some(f.min_timestamp));
                    max_ts.push((f.rows > 0).then_some(f.max_timestamp));
                    rows.push(Some(f.rows as i64));
                    bytes.push(f.bytes as i64);
                    path.push(e.archive.file_path(&t.meta.name, index, f).to_string());
                }
            }
            for s in p.segments() {
                topic.push(t.meta.name.clone());
                part.push(index);
                tier.push("local");
                base.push(s.base_offset);
                next.push(s.next_offset);
                min_ts.push(None);
                max_ts.push((s.max_timestamp >= 0).then_some(s.max_timestamp));
                rows.push(None);
                bytes.push(s.size_bytes as i64);
                path.push(s.path.display().to_string());
            }
        }
    }
    vec![
        strings(topic),
        i32s(part),
        strings(tier),
        i64s(base),
        i64s(next),
        times(min_ts),
        times(max_ts),
        opt_i64s(rows),
        i64s(bytes),
        strings(path),
    ]
}

fn streams(e: &Engine) -> Vec<ArrayRef> {
    let all = e.streams.all();
    vec![
        strings(all.iter().map(|s| s.name.as_str())),
        strings(all.iter().map(|s| s.topic.as_str())),
        strings(all.iter().map(|s| s.value_format.as_str())),
        strings(all.iter().map(|s| {
            s.columns
                .iter()
                .map(|c| format!("{} {}", c.name, c.sql_type))
                .collect::<Vec<_>>()
                .join(", ")
        })),
        opt_strings(all.iter().map(|s| s.timestamp_column.clone()).collect()),
        times(all.iter().map(|s| Some(s.created_ms)).collect()),
    ]
}

fn groups(e: &Engine) -> Vec<ArrayRef> {
    let mut g = e.groups.get().map(|g| g.groups()).unwrap_or_default();
    g.sort_by(|a, b| a.group_id.cmp(&b.group_id));
    vec![
        strings(g.iter().map(|g| g.group_id.as_str())),
        strings(g.iter().map(|g| g.state.as_str())),
        strings(g.iter().map(|g| g.protocol_type.as_str())),
        strings(g.iter().map(|g| g.protocol.as_str())),
        i32s(g.iter().map(|g| g.members).collect()),
    ]
}

fn lag(e: &Engine) -> Vec<ArrayRef> {
    let mut committed = e.groups.get().map(|g| g.committed()).unwrap_or_default();
    committed.sort();
    let hw: Vec<i64> = committed
        .iter()
        .map(|(_, t, p, _)| e.log.partition(t, *p).map_or(0, |p| p.high_watermark()))
        .collect();
    let lag: Vec<i64> = committed
        .iter()
        .zip(&hw)
        .map(|((_, _, _, o), hw)| (hw - o).max(0))
        .collect();
    vec![
        strings(committed.iter().map(|c| c.0.as_str())),
        strings(committed.iter().map(|c| c.1.as_str())),
        i32s(committed.iter().map(|c| c.2).collect()),
        i64s(committed.iter().map(|c| c.3).collect()),
        i64s(hw),
        i64s(lag),
    ]
}

fn decode_errors(e: &Engine) -> Vec<ArrayRef> {
    let recent = e.decode_errors.recent();
    vec![
        strings(recent.iter().map(|r| r.stream.as_str())),
        i32s(recent.iter().map(|r| r.partition).collect()),
        i64s(recent.iter().map(|r| r.offset).collect()),
        strings(recent.iter().map(|r| r.reason.as_str())),
        times(recent.iter().map(|r| Some(r.at_ms)).collect()),
    ]
}

fn queries(e: &Engine) -> Vec<ArrayRef> {
    let list = e.queries.list();
    vec![
        strings(list.iter().map(|q| q.id.as_str())),
        strings(list.iter().map(|q| q.kind)),
        strings(list.iter().map(|q| q.sql.as_str())),
        times(list.iter().map(|q| Some(q.started_ms)).collect()),
        i64s(
            list.iter()
                .map(|q| q.rows.load(std::sync::atomic::Ordering::Relaxed) as i64)
                .collect(),
        ),
        i64s(
            list.iter()
                .map(|q| q.late.0.load(std::sync::atomic::Ordering::Relaxed) as i64)
                .collect(),
        ),
    ]
}
