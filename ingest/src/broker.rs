//! Request handlers: one function per Kafka API, over the log and the group
//! coordinator.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use sediment_log::{AppendResult, FlushPolicy, LogError, LogManager, Partition};
use sediment_tiering::{Archive, ArchiveRead};

use crate::error::code;
use crate::group::GroupCoordinator;
use crate::IngestConfig;

/// (partition, fetch offset, partition max bytes) per topic of a Fetch.
type FetchWanted = Vec<(String, Vec<(i32, i64, usize)>)>;
/// Records read from the archive for a fetch, by (topic, partition).
type ColdReads = std::collections::HashMap<(String, i32), Result<Bytes, String>>;
/// A partition's append outcome, by (topic index, partition index).
type AppendOutcome = (
    usize,
    i32,
    Option<Arc<Partition>>,
    Result<AppendResult, LogError>,
);

/// A response now, a response later (after an fsync), or none (acks=0).
pub enum Handled {
    Now(ResponseKind),
    Later(Pin<Box<dyn Future<Output = Option<ResponseKind>> + Send>>),
    NoResponse,
}

/// The APIs and versions this broker speaks. An API not listed here is not
/// advertised and its requests close the connection.
pub fn supported_versions(api: ApiKey) -> Option<(i16, i16)> {
    use crate::group as g;
    Some(match api {
        ApiKey::Produce => (3, 9),
        ApiKey::Fetch => (4, 12),
        ApiKey::ListOffsets => (1, 9),
        ApiKey::DescribeLogDirs => (1, 4),
        ApiKey::Metadata => (0, 12),
        ApiKey::ApiVersions => (0, 3),
        ApiKey::CreateTopics => (2, 7),
        ApiKey::DeleteTopics => (1, 6),
        ApiKey::DescribeConfigs => (1, 4),
        ApiKey::FindCoordinator => (0, 4),
        ApiKey::InitProducerId => (0, 4),
        ApiKey::JoinGroup => g::JOIN_GROUP_VERSIONS,
        ApiKey::SyncGroup => g::SYNC_GROUP_VERSIONS,
        ApiKey::Heartbeat => g::HEARTBEAT_VERSIONS,
        ApiKey::LeaveGroup => g::LEAVE_GROUP_VERSIONS,
        ApiKey::OffsetCommit => g::OFFSET_COMMIT_VERSIONS,
        ApiKey::OffsetFetch => g::OFFSET_FETCH_VERSIONS,
        ApiKey::ListGroups => g::LIST_GROUPS_VERSIONS,
        ApiKey::DescribeGroups => g::DESCRIBE_GROUPS_VERSIONS,
        ApiKey::DeleteGroups => g::DELETE_GROUPS_VERSIONS,
        _ => return None,
    })
}

