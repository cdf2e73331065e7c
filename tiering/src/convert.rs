//! Segment → Arrow → Parquet, and Parquet rows → Kafka record batches.
//!
//! One row per record. Besides what analysts read (`partition`, `offset`,
//! `timestamp`, `key`, `value`, `headers`) each row keeps what is needed to
//! rebuild the batch a consumer would have fetched from the hot tier:
//! `timestamp_type`, `producer_id`, `producer_epoch`, `sequence`,
//! `leader_epoch` and `batch_offset` (the base offset of the batch that
//! carried the record: rows with the same value form one batch again).
//! Row groups end on batch boundaries, so a row group rebuilds to whole
//! batches. The schema is documented in docs/FORMAT.md.

use std::io::{Read, Write};
use std::sync::Arc;

use arrow_array::builder::BinaryBuilder;
use arrow_array::types::{Int16Type, Int32Type, Int64Type, Int8Type};
use arrow_array::{
    Array, ArrayRef, BinaryArray, ListArray, PrimitiveArray, RecordBatch, StructArray,
    TimestampMillisecondArray,
};
use arrow_buffer::{OffsetBuffer, ScalarBuffer};
use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::metadata::SortingColumn;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use sediment_log::batch::{self, BatchHeader, LOG_OVERHEAD};
use sediment_log::records;

use crate::ArchiveError;

/// Rows per row group (ended at the next batch boundary): small enough that
/// a consumer's fetch reads and rebuilds little more than it needs, and
/// that rebuilding one bounds the memory a cold read takes.
pub const ROWS_PER_GROUP: usize = 32 * 1024;
/// Raw record bytes per row group, whichever comes first.
pub const BYTES_PER_GROUP: usize = 8 << 20;

/// Typed columns decoded from record values (a SQL stream's declared
/// columns), written after the raw ones so that queries read them without
/// parsing the values again. Implemented by the SQL engine.
pub trait ValueColumns: Send + Sync + std::fmt::Debug {
    /// The decoder for the next archive file of `topic`, if it has one.
    fn for_topic(&self, topic: &str) -> Option<Arc<dyn ValueDecoder>>;
}

/// Decodes one topic's values into typed columns.
pub trait ValueDecoder: Send + Sync {
    /// The columns, named as declared; the file names them
    /// `value.<name>`, all nullable.
    fn fields(&self) -> Fields;
    /// One array per field with a row per value. A value that does not
    /// decode (and a tombstone) is NULL in every column, never an error;
    /// an error means the decoder itself failed.
    fn decode(
        &self,
        partition: i32,
        offsets: &PrimitiveArray<Int64Type>,
        values: &BinaryArray,
    ) -> Result<Vec<ArrayRef>, String>;
}

/// Typed value columns are named `value.<declared name>` in the file.
pub const VALUE_COLUMN_PREFIX: &str = "value.";

/// Columns of the raw schema ([`schema`]); typed columns come after them.
pub const RAW_COLUMNS: usize = 12;

/// The archive's raw schema (the first [`RAW_COLUMNS`] columns of every
/// file). Column order is part of the format.
pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("partition", DataType::Int32, false),
        Field::new("offset", DataType::Int64, false),
        Field::new(
            "timestamp",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            false,
        ),
        Field::new("timestamp_type", DataType::Int8, false),
        Field::new("key", DataType::Binary, true),
        Field::new("value", DataType::Binary, true),
        Field::new(
            "headers",
            DataType::List(Arc::new(Field::new_list_field(
                DataType::Struct(header_fields()),
                false,
            ))),
            false,
        ),
        Field::new("producer_id", DataType::Int64, false),
        Field::new("producer_epoch", DataType::Int16, false),
        Field::new("sequence", DataType::Int32, false),
        Field::new("leader_epoch", DataType::Int32, false),
        Field::new("batch_offset", DataType::Int64, false),
    ]))
}

/// The schema of a file with typed value columns `typed` (declared
/// names) after the raw ones.
pub fn schema_with(typed: &Fields) -> SchemaRef {
    let raw = schema();
    let mut fields: Vec<Field> = raw.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.extend(typed.iter().map(|f| {
        Field::new(
            format!("{VALUE_COLUMN_PREFIX}{}", f.name()),
            f.data_type().clone(),
            true,
        )
    }));
    Arc::new(Schema::new(fields))
}

