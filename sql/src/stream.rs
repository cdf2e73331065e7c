//! Streams: a declared schema over a topic's JSON values.
//!
//! `CREATE STREAM trades (user_id VARCHAR, amount DOUBLE) WITH
//! (KAFKA_TOPIC='trades', VALUE_FORMAT='JSON')` makes `trades` a table with
//! the declared columns decoded from each record's value, plus `_partition`,
//! `_offset`, `_timestamp` and `_key`. Scans read the topic's raw columns
//! through [`TopicTable`] (both tiers, pruned by the pseudo-columns) and
//! decode in [`DecodeExec`]. A value that is not a JSON object or does not
//! fit the schema gives a row whose declared columns are NULL; it is
//! counted and remembered in `sediment.decode_errors`, never an error.
//!
//! Definitions live in `<data>/sql/streams.json` (written atomically, see
//! docs/FORMAT.md) and survive restarts.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    new_null_array, Array, ArrayRef, AsArray, BinaryArray, RecordBatch, RecordBatchOptions,
    StringBuilder, UInt32Array,
};
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, Result, ScalarValue};
use datafusion::datasource::sink::DataSinkExec;
use datafusion::datasource::TableType;
use datafusion::error::DataFusionError;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use futures::StreamExt;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use datafusion::arrow::array::PrimitiveArray;
use datafusion::arrow::datatypes::{Fields, Int64Type};
use datafusion::physical_plan::union::UnionExec;
use sediment_tiering::convert::{ValueColumns, ValueDecoder, VALUE_COLUMN_PREFIX};

use crate::topic_table::{unqualified, RowFilter, TopicTable, TypedColumns};

/// The file's format name and the version this build writes.
pub const STREAMS_FORMAT: &str = "sediment-streams";
pub const STREAMS_VERSION: u32 = 1;

/// Pseudo-columns every stream has, in order, and the raw topic column
/// each comes from.
pub const PSEUDO_COLUMNS: [(&str, &str); 4] = [
    ("_partition", "partition"),
    ("_offset", "offset"),
    ("_timestamp", "timestamp"),
    ("_key", "key"),
];

/// One declared column: its name and its SQL type as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnDef {
    pub name: String,
    pub sql_type: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamDef {
    pub name: String,
    pub topic: String,
    pub value_format: String,
    pub columns: Vec<ColumnDef>,
    /// Event-time column (ksqlDB's `TIMESTAMP=`), if declared.
    #[serde(default)]
    pub timestamp_column: Option<String>,
    #[serde(default)]
    pub created_ms: i64,
}

#[derive(Debug, Serialize, Deserialize)]
struct StreamsFile {
    format: String,
    version: u32,
    streams: Vec<StreamDef>,
}

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("{0}")]
    Io(String),
    #[error("{path}: {reason}")]
    Corrupt { path: String, reason: String },
}

/// The durable set of stream definitions, with each one's Arrow schema.
pub struct StreamRegistry {
    path: PathBuf,
    streams: Mutex<BTreeMap<String, (StreamDef, SchemaRef)>>,
}

