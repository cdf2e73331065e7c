//! The data directory: topics, their partitions, broker metadata, flushers.
//!
//! ```text
//! <data>/broker.meta            BRKR frame: cluster id, node id
//! <data>/clean-shutdown         CLEN frame: present only between a clean stop and the next start
//! <data>/producer-ids           PIDB frame: end of the producer-id block handed out
//! <data>/topics/<name>/topic.meta   TOPC frame: id, partitions, config overrides
//! <data>/topics/<name>/<p>/     segments, indexes, producer snapshots
//! <data>/deleted/               topics being deleted (renamed here first)
//! ```
//!
//! Crash consistency: a topic exists once its `topic.meta` is durable (the
//! partition directories are created before it); a delete renames the topic
//! directory into `deleted/` (atomic) before removing files.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use crate::keys::KeyCache;
use crate::partition::PartitionContext;
use crate::segment::IndexCache;
use crate::{frame, now_ms, FlushPolicy, FlushQueue, LogError, Partition, TopicConfig};

const TOPIC_KIND: &[u8; 4] = b"TOPC";
const TOPIC_VERSION: u16 = 1;
const BROKER_KIND: &[u8; 4] = b"BRKR";
const CLEAN_KIND: &[u8; 4] = b"CLEN";
const PID_KIND: &[u8; 4] = b"PIDB";
const META_LIMIT: usize = 1 << 20;
const PRODUCER_ID_BLOCK: i64 = 1000;
/// Most partitions a topic may have.
pub const MAX_PARTITIONS: i32 = 10_000;

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub data_dir: PathBuf,
    pub flush_policy: FlushPolicy,
    pub topic_defaults: TopicConfig,
    /// Threads running fdatasync in parallel: for different partitions, and
    /// overlapping flushes of one partition (see `Partition::flush`).
    pub flush_threads: usize,
    /// Memory for sealed segments' index entries (loaded on use, oldest
    /// dropped first), so memory does not grow with the data kept.
    pub index_cache_bytes: usize,
    /// Memory for the key hashes of segments that key lookups reached
    /// (built on use, oldest dropped first; see [`crate::keys`]).
    pub key_cache_bytes: usize,
    pub node_id: i32,
    /// Sealed segments of topics with `remote.storage.enable` go to an
    /// archive (sediment-tiering), and local retention waits for it.
    pub tiering: bool,
}

impl LogConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        LogConfig {
            data_dir: data_dir.into(),
            flush_policy: FlushPolicy::Fsync,
            topic_defaults: TopicConfig::default(),
            flush_threads: 4,
            index_cache_bytes: 64 << 20,
            key_cache_bytes: 64 << 20,
            node_id: 0,
            tiering: false,
        }
    }
}

/// The durable description of a topic (`topic.meta`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TopicMeta {
    pub name: String,
    /// Kafka topic id (UUID).
    pub id: String,
    pub partitions: i32,
    #[serde(default)]
    pub configs: BTreeMap<String, String>,
    #[serde(default)]
    pub created_ms: i64,
}

#[derive(Debug)]
pub struct Topic {
    pub meta: TopicMeta,
    pub id: [u8; 16],
    pub config: Arc<TopicConfig>,
    pub partitions: Vec<Arc<Partition>>,
    dir: PathBuf,
}