fn sb(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

/// Largest wait a fetch may ask for.
const MAX_FETCH_WAIT: Duration = Duration::from_secs(30);
/// Kafka's `fetch.max.bytes`: the most record bytes one Fetch response
/// carries, whatever the client asks for (bounds memory per connection).
const MAX_FETCH_BYTES: usize = 55 * 1024 * 1024;
/// Longest a produce waits for its fsync before answering REQUEST_TIMED_OUT.
const MAX_PRODUCE_WAIT: Duration = Duration::from_secs(60);

pub struct Broker {
    log: Arc<LogManager>,
    groups: Arc<GroupCoordinator>,
    config: IngestConfig,
    metrics: crate::metrics::Metrics,
    /// Where offsets that left the local disk are read from.
    archive: Option<Arc<Archive>>,
}

impl Broker {
    pub fn new(log: Arc<LogManager>, groups: Arc<GroupCoordinator>, config: IngestConfig) -> Self {
        Broker {
            log,
            groups,
            config,
            metrics: Default::default(),
            archive: None,
        }
    }

    /// Serve offsets below the local log start from `archive`.
    pub fn with_archive(mut self, archive: Arc<Archive>) -> Self {
        self.archive = Some(archive);
        self
    }

    pub fn archive(&self) -> Option<&Arc<Archive>> {
        self.archive.as_ref()
    }

    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.metrics
    }

    pub fn config(&self) -> &IngestConfig {
        &self.config
    }

    pub fn log(&self) -> &Arc<LogManager> {
        &self.log
    }

    pub async fn handle(
        self: &Arc<Self>,
        header: RequestHeader,
        peer: std::net::SocketAddr,
        request: RequestKind,
        version: i16,
    ) -> Handled {
        use Handled::Now;
        match request {
            RequestKind::ApiVersions(_) => {
                Now(ResponseKind::ApiVersions(self.api_versions_response(0)))
            }
            RequestKind::Metadata(r) => {
                Now(ResponseKind::Metadata(self.metadata(r, version).await))
            }
            RequestKind::Produce(r) => self.produce(r, version).await,
            RequestKind::Fetch(r) => Now(ResponseKind::Fetch(self.fetch(r, version).await)),
            RequestKind::ListOffsets(r) => Now(ResponseKind::ListOffsets(
                self.list_offsets(r, version).await,
            )),
            RequestKind::CreateTopics(r) => Now(ResponseKind::CreateTopics(
                self.create_topics(r, version).await,
            )),
            RequestKind::DeleteTopics(r) => Now(ResponseKind::DeleteTopics(
                self.delete_topics(r, version).await,
            )),
            RequestKind::DescribeLogDirs(r) => Now(ResponseKind::DescribeLogDirs(
                self.describe_log_dirs(r, version).await,
            )),
            RequestKind::DescribeConfigs(r) => {
                Now(ResponseKind::DescribeConfigs(self.describe_configs(r)))
            }
            RequestKind::FindCoordinator(r) => Now(ResponseKind::FindCoordinator(
                self.find_coordinator(r, version),
            )),
            RequestKind::InitProducerId(r) => {
                Now(ResponseKind::InitProducerId(self.init_producer_id(r).await))
            }
            RequestKind::JoinGroup(r) => {
                let client = crate::group::ClientInfo {
                    client_id: header
                        .client_id
                        .as_ref()
                        .map(|c| c.to_string())
                        .unwrap_or_default(),
                    client_host: format!("/{}", peer.ip()),
                };
                Now(ResponseKind::JoinGroup(
                    self.groups.join_group_with_client(r, version, client).await,
                ))
            }
            RequestKind::SyncGroup(r) => Now(ResponseKind::SyncGroup(
                self.groups.sync_group(r, version).await,
            )),
            RequestKind::Heartbeat(r) => Now(ResponseKind::Heartbeat(
                self.groups.heartbeat(r, version).await,
            )),
            RequestKind::LeaveGroup(r) => Now(ResponseKind::LeaveGroup(
                self.groups.leave_group(r, version).await,
            )),
            RequestKind::OffsetCommit(r) => {
                let log = self.log.clone();
                let exists = move |t: &str, p: i32| log.partition(t, p).is_some();
                // Validated now, in order; answered once the commit is fsynced.
                let fut = self.groups.offset_commit(r, version, &exists);
                Handled::Later(Box::pin(async move {
                    Some(ResponseKind::OffsetCommit(fut.await))
                }))
            }
            RequestKind::OffsetFetch(r) => Now(ResponseKind::OffsetFetch(
                self.groups.offset_fetch(r, version),
            )),
            RequestKind::ListGroups(r) => Now(ResponseKind::ListGroups(
                self.groups.list_groups(r, version),
            )),
            RequestKind::DescribeGroups(r) => Now(ResponseKind::DescribeGroups(
                self.groups.describe_groups(r, version),
            )),
            RequestKind::DeleteGroups(r) => {
                let fut = self.groups.delete_groups(r, version);
                Handled::Later(Box::pin(async move {
                    Some(ResponseKind::DeleteGroups(fut.await))
                }))
            }
            // supported_versions() filters every other API before decoding.
            _ => Handled::NoResponse,
        }
    }

    pub fn api_versions_response(&self, error_code: i16) -> ApiVersionsResponse {
        let mut resp = ApiVersionsResponse::default();
        resp.error_code = error_code;
        resp.api_keys = ApiKey::iter()
            .filter_map(|k| {
                supported_versions(k).map(|(min, max)| {
                    let mut v = ApiVersion::default();
                    v.api_key = k as i16;
                    v.min_version = min;
                    v.max_version = max;
                    v
                })
            })
            .collect();
        resp
    }

    fn broker_entry(&self) -> MetadataResponseBroker {
        let mut b = MetadataResponseBroker::default();
        b.node_id = self.log.node_id().into();
        b.host = sb(&self.config.advertised_host);
        b.port = i32::from(self.config.advertised_port);
        b
    }

    async fn metadata(&self, req: MetadataRequest, version: i16) -> MetadataResponse {
        let mut resp = MetadataResponse::default();
        resp.brokers = vec![self.broker_entry()];
        if version >= 2 {
            resp.cluster_id = Some(sb(self.log.cluster_id()));
        }
        if version >= 1 {
            resp.controller_id = self.log.node_id().into();
        }
        let names: Option<Vec<String>> = match req.topics {
            // v0: an empty list means all topics.
            Some(ts) if !(version == 0 && ts.is_empty()) => Some(
                ts.into_iter()
                    .filter_map(|t| t.name.map(|n| n.0.to_string()))
                    .collect(),
            ),
            _ => None,
        };
        let auto_create =
            self.config.auto_create_topics && (version < 4 || req.allow_auto_topic_creation);
        let topics = match names {
            None => self
                .log
                .topics()
                .into_iter()
                .map(|t| self.topic_metadata(&t.meta.name, 0, version))
                .collect(),
            Some(names) => {
                let mut out = Vec::with_capacity(names.len());
                for name in names {
                    let mut err = 0;
                    if self.log.topic(&name).is_none() {
                        err = if auto_create {
                            match self.auto_create(&name).await {
                                Ok(()) => 0,
                                Err(e) => code(&e),
                            }
                        } else {
                            ResponseError::UnknownTopicOrPartition.code()
                        };
                    }
                    out.push(self.topic_metadata(&name, err, version));
                }
                out
            }
        };
        resp.topics = topics;
        resp
    }

    fn topic_metadata(&self, name: &str, error: i16, version: i16) -> MetadataResponseTopic {
        let mut t = MetadataResponseTopic::default();
        t.name = Some(sb(name).into());
        t.error_code = error;
        if error != 0 {
            return t;
        }
        let Some(topic) = self.log.topic(name) else {
            t.error_code = ResponseError::UnknownTopicOrPartition.code();
            return t;
        };
        if version >= 10 {
            t.topic_id = uuid::Uuid::from_bytes(topic.id);
        }
        let node = self.log.node_id();
        t.partitions = topic
            .partitions
            .iter()
            .map(|p| {
                let mut m = MetadataResponsePartition::default();
                m.partition_index = p.id;
                m.leader_id = node.into();
                if version >= 7 {
                    m.leader_epoch = p.leader_epoch();
                }
                m.replica_nodes = vec![node.into()];
                m.isr_nodes = vec![node.into()];
                m
            })
            .collect();
        t
    }

    async fn auto_create(&self, name: &str) -> Result<(), LogError> {
        let log = self.log.clone();
        let name = name.to_string();
        let partitions = self.config.default_partitions;
        blocking(
            move || match log.create_topic(&name, partitions, BTreeMap::new()) {
                Ok(_) | Err(LogError::TopicExists { .. }) => Ok(()),
                Err(e) => Err(e),
            },
        )
        .await
    }

    async fn produce(self: &Arc<Self>, req: ProduceRequest, version: i16) -> Handled {
        if !matches!(req.acks, -1..=1) {
            let mut resp = ProduceResponse::default();
            resp.responses = req
                .topic_data
                .iter()
                .map(|t| {
                    let mut tr = TopicProduceResponse::default();
                    tr.name = t.name.clone();
                    tr.partition_responses = t
                        .partition_data
                        .iter()
                        .map(|p| {
                            partition_error(
                                version,
                                p.index,
                                ResponseError::InvalidRequiredAcks.code(),
                                None,
                            )
                        })
                        .collect();
                    tr
                })
                .collect();
            return Handled::Now(ResponseKind::Produce(resp));
        }
        if self.config.auto_create_topics {
            for t in &req.topic_data {
                if self.log.topic(&t.name.0).is_none() {
                    if let Err(e) = self.auto_create(&t.name.0).await {
                        tracing::warn!(topic = %t.name.0, error = %e, "auto-create failed");
                    }
                }
            }
        }
        // Resolve partitions, then append everything on a blocking thread.
        let mut work = Vec::new();
        for (ti, t) in req.topic_data.iter().enumerate() {
            for p in &t.partition_data {
                work.push((
                    ti,
                    p.index,
                    self.log.partition(&t.name.0, p.index),
                    p.records.clone(),
                ));
            }
        }
        let now = sediment_log::now_ms();
        // Appends only write to the page cache (fsync is the flusher
        // threads' job): run them on this worker, see `page_cache_io`.
        let results: Vec<AppendOutcome> = page_cache_io(move || {
            work.into_iter()
                .map(|(ti, idx, part, records)| {
                    let r = match (&part, &records) {
                        (None, _) => Err(LogError::UnknownTopic {
                            name: String::new(),
                        }),
                        (Some(_), None) => Err(LogError::InvalidBatch(
                            sediment_log::batch::BatchError::Truncated {
                                needed: 61,
                                available: 0,
                            },
                        )),
                        (Some(p), Some(bytes)) => p.append(bytes, now),
                    };
                    (ti, idx, part, r)
                })
                .collect()
        });
        if req.acks == 0 {
            return Handled::NoResponse;
        }
        let wait = self.log.config().flush_policy == FlushPolicy::Fsync;
        let timeout = Duration::from_millis(req.timeout_ms.max(0) as u64).min(MAX_PRODUCE_WAIT);
        let topic_names: Vec<_> = req.topic_data.iter().map(|t| t.name.clone()).collect();
        let appended_at = Instant::now();
        let broker = self.clone();
        Handled::Later(Box::pin(async move {
            let mut resp = ProduceResponse::default();
            resp.responses = topic_names
                .iter()
                .map(|n| {
                    let mut tr = TopicProduceResponse::default();
                    tr.name = n.clone();
                    tr
                })
                .collect();
            for (ti, idx, part, r) in results {
                let pr = match (part, r) {
                    (Some(p), Ok(a)) => {
                        let durable = if wait {
                            p.wait_durable(a.end_offset, timeout).await
                        } else {
                            Ok(())
                        };
                        match durable {
                            Ok(()) => {
                                let mut pr = partition_error(version, idx, 0, None);
                                pr.base_offset = a.base_offset;
                                pr.log_append_time_ms = a.log_append_time;
                                if version >= 5 {
                                    pr.log_start_offset = a.log_start_offset;
                                }
                                pr
                            }
                            Err(e) => partition_error(version, idx, code(&e), Some(e.to_string())),
                        }
                    }
                    (_, Err(e)) => {
                        if !matches!(e, LogError::UnknownTopic { .. }) {
                            tracing::debug!(error = %e, "produce rejected");
                        }
                        partition_error(version, idx, code(&e), Some(e.to_string()))
                    }
                    (None, Ok(_)) => partition_error(
                        version,
                        idx,
                        ResponseError::UnknownTopicOrPartition.code(),
                        None,
                    ),
                };
                resp.responses[ti].partition_responses.push(pr);
            }
            if wait {
                broker
                    .metrics()
                    .produce_durable_wait
                    .record(appended_at.elapsed());
            }
            Some(ResponseKind::Produce(resp))
        }))
    }

    async fn fetch(&self, req: FetchRequest, version: i16) -> FetchResponse {
        let start = Instant::now();
        let max_wait = Duration::from_millis(req.max_wait_ms.max(0) as u64).min(MAX_FETCH_WAIT);
        let min_bytes = req.min_bytes.max(0) as usize;
        let max_bytes = if req.max_bytes <= 0 {
            MAX_FETCH_BYTES
        } else {
            (req.max_bytes as usize).min(MAX_FETCH_BYTES)
        };
        let wanted: Arc<FetchWanted> = Arc::new(
            req.topics
                .iter()
                .map(|t| {
                    (
                        t.topic.0.to_string(),
                        t.partitions
                            .iter()
                            .map(|p| {
                                (
                                    p.partition,
                                    p.fetch_offset,
                                    p.partition_max_bytes.max(0) as usize,
                                )
                            })
                            .collect(),
                    )
                })
                .collect(),
        );
        // A long poll wakes when one of its own partitions' high watermarks
        // moves, not on every flush of the broker (Kafka's fetch purgatory
        // is keyed by partition the same way).
        let mut changes: Vec<tokio::sync::watch::Receiver<i64>> = wanted
            .iter()
            .flat_map(|(topic, parts)| {
                parts
                    .iter()
                    .filter_map(|&(idx, _, _)| self.log.partition(topic, idx))
                    .map(|p| p.watch_high_watermark())
            })
            .collect();
        loop {
            for rx in &mut changes {
                rx.borrow_and_update();
            }
            let cold = Arc::new(self.cold_reads(&wanted, max_bytes).await);
            let (resp, total, errors) = self.read_local(&wanted, &cold, max_bytes, version).await;
            let elapsed = start.elapsed();
            if total >= min_bytes.max(1) || errors || elapsed >= max_wait {
                return resp;
            }
            let _ = tokio::time::timeout(max_wait - elapsed, any_changed(&mut changes)).await;
            if start.elapsed() >= max_wait {
                // One last read so that data arriving at the deadline is not missed.
                return self.read_local(&wanted, &cold, max_bytes, version).await.0;
            }
        }
    }

    /// One pass of a fetch over the local tier (and the archive reads done
    /// before it): on this worker when every partition is read in its
    /// active segment, else on a blocking thread.
    async fn read_local(
        &self,
        wanted: &FetchWanted,
        cold: &Arc<ColdReads>,
        max_bytes: usize,
        version: i16,
    ) -> (FetchResponse, usize, bool) {
        if reads_active_segments(&self.log, wanted) {
            return page_cache_io(|| read_fetch(&self.log, wanted, cold, max_bytes, version));
        }
        let log = self.log.clone();
        let w = wanted.clone();
        let c = cold.clone();
        blocking(move || Ok(read_fetch(&log, &w, &c, max_bytes, version)))
            .await
            .unwrap_or_else(|_| (FetchResponse::default(), 0, true))
    }

    /// Reads from the archive for every wanted partition whose offset has
    /// left the local disk, within the response's byte budget. Partitions
    /// not in the result are read from the local tier.
    async fn cold_reads(&self, wanted: &FetchWanted, max_bytes: usize) -> ColdReads {
        let mut out = ColdReads::new();
        let Some(archive) = &self.archive else {
            return out;
        };
        let mut total = 0usize;
        for (topic, parts) in wanted {
            for &(idx, offset, part_max) in parts {
                let Some(p) = self.log.partition(topic, idx) else {
                    continue;
                };
                if !p.tiered() || offset >= p.log_start_offset() {
                    continue;
                }
                if p.archive().is_none() {
                    self.await_archive_known(vec![(topic.clone(), idx)]).await;
                }
                let budget = part_max.min(max_bytes.saturating_sub(total));
                if budget == 0 && total > 0 {
                    out.insert((topic.clone(), idx), Ok(Bytes::new()));
                    continue;
                }
                let res = match archive.read(topic, idx, offset, budget.max(1)).await {
                    Ok(ArchiveRead::Batches(b)) => Ok(b),
                    // In a gap below the local start: nothing to serve.
                    Ok(ArchiveRead::NotArchived) => continue,
                    Err(e) => Err(e.to_string()),
                };
                if let Ok(b) = &res {
                    total += b.len();
                }
                out.insert((topic.clone(), idx), res);
            }
        }
        out
    }

    /// Kafka's DescribeLogDirs: the local data directory with each
    /// partition's local bytes, and the archive (named by its URL) with
    /// each partition's archived bytes.
    async fn describe_log_dirs(
        &self,
        req: DescribeLogDirsRequest,
        version: i16,
    ) -> DescribeLogDirsResponse {
        use kafka_protocol::messages::describe_log_dirs_response::{
            DescribeLogDirsPartition, DescribeLogDirsResult, DescribeLogDirsTopic,
        };
        let wanted: Option<Vec<(String, Vec<i32>)>> = req.topics.map(|ts| {
            ts.into_iter()
                .map(|t| (t.topic.0.to_string(), t.partitions))
                .collect()
        });
        let mut local = DescribeLogDirsResult::default();
        local.log_dir = sb(&self.log.config().data_dir.display().to_string());
        let mut remote = DescribeLogDirsResult::default();
        remote.log_dir = sb(self.archive.as_ref().map_or("", |a| a.url()));
        for topic in self.log.topics() {
            let parts: Vec<&Arc<Partition>> = match &wanted {
                None => topic.partitions.iter().collect(),
                Some(w) => match w.iter().find(|(n, _)| *n == topic.meta.name) {
                    None => continue,
                    Some((_, ids)) => topic
                        .partitions
                        .iter()
                        .filter(|p| ids.contains(&p.id))
                        .collect(),
                },
            };
            let entry = |size: fn(&Partition) -> i64| {
                let mut t = DescribeLogDirsTopic::default();
                t.name = sb(&topic.meta.name).into();
                t.partitions = parts
                    .iter()
                    .map(|p| {
                        let mut d = DescribeLogDirsPartition::default();
                        d.partition_index = p.id;
                        d.partition_size = size(p);
                        d.offset_lag = 0;
                        d
                    })
                    .collect();
                t
            };
            local.topics.push(entry(|p| p.size_bytes() as i64));
            remote
                .topics
                .push(entry(|p| p.archive().map_or(0, |a| a.bytes as i64)));
        }
        if version >= 4 {
            local.total_bytes = -1;
            local.usable_bytes = -1;
            remote.total_bytes = -1;
            remote.usable_bytes = -1;
        }
        let mut resp = DescribeLogDirsResponse::default();
        resp.results.push(local);
        if self.archive.is_some() {
            resp.results.push(remote);
        }
        resp
    }

    /// Right after a start the tierer is still reading manifests: give it
    /// a moment before answering "unknown" (KAFKA_STORAGE_ERROR) for a
    /// partition whose earliest offset is in the archive.
    async fn await_archive_known(&self, partitions: Vec<(String, i32)>) {
        const PATIENCE: Duration = Duration::from_secs(5);
        let deadline = Instant::now() + PATIENCE;
        for (topic, idx) in partitions {
            let Some(p) = self.log.partition(&topic, idx) else {
                continue;
            };
            while p.earliest_offset().is_err() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    async fn list_offsets(&self, req: ListOffsetsRequest, version: i16) -> ListOffsetsResponse {
        let mut earliest = Vec::new();
        for t in &req.topics {
            for p in t.partitions.iter().filter(|p| p.timestamp == -2) {
                earliest.push((t.name.0.to_string(), p.partition_index));
            }
        }
        self.await_archive_known(earliest).await;
        let log = self.log.clone();
        blocking(move || {
            let mut resp = ListOffsetsResponse::default();
            for t in req.topics {
                let mut tr = ListOffsetsTopicResponse::default();
                tr.name = t.name.clone();
                for p in t.partitions {
                    let mut pr = ListOffsetsPartitionResponse::default();
                    pr.partition_index = p.partition_index;
                    pr.timestamp = -1;
                    pr.offset = -1;
                    match log.partition(&t.name.0, p.partition_index) {
                        None => pr.error_code = ResponseError::UnknownTopicOrPartition.code(),
                        Some(part) => {
                            if version >= 4 {
                                pr.leader_epoch = part.leader_epoch();
                            }
                            match p.timestamp {
                                -1 => pr.offset = part.high_watermark(),
                                -2 => match part.earliest_offset() {
                                    Ok(o) => pr.offset = o,
                                    Err(e) => pr.error_code = code(&e),
                                },
                                // KIP-1005: earliest local, latest tiered.
                                -4 => pr.offset = part.log_start_offset(),
                                -5 => {
                                    pr.offset = part
                                        .archive()
                                        .filter(|a| !a.is_empty())
                                        .map_or(-1, |a| a.end_offset - 1)
                                }
                                -3 => {
                                    if let Some((o, ts)) = part.max_timestamp() {
                                        pr.offset = o;
                                        pr.timestamp = ts;
                                    }
                                }
                                ts if ts >= 0 => match part.offset_for_timestamp(ts) {
                                    Ok(Some((o, t))) => {
                                        pr.offset = o;
                                        pr.timestamp = t;
                                    }
                                    Ok(None) => {}
                                    Err(e) => {
                                        tracing::warn!(error = %e, "offset for timestamp failed");
                                        pr.error_code = code(&e);
                                    }
                                },
                                _ => pr.error_code = ResponseError::UnsupportedVersion.code(),
                            }
                        }
                    }
                    tr.partitions.push(pr);
                }
                resp.topics.push(tr);
            }
            Ok(resp)
        })
        .await
        .unwrap_or_default()
    }

    async fn create_topics(&self, req: CreateTopicsRequest, version: i16) -> CreateTopicsResponse {
        let log = self.log.clone();
        let default_partitions = self.config.default_partitions;
        blocking(move || {
            let mut resp = CreateTopicsResponse::default();
            for t in req.topics {
                let mut r = CreatableTopicResult::default();
                r.name = t.name.clone();
                let partitions = if t.num_partitions == -1 {
                    default_partitions
                } else {
                    t.num_partitions
                };
                if version >= 5 {
                    r.num_partitions = partitions;
                    r.replication_factor = 1;
                }
                let configs: BTreeMap<String, String> = t
                    .configs
                    .iter()
                    .filter_map(|c| {
                        c.value
                            .as_ref()
                            .map(|v| (c.name.to_string(), v.to_string()))
                    })
                    .collect();
                let outcome = if !(t.replication_factor == -1 || t.replication_factor == 1) {
                    Err((
                        ResponseError::InvalidReplicationFactor.code(),
                        format!(
                            "replication factor {} is larger than the 1 available broker",
                            t.replication_factor
                        ),
                    ))
                } else if !t.assignments.is_empty() {
                    Err((
                        ResponseError::InvalidReplicaAssignment.code(),
                        "manual replica assignment is not supported".to_string(),
                    ))
                } else if req.validate_only {
                    log.validate_topic(&t.name.0, partitions, &configs)
                        .map(|_| None)
                        .map_err(|e| (code(&e), e.to_string()))
                } else {
                    log.create_topic(&t.name.0, partitions, configs)
                        .map(Some)
                        .map_err(|e| (code(&e), e.to_string()))
                };
                match outcome {
                    Ok(topic) => {
                        if let Some(topic) = topic.filter(|_| version >= 5) {
                            if version >= 7 {
                                r.topic_id = uuid::Uuid::from_bytes(topic.id);
                            }
                            r.configs = Some(
                                sediment_log::CONFIG_NAMES
                                    .iter()
                                    .map(|n| {
                                        let mut c = CreatableTopicConfigs::default();
                                        c.name = sb(n);
                                        c.value = topic.config.value_of(n).map(|v| sb(&v));
                                        c.config_source = if topic.config.overrides.contains_key(*n)
                                        {
                                            1
                                        } else {
                                            5
                                        };
                                        c
                                    })
                                    .collect(),
                            );
                        }
                    }
                    Err((c, msg)) => {
                        r.error_code = c;
                        r.error_message = Some(sb(&msg));
                    }
                }
                resp.topics.push(r);
            }
            Ok(resp)
        })
        .await
        .unwrap_or_default()
    }

    async fn delete_topics(&self, req: DeleteTopicsRequest, version: i16) -> DeleteTopicsResponse {
        let log = self.log.clone();
        blocking(move || {
            let mut resp = DeleteTopicsResponse::default();
            let targets: Vec<(Option<String>, uuid::Uuid)> = if version >= 6 {
                req.topics
                    .iter()
                    .map(|t| (t.name.as_ref().map(|n| n.0.to_string()), t.topic_id))
                    .collect()
            } else {
                req.topic_names
                    .iter()
                    .map(|n| (Some(n.0.to_string()), uuid::Uuid::nil()))
                    .collect()
            };
            for (name, id) in targets {
                let mut r = DeletableTopicResult::default();
                let name = name.or_else(|| {
                    log.topics()
                        .into_iter()
                        .find(|t| t.id == *id.as_bytes())
                        .map(|t| t.meta.name.clone())
                });
                if version >= 6 {
                    r.topic_id = id;
                }
                match name {
                    Some(n) => {
                        r.name = Some(sb(&n).into());
                        if let Some(t) = log.topic(&n).filter(|_| version >= 6) {
                            r.topic_id = uuid::Uuid::from_bytes(t.id);
                        }
                        if let Err(e) = log.delete_topic(&n) {
                            r.error_code = code(&e);
                            if version >= 5 {
                                r.error_message = Some(sb(&e.to_string()));
                            }
                        }
                    }
                    None => r.error_code = ResponseError::UnknownTopicId.code(),
                }
                resp.responses.push(r);
            }
            Ok(resp)
        })
        .await
        .unwrap_or_default()
    }

    fn describe_configs(&self, req: DescribeConfigsRequest) -> DescribeConfigsResponse {
        const TOPIC: i8 = 2;
        const BROKER: i8 = 4;
        let mut resp = DescribeConfigsResponse::default();
        for r in req.resources {
            let mut out = DescribeConfigsResult::default();
            out.resource_type = r.resource_type;
            out.resource_name = r.resource_name.clone();
            let keys: Option<Vec<String>> = r
                .configuration_keys
                .map(|ks| ks.iter().map(|k| k.to_string()).collect());
            let wanted = |n: &str| keys.as_ref().is_none_or(|ks| ks.iter().any(|k| k == n));
            let entry = |name: &str, value: String, source: i8| {
                let mut c = DescribeConfigsResourceResult::default();
                c.name = sb(name);
                c.value = Some(sb(&value));
                c.config_source = source;
                c.read_only = source != 1;
                c
            };
            match r.resource_type {
                TOPIC => match self.log.topic(&r.resource_name) {
                    Some(t) => {
                        out.configs = sediment_log::CONFIG_NAMES
                            .iter()
                            .filter(|n| wanted(n))
                            .filter_map(|n| {
                                let v = t.config.value_of(n)?;
                                let source = if t.config.overrides.contains_key(*n) {
                                    1
                                } else {
                                    5
                                };
                                Some(entry(n, v, source))
                            })
                            .collect();
                    }
                    None => {
                        out.error_code = ResponseError::UnknownTopicOrPartition.code();
                        out.error_message = Some(sb(&format!(
                            "topic '{}' does not exist",
                            r.resource_name.as_str()
                        )));
                    }
                },
                BROKER => {
                    let c = &self.config;
                    let items = [
                        (
                            "auto.create.topics.enable",
                            c.auto_create_topics.to_string(),
                        ),
                        ("num.partitions", c.default_partitions.to_string()),
                        ("socket.request.max.bytes", c.max_request_bytes.to_string()),
                        ("broker.id", self.log.node_id().to_string()),
                    ];
                    out.configs = items
                        .into_iter()
                        .filter(|(n, _)| wanted(n))
                        .map(|(n, v)| entry(n, v, 4))
                        .collect();
                }
                _ => {
                    out.error_code = ResponseError::InvalidRequest.code();
                    out.error_message =
                        Some(sb("only TOPIC and BROKER resources can be described"));
                }
            }
            resp.results.push(out);
        }
        resp
    }

    fn find_coordinator(
        &self,
        req: FindCoordinatorRequest,
        version: i16,
    ) -> FindCoordinatorResponse {
        let mut resp = FindCoordinatorResponse::default();
        let node = self.log.node_id();
        let host = sb(&self.config.advertised_host);
        let port = i32::from(self.config.advertised_port);
        // key_type 0 = group; 1 = transaction (not supported).
        let err = if req.key_type == 0 {
            0
        } else {
            ResponseError::CoordinatorNotAvailable.code()
        };
        if version >= 4 {
            resp.coordinators = req
                .coordinator_keys
                .iter()
                .map(|k| {
                    let mut c = Coordinator::default();
                    c.key = k.clone();
                    c.error_code = err;
                    if err == 0 {
                        c.node_id = node.into();
                        c.host = host.clone();
                        c.port = port;
                    }
                    c
                })
                .collect();
        } else {
            resp.error_code = err;
            if err == 0 {
                resp.node_id = node.into();
                resp.host = host;
                resp.port = port;
            }
        }
        resp
    }

    async fn init_producer_id(&self, req: InitProducerIdRequest) -> InitProducerIdResponse {
        let mut resp = InitProducerIdResponse::default();
        if req.transactional_id.is_some() {
            resp.error_code = ResponseError::InvalidRequest.code();
            resp.producer_id = (-1).into();
            resp.producer_epoch = -1;
            return resp;
        }
        // KIP-360: a known producer asking again gets its epoch bumped.
        if req.producer_id.0 >= 0 && req.producer_epoch >= 0 && req.producer_epoch < i16::MAX - 1 {
            resp.producer_id = req.producer_id;
            resp.producer_epoch = req.producer_epoch + 1;
            return resp;
        }
        let log = self.log.clone();
        match blocking(move || log.allocate_producer_id()).await {
            Ok(id) => {
                resp.producer_id = id.into();
                resp.producer_epoch = 0;
            }
            Err(e) => {
                resp.error_code = code(&e);
                resp.producer_id = (-1).into();
                resp.producer_epoch = -1;
            }
        }
        resp
    }
}

/// A produce partition result; fields newer than `version` stay at their
/// defaults (kafka-protocol refuses to encode them otherwise).
fn partition_error(
    version: i16,
    idx: i32,
    error: i16,
    message: Option<String>,
) -> PartitionProduceResponse {
    let mut pr = PartitionProduceResponse::default();
    pr.index = idx;
    pr.error_code = error;
    pr.base_offset = -1;
    pr.log_append_time_ms = -1;
    pr.log_start_offset = -1;
    if version >= 8 {
        pr.error_message = message.map(|m| sb(&m));
    }
    pr
}

/// Reads every requested partition once. Returns the response, the bytes
/// of records in it, and whether any partition had an error.
fn read_fetch(
    log: &LogManager,
    wanted: &FetchWanted,
    cold: &ColdReads,
    max_bytes: usize,
    version: i16,
) -> (FetchResponse, usize, bool) {
    let mut resp = FetchResponse::default();
    let mut total = 0usize;
    let mut errors = false;
    for (topic, parts) in wanted {
        let mut tr = FetchableTopicResponse::default();
        tr.topic = sb(topic).into();
        for &(idx, offset, part_max) in parts {
            let mut pd = PartitionData::default();
            pd.partition_index = idx;
            pd.records = Some(Bytes::new());
            match log.partition(topic, idx) {
                None => {
                    pd.error_code = ResponseError::UnknownTopicOrPartition.code();
                    pd.high_watermark = -1;
                    errors = true;
                }
                Some(p) => {
                    let budget = part_max.min(max_bytes.saturating_sub(total));
                    // KIP-74: the first batch is returned whole even when it
                    // exceeds the limits, so that consumers always progress.
                    let allow_oversize = total == 0;
                    // Most fetches read no archived offsets: skip the
                    // keyed lookup (and its String key) for them.
                    let archived = if cold.is_empty() {
                        None
                    } else {
                        cold.get(&(topic.clone(), idx))
                    };
                    let read = match archived {
                        Some(archived) => archived
                            .clone()
                            .map(|records| sediment_log::ReadResult {
                                records,
                                high_watermark: p.high_watermark(),
                                log_start_offset: p.earliest_offset().unwrap_or(-1),
                            })
                            .map_err(|message| LogError::ArchiveUnavailable { message }),
                        None => p.read(offset, budget, allow_oversize),
                    };
                    match read {
                        Ok(r) => {
                            total += r.records.len();
                            pd.high_watermark = r.high_watermark;
                            pd.last_stable_offset = r.high_watermark;
                            if version >= 5 {
                                pd.log_start_offset =
                                    p.earliest_offset().unwrap_or(r.log_start_offset);
                            }
                            pd.records = Some(r.records);
                        }
                        Err(e) => {
                            pd.error_code = code(&e);
                            pd.high_watermark = p.high_watermark();
                            pd.last_stable_offset = pd.high_watermark;
                            if version >= 5 {
                                pd.log_start_offset = p.earliest_offset().unwrap_or(-1);
                            }
                            if !matches!(e, LogError::OffsetOutOfRange { .. }) {
                                tracing::warn!(topic, partition = idx, error = %e, "fetch failed");
                            }
                            errors = true;
                        }
                    }
                }
            }
            tr.partitions.push(pd);
        }
        resp.responses.push(tr);
    }
    (resp, total, errors)
}

/// Runs storage work that only touches the page cache (appends, reads of
/// bytes just written) right here on the async worker. Such a call takes
/// microseconds, while handing it to another thread (`block_in_place`,
/// `spawn_blocking`) costs thread wake-ups and context switches on every
/// request: measured at 10,000 records/s over 4 partitions, doing it inline
/// cut the broker's CPU by a third and produce p99 from 2.4 to 1.9 ms
/// (BENCHMARKS.md, "Page-cache work on the async worker").
/// The price is that a write held up by the kernel's dirty-page throttling
/// holds this worker's other tasks too, until another worker steals them.
fn page_cache_io<T>(f: impl FnOnce() -> T) -> T {
    f()
}

/// Resolves when any of `rxs` sees a new value; never for a partition that
/// was deleted (its next read reports that) or when there are none.
async fn any_changed(rxs: &mut [tokio::sync::watch::Receiver<i64>]) {
    if rxs.is_empty() {
        return std::future::pending().await;
    }
    let waits = rxs.iter_mut().map(|rx| {
        Box::pin(async move {
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        })
    });
    futures::future::select_all(waits).await;
}

/// Whether every partition a fetch wants is read in its active segment,
/// whose bytes were written moments ago and are in the page cache; older
/// local segments may have to come from the disk.
fn reads_active_segments(log: &LogManager, wanted: &FetchWanted) -> bool {
    wanted.iter().all(|(topic, parts)| {
        parts.iter().all(|&(idx, offset, _)| {
            log.partition(topic, idx)
                .is_none_or(|p| offset >= p.active_base_offset())
        })
    })
}

/// Runs blocking storage work (disk reads, fsyncs of metadata) without
/// stalling other connections.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, LogError> + Send + 'static,
) -> Result<T, LogError> {
    // block_in_place keeps the work on this thread (moving its other tasks
    // away) instead of paying two thread hand-offs as spawn_blocking would.
    if tokio::runtime::Handle::current().runtime_flavor()
        == tokio::runtime::RuntimeFlavor::MultiThread
    {
        return tokio::task::block_in_place(f);
    }
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "storage task failed");
            Err(LogError::ShuttingDown)
        }
    }
}