impl fmt::Debug for StreamRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamRegistry")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl StreamRegistry {
    /// Loads `<data_dir>/sql/streams.json`; `schema_of` turns a definition
    /// into the value columns' Arrow schema (the SQL planner's type
    /// mapping), the same way as when it was created.
    pub fn open(
        data_dir: &Path,
        schema_of: impl Fn(&StreamDef) -> Result<SchemaRef>,
    ) -> Result<Self, StreamError> {
        let path = data_dir.join("sql").join("streams.json");
        let mut streams = BTreeMap::new();
        match std::fs::read(&path) {
            Ok(bytes) => {
                let corrupt = |reason: String| StreamError::Corrupt {
                    path: path.display().to_string(),
                    reason,
                };
                let file: StreamsFile =
                    serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
                if file.format != STREAMS_FORMAT {
                    return Err(corrupt(format!("format is '{}'", file.format)));
                }
                if file.version > STREAMS_VERSION {
                    return Err(corrupt(format!(
                        "version {} is newer than this build reads ({STREAMS_VERSION})",
                        file.version
                    )));
                }
                for def in file.streams {
                    let schema = schema_of(&def).map_err(|e| corrupt(e.to_string()))?;
                    streams.insert(def.name.clone(), (def, schema));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StreamError::Io(format!("{}: {e}", path.display()))),
        }
        Ok(StreamRegistry {
            path,
            streams: Mutex::new(streams),
        })
    }

    pub fn get(&self, name: &str) -> Option<(StreamDef, SchemaRef)> {
        self.streams.lock().get(name).cloned()
    }

    pub fn names(&self) -> Vec<String> {
        self.streams.lock().keys().cloned().collect()
    }

    pub fn all(&self) -> Vec<StreamDef> {
        self.streams
            .lock()
            .values()
            .map(|(d, _)| d.clone())
            .collect()
    }

    /// The stream whose columns new archive files of `topic` carry: the
    /// oldest JSON stream over it (by creation time, then name).
    pub fn typed_owner(&self, topic: &str) -> Option<(StreamDef, SchemaRef)> {
        self.streams
            .lock()
            .values()
            .filter(|(d, s)| d.topic == topic && d.value_format == "JSON" && !s.fields().is_empty())
            .min_by(|(a, _), (b, _)| (a.created_ms, &a.name).cmp(&(b.created_ms, &b.name)))
            .cloned()
    }

    /// Adds a definition durably; false if the name is taken.
    pub fn create(&self, def: StreamDef, schema: SchemaRef) -> Result<bool, StreamError> {
        let mut streams = self.streams.lock();
        if streams.contains_key(&def.name) {
            return Ok(false);
        }
        let mut next = streams.clone();
        next.insert(def.name.clone(), (def, schema));
        self.persist(&next)?;
        *streams = next;
        Ok(true)
    }

    /// Removes a definition durably; the removed one, if it existed.
    pub fn drop_stream(&self, name: &str) -> Result<Option<StreamDef>, StreamError> {
        let mut streams = self.streams.lock();
        let mut next = streams.clone();
        let Some((def, _)) = next.remove(name) else {
            return Ok(None);
        };
        self.persist(&next)?;
        *streams = next;
        Ok(Some(def))
    }

    fn persist(
        &self,
        streams: &BTreeMap<String, (StreamDef, SchemaRef)>,
    ) -> Result<(), StreamError> {
        let file = StreamsFile {
            format: STREAMS_FORMAT.to_string(),
            version: STREAMS_VERSION,
            streams: streams.values().map(|(d, _)| d.clone()).collect(),
        };
        let io = |e: std::io::Error| StreamError::Io(format!("{}: {e}", self.path.display()));
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let bytes = serde_json::to_vec_pretty(&file).map_err(|e| StreamError::Io(e.to_string()))?;
        sediment_log::frame::write_atomic(&self.path, &bytes).map_err(io)
    }
}

/// Values that could not be decoded: a count and the most recent ones.
/// Every scan decodes again; a record is counted and listed once (while
/// it is among the most recent).
#[derive(Debug, Default)]
pub struct DecodeErrors {
    pub count: AtomicU64,
    recent: Mutex<Recent>,
}

#[derive(Debug, Default)]
struct Recent {
    errors: VecDeque<DecodeError>,
    seen: HashSet<(String, i32, i64)>,
}

#[derive(Debug, Clone)]
pub struct DecodeError {
    pub stream: String,
    pub partition: i32,
    pub offset: i64,
    pub reason: String,
    pub at_ms: i64,
}

/// How many decode errors `sediment.decode_errors` keeps.
const RECENT_ERRORS: usize = 1000;