impl Topic {
    pub fn partition(&self, p: i32) -> Option<&Arc<Partition>> {
        usize::try_from(p).ok().and_then(|i| self.partitions.get(i))
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct BrokerMeta {
    cluster_id: String,
    node_id: i32,
}

#[derive(Debug, Serialize, Deserialize)]
struct PidBlock {
    block_end: i64,
}

pub struct LogManager {
    config: LogConfig,
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    /// Serializes topic creation and deletion.
    admin_lock: Mutex<()>,
    flush_queue: Arc<FlushQueue>,
    index_cache: Arc<IndexCache>,
    key_cache: Arc<KeyCache>,
    fsync_latency: Arc<crate::Histogram>,
    flushers: Mutex<Vec<JoinHandle<()>>>,
    producer_ids: Mutex<(i64, i64)>,
    cluster_id: String,
    /// Whether the previous run stopped cleanly.
    recovered_clean: bool,
}

impl std::fmt::Debug for LogManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LogManager({})", self.config.data_dir.display())
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(
    path: &Path,
    kind: &[u8; 4],
    version: u16,
) -> Result<T, LogError> {
    let bytes = frame::read_file(path, META_LIMIT).map_err(|e| LogError::io(path, e))?;
    let what = path.display().to_string();
    let (_, payload) = frame::decode(&what, &bytes, kind, version, META_LIMIT)?;
    serde_json::from_slice(payload).map_err(|e| LogError::Corrupt {
        path: path.to_path_buf(),
        position: 0,
        reason: e.to_string(),
    })
}

fn write_json<T: Serialize>(
    path: &Path,
    kind: &[u8; 4],
    version: u16,
    value: &T,
) -> Result<(), LogError> {
    let payload = serde_json::to_vec(value).map_err(|e| LogError::Corrupt {
        path: path.to_path_buf(),
        position: 0,
        reason: e.to_string(),
    })?;
    frame::write_atomic(path, &frame::encode(kind, version, &payload))
        .map_err(|e| LogError::io(path, e))
}

/// Kafka's topic name rules.
pub fn validate_topic_name(name: &str) -> Result<(), LogError> {
    let bad = |reason: &str| LogError::InvalidTopic {
        name: name.to_string(),
        reason: reason.to_string(),
    };
    if name.is_empty() {
        return Err(bad("empty"));
    }
    if name.len() > 249 {
        return Err(bad("longer than 249 characters"));
    }
    if name == "." || name == ".." {
        return Err(bad("'.' and '..' are not allowed"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return Err(bad(
            "only ASCII letters, digits, '.', '_' and '-' are allowed",
        ));
    }
    Ok(())
}

fn parse_uuid(s: &str) -> [u8; 16] {
    uuid::Uuid::parse_str(s)
        .map(|u| *u.as_bytes())
        .unwrap_or([0; 16])
}

impl LogManager {
    /// Opens the data directory, recovering every partition, and starts the
    /// flusher threads.
    pub fn open(config: LogConfig) -> Result<Arc<Self>, LogError> {
        let dir = config.data_dir.clone();
        for d in [dir.clone(), dir.join("topics"), dir.join("deleted")] {
            fs::create_dir_all(&d).map_err(|e| LogError::io(&d, e))?;
        }
        let broker_path = dir.join("broker.meta");
        let broker: BrokerMeta = if broker_path.exists() {
            read_json(&broker_path, BROKER_KIND, 1)?
        } else {
            let m = BrokerMeta {
                cluster_id: uuid::Uuid::new_v4().simple().to_string()[..22].to_string(),
                node_id: config.node_id,
            };
            write_json(&broker_path, BROKER_KIND, 1, &m)?;
            m
        };
        let clean_path = dir.join("clean-shutdown");
        let clean = match read_json::<serde_json::Value>(&clean_path, CLEAN_KIND, 1) {
            Ok(_) => true,
            Err(LogError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "unreadable clean-shutdown marker; running full recovery");
                false
            }
        };
        tracing::info!(clean, dir = %dir.display(), "opening log");
        let pid_path = dir.join("producer-ids");
        let pid_start = if pid_path.exists() {
            read_json::<PidBlock>(&pid_path, PID_KIND, 1)?.block_end
        } else {
            0
        };

        let flush_queue = Arc::new(FlushQueue::default());
        let index_cache = Arc::new(IndexCache::new(config.index_cache_bytes));
        let key_cache = Arc::new(KeyCache::new(config.key_cache_bytes));
        let fsync_latency = Arc::new(crate::Histogram::default());
        let now = now_ms();
        let ctx = PartitionContext {
            fsync_latency: fsync_latency.clone(),
            flush_policy: config.flush_policy,
            flush_queue: flush_queue.clone(),
            index_cache: index_cache.clone(),
            key_cache: key_cache.clone(),
            leader_epoch: 0,
            clean,
            now_ms: now,
            tiering: config.tiering,
        };
        let mut topics = BTreeMap::new();
        let topics_dir = dir.join("topics");
        for entry in fs::read_dir(&topics_dir).map_err(|e| LogError::io(&topics_dir, e))? {
            let entry = entry.map_err(|e| LogError::io(&topics_dir, e))?;
            let tdir = entry.path();
            let meta_path = tdir.join("topic.meta");
            if !meta_path.exists() {
                // Creation was interrupted before the topic existed.
                tracing::warn!(dir = %tdir.display(), "removing incomplete topic directory");
                let _ = fs::remove_dir_all(&tdir);
                continue;
            }
            let meta: TopicMeta = read_json(&meta_path, TOPIC_KIND, TOPIC_VERSION)?;
            let tconfig = Arc::new(TopicConfig::with_overrides(
                &config.topic_defaults,
                &meta.configs,
            )?);
            let mut partitions = Vec::with_capacity(meta.partitions as usize);
            for p in 0..meta.partitions {
                partitions.push(Partition::open(
                    tdir.join(p.to_string()),
                    &meta.name,
                    p,
                    tconfig.clone(),
                    &ctx,
                )?);
            }
            topics.insert(
                meta.name.clone(),
                Arc::new(Topic {
                    id: parse_uuid(&meta.id),
                    meta,
                    config: tconfig,
                    partitions,
                    dir: tdir,
                }),
            );
        }
        // Reaching here means recovery is done; the marker must not survive
        // into a run that might crash.
        if clean {
            fs::remove_file(&clean_path).map_err(|e| LogError::io(&clean_path, e))?;
            frame::sync_dir(&dir).map_err(|e| LogError::io(&dir, e))?;
        }
        let deleted = dir.join("deleted");
        if let Ok(rd) = fs::read_dir(&deleted) {
            for e in rd.flatten() {
                let _ = fs::remove_dir_all(e.path());
            }
        }

        let mgr = Arc::new(LogManager {
            config,
            topics: RwLock::new(topics),
            admin_lock: Mutex::new(()),
            flush_queue,
            index_cache,
            key_cache,
            fsync_latency,
            flushers: Mutex::new(Vec::new()),
            producer_ids: Mutex::new((pid_start, pid_start)),
            cluster_id: broker.cluster_id,
            recovered_clean: clean,
        });
        mgr.start_flushers()?;
        Ok(mgr)
    }

    fn start_flushers(&self) -> Result<(), LogError> {
        let mut handles = self.flushers.lock();
        let n = self.config.flush_threads.max(1);
        for i in 0..n {
            let q = self.flush_queue.clone();
            let policy = self.config.flush_policy;
            let h = std::thread::Builder::new()
                .name(format!("sediment-flush-{i}"))
                .spawn(move || flusher_loop(q, policy))
                .map_err(|e| LogError::io(Path::new("<thread>"), e))?;
            handles.push(h);
        }
        Ok(())
    }

    /// Durations of segment fdatasync calls.
    pub fn fsync_latency(&self) -> &crate::Histogram {
        &self.fsync_latency
    }

    /// From a partition's queueing for fsync to a flusher thread taking it.
    pub fn flush_queue_wait(&self) -> &crate::Histogram {
        &self.flush_queue.wait
    }

    /// Bytes of sealed-segment index entries in memory.
    /// Bytes of segment key sets held for key lookups.
    pub fn key_cache_bytes(&self) -> usize {
        self.key_cache.used_bytes()
    }

    pub fn index_cache_bytes(&self) -> usize {
        self.index_cache.used_bytes()
    }

    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    pub fn node_id(&self) -> i32 {
        self.config.node_id
    }

    pub fn recovered_clean(&self) -> bool {
        self.recovered_clean
    }

    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    pub fn topic(&self, name: &str) -> Option<Arc<Topic>> {
        self.topics.read().get(name).cloned()
    }

    pub fn topics(&self) -> Vec<Arc<Topic>> {
        self.topics.read().values().cloned().collect()
    }

    pub fn partition(&self, topic: &str, partition: i32) -> Option<Arc<Partition>> {
        self.topics
            .read()
            .get(topic)
            .and_then(|t| t.partition(partition).cloned())
    }

    /// Checks a topic creation without performing it (CreateTopics validate_only).
    pub fn validate_topic(
        &self,
        name: &str,
        partitions: i32,
        configs: &BTreeMap<String, String>,
    ) -> Result<TopicConfig, LogError> {
        validate_topic_name(name)?;
        if !(1..=MAX_PARTITIONS).contains(&partitions) {
            return Err(LogError::InvalidPartitions {
                count: partitions,
                max: MAX_PARTITIONS,
            });
        }
        if self.topics.read().contains_key(name) {
            return Err(LogError::TopicExists {
                name: name.to_string(),
            });
        }
        TopicConfig::with_overrides(&self.config.topic_defaults, configs)
    }

    /// Creates a topic durably. Blocking I/O.
    pub fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        configs: BTreeMap<String, String>,
    ) -> Result<Arc<Topic>, LogError> {
        let _admin = self.admin_lock.lock();
        let tconfig = Arc::new(self.validate_topic(name, partitions, &configs)?);
        let tdir = self.config.data_dir.join("topics").join(name);
        if tdir.exists() {
            fs::remove_dir_all(&tdir).map_err(|e| LogError::io(&tdir, e))?;
        }
        fs::create_dir_all(&tdir).map_err(|e| LogError::io(&tdir, e))?;
        let ctx = PartitionContext {
            flush_policy: self.config.flush_policy,
            flush_queue: self.flush_queue.clone(),
            index_cache: self.index_cache.clone(),
            key_cache: self.key_cache.clone(),
            fsync_latency: self.fsync_latency.clone(),
            leader_epoch: 0,
            clean: true,
            now_ms: now_ms(),
            tiering: self.config.tiering,
        };
        let mut parts = Vec::with_capacity(partitions as usize);
        for p in 0..partitions {
            parts.push(Partition::open(
                tdir.join(p.to_string()),
                name,
                p,
                tconfig.clone(),
                &ctx,
            )?);
        }
        let meta = TopicMeta {
            name: name.to_string(),
            id: uuid::Uuid::new_v4().to_string(),
            partitions,
            configs,
            created_ms: now_ms(),
        };
        write_json(&tdir.join("topic.meta"), TOPIC_KIND, TOPIC_VERSION, &meta)?;
        let topics_dir = self.config.data_dir.join("topics");
        frame::sync_dir(&topics_dir).map_err(|e| LogError::io(&topics_dir, e))?;
        let topic = Arc::new(Topic {
            id: parse_uuid(&meta.id),
            meta,
            config: tconfig,
            partitions: parts,
            dir: tdir,
        });
        self.topics.write().insert(name.to_string(), topic.clone());
        tracing::info!(topic = name, partitions, "created topic");
        Ok(topic)
    }

    /// Deletes a topic: gone from metadata at once, files removed after.
    pub fn delete_topic(&self, name: &str) -> Result<(), LogError> {
        let _admin = self.admin_lock.lock();
        let topic = self
            .topics
            .write()
            .remove(name)
            .ok_or_else(|| LogError::UnknownTopic {
                name: name.to_string(),
            })?;
        let trash = self
            .config
            .data_dir
            .join("deleted")
            .join(format!("{name}-{}", uuid::Uuid::new_v4().simple()));
        fs::rename(&topic.dir, &trash).map_err(|e| LogError::io(&topic.dir, e))?;
        let topics_dir = self.config.data_dir.join("topics");
        frame::sync_dir(&topics_dir).map_err(|e| LogError::io(&topics_dir, e))?;
        if let Err(e) = fs::remove_dir_all(&trash) {
            tracing::warn!(error = %e, path = %trash.display(), "could not remove deleted topic files; will retry at next start");
        }
        tracing::info!(topic = name, "deleted topic");
        Ok(())
    }

    /// Hands out a producer id; blocks are recorded durably before use so
    /// that ids are never reused after a restart.
    pub fn allocate_producer_id(&self) -> Result<i64, LogError> {
        let mut ids = self.producer_ids.lock();
        if ids.0 >= ids.1 {
            let end = ids.1 + PRODUCER_ID_BLOCK;
            write_json(
                &self.config.data_dir.join("producer-ids"),
                PID_KIND,
                1,
                &PidBlock { block_end: end },
            )?;
            ids.1 = end;
        }
        let id = ids.0;
        ids.0 += 1;
        Ok(id)
    }

    /// One retention pass over every partition: time and size retention,
    /// and segment.ms rolls. Blocking I/O.
    pub fn enforce_retention(&self) -> usize {
        let now = now_ms();
        let mut deleted = 0;
        for topic in self.topics() {
            for p in &topic.partitions {
                if let Err(e) = p.roll_if_old(now) {
                    tracing::warn!(error = %e, topic = %topic.meta.name, partition = p.id, "segment roll failed");
                }
                match p.enforce_retention(now) {
                    Ok(n) => deleted += n,
                    Err(e) => {
                        tracing::warn!(error = %e, topic = %topic.meta.name, partition = p.id, "retention failed")
                    }
                }
            }
        }
        deleted
    }

    /// Clean stop: flush and close every partition, stop the flushers, and
    /// write the clean-shutdown marker last. Blocking I/O.
    pub fn shutdown(&self) -> Result<(), LogError> {
        let mut result = Ok(());
        for topic in self.topics() {
            for p in &topic.partitions {
                if let Err(e) = p.close() {
                    tracing::error!(error = %e, "closing partition failed");
                    result = Err(e);
                }
            }
        }
        self.flush_queue.shutdown();
        for h in self.flushers.lock().drain(..) {
            let _ = h.join();
        }
        if result.is_ok() {
            let path = self.config.data_dir.join("clean-shutdown");
            write_json(
                &path,
                CLEAN_KIND,
                1,
                &serde_json::json!({ "stopped_ms": now_ms() }),
            )?;
            tracing::info!("log closed cleanly");
        }
        result
    }
}

fn flusher_loop(queue: Arc<FlushQueue>, policy: FlushPolicy) {
    loop {
        let batch = match policy {
            FlushPolicy::Fsync => match queue.pop() {
                Some(p) => vec![p],
                None => return,
            },
            FlushPolicy::Interval(every) => {
                std::thread::sleep(every);
                let b = queue.drain();
                if b.is_empty() && queue.is_shutdown() {
                    return;
                }
                b
            }
        };
        for p in batch {
            if let Err(e) = p.flush_once() {
                if p.is_failed() {
                    // Logged once where the fsync failed; nothing to retry.
                    continue;
                }
                tracing::error!(error = %e, topic = %p.topic, partition = p.id, "flush failed; will retry");
                std::thread::sleep(Duration::from_millis(100));
                queue.push(p);
            }
        }
    }
}
