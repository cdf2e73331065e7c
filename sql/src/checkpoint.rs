//! A persistent query's checkpoint: its input offsets, its state and the
//! output it is about to write, in one file, replaced atomically.
//!
//! The file `<data_dir>/sql/checkpoints/<query id>.ckpt` is a framed file
//! (kind `QCKP`, version 1, CRC-checked; see `docs/FORMAT.md`) whose
//! payload is a little-endian `u32` length, a JSON [`Header`], then three
//! sections whose lengths the header gives: the continuous aggregate's
//! state (an Arrow IPC stream), the table's rows (an Arrow IPC stream) and
//! the pending output (Kafka record batches, one after another).
//!
//! Exactly once: output is only appended after the checkpoint that holds
//! it is durable, from an idempotent producer whose sequences are in the
//! checkpoint. A restart first appends the pending batches the log does not
//! have yet (the log remembers the producer's last batch), then resumes
//! the input at the checkpoint's offsets with the checkpoint's state.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::Path;

use datafusion::arrow::array::RecordBatch;
use serde::{Deserialize, Serialize};

use crate::SqlError;

const KIND: &[u8; 4] = b"QCKP";
const VERSION: u16 = 1;
/// Checkpoints larger than this are refused when read.
const LIMIT: usize = 4 << 30;

/// One output batch not yet known to be in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingBatch {
    pub partition: i32,
    pub first_sequence: i32,
    pub last_sequence: i32,
    /// Its length in the pending section.
    pub bytes: usize,
}

/// Where a query is and what its sections hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub query_id: String,
    /// The query, as its definition has it: a checkpoint of another query
    /// of the same name is not used.
    pub sql: String,
    pub taken_ms: i64,
    /// The next offset to read, per input topic partition.
    pub inputs: Vec<InputOffset>,
    pub producer_id: i64,
    pub producer_epoch: i16,
    /// The next sequence of each output partition (after the pending
    /// batches).
    pub next_sequence: BTreeMap<i32, i32>,
    pub pending: Vec<PendingBatch>,
    pub aggregate_bytes: usize,
    pub table_bytes: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputOffset {
    pub topic: String,
    pub partition: i32,
    pub next_offset: i64,
}

/// A checkpoint in memory.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub header: Header,
    pub aggregate: Option<RecordBatch>,
    pub table: Option<RecordBatch>,
    /// The pending batches' bytes, in `header.pending` order.
    pub pending: Vec<Vec<u8>>,
}

fn corrupt(path: &Path, why: impl std::fmt::Display) -> SqlError {
    SqlError::new(
        "XX001",
        format!("checkpoint {} is unreadable: {why}", path.display()),
    )
}

fn ipc(batch: Option<&RecordBatch>) -> Result<Vec<u8>, SqlError> {
    let Some(b) = batch else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    let mut w = arrow_ipc::writer::StreamWriter::try_new(&mut out, b.schema_ref())
        .map_err(|e| SqlError::internal(e.to_string()))?;
    w.write(b).map_err(|e| SqlError::internal(e.to_string()))?;
    w.finish().map_err(|e| SqlError::internal(e.to_string()))?;
    drop(w);
    Ok(out)
}

fn from_ipc(bytes: &[u8]) -> Result<Option<RecordBatch>, String> {
    if bytes.is_empty() {
        return Ok(None);
    }
    let reader = arrow_ipc::reader::StreamReader::try_new(Cursor::new(bytes), None)
        .map_err(|e| e.to_string())?;
    let schema = reader.schema();
    let batches = reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let batch =
        datafusion::arrow::compute::concat_batches(&schema, &batches).map_err(|e| e.to_string())?;
    Ok(Some(batch))
}

