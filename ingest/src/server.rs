//! TCP listener and per-connection request loop.
//!
//! Each connection has a reader loop and a writer task. The reader decodes a
//! request, runs its ordered part inline (a Produce's append, any other
//! request entirely) and hands the writer a future for the response; the
//! writer awaits those futures in order. So a connection's produces are
//! appended in the order they were sent while their fsync waits overlap
//! (pipelining), and responses leave in request order, as Kafka requires.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::{Decodable, Encodable};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::{Broker, Handled};

/// A response still being produced; `None` means "send nothing" (acks=0).
pub type Pending = Pin<Box<dyn Future<Output = Option<BytesMut>> + Send>>;

/// Responses allowed to wait in a connection's queue before the reader stops
/// reading more requests (back-pressure on pipelining clients).
const MAX_IN_FLIGHT: usize = 16;

/// Accepts connections until `cancel` fires; every connection task is
/// tracked by `tracker` so shutdown can wait for them.
pub async fn serve(
    listener: TcpListener,
    broker: Arc<Broker>,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                let broker = broker.clone();
                let cancel = cancel.clone();
                tracker.spawn(async move {
                    if let Err(e) = connection(stream, peer, broker, cancel).await {
                        tracing::debug!(%peer, error = %e, "connection closed");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {0} bytes is outside the allowed range")]
    BadFrameLength(i64),
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("unknown api key {0}")]
    UnknownApi(i16),
    #[error("{api:?} v{version} is not supported")]
    UnsupportedVersion { api: ApiKey, version: i16 },
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    broker: Arc<Broker>,
    cancel: CancellationToken,
) -> Result<(), ConnError> {
    stream.set_nodelay(true)?;
    broker.metrics().connections.fetch_add(1, Ordering::Relaxed);
    let _open = ConnectionGauge(broker.clone());
    let (mut rd, mut wr) = stream.into_split();
    // Responses go out in request order; each carries its API and when its
    // request was read, for the request-duration histogram.
    let (tx, mut rx) = mpsc::channel::<(ApiKey, Instant, Pending)>(MAX_IN_FLIGHT);
    let wbroker = broker.clone();
    let writer = tokio::spawn(async move {
        while let Some((api, read_at, pending)) = rx.recv().await {
            if let Some(bytes) = pending.await {
                wbroker
                    .metrics()
                    .bytes_out
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                if let Err(e) = wr.write_all(&bytes).await {
                    tracing::debug!(error = %e, "write failed");
                    return;
                }
            }
            wbroker.metrics().record_request(api, read_at.elapsed());
        }
        let _ = wr.shutdown().await;
    });
    let max_frame = broker.config().max_request_bytes;
    let result = async {
        loop {
            let mut len_buf = [0u8; 4];
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                r = rd.read_exact(&mut len_buf) => match r {
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                    Err(e) => return Err(e.into()),
                },
            }
            let len = i32::from_be_bytes(len_buf);
            if len < 8 || len as usize > max_frame {
                broker
                    .metrics()
                    .malformed_requests
                    .fetch_add(1, Ordering::Relaxed);
                return Err(ConnError::BadFrameLength(i64::from(len)));
            }
            // Read straight into uninitialised capacity (no memset of up to
            // max_request_bytes), and never past this frame.
            let mut body = BytesMut::with_capacity(len as usize);
            let mut frame = (&mut rd).take(len as u64);
            while body.len() < len as usize {
                if frame.read_buf(&mut body).await? == 0 {
                    return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
                }
            }
            broker
                .metrics()
                .bytes_in
                .fetch_add(len as u64 + 4, Ordering::Relaxed);
            let read_at = Instant::now();
            let (api, pending) = match handle_frame(&broker, body.freeze(), peer).await {
                Ok(p) => p,
                Err(e) => {
                    broker
                        .metrics()
                        .malformed_requests
                        .fetch_add(1, Ordering::Relaxed);
                    return Err(e);
                }
            };
            if tx.send((api, read_at, pending)).await.is_err() {
                return Ok(());
            }
        }
    }
    .await;
    drop(tx);
    let _ = writer.await;
    result
}

/// Decrements the open-connections gauge when a connection ends.
struct ConnectionGauge(Arc<Broker>);

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        self.0.metrics().connections.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn handle_frame(
    broker: &Arc<Broker>,
    mut body: Bytes,
    peer: SocketAddr,
) -> Result<(ApiKey, Pending), ConnError> {
    let api_raw = i16::from_be_bytes([body[0], body[1]]);
    let version = i16::from_be_bytes([body[2], body[3]]);
    let api = ApiKey::try_from(api_raw).map_err(|_| ConnError::UnknownApi(api_raw))?;
    let Some((min, max)) = crate::broker::supported_versions(api) else {
        return Err(ConnError::UnknownApi(api_raw));
    };
    if version < min || version > max {
        if api == ApiKey::ApiVersions {
            // KIP-511: answer in v0 with UNSUPPORTED_VERSION and our ranges so
            // that the client can retry with a version we speak.
            let correlation_id = i32::from_be_bytes([body[4], body[5], body[6], body[7]]);
            let resp = broker
                .api_versions_response(kafka_protocol::ResponseError::UnsupportedVersion.code());
            let bytes = encode_response(api, 0, correlation_id, &ResponseKind::ApiVersions(resp))?;
            return Ok((api, Box::pin(async move { Some(bytes) })));
        }
        return Err(ConnError::UnsupportedVersion { api, version });
    }
    let header = RequestHeader::decode(&mut body, api.request_header_version(version))
        .map_err(|e| ConnError::Malformed(e.to_string()))?;
    // kafka-protocol preallocates arrays from wire counts: bound them first.
    crate::guard::check_body(api, version, &body)
        .map_err(|e| ConnError::Malformed(format!("{api:?} v{version}: {e}")))?;
    let request = RequestKind::decode(api, &mut body, version)
        .map_err(|e| ConnError::Malformed(format!("{api:?} v{version}: {e}")))?;
    let correlation_id = header.correlation_id;
    broker.metrics().count_request(api);
    tracing::trace!(%peer, ?api, version, correlation_id, "request");
    let pending: Pending = match broker.handle(header, peer, request, version).await {
        Handled::Now(resp) => {
            let bytes = encode_response(api, version, correlation_id, &resp)?;
            Box::pin(async move { Some(bytes) })
        }
        Handled::Later(fut) => Box::pin(async move {
            let resp = fut.await?;
            match encode_response(api, version, correlation_id, &resp) {
                Ok(b) => Some(b),
                Err(e) => {
                    tracing::error!(error = %e, "encoding response failed");
                    None
                }
            }
        }),
        Handled::NoResponse => Box::pin(async { None }),
    };
    Ok((api, pending))
}

/// Frames a response: length, header (version chosen by the API), body.
pub fn encode_response(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    resp: &ResponseKind,
) -> Result<BytesMut, ConnError> {
    let mut buf = BytesMut::with_capacity(256);
    buf.put_i32(0);
    let mut header = ResponseHeader::default();
    header.correlation_id = correlation_id;
    header
        .encode(&mut buf, api.response_header_version(version))
        .map_err(|e| ConnError::Malformed(format!("encoding response header: {e}")))?;
    resp.encode(&mut buf, version)
        .map_err(|e| ConnError::Malformed(format!("encoding {api:?} v{version} response: {e}")))?;
    let len = (buf.len() - 4) as i32;
    buf[0..4].copy_from_slice(&len.to_be_bytes());
    Ok(buf)
}
