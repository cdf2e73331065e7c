//! Serving consumers from the archive: the manifest names the file, the
//! file's row-group statistics name the row group, and the row group is
//! rebuilt into Kafka batches once and cached, so a consumer catching up
//! through archived offsets reads each row group from the store once.
//! Concurrent reads of one row group share one load, and a read starts
//! loading the next row group in the background (read-ahead), so a
//! sequential consumer rarely waits for the store or the rebuild.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::{BoxFuture, Shared};
use futures::FutureExt;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parking_lot::Mutex;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
use parquet::arrow::async_reader::AsyncFileReader;
use parquet::arrow::{ParquetRecordBatchStreamBuilder, ProjectionMask};
use parquet::errors::ParquetError;
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};
use parquet::file::statistics::Statistics;

use crate::convert::{self, Rebuilt};
use crate::manifest::ArchiveFile;
use crate::{inc, Archive, ArchiveError};

/// Parsed Parquet footers kept (they are small; files are many).
const FOOTERS_KEPT: usize = 256;

type Key = (String, usize);
/// A row group being fetched and rebuilt, awaited by every reader of it.
type Loading = Shared<BoxFuture<'static, Result<Arc<Rebuilt>, String>>>;

/// Rebuilt row groups within a byte budget, least recently used dropped
/// first; and the footers of recently read files.
pub(crate) struct RebuiltCache {
    budget: usize,
    inner: Mutex<CacheInner>,
    /// Row groups fetched and rebuilt at once. Each takes about three
    /// times its raw size while in flight (fetched pages, decoded arrays,
    /// rebuilt batches) and a core to rebuild, so more than the cores
    /// would only add memory.
    loads: Arc<tokio::sync::Semaphore>,
}

#[derive(Default)]
struct CacheInner {
    tick: u64,
    used: usize,
    groups: HashMap<Key, (Arc<Rebuilt>, u64)>,
    footers: HashMap<String, (ArrowReaderMetadata, u64)>,
    loading: HashMap<Key, Loading>,
}

impl RebuiltCache {
    pub(crate) fn new(budget: usize) -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        RebuiltCache {
            budget,
            inner: Mutex::new(CacheInner::default()),
            loads: Arc::new(tokio::sync::Semaphore::new(cores)),
        }
    }

    pub(crate) fn used_bytes(&self) -> usize {
        self.inner.lock().used
    }

    fn is_present(&self, key: &Key) -> bool {
        let inner = self.inner.lock();
        inner.groups.contains_key(key) || inner.loading.contains_key(key)
    }

    fn get(&self, key: &Key) -> Option<Arc<Rebuilt>> {
        let mut inner = self.inner.lock();
        inner.tick += 1;
        let tick = inner.tick;
        inner.groups.get_mut(key).map(|(r, used)| {
            *used = tick;
            r.clone()
        })
    }

    fn put(&self, key: Key, value: Arc<Rebuilt>) {
        let size = value.bytes.len();
        if size > self.budget {
            return;
        }
        let mut inner = self.inner.lock();
        inner.tick += 1;
        let tick = inner.tick;
        if let Some((old, _)) = inner.groups.insert(key, (value, tick)) {
            inner.used -= old.bytes.len();
        }
        inner.used += size;
        while inner.used > self.budget {
            let Some(victim) = inner
                .groups
                .iter()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some((r, _)) = inner.groups.remove(&victim) {
                inner.used -= r.bytes.len();
            }
        }
    }

    fn footer(&self, path: &str) -> Option<ArrowReaderMetadata> {
        let mut inner = self.inner.lock();
        inner.tick += 1;
        let tick = inner.tick;
        inner.footers.get_mut(path).map(|(m, used)| {
            *used = tick;
            m.clone()
        })
    }

    fn put_footer(&self, path: String, meta: ArrowReaderMetadata) {
        let mut inner = self.inner.lock();
        inner.tick += 1;
        let tick = inner.tick;
        inner.footers.insert(path, (meta, tick));
        if inner.footers.len() > FOOTERS_KEPT {
            if let Some(victim) = inner
                .footers
                .iter()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(k, _)| k.clone())
            {
                inner.footers.remove(&victim);
            }
        }
    }

    /// Drops everything read from files under `prefix` (topic deleted).
    pub(crate) fn forget(&self, prefix: &str) {
        let mut inner = self.inner.lock();
        let mut freed = 0;
        inner.groups.retain(|(p, _), (r, _)| {
            let keep = !p.starts_with(prefix);
            if !keep {
                freed += r.bytes.len();
            }
            keep
        });
        inner.used -= freed;
        inner.footers.retain(|p, _| !p.starts_with(prefix));
    }
}