impl DecodeErrors {
    fn record(&self, e: DecodeError) {
        let mut recent = self.recent.lock();
        let id = (e.stream.clone(), e.partition, e.offset);
        if !recent.seen.insert(id) {
            return;
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        if recent.errors.len() == RECENT_ERRORS {
            if let Some(old) = recent.errors.pop_front() {
                recent.seen.remove(&(old.stream, old.partition, old.offset));
            }
        }
        recent.errors.push_back(e);
    }

    pub fn recent(&self) -> Vec<DecodeError> {
        self.recent.lock().errors.iter().cloned().collect()
    }
}

/// What the tierer asks for: each topic's oldest stream decodes the values
/// of new archive files into its columns, so later scans of that stream
/// read typed Parquet columns instead of parsing JSON. Values that do not
/// decode are counted and listed here, as a scan would.
#[derive(Debug)]
pub struct StreamValueColumns {
    pub registry: Arc<StreamRegistry>,
    pub errors: Arc<DecodeErrors>,
}

impl ValueColumns for StreamValueColumns {
    fn for_topic(&self, topic: &str) -> Option<Arc<dyn ValueDecoder>> {
        let (def, schema) = self.registry.typed_owner(topic)?;
        Some(Arc::new(JsonDecoder {
            stream: def.name,
            schema,
            errors: self.errors.clone(),
        }))
    }
}

struct JsonDecoder {
    stream: String,
    schema: SchemaRef,
    errors: Arc<DecodeErrors>,
}

impl ValueDecoder for JsonDecoder {
    fn fields(&self) -> Fields {
        self.schema.fields().clone()
    }

    fn decode(
        &self,
        partition: i32,
        offsets: &PrimitiveArray<Int64Type>,
        values: &BinaryArray,
    ) -> std::result::Result<Vec<ArrayRef>, String> {
        decode_values(values, &self.schema, &mut |row, reason| {
            self.errors.record(DecodeError {
                stream: self.stream.clone(),
                partition,
                offset: offsets.value(row),
                reason,
                at_ms: sediment_log::now_ms(),
            })
        })
        .map_err(|e| e.to_string())
    }
}

/// The full schema of a stream: pseudo-columns, then the declared ones.
pub fn stream_schema(value_schema: &Schema) -> SchemaRef {
    // Nullable: never NULL when read, but an INSERT may leave them out
    // (the log assigns them).
    let mut fields = vec![
        Field::new("_partition", DataType::Int32, true),
        Field::new("_offset", DataType::Int64, true),
        Field::new(
            "_timestamp",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            true,
        ),
        Field::new("_key", DataType::Utf8, true),
    ];
    fields.extend(
        value_schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true)),
    );
    Arc::new(Schema::new(fields))
}

#[derive(Debug)]
pub struct StreamTable {
    def: StreamDef,
    /// Declared columns only.
    value_schema: SchemaRef,
    schema: SchemaRef,
    topic: TopicTable,
    errors: Arc<DecodeErrors>,
}

impl StreamTable {
    pub fn new(
        def: StreamDef,
        value_schema: SchemaRef,
        topic: TopicTable,
        errors: Arc<DecodeErrors>,
    ) -> Self {
        let schema = stream_schema(&value_schema);
        StreamTable {
            def,
            value_schema,
            schema,
            topic,
            errors,
        }
    }
}

/// A stream filter as a filter on the topic's raw columns, if it only uses
/// pseudo-columns in ways the raw columns can answer: `_partition`,
/// `_offset` and `_timestamp` are renamed; `_key` only in `_key = 'text'`
/// (compared as bytes).
fn to_raw_filter(f: &Expr) -> Option<Expr> {
    to_file_filter(f, &[])
}

