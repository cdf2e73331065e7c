//! A small async Kafka client for the console tools.
//!
//! One [`Connection`] is one TCP socket to one broker with one request in
//! flight at a time: the console tools are sequential, so pipelining would
//! buy little and cost a response router. A [`Client`] holds the bootstrap
//! connection plus lazily opened connections to other brokers, so requests
//! can follow partition leaders from Metadata.
//!
//! Wire framing (Kafka protocol): every request and response is a 4-byte
//! big-endian length followed by that many bytes. A request is a request
//! header (version from [`ApiKey::request_header_version`]) plus the body; a
//! response is a response header (version from
//! [`ApiKey::response_header_version`], except ApiVersions, which is always
//! v0) plus the body. Frames larger than [`MAX_FRAME_BYTES`] are rejected
//! before anything is allocated.
//!
//! Versions: on connect we send ApiVersions and, for every later request,
//! use the highest version both sides support (capped where newer versions
//! address topics by id rather than by name, which these tools don't do).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Display;
use std::time::Duration;

use anyhow::{anyhow, ensure, Context, Result};
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, BrokerId, FindCoordinatorRequest,
    ListOffsetsRequest, MetadataRequest, MetadataResponse, RequestHeader, ResponseHeader,
    TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, Message, Request, StrBytes, VersionRange};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest frame (request or response, excluding the length prefix) we
/// accept or send.
pub const MAX_FRAME_BYTES: usize = 100 * 1024 * 1024;

/// `client.id` sent in every request header.
pub const CLIENT_ID: &str = "sediment-cli";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound on one request/response round trip. Generous: it must cover
/// a broker-side produce timeout or fetch wait on top of network time.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// FindCoordinator attempts while the broker answers with a retriable error
/// (e.g. COORDINATOR_NOT_AVAILABLE while it loads), and the pause between.
const COORDINATOR_ATTEMPTS: u32 = 10;
const COORDINATOR_RETRY_BACKOFF: Duration = Duration::from_millis(200);

/// Kafka's name for an error code, e.g. `TOPIC_ALREADY_EXISTS`.
pub fn error_name(code: i16) -> String {
    match ResponseError::try_from_code(code) {
        None => "NONE".to_owned(),
        Some(ResponseError::Unknown(c)) => format!("UNKNOWN_ERROR_CODE_{c}"),
        Some(e) => screaming_snake(&format!("{e:?}")),
    }
}

fn screaming_snake(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 8);
    for (i, ch) in camel.chars().enumerate() {
        if ch.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(ch.to_ascii_uppercase());
    }
    out
}

/// `NAME (code): message` for a non-zero error code, `None` for 0.
pub fn describe_error(code: i16, message: Option<&StrBytes>) -> Option<String> {
    if code == 0 {
        return None;
    }
    let mut s = format!("{} ({code})", error_name(code));
    if let Some(m) = message.filter(|m| !m.is_empty()) {
        s.push_str(": ");
        s.push_str(m.as_str());
    }
    Some(s)
}

/// Turns a non-zero Kafka error code into an error that names the code.
pub fn check(code: i16, message: Option<&StrBytes>, what: impl Display) -> Result<()> {
    match describe_error(code, message) {
        None => Ok(()),
        Some(e) => Err(anyhow!("{what} failed: {e}")),
    }
}

/// Whether the protocol marks this error code as retriable.
pub fn is_retriable(code: i16) -> bool {
    ResponseError::try_from_code(code).is_some_and(|e| e.is_retriable())
}

/// The highest version of an API this client speaks, where that is below
/// what kafka-protocol supports: newer versions address topics by id.
fn client_max_version(key: ApiKey) -> Option<i16> {
    match key {
        ApiKey::Produce | ApiKey::Fetch => Some(12), // v13: topic ids
        ApiKey::OffsetCommit => Some(9),             // v10: topic ids
        ApiKey::OffsetFetch => Some(7),              // v8: multi-group form
        _ => None,
    }
}

