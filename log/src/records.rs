//! Bounded decoding of the records inside one record batch (format v2).
//!
//! The broker rarely needs records (batches are stored and served as
//! bytes), but ListOffsets by timestamp does, and the archive will. Every
//! count and length here comes from data a client sent, so nothing is
//! preallocated from it and decompressed output is capped at
//! [`MAX_DECOMPRESSED`]: a "zip bomb" batch is an error, not an outage.
//! Pure functions of bytes, no I/O.

use std::io::Read;

use crate::batch::{self, BatchHeader, BATCH_HEADER_LEN};

/// Largest decompressed record payload of one batch.
pub const MAX_DECOMPRESSED: usize = 64 << 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RecordError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, RecordError> {
    Err(RecordError(msg.into()))
}

/// One record, borrowing from the (decompressed) batch payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordRef<'a> {
    pub offset: i64,
    pub timestamp: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    /// Header (key, value) pairs in wire order; duplicates kept.
    pub headers: Vec<(&'a [u8], Option<&'a [u8]>)>,
}

/// The batch's records payload, decompressed if needed (bounded).
pub fn payload(batch_bytes: &[u8], header: &BatchHeader) -> Result<Vec<u8>, RecordError> {
    let body = batch_bytes
        .get(BATCH_HEADER_LEN..header.size)
        .ok_or_else(|| RecordError("batch shorter than its length field".into()))?;
    let limit = MAX_DECOMPRESSED as u64 + 1;
    let mut out = Vec::new();
    let read = match header.compression() {
        0 => {
            out.extend_from_slice(body);
            Ok(out.len())
        }
        1 => flate2::read::GzDecoder::new(body)
            .take(limit)
            .read_to_end(&mut out),
        2 => return snappy(body),
        3 => match lz4::Decoder::new(body) {
            Ok(d) => d.take(limit).read_to_end(&mut out),
            Err(e) => Err(e),
        },
        4 => match zstd::stream::read::Decoder::new(body) {
            Ok(d) => d.take(limit).read_to_end(&mut out),
            Err(e) => Err(e),
        },
        c => return err(format!("unknown compression codec {c}")),
    };
    match read {
        Ok(n) if n > MAX_DECOMPRESSED => err(format!(
            "batch decompresses to more than {MAX_DECOMPRESSED} bytes"
        )),
        Ok(_) => Ok(out),
        Err(e) => err(format!("decompression failed: {e}")),
    }
}

/// Kafka's snappy: xerial framing (magic + blocks of `u32 len, block`) or a
/// single raw block.
fn snappy(body: &[u8]) -> Result<Vec<u8>, RecordError> {
    const MAGIC: &[u8] = b"\x82SNAPPY\x00";
    let mut dec = snap::raw::Decoder::new();
    let mut out = Vec::new();
    let mut block = |b: &[u8], out: &mut Vec<u8>| -> Result<(), RecordError> {
        let n = snap::raw::decompress_len(b).map_err(|e| RecordError(e.to_string()))?;
        if out.len() + n > MAX_DECOMPRESSED {
            return err(format!(
                "batch decompresses to more than {MAX_DECOMPRESSED} bytes"
            ));
        }
        let start = out.len();
        out.resize(start + n, 0);
        dec.decompress(b, &mut out[start..])
            .map_err(|e| RecordError(e.to_string()))?;
        Ok(())
    };
    if body.starts_with(MAGIC) && body.len() >= 16 {
        let mut at = 16;
        while at < body.len() {
            let len_bytes = body
                .get(at..at + 4)
                .ok_or_else(|| RecordError("truncated snappy block length".into()))?;
            let len = u32::from_be_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]])
                as usize;
            at += 4;
            let b = body
                .get(at..at + len)
                .ok_or_else(|| RecordError("truncated snappy block".into()))?;
            block(b, &mut out)?;
            at += len;
        }
    } else {
        block(body, &mut out)?;
    }
    Ok(out)
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn varlong(&mut self) -> Result<i64, RecordError> {
        let mut v: u64 = 0;
        for shift in (0..70).step_by(7) {
            let Some(&byte) = self.b.get(self.at) else {
                return err("truncated varint");
            };
            self.at += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(((v >> 1) as i64) ^ -((v & 1) as i64));
            }
        }
        err("varint too long")
    }
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        let s = self
            .b
            .get(self.at..self.at + n)
            .ok_or_else(|| RecordError(format!("record field of {n} bytes runs past the batch")))?;
        self.at += n;
        Ok(s)
    }
    fn nullable(&mut self) -> Result<Option<&'a [u8]>, RecordError> {
        match self.varlong()? {
            -1 => Ok(None),
            n if n >= 0 => Ok(Some(self.bytes(n as usize)?)),
            n => err(format!("negative length {n}")),
        }
    }
}