/// Like [`to_raw_filter`], also allowing the `declared` columns, renamed to
/// the typed columns of an archive file (`value.<name>`).
fn to_file_filter(f: &Expr, declared: &[&str]) -> Option<Expr> {
    let mut ok = true;
    let _ = f.apply(|e| {
        if let Expr::Column(c) = e {
            let name = c.name.as_str();
            if !(PSEUDO_COLUMNS.iter().any(|(p, _)| *p == name) || declared.contains(&name)) {
                ok = false;
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    if !ok {
        return None;
    }
    let rewritten = f
        .clone()
        .transform_down(|e| match e {
            Expr::BinaryExpr(BinaryExpr { left, op, right })
                if op == Operator::Eq && is_column(&left, "_key") =>
            {
                match *right {
                    Expr::Literal(ScalarValue::Utf8(Some(s)), m)
                    | Expr::Literal(ScalarValue::Utf8View(Some(s)), m)
                    | Expr::Literal(ScalarValue::LargeUtf8(Some(s)), m) => Ok(Transformed::new(
                        Expr::BinaryExpr(BinaryExpr {
                            left: Box::new(Expr::Column(Column::new_unqualified("key"))),
                            op,
                            right: Box::new(Expr::Literal(
                                ScalarValue::Binary(Some(s.into_bytes())),
                                m,
                            )),
                        }),
                        true,
                        TreeNodeRecursion::Jump,
                    )),
                    other => Ok(Transformed::no(Expr::BinaryExpr(BinaryExpr {
                        left,
                        op,
                        right: Box::new(other),
                    }))),
                }
            }
            Expr::Column(c) => match PSEUDO_COLUMNS.iter().find(|(p, _)| *p == c.name) {
                Some((_, "key")) => Err(DataFusionError::Plan("_key".into())),
                Some((_, raw)) => Ok(Transformed::yes(Expr::Column(Column::new_unqualified(
                    *raw,
                )))),
                None => Ok(Transformed::yes(Expr::Column(Column::new_unqualified(
                    format!("{VALUE_COLUMN_PREFIX}{}", c.name),
                )))),
            },
            e => Ok(Transformed::no(e)),
        })
        .ok()?;
    Some(rewritten.data)
}

fn is_column(e: &Expr, name: &str) -> bool {
    matches!(e, Expr::Column(c) if c.name == name)
}

#[async_trait]
impl TableProvider for StreamTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        // Filters on declared columns prune archive files that carry them
        // typed; DataFusion still applies every filter to the rows.
        let declared = self.declared();
        Ok(filters
            .iter()
            .map(|f| {
                let f = unqualified(std::slice::from_ref(*f));
                match f.first().and_then(|f| to_file_filter(f, &declared)) {
                    Some(_) => TableProviderFilterPushDown::Inexact,
                    None => TableProviderFilterPushDown::Unsupported,
                }
            })
            .collect())
    }

    async fn insert_into(
        &self,
        _state: &dyn Session,
        input: Arc<dyn ExecutionPlan>,
        op: InsertOp,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if op != InsertOp::Append {
            return Err(DataFusionError::External(Box::new(
                crate::SqlError::unsupported(&format!(
                    "{op} on a stream (streams are append-only)"
                )),
            )));
        }
        let sink = crate::insert::StreamSink::new(
            &self.def.name,
            &self.def.topic,
            self.schema.clone(),
            self.topic.log().clone(),
        );
        Ok(Arc::new(DataSinkExec::new(input, Arc::new(sink), None)))
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let filters = unqualified(filters);
        let raw_filters: Vec<Expr> = filters.iter().filter_map(to_raw_filter).collect();
        let all: Vec<usize> = (0..self.schema.fields().len()).collect();
        let wanted = projection.unwrap_or(&all).clone();
        let needs_value = wanted.iter().any(|&i| i >= PSEUDO_COLUMNS.len());
        // Raw topic columns: partition, offset, timestamp, key, value.
        let raw_projection: Vec<usize> = if needs_value {
            vec![0, 1, 2, 3, 4]
        } else {
            vec![0, 1, 2, 3]
        };
        // Archive files carrying this stream's columns are read typed.
        let typed = needs_value.then(|| {
            let declared = self.declared();
            TypedColumns {
                fields: self.value_schema.fields().clone(),
                filters: filters
                    .iter()
                    .filter_map(|f| to_file_filter(f, &declared))
                    .collect(),
            }
        });
        let split = self
            .topic
            .plan_scan(
                state,
                &raw_projection,
                &raw_filters,
                RowFilter::All,
                limit,
                typed.as_ref(),
            )
            .await?;
        let schema = Arc::new(self.schema.project(&wanted)?);
        let decode = |input, typed| -> Arc<dyn ExecutionPlan> {
            Arc::new(DecodeExec::new(
                input,
                self.def.name.clone(),
                self.value_schema.clone(),
                typed,
                wanted.clone(),
                schema.clone(),
                self.errors.clone(),
            ))
        };
        let mut inputs: Vec<Arc<dyn ExecutionPlan>> = Vec::new();
        if let Some(typed) = split.typed {
            inputs.push(decode(typed, true));
        }
        if let Some(raw) = split.raw {
            inputs.push(decode(raw, false));
        }
        Ok(match inputs.len() {
            0 => Arc::new(datafusion::physical_plan::empty::EmptyExec::new(schema)),
            1 => inputs.remove(0),
            _ => UnionExec::try_new(inputs)?,
        })
    }
}

impl StreamTable {
    fn declared(&self) -> Vec<&str> {
        self.value_schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect()
    }
}

/// Turns raw topic rows (partition, offset, timestamp, key[, value]) into
/// stream rows; with `typed`, the input has the typed value columns in
/// place of `value` (from archive files that carry them).
#[derive(Debug)]
pub struct DecodeExec {
    input: Arc<dyn ExecutionPlan>,
    stream: String,
    value_schema: SchemaRef,
    typed: bool,
    /// Stream-schema column indexes to output.
    projection: Vec<usize>,
    schema: SchemaRef,
    errors: Arc<DecodeErrors>,
    props: Arc<PlanProperties>,
}

impl DecodeExec {
    fn new(
        input: Arc<dyn ExecutionPlan>,
        stream: String,
        value_schema: SchemaRef,
        typed: bool,
        projection: Vec<usize>,
        schema: SchemaRef,
        errors: Arc<DecodeErrors>,
    ) -> Self {
        let input_props = input.properties();
        let props = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            input_props.output_partitioning().clone(),
            input_props.emission_type,
            input_props.boundedness,
        ));
        DecodeExec {
            input,
            stream,
            value_schema,
            typed,
            projection,
            schema,
            errors,
            props,
        }
    }
}