fn api_key_of<R: Request>() -> Result<ApiKey> {
    ApiKey::try_from(R::KEY).map_err(|()| anyhow!("unknown API key {}", R::KEY))
}

fn client_versions<R: Request>() -> Result<VersionRange> {
    let key = api_key_of::<R>()?;
    let mut range = R::VERSIONS;
    if let Some(max) = client_max_version(key) {
        range.max = range.max.min(max);
    }
    Ok(range)
}

/// The version to use given the client's and the broker's ranges: the
/// highest both support.
pub fn negotiate(client: VersionRange, broker: VersionRange) -> Option<i16> {
    let common = client.intersect(&broker);
    (!common.is_empty()).then_some(common.max)
}

/// Encodes a full request frame, length prefix included.
pub fn encode_request<R: Request>(
    request: &R,
    version: i16,
    correlation_id: i32,
    client_id: &str,
) -> Result<Bytes> {
    let key = api_key_of::<R>()?;
    let header = RequestHeader::default()
        .with_request_api_key(R::KEY)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_string(client_id.to_owned())));
    let mut buf = BytesMut::with_capacity(64);
    buf.put_i32(0);
    header
        .encode(&mut buf, key.request_header_version(version))
        .with_context(|| format!("encoding {key:?} v{version} request header"))?;
    request
        .encode(&mut buf, version)
        .with_context(|| format!("encoding {key:?} v{version} request"))?;
    let len = buf.len() - 4;
    ensure!(
        len <= MAX_FRAME_BYTES,
        "{key:?} request of {len} bytes exceeds the {MAX_FRAME_BYTES}-byte frame limit"
    );
    let len = i32::try_from(len).context("frame length overflows i32")?;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    Ok(buf.freeze())
}

/// Validates a frame's length prefix.
pub fn frame_len(prefix: [u8; 4]) -> Result<usize> {
    let len = i32::from_be_bytes(prefix);
    let len = usize::try_from(len).map_err(|_| anyhow!("negative frame length {len}"))?;
    ensure!(
        len <= MAX_FRAME_BYTES,
        "frame of {len} bytes exceeds the {MAX_FRAME_BYTES}-byte limit"
    );
    Ok(len)
}

fn response_header_version(key: ApiKey, version: i16) -> i16 {
    // ApiVersions responses always use header v0, so that a client can read
    // them whatever version it asked for.
    if key == ApiKey::ApiVersions {
        0
    } else {
        key.response_header_version(version)
    }
}

/// Decodes a response frame (without its length prefix) and checks its
/// correlation id.
pub fn decode_response<R: Request>(
    mut frame: Bytes,
    version: i16,
    correlation_id: i32,
) -> Result<R::Response> {
    let key = api_key_of::<R>()?;
    let header = ResponseHeader::decode(&mut frame, response_header_version(key, version))
        .with_context(|| format!("decoding {key:?} v{version} response header"))?;
    ensure!(
        header.correlation_id == correlation_id,
        "{key:?} response has correlation id {}, expected {correlation_id}",
        header.correlation_id
    );
    R::Response::decode(&mut frame, version)
        .with_context(|| format!("decoding {key:?} v{version} response"))
}

/// One TCP connection to one broker.
pub struct Connection {
    addr: String,
    stream: TcpStream,
    next_correlation_id: i32,
    versions: HashMap<i16, VersionRange>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("addr", &self.addr)
            .finish()
    }
}