fn header_fields() -> Fields {
    Fields::from(vec![
        Field::new("key", DataType::Binary, false),
        Field::new("value", DataType::Binary, true),
    ])
}

/// Writer settings: zstd; page-level statistics on the columns queries
/// filter on (partition, offset, timestamp, key: they prune row groups and
/// pages), chunk-level on the small fixed-width ones, none on values and
/// headers (min/max of payloads prunes nothing and costs a comparison per
/// row); delta encoding for the sorted integer columns; dictionaries only
/// where values repeat.
pub fn writer_properties(
    kv: Vec<parquet::file::metadata::KeyValue>,
    typed: &Fields,
) -> WriterProperties {
    let page_stats = ["partition", "offset", "timestamp", "key"];
    let no_stats: [&[&str]; 4] = [
        &["value"],
        &["headers", "list", "element", "key"],
        &["headers", "list", "element", "value"],
        &["batch_offset"],
    ];
    let delta = ["offset", "timestamp", "batch_offset", "sequence"];
    let dict = [
        "partition",
        "timestamp_type",
        "key",
        "producer_id",
        "producer_epoch",
        "leader_epoch",
    ];
    let mut b = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_statistics_enabled(EnabledStatistics::Chunk)
        .set_max_row_group_row_count(None)
        .set_dictionary_enabled(false)
        .set_sorting_columns(Some(vec![SortingColumn {
            column_idx: 1,
            descending: false,
            nulls_first: false,
        }]))
        .set_key_value_metadata(Some(kv));
    for c in delta {
        b = b.set_column_encoding(ColumnPath::from(c), Encoding::DELTA_BINARY_PACKED);
    }
    for c in dict {
        b = b.set_column_dictionary_enabled(ColumnPath::from(c), true);
    }
    // Typed columns: dictionaries (the writer falls back to plain pages
    // when one grows too large) and chunk statistics (the default).
    for f in typed {
        let path = ColumnPath::new(vec![format!("{VALUE_COLUMN_PREFIX}{}", f.name())]);
        b = b.set_column_dictionary_enabled(path, true);
    }
    for c in page_stats {
        b = b.set_column_statistics_enabled(ColumnPath::from(c), EnabledStatistics::Page);
    }
    for c in no_stats {
        let path = ColumnPath::new(c.iter().map(|p| p.to_string()).collect());
        b = b.set_column_statistics_enabled(path, EnabledStatistics::None);
    }
    b.build()
}

/// Accumulates records into Arrow columns of [`schema`]: the archive
/// writer and the SQL engine's hot-tier scan build rows the same way, so
/// both tiers answer with identical columns.
#[derive(Default)]
pub struct Columns {
    offset: Vec<i64>,
    timestamp: Vec<i64>,
    timestamp_type: Vec<i8>,
    key: BinaryBuilder,
    value: BinaryBuilder,
    header_offsets: Vec<i32>,
    header_keys: BinaryBuilder,
    header_values: BinaryBuilder,
    header_count: i32,
    producer_id: Vec<i64>,
    producer_epoch: Vec<i16>,
    sequence: Vec<i32>,
    leader_epoch: Vec<i32>,
    batch_offset: Vec<i64>,
    raw_bytes: usize,
}

impl Columns {
    pub fn rows(&self) -> usize {
        self.offset.len()
    }

    /// Key, value and per-record overhead bytes accumulated so far.
    pub fn raw_bytes(&self) -> usize {
        self.raw_bytes
    }