impl DisplayAs for DecodeExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cols: Vec<&str> = self
            .schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        let from = if self.typed {
            "typed archive columns"
        } else {
            "JSON"
        };
        write!(
            f,
            "DecodeExec: stream={} from={from} columns=[{}]",
            self.stream,
            cols.join(", ")
        )
    }
}

impl ExecutionPlan for DecodeExec {
    fn name(&self) -> &str {
        "DecodeExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let input = crate::topic_table::only_child(children, "DecodeExec")?;
        Ok(Arc::new(DecodeExec::new(
            input,
            self.stream.clone(),
            self.value_schema.clone(),
            self.typed,
            self.projection.clone(),
            self.schema.clone(),
            self.errors.clone(),
        )))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        let decoder = Decoder {
            stream: self.stream.clone(),
            value_schema: self.value_schema.clone(),
            typed: self.typed,
            projection: self.projection.clone(),
            schema: self.schema.clone(),
            errors: self.errors.clone(),
        };
        let out = input.map(move |b| b.and_then(|b| decoder.decode(&b)));
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            out,
        )))
    }
}

struct Decoder {
    stream: String,
    value_schema: SchemaRef,
    typed: bool,
    projection: Vec<usize>,
    schema: SchemaRef,
    errors: Arc<DecodeErrors>,
}