impl Connection {
    /// Connects and negotiates API versions.
    pub async fn connect(addr: &str) -> Result<Self> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| anyhow!("timed out connecting to Kafka broker at {addr}"))?
            .with_context(|| format!("cannot connect to Kafka broker at {addr}"))?;
        stream
            .set_nodelay(true)
            .with_context(|| format!("setting TCP_NODELAY on connection to {addr}"))?;
        let mut conn = Connection {
            addr: addr.to_owned(),
            stream,
            next_correlation_id: 0,
            versions: HashMap::new(),
        };
        conn.negotiate_versions().await?;
        Ok(conn)
    }

    async fn negotiate_versions(&mut self) -> Result<()> {
        let request = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("sediment-cli"))
            .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION")));
        let mut version = ApiVersionsRequest::VERSIONS.max;
        let response = loop {
            let correlation_id = self.next_correlation();
            let frame = encode_request(&request, version, correlation_id, CLIENT_ID)?;
            let raw = self.round_trip(frame).await?;
            // A broker that does not support our ApiVersions version answers
            // UNSUPPORTED_VERSION in the v0 layout, listing what it supports.
            let parsed =
                decode_response::<ApiVersionsRequest>(raw.clone(), version, correlation_id);
            let unsupported = ResponseError::UnsupportedVersion.code();
            match parsed {
                Ok(r) if r.error_code != unsupported => break r,
                _ if version > 0 => {
                    let v0 = decode_response::<ApiVersionsRequest>(raw, 0, correlation_id)
                        .context("broker rejected ApiVersions and its v0 reply is unreadable")?;
                    let broker_max = v0
                        .api_keys
                        .iter()
                        .find(|k| k.api_key == ApiKey::ApiVersions as i16)
                        .map(|k| k.max_version)
                        .unwrap_or(0);
                    let next = broker_max.min(version - 1);
                    ensure!(next >= 0, "broker supports no ApiVersions version");
                    version = next;
                }
                Ok(r) => break r,
                Err(e) => return Err(e),
            }
        };
        check(
            response.error_code,
            None,
            format!("ApiVersions to {}", self.addr),
        )?;
        self.versions = versions_map(&response);
        Ok(())
    }

    fn next_correlation(&mut self) -> i32 {
        let id = self.next_correlation_id;
        self.next_correlation_id = self.next_correlation_id.wrapping_add(1);
        id
    }

    async fn write_frame(&mut self, frame: &Bytes) -> Result<()> {
        self.stream
            .write_all(frame)
            .await
            .with_context(|| format!("sending request to {}", self.addr))
    }

    async fn read_frame(&mut self) -> Result<Bytes> {
        let mut prefix = [0u8; 4];
        self.stream
            .read_exact(&mut prefix)
            .await
            .with_context(|| format!("reading response from {}", self.addr))?;
        let len = frame_len(prefix).with_context(|| format!("response from {}", self.addr))?;
        let mut body = vec![0u8; len];
        self.stream
            .read_exact(&mut body)
            .await
            .with_context(|| format!("reading {len}-byte response from {}", self.addr))?;
        Ok(Bytes::from(body))
    }

    async fn round_trip(&mut self, frame: Bytes) -> Result<Bytes> {
        let addr = self.addr.clone();
        tokio::time::timeout(REQUEST_TIMEOUT, async {
            self.write_frame(&frame).await?;
            self.read_frame().await
        })
        .await
        .map_err(|_| anyhow!("request to {addr} timed out after {REQUEST_TIMEOUT:?}"))?
    }

    /// The version this connection will use for `R`: the highest both the
    /// client and the broker support.
    pub fn version_for<R: Request>(&self) -> Result<i16> {
        let key = api_key_of::<R>()?;
        let ours = client_versions::<R>()?;
        let theirs = self
            .versions
            .get(&R::KEY)
            .ok_or_else(|| anyhow!("broker at {} does not support {key:?}", self.addr))?;
        negotiate(ours, *theirs).ok_or_else(|| {
            anyhow!(
                "no common {key:?} version with broker at {}: client supports {ours}, broker {theirs}",
                self.addr
            )
        })
    }

    /// Whether the broker supports `R` at some version this client speaks.
    pub fn supports<R: Request>(&self) -> bool {
        self.version_for::<R>().is_ok()
    }

    /// Sends `request` at the negotiated version and waits for its response.
    pub async fn send<R: Request>(&mut self, request: &R) -> Result<R::Response> {
        let version = self.version_for::<R>()?;
        self.send_version(request, version).await
    }

    /// Sends `request` at `version` and waits for its response.
    pub async fn send_version<R: Request>(
        &mut self,
        request: &R,
        version: i16,
    ) -> Result<R::Response> {
        let correlation_id = self.next_correlation();
        let frame = encode_request(request, version, correlation_id, CLIENT_ID)?;
        let raw = self.round_trip(frame).await?;
        decode_response::<R>(raw, version, correlation_id)
            .with_context(|| format!("response from {}", self.addr))
    }

    /// Sends a request the broker does not answer (Produce with acks=0).
    pub async fn send_without_response<R: Request>(
        &mut self,
        request: &R,
        version: i16,
    ) -> Result<()> {
        let correlation_id = self.next_correlation();
        let frame = encode_request(request, version, correlation_id, CLIENT_ID)?;
        self.write_frame(&frame).await
    }
}