    pub fn push_batch(&mut self, h: &BatchHeader, recs: &[records::RecordRef<'_>]) {
        if self.header_offsets.is_empty() {
            self.header_offsets.push(0);
        }
        let ts_type = i8::from(h.is_log_append_time());
        for r in recs {
            self.offset.push(r.offset);
            self.timestamp.push(r.timestamp);
            self.timestamp_type.push(ts_type);
            self.key.append_option(r.key);
            self.value.append_option(r.value);
            for (k, v) in &r.headers {
                self.header_keys.append_value(k);
                self.header_values.append_option(*v);
            }
            self.header_count += r.headers.len() as i32;
            self.header_offsets.push(self.header_count);
            self.producer_id.push(h.producer_id);
            self.producer_epoch.push(h.producer_epoch);
            let seq = if h.base_sequence < 0 {
                -1
            } else {
                // Sequences wrap at i32::MAX like Kafka's.
                ((i64::from(h.base_sequence) + (r.offset - h.base_offset)) % (1i64 << 31)) as i32
            };
            self.sequence.push(seq);
            self.leader_epoch.push(h.leader_epoch);
            self.batch_offset.push(h.base_offset);
            self.raw_bytes += r.key.map_or(0, <[u8]>::len) + r.value.map_or(0, <[u8]>::len) + 32;
        }
    }

    /// Takes the accumulated rows as one batch, leaving `self` empty.
    pub fn finish(&mut self, partition: i32) -> Result<RecordBatch, ArchiveError> {
        let rows = self.rows();
        let mut taken = std::mem::take(self);
        let header_struct = StructArray::try_new(
            header_fields(),
            vec![
                Arc::new(taken.header_keys.finish()) as ArrayRef,
                Arc::new(taken.header_values.finish()) as ArrayRef,
            ],
            None,
        )?;
        let offsets = if taken.header_offsets.is_empty() {
            vec![0]
        } else {
            taken.header_offsets
        };
        let headers = ListArray::try_new(
            Arc::new(Field::new_list_field(
                DataType::Struct(header_fields()),
                false,
            )),
            OffsetBuffer::new(ScalarBuffer::from(offsets)),
            Arc::new(header_struct),
            None,
        )?;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(arrow_array::Int32Array::from(vec![partition; rows])),
            Arc::new(arrow_array::Int64Array::from(taken.offset)),
            Arc::new(TimestampMillisecondArray::from(taken.timestamp).with_timezone("UTC")),
            Arc::new(arrow_array::Int8Array::from(taken.timestamp_type)),
            Arc::new(taken.key.finish()),
            Arc::new(taken.value.finish()),
            Arc::new(headers),
            Arc::new(arrow_array::Int64Array::from(taken.producer_id)),
            Arc::new(arrow_array::Int16Array::from(taken.producer_epoch)),
            Arc::new(arrow_array::Int32Array::from(taken.sequence)),
            Arc::new(arrow_array::Int32Array::from(taken.leader_epoch)),
            Arc::new(arrow_array::Int64Array::from(taken.batch_offset)),
        ];
        Ok(RecordBatch::try_new(schema(), columns)?)
    }
}

/// What converting one segment produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Converted {
    pub base_offset: i64,
    pub next_offset: i64,
    pub min_timestamp: i64,
    pub max_timestamp: i64,
    pub rows: u64,
    pub segment_bytes: u64,
    /// The typed value columns the file carries.
    pub value_columns: Vec<crate::ValueColumn>,
}

/// Identity written into each file's key-value metadata.
#[derive(Debug, Clone)]
pub struct FileIdentity<'a> {
    pub topic: &'a str,
    pub topic_id: &'a str,
    pub partition: i32,
}