impl Decoder {
    fn decode(&self, raw: &RecordBatch) -> Result<RecordBatch> {
        let rows = raw.num_rows();
        let partition = raw
            .column(0)
            .as_primitive::<datafusion::arrow::datatypes::Int32Type>();
        let offset = raw
            .column(1)
            .as_primitive::<datafusion::arrow::datatypes::Int64Type>();
        let values = if self.typed {
            Some(raw.columns()[4..].to_vec())
        } else if raw.num_columns() > 4 {
            Some(decode_values(
                raw.column(4).as_binary::<i32>(),
                &self.value_schema,
                &mut |row, reason| {
                    self.errors.record(DecodeError {
                        stream: self.stream.clone(),
                        partition: partition.value(row),
                        offset: offset.value(row),
                        reason,
                        at_ms: sediment_log::now_ms(),
                    })
                },
            )?)
        } else {
            None
        };
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.projection.len());
        for &i in &self.projection {
            columns.push(match i {
                0..=2 => raw.column(i).clone(),
                3 => keys_as_text(raw.column(3).as_binary::<i32>()),
                _ => match &values {
                    Some(v) => v[i - PSEUDO_COLUMNS.len()].clone(),
                    None => new_null_array(self.schema.field(columns.len()).data_type(), rows),
                },
            });
        }
        Ok(RecordBatch::try_new_with_options(
            self.schema.clone(),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(rows)),
        )?)
    }
}

/// Keys as text (ksqlDB's KAFKA key format for strings); bytes that are
/// not UTF-8 are replaced, never an error.
fn keys_as_text(keys: &BinaryArray) -> ArrayRef {
    let mut b = StringBuilder::with_capacity(keys.len(), keys.value_data().len());
    for k in keys.iter() {
        match k {
            Some(k) => b.append_value(String::from_utf8_lossy(k)),
            None => b.append_null(),
        }
    }
    Arc::new(b.finish())
}

/// Decodes JSON object values into `schema`'s columns. Rows whose value is
/// not a JSON object fitting the schema are all-NULL and reported through
/// `bad(row, reason)`; an absent value (a tombstone) is all-NULL and not
/// an error.
pub fn decode_values(
    values: &BinaryArray,
    schema: &SchemaRef,
    bad: &mut dyn FnMut(usize, String),
) -> Result<Vec<ArrayRef>> {
    let rows = values.len();
    // Fast path: every present value through one decoder.
    let present: Vec<usize> = (0..rows).filter(|&i| values.is_valid(i)).collect();
    let mut good: Vec<usize> = Vec::with_capacity(present.len());
    let decoded = match decode_many(values, &present, schema) {
        Ok(batch) => {
            good.clone_from(&present);
            Some(batch)
        }
        Err(_) => {
            // Slow path: find the bad ones one by one.
            let mut parts = Vec::new();
            for &i in &present {
                match decode_many(values, &[i], schema) {
                    Ok(b) => {
                        good.push(i);
                        parts.push(b);
                    }
                    Err(reason) => bad(i, reason),
                }
            }
            if parts.is_empty() {
                None
            } else {
                Some(datafusion::arrow::compute::concat_batches(schema, &parts)?)
            }
        }
    };
    let Some(decoded) = decoded else {
        return Ok(schema
            .fields()
            .iter()
            .map(|f| new_null_array(f.data_type(), rows))
            .collect());
    };
    if good.len() == rows {
        return Ok(decoded.columns().to_vec());
    }
    // Scatter decoded rows back to their positions; others NULL.
    let mut index: Vec<Option<u32>> = vec![None; rows];
    for (k, &row) in good.iter().enumerate() {
        index[row] = u32::try_from(k).ok();
    }
    let index = UInt32Array::from(index);
    decoded
        .columns()
        .iter()
        .map(|c| Ok(take(c.as_ref(), &index, None)?))
        .collect()
}