/// Decodes every record of a batch's (decompressed) payload. Counts come
/// from the header but are only trusted as far as bytes back them.
pub fn decode<'a>(
    header: &BatchHeader,
    payload: &'a [u8],
) -> Result<Vec<RecordRef<'a>>, RecordError> {
    let mut r = Reader { b: payload, at: 0 };
    let mut out = Vec::new();
    for _ in 0..header.record_count.max(0) {
        let len = r.varlong()?;
        if len < 0 {
            return err(format!("negative record length {len}"));
        }
        let rec = r.bytes(len as usize)?;
        let mut f = Reader { b: rec, at: 0 };
        f.bytes(1)?; // attributes
        let ts_delta = f.varlong()?;
        let off_delta = f.varlong()?;
        let key = f.nullable()?;
        let value = f.nullable()?;
        let n_headers = f.varlong()?;
        if n_headers < 0 || n_headers as usize > rec.len() {
            return err(format!("record claims {n_headers} headers"));
        }
        let mut headers = Vec::new();
        for _ in 0..n_headers {
            let k = f.nullable()?.unwrap_or_default();
            let v = f.nullable()?;
            headers.push((k, v));
        }
        let timestamp = if header.is_log_append_time() {
            header.max_timestamp
        } else {
            header.base_timestamp.wrapping_add(ts_delta)
        };
        out.push(RecordRef {
            offset: header.base_offset + off_delta,
            timestamp,
            key,
            value,
            headers,
        });
    }
    Ok(out)
}

/// Appends one record (uncompressed, v2) to a batch's payload: length,
/// attributes, timestamp and offset deltas, key, value and headers.
/// `scratch` is reused between calls to avoid allocating per record.
pub fn put_record<'a>(
    out: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
    timestamp_delta: i64,
    offset_delta: i64,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: impl ExactSizeIterator<Item = (&'a [u8], Option<&'a [u8]>)>,
) {
    scratch.clear();
    scratch.push(0);
    put_varlong(scratch, timestamp_delta);
    put_varlong(scratch, offset_delta);
    put_nullable(scratch, key);
    put_nullable(scratch, value);
    put_varlong(scratch, headers.len() as i64);
    for (k, v) in headers {
        put_nullable(scratch, Some(k));
        put_nullable(scratch, v);
    }
    put_varlong(out, scratch.len() as i64);
    out.extend_from_slice(scratch);
}

/// Zig-zag varint, as in every v2 record field.
pub fn put_varlong(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8 & 0x7f) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

fn put_nullable(out: &mut Vec<u8>, v: Option<&[u8]>) {
    match v {
        None => put_varlong(out, -1),
        Some(b) => {
            put_varlong(out, b.len() as i64);
            out.extend_from_slice(b);
        }
    }
}

/// The first record of a stored batch whose timestamp is >= `ts`.
pub fn first_at_or_after(
    batch_bytes: &[u8],
    max_batch: usize,
    ts: i64,
) -> Result<Option<(i64, i64)>, RecordError> {
    let header =
        batch::parse_header(batch_bytes, max_batch).map_err(|e| RecordError(e.to_string()))?;
    if header.is_log_append_time() {
        return Ok(
            (header.max_timestamp >= ts).then_some((header.base_offset, header.max_timestamp))
        );
    }
    let p = payload(batch_bytes, &header)?;
    Ok(decode(&header, &p)?
        .into_iter()
        .find(|r| r.timestamp >= ts)
        .map(|r| (r.offset, r.timestamp)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::batch::tests::make_batch;
    use bytes::BytesMut;
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };

    fn encoded(compression: Compression) -> Vec<u8> {
        let records: Vec<Record> = (0..20)
            .map(|i| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: 0,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: i,
                sequence: i as i32,
                timestamp: 1000 + i * 10,
                key: Some(format!("k{i}").into_bytes().into()),
                value: if i == 3 {
                    None
                } else {
                    Some(vec![b'v'; 50].into())
                },
                headers: Default::default(),
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
        buf.to_vec()
    }

    #[test]
    fn every_codec_decodes_to_the_same_records() {
        for c in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let b = encoded(c);
            let h = batch::validate(&b, 1 << 20).unwrap();
            let p = payload(&b, &h).unwrap();
            let recs = decode(&h, &p).unwrap();
            assert_eq!(recs.len(), 20, "{c:?}");
            assert_eq!(recs[5].offset, 5);
            assert_eq!(recs[5].timestamp, 1050);
            assert_eq!(recs[5].key, Some(&b"k5"[..]));
            assert_eq!(recs[3].value, None);
            assert_eq!(
                first_at_or_after(&b, 1 << 20, 1041).unwrap(),
                Some((5, 1050)),
                "{c:?}"
            );
        }
    }

    #[test]
    fn huge_record_count_is_bounded_by_bytes() {
        let mut b = make_batch(2, 5, 0, (-1, -1, -1));
        b[57..61].copy_from_slice(&i32::MAX.to_be_bytes());
        let h = batch::parse_header(&b, 1 << 20).unwrap();
        let p = payload(&b, &h).unwrap();
        assert!(decode(&h, &p).is_err());
    }

    proptest::proptest! {
        #[test]
        fn random_payloads_never_panic(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300), count in 0i32..1000) {
            let mut b = make_batch(1, 1, 0, (-1, -1, -1));
            b.truncate(BATCH_HEADER_LEN);
            b.extend(&data);
            b[57..61].copy_from_slice(&count.to_be_bytes());
            let len = (b.len() - 12) as i32;
            b[8..12].copy_from_slice(&len.to_be_bytes());
            let h = batch::parse_header(&b, 1 << 20).unwrap();
            let _ = decode(&h, &b[BATCH_HEADER_LEN..]);
        }
    }
}