/// Reads a sealed segment (`segment`: its bytes, streamed) and writes it
/// as Parquet to `out`. Every batch's CRC is checked: a segment that rotted
/// on disk is refused, not archived. `pace` is told the segment bytes
/// consumed as it goes (about every MiB) and may block to slow the
/// conversion down. Pure apart from the reader, the writer and `pace`.
///
/// With `typed`, each row group also gets the decoder's typed columns;
/// [`ArchiveError::ValueColumns`] means the decoder failed (the caller may
/// convert again without it).
pub fn segment_to_parquet<R: Read, W: Write + Send>(
    segment: R,
    id: &FileIdentity<'_>,
    max_batch: usize,
    typed: Option<&dyn ValueDecoder>,
    out: W,
    pace: &mut dyn FnMut(u64),
) -> Result<Converted, ArchiveError> {
    let typed_fields = typed.map(|d| d.fields()).unwrap_or_default();
    let value_columns: Vec<crate::ValueColumn> = typed_fields
        .iter()
        .map(|f| crate::ValueColumn {
            name: f.name().clone(),
            data_type: f.data_type().to_string(),
        })
        .collect();
    let file_schema = schema_with(&typed_fields);
    let mut kv = vec![
        parquet::file::metadata::KeyValue::new(
            "sediment.format".into(),
            format!("sediment-archive-file/{}", crate::FILE_FORMAT_VERSION),
        ),
        parquet::file::metadata::KeyValue::new("sediment.topic".into(), id.topic.to_string()),
        parquet::file::metadata::KeyValue::new("sediment.topic_id".into(), id.topic_id.to_string()),
        parquet::file::metadata::KeyValue::new(
            "sediment.partition".into(),
            id.partition.to_string(),
        ),
    ];
    if !value_columns.is_empty() {
        kv.push(parquet::file::metadata::KeyValue::new(
            "sediment.value_columns".into(),
            serde_json::to_string(&value_columns)
                .map_err(|e| ArchiveError::ValueColumns(e.to_string()))?,
        ));
    }
    let mut writer = ArrowWriter::try_new(
        out,
        file_schema.clone(),
        Some(writer_properties(kv, &typed_fields)),
    )?;
    let finish = |cols: &mut Columns| -> Result<RecordBatch, ArchiveError> {
        let raw = cols.finish(id.partition)?;
        match typed {
            Some(d) => with_value_columns(raw, d, id.partition, &file_schema),
            None => Ok(raw),
        }
    };
    let mut reader = std::io::BufReader::with_capacity(1 << 20, segment);
    let mut cols = Columns::default();
    let mut buf = Vec::new();
    let mut conv = Converted {
        base_offset: -1,
        next_offset: -1,
        min_timestamp: i64::MAX,
        max_timestamp: i64::MIN,
        rows: 0,
        segment_bytes: 0,
        value_columns,
    };
    let mut position: u64 = 0;
    let mut unpaced: u64 = 0;
    loop {
        buf.resize(LOG_OVERHEAD, 0);
        match read_full(&mut reader, &mut buf[..LOG_OVERHEAD])? {
            0 => break,
            n if n < LOG_OVERHEAD => {
                return Err(ArchiveError::Corrupt(format!(
                    "segment ends inside a batch header at byte {position}"
                )))
            }
            _ => {}
        }
        let size = batch::peek_size(&buf, max_batch)
            .map_err(|e| ArchiveError::Corrupt(format!("at byte {position}: {e}")))?;
        buf.resize(size, 0);
        if read_full(&mut reader, &mut buf[LOG_OVERHEAD..])? < size - LOG_OVERHEAD {
            return Err(ArchiveError::Corrupt(format!(
                "segment ends inside the batch at byte {position}"
            )));
        }
        let header = batch::validate(&buf, max_batch)
            .map_err(|e| ArchiveError::Corrupt(format!("at byte {position}: {e}")))?;
        let payload = records::payload(&buf, &header)
            .map_err(|e| ArchiveError::Corrupt(format!("at byte {position}: {e}")))?;
        let recs = records::decode(&header, &payload)
            .map_err(|e| ArchiveError::Corrupt(format!("at byte {position}: {e}")))?;
        if conv.base_offset < 0 {
            conv.base_offset = header.base_offset;
        }
        conv.next_offset = header.next_offset();
        for r in &recs {
            conv.min_timestamp = conv.min_timestamp.min(r.timestamp);
            conv.max_timestamp = conv.max_timestamp.max(r.timestamp);
        }
        conv.rows += recs.len() as u64;
        cols.push_batch(&header, &recs);
        position += size as u64;
        unpaced += size as u64;
        if unpaced >= 1 << 20 {
            pace(unpaced);
            unpaced = 0;
        }
        if cols.rows() >= ROWS_PER_GROUP || cols.raw_bytes >= BYTES_PER_GROUP {
            writer.write(&finish(&mut cols)?)?;
            writer.flush()?;
        }
    }
    if cols.rows() > 0 {
        writer.write(&finish(&mut cols)?)?;
    }
    writer.close()?;
    conv.segment_bytes = position;
    if conv.rows == 0 {
        conv.min_timestamp = -1;
        conv.max_timestamp = -1;
    }
    Ok(conv)
}