fn versions_map(response: &ApiVersionsResponse) -> HashMap<i16, VersionRange> {
    response
        .api_keys
        .iter()
        .map(|k| {
            (
                k.api_key,
                VersionRange {
                    min: k.min_version,
                    max: k.max_version,
                },
            )
        })
        .collect()
}

/// A partition's leader as last seen in Metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionInfo {
    pub partition: i32,
    pub leader: i32,
    pub leader_epoch: i32,
}

/// The bootstrap connection plus connections to other brokers by node id.
pub struct Client {
    bootstrap: Connection,
    brokers: HashMap<i32, String>,
    conns: HashMap<i32, Connection>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("bootstrap", &self.bootstrap.addr)
            .field("brokers", &self.brokers)
            .finish()
    }
}

impl Client {
    /// Connects to the bootstrap broker.
    pub async fn connect(bootstrap: &str) -> Result<Self> {
        Ok(Client {
            bootstrap: Connection::connect(bootstrap).await?,
            brokers: HashMap::new(),
            conns: HashMap::new(),
        })
    }

    /// The bootstrap connection (any broker can answer cluster-wide requests).
    pub fn bootstrap(&mut self) -> &mut Connection {
        &mut self.bootstrap
    }

    /// Sends Metadata for `topics` (all topics when `None`) and remembers the
    /// brokers it lists.
    pub async fn metadata(&mut self, topics: Option<&[String]>) -> Result<MetadataResponse> {
        let request = MetadataRequest::default()
            .with_topics(topics.map(|ts| {
                ts.iter()
                    .map(|t| {
                        MetadataRequestTopic::default()
                            .with_name(Some(TopicName(StrBytes::from_string(t.clone()))))
                    })
                    .collect()
            }))
            .with_allow_auto_topic_creation(false);
        let response = self.bootstrap.send(&request).await?;
        self.brokers = response
            .brokers
            .iter()
            .map(|b| (b.node_id.0, format!("{}:{}", b.host.as_str(), b.port)))
            .collect();
        Ok(response)
    }

