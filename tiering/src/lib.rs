//! # sediment-tiering: sealed segments settle into Parquet
//!
//! Once a segment of a topic with `remote.storage.enable` is sealed and
//! durable, the [`Tierer`] converts it to one Parquet file, uploads it to
//! the archive (an object store: a local directory by default, or S3), and
//! commits the partition's [`Manifest`] with a create-only conditional
//! put. Only then does the partition learn the new archive end
//! ([`sediment_log::Partition::set_archive`]), and only below that end may
//! local retention delete segments. From then on the Parquet file is the
//! durable copy: consumers that fetch older offsets are served batches
//! rebuilt from it ([`Archive::read`]), and analysts read it with any
//! Parquet tool. The order of operations, the layout and the schema are in
//! docs/FORMAT.md.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use object_store::path::Path;
use object_store::ObjectStore;
use parking_lot::RwLock;

pub mod convert;
mod gate;
pub mod manifest;
mod reader;
pub use reader::ArchiveRead;
mod store;
#[cfg(test)]
mod tests;
mod tierer;

pub use manifest::{
    ArchiveFile, Manifest, ManifestError, ValueColumn, MANIFEST_FORMAT, MANIFEST_VERSION,
};
pub use store::open_store;
pub use tierer::{ConversionPriority, Tierer, TieringConfig};

/// Version of the archive file layout (schema and key-value metadata).
/// 2 added the optional typed value columns after `batch_offset`.
pub const FILE_FORMAT_VERSION: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    #[error("corrupt archive data: {0}")]
    Corrupt(String),
    #[error("I/O: {0}")]
    Io(String),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("invalid object store URL '{url}': {reason}")]
    Url { url: String, reason: String },
    #[error("manifest generation {generation} of {partition} was committed by someone else")]
    Conflict { partition: String, generation: u64 },
    #[error("the archive of {0} has not been read yet")]
    NotLoaded(String),
    #[error("typed value columns: {0}")]
    ValueColumns(String),
}

/// Counters exported on /metrics.
#[derive(Debug, Default)]
pub struct ArchiveMetrics {
    pub uploaded_files: AtomicU64,
    pub uploaded_bytes: AtomicU64,
    pub uploaded_segment_bytes: AtomicU64,
    /// Conversions that ran at low rather than idle priority because their
    /// partition's unarchived backlog passed the idle limit.
    pub backlog_conversions: AtomicU64,
    /// Milliseconds idle-priority conversions waited for the machine to
    /// have idle CPU.
    pub conversion_wait_ms: AtomicU64,
    pub upload_errors: AtomicU64,
    pub deleted_files: AtomicU64,
    pub read_errors: AtomicU64,
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    /// Row groups fetched from the store and rebuilt (reads and read-ahead).
    pub row_groups_loaded: AtomicU64,
}

/// The archive: an object store, a root path in it, the committed manifest
/// of every partition, and a cache of batches rebuilt for consumers.
pub struct Archive {
    store: Arc<dyn ObjectStore>,
    root: Path,
    /// The directory, when the store is a local one.
    local_root: Option<PathBuf>,
    url: String,
    manifests: RwLock<HashMap<(String, i32), Arc<Manifest>>>,
    cache: Arc<reader::RebuiltCache>,
    pub metrics: ArchiveMetrics,
}

impl std::fmt::Debug for Archive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Archive({})", self.url)
    }
}

impl Archive {
    /// `url` is shown to users (logs, DescribeLogDirs); `cache_bytes`
    /// bounds the memory of batches rebuilt for consumers.
    pub fn new(store: Arc<dyn ObjectStore>, root: Path, url: &str, cache_bytes: usize) -> Self {
        Archive {
            store,
            root,
            local_root: None,
            url: url.to_string(),
            manifests: RwLock::new(HashMap::new()),
            cache: Arc::new(reader::RebuiltCache::new(cache_bytes)),
            metrics: ArchiveMetrics::default(),
        }
    }

    /// Opens the archive named by `url` (`file:///dir` or `s3://bucket/prefix`).
    pub fn open(url: &str, cache_bytes: usize) -> Result<Arc<Self>, ArchiveError> {
        let (store, root, local_root) = store::open_store_at(url)?;
        let mut archive = Archive::new(store, root, url, cache_bytes);
        archive.local_root = local_root;
        Ok(Arc::new(archive))
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// `topics/<topic>/<partition>` under the root.
    pub fn partition_dir(&self, topic: &str, partition: i32) -> Path {
        self.topic_dir(topic).join(partition.to_string())
    }

    fn topic_dir(&self, topic: &str) -> Path {
        self.root.clone().join("topics").join(topic)
    }

    /// The object a manifest file entry names.
    pub fn file_path(&self, topic: &str, partition: i32, file: &ArchiveFile) -> Path {
        let mut p = self.partition_dir(topic, partition);
        for part in file.path.split('/') {
            p = p.join(part);
        }
        p
    }

    /// The committed manifest of a partition, once loaded.
    pub fn manifest(&self, topic: &str, partition: i32) -> Option<Arc<Manifest>> {
        self.manifests
            .read()
            .get(&(topic.to_string(), partition))
            .cloned()
    }

    fn set_manifest(&self, m: Manifest) -> Arc<Manifest> {
        let m = Arc::new(m);
        self.manifests
            .write()
            .insert((m.topic.clone(), m.partition), m.clone());
        m
    }

    fn forget_topic(&self, topic: &str) {
        self.manifests.write().retain(|(t, _), _| t != topic);
    }

    /// Bytes of rebuilt batches held for consumers.
    pub fn cache_bytes(&self) -> usize {
        self.cache.used_bytes()
    }
}

/// Where converted files wait for upload: under the data dir, emptied at
/// start-up (a leftover is an upload that never finished).
pub fn staging_dir(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("tiering-staging")
}

/// An error with its sources, "a: b: c", for log lines: object store and
/// HTTP errors keep the useful part (refused, timed out, 403) in sources.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

fn now_ms() -> i64 {
    sediment_log::now_ms()
}

fn inc(c: &AtomicU64, by: u64) {
    c.fetch_add(by, Ordering::Relaxed);
}