impl Checkpoint {
    /// Writes this checkpoint to `path`, atomically and durably.
    pub fn write(&mut self, path: &Path) -> Result<(), SqlError> {
        let aggregate = ipc(self.aggregate.as_ref())?;
        let table = ipc(self.table.as_ref())?;
        self.header.aggregate_bytes = aggregate.len();
        self.header.table_bytes = table.len();
        for (meta, bytes) in self.header.pending.iter_mut().zip(&self.pending) {
            meta.bytes = bytes.len();
        }
        let header =
            serde_json::to_vec(&self.header).map_err(|e| SqlError::internal(e.to_string()))?;
        let header_len = u32::try_from(header.len())
            .map_err(|_| SqlError::internal("checkpoint header over 4 GiB".into()))?;
        let mut payload = Vec::with_capacity(
            4 + header.len()
                + aggregate.len()
                + table.len()
                + self.pending.iter().map(Vec::len).sum::<usize>(),
        );
        payload.extend_from_slice(&header_len.to_le_bytes());
        payload.extend_from_slice(&header);
        payload.extend_from_slice(&aggregate);
        payload.extend_from_slice(&table);
        for p in &self.pending {
            payload.extend_from_slice(p);
        }
        let io = |e: std::io::Error| SqlError::new("58030", format!("{}: {e}", path.display()));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        sediment_log::frame::write_atomic(
            path,
            &sediment_log::frame::encode(KIND, VERSION, &payload),
        )
        .map_err(io)
    }

    /// Reads the checkpoint at `path`; None if there is none.
    pub fn read(path: &Path) -> Result<Option<Checkpoint>, SqlError> {
        let bytes = match sediment_log::frame::read_file(path, LIMIT) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(SqlError::new("58030", format!("{}: {e}", path.display()))),
        };
        let (_, payload) = sediment_log::frame::decode("checkpoint", &bytes, KIND, VERSION, LIMIT)
            .map_err(|e| corrupt(path, e))?;
        let mut at = 0usize;
        let mut take = |n: usize| -> Result<&[u8], SqlError> {
            let end = at
                .checked_add(n)
                .filter(|&e| e <= payload.len())
                .ok_or_else(|| corrupt(path, "a section runs past the end"))?;
            let s = &payload[at..end];
            at = end;
            Ok(s)
        };
        let len = take(4)?;
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let header: Header = serde_json::from_slice(take(len)?).map_err(|e| corrupt(path, e))?;
        let aggregate = from_ipc(take(header.aggregate_bytes)?).map_err(|e| corrupt(path, e))?;
        let table = from_ipc(take(header.table_bytes)?).map_err(|e| corrupt(path, e))?;
        let mut pending = Vec::with_capacity(header.pending.len());
        for p in &header.pending {
            pending.push(take(p.bytes)?.to_vec());
        }
        Ok(Some(Checkpoint {
            header,
            aggregate,
            table,
            pending,
        }))
    }

    /// The input offsets, keyed as [`crate::tail::QueryState`] keys them.
    pub fn resume(&self) -> BTreeMap<(String, i32), i64> {
        self.header
            .inputs
            .iter()
            .map(|i| ((i.topic.clone(), i.partition), i.next_offset))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use datafusion::arrow::array::{Int64Array, StringArray};
    use std::sync::Arc;

    #[test]
    fn checkpoints_round_trip_and_damage_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.ckpt");
        assert!(Checkpoint::read(&path).unwrap().is_none());
        let batch = RecordBatch::try_from_iter([
            (
                "key_0",
                Arc::new(StringArray::from(vec!["a", "b"])) as datafusion::arrow::array::ArrayRef,
            ),
            ("acc_0", Arc::new(Int64Array::from(vec![3, 4])) as _),
        ])
        .unwrap();
        let mut c = Checkpoint {
            header: Header {
                query_id: "CTAS_T".into(),
                sql: "SELECT 1".into(),
                taken_ms: 1,
                inputs: vec![InputOffset {
                    topic: "t".into(),
                    partition: 1,
                    next_offset: 42,
                }],
                producer_id: 7,
                producer_epoch: 0,
                next_sequence: BTreeMap::from([(0, 9)]),
                pending: vec![PendingBatch {
                    partition: 0,
                    first_sequence: 5,
                    last_sequence: 8,
                    bytes: 0,
                }],
                aggregate_bytes: 0,
                table_bytes: 0,
            },
            aggregate: Some(batch.clone()),
            table: None,
            pending: vec![b"batch bytes".to_vec()],
        };
        c.write(&path).unwrap();
        let back = Checkpoint::read(&path).unwrap().unwrap();
        assert_eq!(back.header, c.header);
        assert_eq!(back.resume(), BTreeMap::from([(("t".into(), 1), 42)]));
        assert_eq!(back.aggregate.unwrap(), batch);
        assert!(back.table.is_none());
        assert_eq!(back.pending, vec![b"batch bytes".to_vec()]);
        // A flipped byte fails the frame's CRC.
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 3] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        let err = Checkpoint::read(&path).unwrap_err();
        assert_eq!(err.code, "XX001");
    }
}