    /// Metadata for one topic: its partitions and their leaders, sorted by
    /// partition. Fails with the Kafka error when the topic is unknown.
    pub async fn topic_partitions(&mut self, topic: &str) -> Result<Vec<PartitionInfo>> {
        let response = self.metadata(Some(&[topic.to_owned()])).await?;
        let t = response
            .topics
            .iter()
            .find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == topic))
            .ok_or_else(|| anyhow!("broker returned no metadata for topic '{topic}'"))?;
        check(t.error_code, None, format!("Metadata for topic '{topic}'"))?;
        let mut parts: Vec<PartitionInfo> = t
            .partitions
            .iter()
            .map(|p| PartitionInfo {
                partition: p.partition_index,
                leader: p.leader_id.0,
                leader_epoch: p.leader_epoch,
            })
            .collect();
        parts.sort_by_key(|p| p.partition);
        ensure!(!parts.is_empty(), "topic '{topic}' has no partitions");
        Ok(parts)
    }

    /// ListOffsets for `partitions` of `topic` at `timestamp` (`-2` earliest,
    /// `-1` latest, else the first offset whose timestamp is at or after it,
    /// `-1` when there is none), sent to each partition's leader.
    pub async fn list_offsets(
        &mut self,
        topic: &str,
        partitions: &[PartitionInfo],
        timestamp: i64,
    ) -> Result<BTreeMap<i32, i64>> {
        let mut by_leader: BTreeMap<i32, Vec<&PartitionInfo>> = BTreeMap::new();
        for p in partitions {
            by_leader.entry(p.leader).or_default().push(p);
        }
        let mut out = BTreeMap::new();
        for (leader, parts) in by_leader {
            let request = ListOffsetsRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_isolation_level(0)
                .with_topics(vec![ListOffsetsTopic::default()
                    .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
                    .with_partitions(
                        parts
                            .iter()
                            .map(|p| {
                                ListOffsetsPartition::default()
                                    .with_partition_index(p.partition)
                                    .with_current_leader_epoch(-1)
                                    .with_timestamp(timestamp)
                            })
                            .collect(),
                    )]);
            let response = self.broker(leader).await?.send(&request).await?;
            for t in response.topics {
                for p in t.partitions {
                    check(
                        p.error_code,
                        None,
                        format_args!("ListOffsets for {topic}-{}", p.partition_index),
                    )?;
                    out.insert(p.partition_index, p.offset);
                }
            }
        }
        for p in partitions {
            ensure!(
                out.contains_key(&p.partition),
                "ListOffsets response lacks {topic}-{}",
                p.partition
            );
        }
        Ok(out)
    }

    /// The coordinator of consumer group `group` as (node id, `host:port`),
    /// from FindCoordinator; retriable errors are retried a few times.
    pub async fn find_coordinator(&mut self, group: &str) -> Result<(i32, String)> {
        let version = self.bootstrap.version_for::<FindCoordinatorRequest>()?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut request = FindCoordinatorRequest::default().with_key_type(0);
            if version >= 4 {
                request.coordinator_keys = vec![StrBytes::from_string(group.to_owned())];
            } else {
                request.key = StrBytes::from_string(group.to_owned());
            }
            let r = self.bootstrap.send_version(&request, version).await?;
            let (code, message, node, host, port) = if version >= 4 {
                let c = r
                    .coordinators
                    .into_iter()
                    .next()
                    .ok_or_else(|| anyhow!("FindCoordinator response is empty"))?;
                (c.error_code, c.error_message, c.node_id, c.host, c.port)
            } else {
                (r.error_code, r.error_message, r.node_id, r.host, r.port)
            };
            if code != 0 && is_retriable(code) && attempt < COORDINATOR_ATTEMPTS {
                tokio::time::sleep(COORDINATOR_RETRY_BACKOFF).await;
                continue;
            }
            check(
                code,
                message.as_ref(),
                format_args!("FindCoordinator for group '{group}'"),
            )?;
            return Ok((node.0, format!("{}:{port}", host.as_str())));
        }
    }

    /// The connection to broker `node_id`. With a single-broker cluster, or
    /// an unknown node, this is the bootstrap connection (the advertised
    /// address of a lone broker often differs only cosmetically, e.g.
    /// `localhost` vs `127.0.0.1`).
    pub async fn broker(&mut self, node_id: i32) -> Result<&mut Connection> {
        let addr = match self.brokers.get(&node_id) {
            Some(addr) if self.brokers.len() > 1 && *addr != self.bootstrap.addr => addr.clone(),
            _ => return Ok(&mut self.bootstrap),
        };
        self.connection_to(node_id, &addr).await
    }

    /// A (cached) connection to `node_id` at `addr`, e.g. a group coordinator.
    pub async fn connection_to(&mut self, node_id: i32, addr: &str) -> Result<&mut Connection> {
        if addr == self.bootstrap.addr {
            return Ok(&mut self.bootstrap);
        }
        if self.conns.get(&node_id).is_none_or(|c| c.addr != addr) {
            let conn = Connection::connect(addr).await?;
            self.conns.insert(node_id, conn);
        }
        self.conns
            .get_mut(&node_id)
            .ok_or_else(|| anyhow!("connection to broker {node_id} vanished"))
    }

    /// Drops the cached connection to `node_id` (after an I/O error), so the
    /// next request reconnects. The bootstrap connection is reopened.
    pub async fn reset(&mut self, node_id: i32) -> Result<()> {
        if self.conns.remove(&node_id).is_none() {
            let addr = self.bootstrap.addr.clone();
            self.bootstrap = Connection::connect(&addr).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use kafka_protocol::messages::api_versions_response::ApiVersion;
    use kafka_protocol::messages::metadata_response::{
        MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
    };
    use kafka_protocol::messages::{BrokerId, MetadataResponse};
    use kafka_protocol::protocol::decode_request_header_from_buffer;
    use tokio::net::TcpListener;

    #[test]
    fn error_names_match_kafka() {
        assert_eq!(error_name(36), "TOPIC_ALREADY_EXISTS");
        assert_eq!(error_name(3), "UNKNOWN_TOPIC_OR_PARTITION");
        assert_eq!(error_name(6), "NOT_LEADER_OR_FOLLOWER");
        assert_eq!(error_name(-1), "UNKNOWN_SERVER_ERROR");
        assert_eq!(error_name(0), "NONE");
        assert_eq!(error_name(9999), "UNKNOWN_ERROR_CODE_9999");
        let msg = StrBytes::from_static_str("exists");
        assert_eq!(
            describe_error(36, Some(&msg)).unwrap(),
            "TOPIC_ALREADY_EXISTS (36): exists"
        );
        assert!(describe_error(0, None).is_none());
        let err = check(3, None, "Metadata for topic 't'").unwrap_err();
        assert_eq!(
            err.to_string(),
            "Metadata for topic 't' failed: UNKNOWN_TOPIC_OR_PARTITION (3)"
        );
    }

    #[test]
    fn negotiation_picks_highest_common_version() {
        let r = |min, max| VersionRange { min, max };
        assert_eq!(negotiate(r(0, 12), r(3, 9)), Some(9));
        assert_eq!(negotiate(r(3, 12), r(0, 13)), Some(12));
        assert_eq!(negotiate(r(5, 12), r(0, 4)), None);
    }

    #[test]
    fn frame_length_is_bounded() {
        assert_eq!(frame_len(10i32.to_be_bytes()).unwrap(), 10);
        assert_eq!(
            frame_len((MAX_FRAME_BYTES as i32).to_be_bytes()).unwrap(),
            MAX_FRAME_BYTES
        );
        assert!(frame_len((MAX_FRAME_BYTES as i32 + 1).to_be_bytes()).is_err());
        assert!(frame_len((-1i32).to_be_bytes()).is_err());
    }

    #[test]
    fn request_frame_round_trips_through_broker_side_decoder() {
        let req = MetadataRequest::default().with_topics(None);
        for version in [1i16, 9, 12] {
            let frame = encode_request(&req, version, 42, CLIENT_ID).unwrap();
            let len = frame_len(frame[..4].try_into().unwrap()).unwrap();
            assert_eq!(len, frame.len() - 4);
            let mut body = frame.slice(4..);
            let header = decode_request_header_from_buffer(&mut body).unwrap();
            assert_eq!(header.request_api_key, ApiKey::Metadata as i16);
            assert_eq!(header.request_api_version, version);
            assert_eq!(header.correlation_id, 42);
            assert_eq!(header.client_id.unwrap().as_str(), CLIENT_ID);
            let decoded = MetadataRequest::decode(&mut body, version).unwrap();
            assert_eq!(decoded, req);
        }
    }

    fn response_frame<T: Encodable>(kind: &T, key: ApiKey, version: i16, corr: i32) -> Vec<u8> {
        let mut body = BytesMut::new();
        ResponseHeader::default()
            .with_correlation_id(corr)
            .encode(&mut body, response_header_version(key, version))
            .unwrap();
        kind.encode(&mut body, version).unwrap();
        let mut out = (body.len() as i32).to_be_bytes().to_vec();
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn response_with_wrong_correlation_id_is_rejected() {
        let resp = MetadataResponse::default();
        let frame = response_frame(&resp, ApiKey::Metadata, 12, 7);
        let body = Bytes::from(frame).slice(4..);
        assert!(decode_response::<MetadataRequest>(body.clone(), 12, 7).is_ok());
        let err = decode_response::<MetadataRequest>(body, 12, 8).unwrap_err();
        assert!(err.to_string().contains("correlation id 7"), "{err}");
    }

    /// A fake broker that supports ApiVersions only up to v2 (forcing the
    /// downgrade path) and Metadata up to v9.
    async fn fake_broker(listener: TcpListener) {
        let (mut sock, _) = listener.accept().await.unwrap();
        loop {
            let mut prefix = [0u8; 4];
            if sock.read_exact(&mut prefix).await.is_err() {
                return;
            }
            let mut body = vec![0u8; frame_len(prefix).unwrap()];
            sock.read_exact(&mut body).await.unwrap();
            let mut body = Bytes::from(body);
            let header = decode_request_header_from_buffer(&mut body).unwrap();
            let key = ApiKey::try_from(header.request_api_key).unwrap();
            let version = header.request_api_version;
            let corr = header.correlation_id;
            let versions = vec![
                ApiVersion::default()
                    .with_api_key(ApiKey::ApiVersions as i16)
                    .with_min_version(0)
                    .with_max_version(2),
                ApiVersion::default()
                    .with_api_key(ApiKey::Metadata as i16)
                    .with_min_version(0)
                    .with_max_version(9),
            ];
            let frame = match key {
                ApiKey::ApiVersions if version > 2 => {
                    let resp = ApiVersionsResponse::default()
                        .with_error_code(ResponseError::UnsupportedVersion.code())
                        .with_api_keys(versions);
                    response_frame(&resp, key, 0, corr)
                }
                ApiKey::ApiVersions => {
                    let resp = ApiVersionsResponse::default().with_api_keys(versions);
                    response_frame(&resp, key, version, corr)
                }
                ApiKey::Metadata => {
                    assert_eq!(version, 9, "client must pick the broker's max");
                    let resp = MetadataResponse::default()
                        .with_brokers(vec![MetadataResponseBroker::default()
                            .with_node_id(BrokerId(1))
                            .with_host(StrBytes::from_static_str("localhost"))
                            .with_port(9092)])
                        .with_topics(vec![MetadataResponseTopic::default()
                            .with_name(Some(TopicName(StrBytes::from_static_str("t"))))
                            .with_partitions(
                                (0..3)
                                    .rev()
                                    .map(|p| {
                                        MetadataResponsePartition::default()
                                            .with_partition_index(p)
                                            .with_leader_id(BrokerId(1))
                                    })
                                    .collect(),
                            )]);
                    response_frame(&resp, key, version, corr)
                }
                other => panic!("unexpected {other:?}"),
            };
            sock.write_all(&frame).await.unwrap();
        }
    }

    #[tokio::test]
    async fn client_downgrades_api_versions_and_negotiates_metadata() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(fake_broker(listener));
        let mut client = Client::connect(&addr).await.unwrap();
        assert_eq!(
            client.bootstrap().version_for::<MetadataRequest>().unwrap(),
            9
        );
        assert!(!client
            .bootstrap()
            .supports::<kafka_protocol::messages::FetchRequest>());
        let parts = client.topic_partitions("t").await.unwrap();
        assert_eq!(
            parts.iter().map(|p| p.partition).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
        // Single broker: leader traffic stays on the bootstrap connection.
        assert_eq!(client.broker(1).await.unwrap().addr, addr);
        drop(client);
        server.await.unwrap();
    }
}