/// What a read from the archive returned.
#[derive(Debug)]
pub enum ArchiveRead {
    /// Whole batches from the one holding the offset (or the first after
    /// it, if the offset fell in a gap).
    Batches(Bytes),
    /// The offset is not in the archive (before its start, or at or past
    /// its end): the local tier answers, or says it is out of range.
    NotArchived,
}

impl Archive {
    /// Reads whole batches starting at the batch that holds `offset`, up to
    /// `max_bytes` (at least one batch), rebuilt from the archive.
    pub async fn read(
        self: &Arc<Self>,
        topic: &str,
        partition: i32,
        offset: i64,
        max_bytes: usize,
    ) -> Result<ArchiveRead, ArchiveError> {
        let manifest = self
            .manifest(topic, partition)
            .ok_or_else(|| ArchiveError::NotLoaded(format!("{topic}-{partition}")))?;
        if offset < manifest.start_offset {
            return Ok(ArchiveRead::NotArchived);
        }
        let Some(file) = manifest.file_for(offset) else {
            return Ok(ArchiveRead::NotArchived);
        };
        let from = offset.max(file.base_offset);
        let res = self
            .read_file(topic, partition, file, from, max_bytes)
            .await;
        if let Err(e) = &res {
            inc(&self.metrics.read_errors, 1);
            tracing::error!(
                topic, partition, offset, file = %self.file_path(topic, partition, file), error = %crate::error_chain(e),
                "archive read failed: the consumer gets KAFKA_STORAGE_ERROR"
            );
        }
        res.map(ArchiveRead::Batches)
    }

    async fn read_file(
        self: &Arc<Self>,
        topic: &str,
        partition: i32,
        file: &ArchiveFile,
        offset: i64,
        max_bytes: usize,
    ) -> Result<Bytes, ArchiveError> {
        let path = self.file_path(topic, partition, file);
        let meta = self.footer(&path, file.bytes).await?;
        let rg = row_group_for(&path, &meta, offset)?;
        let rebuilt = self.row_group(&path, file.bytes, &meta, rg).await?;
        let out = rebuilt.slice_from(offset, max_bytes);
        if out.is_empty() {
            return Err(ArchiveError::Corrupt(format!(
                "{path} row group {rg} holds no batch at or after offset {offset}"
            )));
        }
        self.read_ahead(topic, partition, file, &meta, rg);
        Ok(out)
    }

    /// The parsed footer of an archive file of `size` bytes (cached; the
    /// SQL engine plans row groups with it).
    pub async fn footer(
        &self,
        path: &Path,
        size: u64,
    ) -> Result<ArrowReaderMetadata, ArchiveError> {
        if let Some(m) = self.cache.footer(path.as_ref()) {
            return Ok(m);
        }
        let mut reader = FileReader {
            store: self.store.clone(),
            path: path.clone(),
            size,
        };
        let m = ArrowReaderMetadata::load_async(&mut reader, ArrowReaderOptions::new()).await?;
        self.cache.put_footer(path.to_string(), m.clone());
        Ok(m)
    }

    /// A row group rebuilt into batches: from the cache, from a load in
    /// progress, or loaded now (and cached).
    async fn row_group(
        &self,
        path: &Path,
        size: u64,
        meta: &ArrowReaderMetadata,
        rg: usize,
    ) -> Result<Arc<Rebuilt>, ArchiveError> {
        let key = (path.to_string(), rg);
        if let Some(r) = self.cache.get(&key) {
            inc(&self.metrics.cache_hits, 1);
            return Ok(r);
        }
        inc(&self.metrics.cache_misses, 1);
        self.load(key, path, size, meta)
            .await
            .map_err(ArchiveError::Io)
    }