/// Decodes the values at `rows` with one decoder; the reason on failure.
fn decode_many(
    values: &BinaryArray,
    rows: &[usize],
    schema: &SchemaRef,
) -> std::result::Result<RecordBatch, String> {
    let mut buf = Vec::new();
    for &i in rows {
        let v = values.value(i);
        // One object per value: a value holding several objects, or one
        // that is not an object, must not shift its neighbours.
        let trimmed = v.trim_ascii();
        if trimmed.first() != Some(&b'{') {
            return Err("value is not a JSON object".into());
        }
        buf.extend_from_slice(trimmed);
        buf.push(b'\n');
    }
    let mut decoder = arrow_json::ReaderBuilder::new(schema.clone())
        .with_batch_size(rows.len().max(1))
        .with_strict_mode(false)
        .with_coerce_primitive(true)
        .build_decoder()
        .map_err(|e| e.to_string())?;
    let used = decoder.decode(&buf).map_err(|e| e.to_string())?;
    if used != buf.len() {
        return Err("value holds more than one JSON object".into());
    }
    let batch = decoder
        .flush()
        .map_err(|e| e.to_string())?
        .unwrap_or_else(|| RecordBatch::new_empty(schema.clone()));
    if batch.num_rows() != rows.len() {
        return Err("value holds more than one JSON object".into());
    }
    Ok(batch)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("user_id", DataType::Utf8, true),
            Field::new("amount", DataType::Float64, true),
        ]))
    }

    #[test]
    fn bad_values_become_null_rows_and_are_reported() {
        let values = BinaryArray::from_opt_vec(vec![
            Some(br#"{"user_id":"a","amount":1.5}"#.as_slice()),
            Some(b"not json".as_slice()),
            None,
            Some(br#"{"user_id":"b","amount":"lots"}"#.as_slice()),
            Some(br#"{"user_id":"c","extra":true}"#.as_slice()),
            Some(br#"{"user_id":"d"} {"user_id":"e"}"#.as_slice()),
            Some(br#"[1,2]"#.as_slice()),
        ]);
        let mut reported = Vec::new();
        let cols = decode_values(&values, &schema(), &mut |row, _| reported.push(row)).unwrap();
        assert_eq!(reported, vec![1, 3, 5, 6]);
        let users = cols[0].as_string::<i32>();
        let amounts = cols[1].as_primitive::<datafusion::arrow::datatypes::Float64Type>();
        assert_eq!(users.len(), 7);
        assert_eq!(users.value(0), "a");
        assert_eq!(amounts.value(0), 1.5);
        for row in [1, 2, 3, 5, 6] {
            assert!(users.is_null(row) && amounts.is_null(row), "row {row}");
        }
        assert_eq!(users.value(4), "c");
        assert!(amounts.is_null(4));
    }

    #[test]
    fn the_fast_path_keeps_every_row() {
        let values = BinaryArray::from_vec(vec![
            br#"{"user_id":"a","amount":1}"#.as_slice(),
            br#" {"amount":2.5,"user_id":"b"} "#.as_slice(),
        ]);
        let cols = decode_values(&values, &schema(), &mut |row, r| panic!("{row}: {r}")).unwrap();
        assert_eq!(cols[0].as_string::<i32>().value(1), "b");
        let amounts = cols[1].as_primitive::<datafusion::arrow::datatypes::Float64Type>();
        assert_eq!((amounts.value(0), amounts.value(1)), (1.0, 2.5));
    }

    #[test]
    fn definitions_survive_a_reopen_and_newer_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let schema_of = |_: &StreamDef| Ok(schema());
        let r = StreamRegistry::open(dir.path(), schema_of).unwrap();
        let def = StreamDef {
            name: "trades".into(),
            topic: "trades".into(),
            value_format: "JSON".into(),
            columns: vec![ColumnDef {
                name: "user_id".into(),
                sql_type: "VARCHAR".into(),
            }],
            timestamp_column: None,
            created_ms: 1,
        };
        assert!(r.create(def.clone(), schema()).unwrap());
        assert!(!r.create(def.clone(), schema()).unwrap());
        let r = StreamRegistry::open(dir.path(), schema_of).unwrap();
        assert_eq!(r.get("trades").unwrap().0, def);
        assert_eq!(r.drop_stream("trades").unwrap(), Some(def));
        let r = StreamRegistry::open(dir.path(), schema_of).unwrap();
        assert!(r.names().is_empty());
        std::fs::write(
            dir.path().join("sql/streams.json"),
            br#"{"format":"sediment-streams","version":99,"streams":[]}"#,
        )
        .unwrap();
        let e = StreamRegistry::open(dir.path(), schema_of).unwrap_err();
        assert!(e.to_string().contains("newer"), "{e}");
    }
}
