//! Sends a push query's rows (or a `COPY ... TO STDOUT`) as they come.
//!
//! pgwire buffers a result's rows until the statement completes; a push
//! query never completes by itself, so its rows are written here, straight
//! to the connection, and flushed after each batch. The loop ends at the
//! query's end (its `LIMIT`), on a cancel request, or when the client is
//! gone: while no row comes, a `ParameterStatus` message probes the
//! connection every [`PROBE_EVERY`], and a failed write ends the query and
//! frees what it holds.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use datafusion::arrow::array::RecordBatch;
use datafusion_postgres::arrow_pg::datatypes::{arrow_schema_to_pg_fields, encode_recordbatch};
use datafusion_postgres::arrow_pg::encoder::encode_value;
use datafusion_postgres::pgwire;
use futures::{Sink, SinkExt, StreamExt};
use pgwire::api::portal::Format;
use pgwire::api::results::{CopyCsvOptions, CopyEncoder, CopyTextOptions, FieldInfo, Tag};
use pgwire::api::ClientInfo;
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::copy::{CopyData, CopyDone, CopyOutResponse};
use pgwire::messages::data::RowDescription;
use pgwire::messages::startup::ParameterStatus;
use pgwire::messages::PgWireBackendMessage;
use sediment_sql::push::PushStream;
use sediment_sql::{CopyOptions, Properties};

use crate::{user_error, Registered};

/// How often an idle push query checks that its client is still there.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);

/// The connection metadata key a push query property is kept under.
fn property_key(name: &str) -> String {
    format!("sediment.property.{}", name.to_ascii_lowercase())
}

/// The connection's push query properties.
pub fn properties<C: ClientInfo>(client: &C) -> Properties {
    let prefix = property_key("");
    Properties::from_pairs(
        client
            .metadata()
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(&prefix).map(|k| (k, v.as_str()))),
    )
}

/// Runs `SET 'name' = 'value'` (or `UNSET 'name'` with no value) for this
/// connection; the command tag.
pub fn set_property<C: ClientInfo>(
    client: &mut C,
    name: &str,
    value: Option<&str>,
) -> PgWireResult<Tag> {
    let mut check = properties(client);
    check.set(name, value).map_err(user_error)?;
    let key = property_key(name);
    Ok(match value {
        Some(v) => {
            client.metadata_mut().insert(key, v.to_string());
            Tag::new("SET")
        }
        None => {
            client.metadata_mut().remove(&key);
            Tag::new("UNSET")
        }
    })
}

/// How the rows go out.
pub enum Output<'a> {
    /// DataRows, after a RowDescription when `describe` (simple protocol;
    /// the extended protocol described the portal already).
    Rows {
        format: &'a Format,
        describe: bool,
    },
    Copy(CopyOptions),
}

/// Sends `push`'s rows to `client` as they come; the command tag for the
/// end (`SELECT n` or `COPY n`).
pub async fn send<C>(
    client: &mut C,
    push: PushStream,
    output: Output<'_>,
    registered: &Arc<Registered>,
) -> PgWireResult<Tag>
where
    C: Sink<PgWireBackendMessage> + Unpin + Send,
    C::Error: Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    let PushStream { schema, mut stream } = push;
    let format = match &output {
        Output::Rows { format, .. } => (*format).clone(),
        Output::Copy(_) => Format::UnifiedText,
    };
    let fields = Arc::new(arrow_schema_to_pg_fields(&schema, &format, None)?);
    let mut copy = None;
    match output {
        Output::Rows { describe: true, .. } => {
            let desc = RowDescription::new(fields.iter().map(Into::into).collect());
            client
                .send(PgWireBackendMessage::RowDescription(desc))
                .await?;
        }
        Output::Rows { .. } => {}
        Output::Copy(options) => {
            let columns = i16::try_from(fields.len()).unwrap_or(i16::MAX);
            let start = CopyOutResponse::new(0, columns, vec![0; fields.len()]);
            client
                .feed(PgWireBackendMessage::CopyOutResponse(start))
                .await?;
            if options.header {
                let names: Vec<&str> = fields.iter().map(|f| f.name()).collect();
                client
                    .feed(PgWireBackendMessage::CopyData(CopyData::new(csv_line(
                        &names,
                    ))))
                    .await?;
            }
            client.flush().await?;
            copy = Some(options);
        }
    }
    let token = registered.token.clone();
    let mut rows = 0usize;
    let mut probe = tokio::time::interval(PROBE_EVERY);
    probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    probe.reset();
    loop {
        let batch = tokio::select! {
            _ = token.cancelled() => return Err(PgWireError::QueryCanceled),
            b = stream.next() => b,
            _ = probe.tick() => {
                let alive = ParameterStatus::new("sediment.push_query".into(), "running".into());
                client.send(PgWireBackendMessage::ParameterStatus(alive)).await?;
                continue;
            }
        };
        let Some(batch) = batch else { break };
        let batch = batch.map_err(|e| user_error(sediment_sql::sqlstate(&e)))?;
        rows += batch.num_rows();
        match copy {
            None => {
                for row in encode_recordbatch(fields.clone(), batch) {
                    client.feed(PgWireBackendMessage::DataRow(row?)).await?;
                }
            }
            Some(options) => {
                for data in copy_rows(&fields, &batch, options)? {
                    client.feed(PgWireBackendMessage::CopyData(data)).await?;
                }
            }
        }
        client.flush().await?;
        probe.reset();
    }
    if copy.is_some() {
        client
            .feed(PgWireBackendMessage::CopyDone(CopyDone::new()))
            .await?;
        return Ok(Tag::new("COPY").with_rows(rows));
    }
    Ok(Tag::new("SELECT").with_rows(rows))
}

/// One COPY data message per row of `batch`.
fn copy_rows(
    fields: &Arc<Vec<FieldInfo>>,
    batch: &RecordBatch,
    options: CopyOptions,
) -> PgWireResult<Vec<CopyData>> {
    let mut encoder = if options.csv {
        CopyEncoder::new_csv(fields.clone(), CopyCsvOptions::default())
    } else {
        CopyEncoder::new_text(fields.clone(), CopyTextOptions::default())
    };
    let schema = batch.schema();
    let mut out = Vec::with_capacity(batch.num_rows());
    for row in 0..batch.num_rows() {
        for (col, field) in fields.iter().enumerate() {
            encode_value(
                &mut encoder,
                batch.column(col),
                row,
                schema.field(col),
                field,
            )?;
        }
        out.push(encoder.take_copy());
    }
    Ok(out)
}

/// A CSV line of `values`, quoted where CSV needs it.
fn csv_line(values: &[&str]) -> Bytes {
    let mut b = BytesMut::new();
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            b.put_u8(b',');
        }
        if v.is_empty() || v.contains([',', '"', '\n', '\r']) {
            b.put_u8(b'"');
            b.put_slice(v.replace('"', "\"\"").as_bytes());
            b.put_u8(b'"');
        } else {
            b.put_slice(v.as_bytes());
        }
    }
    b.put_u8(b'\n');
    b.freeze()
}