    fn load(&self, key: Key, path: &Path, size: u64, meta: &ArrowReaderMetadata) -> Loading {
        let mut inner = self.cache.inner.lock();
        if let Some(loading) = inner.loading.get(&key) {
            return loading.clone();
        }
        // A load that finished since the caller looked in the cache: the
        // check and the insert below are under one lock, so a row group is
        // loaded once however reads and read-ahead interleave.
        if let Some((r, _)) = inner.groups.get(&key) {
            let r = r.clone();
            return futures::future::ready(Ok(r)).boxed().shared();
        }
        let reader = FileReader {
            store: self.store.clone(),
            path: path.clone(),
            size,
        };
        inc(&self.metrics.row_groups_loaded, 1);
        let (meta, cache, rg) = (meta.clone(), self.cache.clone(), key.1);
        let k = key.clone();
        let fut = async move {
            let res = async {
                let _permit = cache
                    .loads
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| ArchiveError::Io("archive reader closed".into()))?;
                // One Arrow batch for the whole row group: no join needed.
                let rows = meta
                    .metadata()
                    .row_groups()
                    .get(rg)
                    .map_or(1, |g| g.num_rows().max(1) as usize);
                // The raw columns only: typed value columns are for SQL.
                let raw = ProjectionMask::roots(
                    meta.parquet_schema(),
                    0..convert::RAW_COLUMNS.min(meta.schema().fields().len()),
                );
                let stream = ParquetRecordBatchStreamBuilder::new_with_metadata(reader, meta)
                    .with_row_groups(vec![rg])
                    .with_projection(raw)
                    .with_batch_size(rows)
                    .build()?;
                let batches: Vec<_> = stream.try_collect().await?;
                let rebuilt = tokio::task::spawn_blocking(move || convert::rebuild(&batches))
                    .await
                    .map_err(|e| ArchiveError::Io(format!("rebuild task: {e}")))??;
                Ok::<_, ArchiveError>(Arc::new(rebuilt))
            }
            .await;
            // Cached before it stops loading, so no reader in between
            // starts a second load.
            if let Ok(r) = &res {
                cache.put(k.clone(), r.clone());
            }
            cache.inner.lock().loading.remove(&k);
            res.map_err(|e| crate::error_chain(&e))
        }
        .boxed()
        .shared();
        inner.loading.insert(key, fut.clone());
        fut
    }

    /// Starts loading the row group after `rg` (or the next file's first)
    /// unless it is cached or loading: one group ahead of each reader.
    fn read_ahead(
        self: &Arc<Self>,
        topic: &str,
        partition: i32,
        file: &ArchiveFile,
        meta: &ArrowReaderMetadata,
        rg: usize,
    ) {
        let next = if rg + 1 < meta.metadata().num_row_groups() {
            Some((file.clone(), rg + 1))
        } else {
            self.manifest(topic, partition)
                .and_then(|m| m.file_for(file.next_offset).cloned())
                .filter(|f| f.base_offset >= file.next_offset)
                .map(|f| (f, 0))
        };
        let Some((next_file, next_rg)) = next else {
            return;
        };
        let path = self.file_path(topic, partition, &next_file);
        if self.cache.is_present(&(path.to_string(), next_rg)) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let res = async {
                let meta = this.footer(&path, next_file.bytes).await?;
                this.load((path.to_string(), next_rg), &path, next_file.bytes, &meta)
                    .await
                    .map(|_| ())
                    .map_err(ArchiveError::Io)
            }
            .await;
            if let Err(e) = res {
                // The read that needs it will report the error.
                tracing::debug!(path = %path, error = %e, "archive read-ahead failed");
            }
        });
    }

    pub(crate) fn forget_cached(&self, prefix: &str) {
        self.cache.forget(prefix);
    }
}

/// The first row group whose offsets reach `offset` (by its statistics).
fn row_group_for(
    path: &Path,
    meta: &ArrowReaderMetadata,
    offset: i64,
) -> Result<usize, ArchiveError> {
    let offset_col = meta
        .parquet_schema()
        .columns()
        .iter()
        .position(|c| c.name() == "offset")
        .ok_or_else(|| ArchiveError::Corrupt(format!("{path} has no offset column")))?;
    for (i, rg) in meta.metadata().row_groups().iter().enumerate() {
        let max = match rg.column(offset_col).statistics() {
            Some(Statistics::Int64(s)) => s.max_opt().copied(),
            _ => None,
        }
        .ok_or_else(|| {
            ArchiveError::Corrupt(format!("{path} row group {i} has no offset statistics"))
        })?;
        if max >= offset {
            return Ok(i);
        }
    }
    Err(ArchiveError::Corrupt(format!(
        "{path} ends before offset {offset}, which its manifest entry covers"
    )))
}

/// Ranged reads of one archive file; the size comes from the manifest, so
/// the footer is read without a HEAD request.
#[derive(Clone)]
struct FileReader {
    store: Arc<dyn ObjectStore>,
    path: Path,
    size: u64,
}

fn parquet_err(e: object_store::Error) -> ParquetError {
    ParquetError::External(Box::new(e))
}

impl AsyncFileReader for FileReader {
    fn get_bytes(
        &mut self,
        range: std::ops::Range<u64>,
    ) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        async move {
            self.store
                .get_range(&self.path, range)
                .await
                .map_err(parquet_err)
        }
        .boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<std::ops::Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        async move {
            self.store
                .get_ranges(&self.path, &ranges)
                .await
                .map_err(parquet_err)
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            let size = self.size;
            let m = ParquetMetaDataReader::new()
                .with_arrow_reader_options(options)
                .with_prefetch_hint(Some(64 << 10))
                .load_and_finish(self, size)
                .await?;
            Ok(Arc::new(m))
        }
        .boxed()
    }
}