/// `raw` (the raw columns) with the decoder's typed columns appended.
fn with_value_columns(
    raw: RecordBatch,
    decoder: &dyn ValueDecoder,
    partition: i32,
    file_schema: &SchemaRef,
) -> Result<RecordBatch, ArchiveError> {
    let rows = raw.num_rows();
    let offsets = raw
        .column(1)
        .as_any()
        .downcast_ref::<PrimitiveArray<Int64Type>>()
        .ok_or_else(|| ArchiveError::ValueColumns("offset column is not int64".into()))?;
    let values = raw
        .column(5)
        .as_any()
        .downcast_ref::<BinaryArray>()
        .ok_or_else(|| ArchiveError::ValueColumns("value column is not binary".into()))?;
    let typed = decoder
        .decode(partition, offsets, values)
        .map_err(ArchiveError::ValueColumns)?;
    let mut columns = raw.columns().to_vec();
    let expected = &file_schema.fields()[RAW_COLUMNS..];
    if typed.len() != expected.len() {
        return Err(ArchiveError::ValueColumns(format!(
            "decoder returned {} columns for {}",
            typed.len(),
            expected.len()
        )));
    }
    for (a, f) in typed.into_iter().zip(expected) {
        if a.len() != rows || a.data_type() != f.data_type() {
            return Err(ArchiveError::ValueColumns(format!(
                "decoder returned {} rows of {} for {} ({} rows of {})",
                a.len(),
                a.data_type(),
                f.name(),
                rows,
                f.data_type()
            )));
        }
        columns.push(a);
    }
    Ok(RecordBatch::try_new(file_schema.clone(), columns)?)
}

fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<usize, ArchiveError> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ArchiveError::Io(e.to_string())),
        }
    }
    Ok(n)
}

/// Kafka batches rebuilt from archive rows: one contiguous buffer and the
/// (base offset, next offset, byte position) of each batch in it.
#[derive(Debug, Default)]
pub struct Rebuilt {
    pub bytes: bytes::Bytes,
    pub batches: Vec<(i64, i64, usize)>,
}

impl Rebuilt {
    /// Whole batches from the one holding `offset` (or the first after it),
    /// at most `max_bytes` but at least one batch.
    pub fn slice_from(&self, offset: i64, max_bytes: usize) -> bytes::Bytes {
        let first = self.batches.partition_point(|b| b.1 <= offset);
        let Some(&(_, _, start)) = self.batches.get(first) else {
            return bytes::Bytes::new();
        };
        let end_of = |i: usize| self.batches.get(i + 1).map_or(self.bytes.len(), |b| b.2);
        let mut end = end_of(first);
        for i in first + 1..self.batches.len() {
            if end_of(i) - start > max_bytes {
                break;
            }
            end = end_of(i);
        }
        self.bytes.slice(start..end)
    }

    pub fn next_offset(&self) -> Option<i64> {
        self.batches.last().map(|b| b.1)
    }
}

/// Bytes the rebuilt batches will take, near enough: keys, values and
/// headers, plus a record's and a batch's framing.
fn rebuilt_size_hint(batches: &[RecordBatch]) -> usize {
    let binary = |rb: &RecordBatch, name: &str| {
        rb.column_by_name(name)
            .and_then(|c| c.as_any().downcast_ref::<BinaryArray>())
            .map_or(0, |a| a.values().len())
    };
    batches
        .iter()
        .map(|rb| {
            let headers = rb
                .column_by_name("headers")
                .map_or(0, |h| h.get_buffer_memory_size());
            binary(rb, "key") + binary(rb, "value") + headers + rb.num_rows() * 24 + 4096
        })
        .sum()
}

fn column<'a, T: 'static>(rb: &'a RecordBatch, name: &str) -> Result<&'a T, ArchiveError> {
    rb.column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| ArchiveError::Corrupt(format!("archive file lacks column '{name}'")))
}

/// Rebuilds Kafka v2 batches (uncompressed, CRC computed) from archive
/// rows: consecutive rows with the same `batch_offset` form one batch with
/// the original base offset, producer fields, leader epoch and timestamp
/// type; each record keeps its offset, timestamp, key, value and headers.
///
/// A Kafka batch's rows may span several Arrow batches (the reader's batch
/// size is not a batch boundary), so they are joined first.
pub fn rebuild(batches: &[RecordBatch]) -> Result<Rebuilt, ArchiveError> {
    let joined;
    let batches = match batches {
        [] | [_] => batches,
        [first, ..] => {
            joined = [arrow_select::concat::concat_batches(
                &first.schema(),
                batches,
            )?];
            &joined[..]
        }
    };
    // Sized up front: the buffer lives on in the cache, which counts its
    // length, so growth by doubling would hide up to half again as much.
    let mut out = Vec::with_capacity(rebuilt_size_hint(batches));
    let mut index = Vec::new();
    let mut scratch = Vec::new();
    for rb in batches {
        let offset = column::<PrimitiveArray<Int64Type>>(rb, "offset")?;
        let timestamp = column::<TimestampMillisecondArray>(rb, "timestamp")?;
        let ts_type = column::<PrimitiveArray<Int8Type>>(rb, "timestamp_type")?;
        let key = column::<BinaryArray>(rb, "key")?;
        let value = column::<BinaryArray>(rb, "value")?;
        let headers = column::<ListArray>(rb, "headers")?;
        let producer_id = column::<PrimitiveArray<Int64Type>>(rb, "producer_id")?;
        let producer_epoch = column::<PrimitiveArray<Int16Type>>(rb, "producer_epoch")?;
        let sequence = column::<PrimitiveArray<Int32Type>>(rb, "sequence")?;
        let leader_epoch = column::<PrimitiveArray<Int32Type>>(rb, "leader_epoch")?;
        let batch_offset = column::<PrimitiveArray<Int64Type>>(rb, "batch_offset")?;
        let hstruct = headers
            .values()
            .as_any()
            .downcast_ref::<StructArray>()
            .ok_or_else(|| ArchiveError::Corrupt("headers are not a list of structs".into()))?;
        let binary = |i: usize, what: &str| {
            hstruct
                .columns()
                .get(i)
                .and_then(|c| c.as_any().downcast_ref::<BinaryArray>())
                .ok_or_else(|| ArchiveError::Corrupt(format!("header {what}s are not binary")))
        };
        let (hkeys, hvalues) = (binary(0, "key")?, binary(1, "value")?);
        let hoffsets = headers.value_offsets();
        let n = rb.num_rows();
        let mut row = 0;
        while row < n {
            let base = batch_offset.value(row);
            let mut end = row + 1;
            while end < n && batch_offset.value(end) == base {
                end += 1;
            }
            let start = out.len();
            let log_append = ts_type.value(row) == 1;
            let first_ts = timestamp.value(row);
            let max_ts = (row..end)
                .map(|i| timestamp.value(i))
                .max()
                .unwrap_or(first_ts);
            let base_ts = if log_append { max_ts } else { first_ts };
            let next = offset.value(end - 1) + 1;
            batch::put_header(
                &mut out,
                &BatchHeader {
                    base_offset: base,
                    size: 0,
                    leader_epoch: leader_epoch.value(row),
                    attributes: if log_append {
                        batch::TIMESTAMP_TYPE_BIT
                    } else {
                        0
                    },
                    last_offset_delta: (next - 1 - base) as i32,
                    base_timestamp: base_ts,
                    max_timestamp: max_ts,
                    producer_id: producer_id.value(row),
                    producer_epoch: producer_epoch.value(row),
                    base_sequence: sequence.value(row),
                    record_count: (end - row) as i32,
                },
            );
            for i in row..end {
                let ts_delta = if log_append {
                    0
                } else {
                    timestamp.value(i) - base_ts
                };
                let (h0, h1) = (hoffsets[i] as usize, hoffsets[i + 1] as usize);
                records::put_record(
                    &mut out,
                    &mut scratch,
                    ts_delta,
                    offset.value(i) - base,
                    key.is_valid(i).then(|| key.value(i)),
                    value.is_valid(i).then(|| value.value(i)),
                    (h0..h1).map(|h| {
                        (
                            hkeys.value(h),
                            hvalues.is_valid(h).then(|| hvalues.value(h)),
                        )
                    }),
                );
            }
            batch::finish_batch(&mut out[start..]);
            index.push((base, next, start));
            row = end;
        }
    }
    Ok(Rebuilt {
        bytes: bytes::Bytes::from(out),
        batches: index,
    })
}
