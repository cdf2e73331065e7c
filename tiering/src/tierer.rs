//! The tierer: a background task that moves sealed segments into the
//! archive and keeps the archive within `retention.*`.
//!
//! Order of operations for one segment, never reordered:
//! 1. convert the sealed, fsynced segment to a Parquet file in the staging
//!    directory (CRCs checked: a rotten segment is refused, not archived);
//! 2. upload it to `data/<base offset>.parquet` (a deterministic name: a
//!    retry after a crash overwrites the same object with the same bytes);
//! 3. commit manifest generation N+1 listing it (create-only put);
//! 4. tell the partition the new archive end: only now may local
//!    retention delete the segment.
//!
//! A crash between any two steps leaves either nothing committed (the
//! segment is still local and is converted again) or a committed file
//! whose segment is still local (deleted by the next retention pass). An
//! uploaded-but-uncommitted object is overwritten by the retry or deleted
//! when the partition's manifest is next loaded. Archive retention runs
//! the other way round: commit a manifest without the oldest files, then
//! delete them; a crash in between leaves objects no manifest lists, again
//! deleted at the next load. Any failure backs off (1 s doubling to 60 s)
//! for that partition only; produce and fetch on the hot tier go on, and
//! local segments stay until their upload is committed.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use parking_lot::Mutex;
use sediment_log::{LogManager, Partition, SegmentInfo, Topic};
use tokio_util::sync::CancellationToken;

use crate::convert::{self, FileIdentity};
use crate::gate::CpuGate;
use crate::manifest::{ArchiveFile, Manifest};
use crate::{inc, now_ms, Archive, ArchiveError};

#[derive(Debug, Clone)]
pub struct TieringConfig {
    /// How often to look for sealed segments and apply archive retention.
    pub interval: Duration,
    /// Where converted files wait for upload (emptied at start).
    pub staging_dir: PathBuf,
    /// Partitions converted and uploaded at once. Conversion takes a
    /// core while it runs, so the default leaves the other cores to
    /// produce and fetch: half the cores, at least one.
    pub concurrency: usize,
    /// Longest wait before retrying a partition whose tiering failed.
    pub max_backoff: Duration,
    /// Segment bytes converted per second, all partitions together (Kafka's
    /// `remote.log.manager.copy.max.bytes.per.second`); None = unlimited.
    pub max_bytes_per_second: Option<u64>,
    /// Typed value columns to add to new files (the SQL engine's streams).
    pub value_columns: Option<Arc<dyn convert::ValueColumns>>,
    /// CPU (and disk) priority of conversion threads.
    pub priority: ConversionPriority,
    /// With [`ConversionPriority::Idle`]: once a partition has more than
    /// this many bytes of sealed segments not yet archived, its
    /// conversions run at [`ConversionPriority::Low`] instead, so a broker
    /// whose cores never go idle still catches up.
    pub idle_backlog_bytes: u64,
}

/// How conversion threads yield to produce and fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConversionPriority {
    /// Linux `SCHED_IDLE` and the idle I/O class: conversion runs on CPU
    /// time nothing else wants (RocksDB's `CpuPriority::kIdle` for its
    /// compaction threads).
    Idle,
    /// Nice 10: conversion gets a small share of busy cores.
    Low,
}

impl std::str::FromStr for ConversionPriority {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "idle" => Ok(ConversionPriority::Idle),
            "low" => Ok(ConversionPriority::Low),
            other => Err(format!(
                "tiering priority must be `idle` or `low`, not `{other}`"
            )),
        }
    }
}

impl TieringConfig {
    pub fn new(data_dir: &std::path::Path) -> Self {
        TieringConfig {
            interval: Duration::from_secs(1),
            staging_dir: crate::staging_dir(data_dir),
            concurrency: std::thread::available_parallelism()
                .map_or(1, |n| n.get() / 2)
                .max(1),
            max_backoff: Duration::from_secs(60),
            max_bytes_per_second: None,
            value_columns: None,
            priority: ConversionPriority::Idle,
            idle_backlog_bytes: 1 << 30,
        }
    }
}

#[derive(Default)]
struct Backoff {
    failures: u32,
    until: Option<Instant>,
}

pub struct Tierer {
    archive: Arc<Archive>,
    log: Arc<LogManager>,
    config: TieringConfig,
    backoff: Mutex<HashMap<(String, i32), Backoff>>,
    /// Topics (name → id) seen with an archive, to purge when deleted.
    known: Mutex<HashMap<String, String>>,
    /// The archive has been checked for topics deleted while stopped.
    swept: std::sync::atomic::AtomicBool,
    pacer: Option<Arc<Pacer>>,
    /// Holds idle-priority conversions while the machine is busy.
    gate: Arc<CpuGate>,
}

impl std::fmt::Debug for Tierer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tierer({:?})", self.archive)
    }
}

/// What one pass did (for tests and logs).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PassOutcome {
    pub uploaded: usize,
    pub expired: usize,
    pub failed: usize,
}

impl Tierer {
    /// Empties the staging directory (leftovers of interrupted uploads).
    pub fn new(
        archive: Arc<Archive>,
        log: Arc<LogManager>,
        config: TieringConfig,
    ) -> Result<Arc<Self>, ArchiveError> {
        let dir = &config.staging_dir;
        if dir.exists() {
            std::fs::remove_dir_all(dir)
                .map_err(|e| ArchiveError::Io(format!("{}: {e}", dir.display())))?;
        }
        std::fs::create_dir_all(dir)
            .map_err(|e| ArchiveError::Io(format!("{}: {e}", dir.display())))?;
        let pacer = config.max_bytes_per_second.map(|r| Arc::new(Pacer::new(r)));
        Ok(Arc::new(Tierer {
            archive,
            log,
            pacer,
            gate: Arc::new(CpuGate::new()),
            config,
            backoff: Mutex::new(HashMap::new()),
            known: Mutex::new(HashMap::new()),
            swept: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    pub fn archive(&self) -> &Arc<Archive> {
        &self.archive
    }

    /// Runs passes every `interval` until `stop` is cancelled. A pass in
    /// progress is abandoned at stop: everything it did is either
    /// committed or redone after the restart.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.pass() => {}
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(self.config.interval) => {}
            }
        }
    }

    /// One pass over every partition: load manifests not read yet, upload
    /// sealed segments, apply archive retention, purge deleted topics.
    pub async fn pass(&self) -> PassOutcome {
        let topics = self.log.topics();
        self.purge_deleted(&topics).await;
        let work: Vec<(Arc<Topic>, Arc<Partition>)> = topics
            .iter()
            .flat_map(|t| t.partitions.iter().map(move |p| (t.clone(), p.clone())))
            .filter(|(_, p)| p.tiered())
            .collect();
        // Manifests first, for every partition: until a partition's archive
        // is known, earliest offsets below its local start are unknown.
        let loads = work.iter().cloned().map(|(t, p)| async move {
            if self.archive.manifest(&p.topic, p.id).is_none() && self.due(&p) {
                let res = self.load(&t, &p).await;
                let failed = res.is_err();
                self.record(&p, res.map(|_| ()));
                return usize::from(failed);
            }
            0
        });
        let load_failures: usize = futures::stream::iter(loads)
            .buffer_unordered(8)
            .collect::<Vec<usize>>()
            .await
            .into_iter()
            .sum();
        let tiers = work.iter().cloned().map(|(t, p)| async move {
            if !self.due(&p) {
                return PassOutcome::default();
            }
            match self.tier_partition(&t, &p).await {
                Ok(o) => {
                    self.record(&p, Ok(()));
                    o
                }
                Err(e) => {
                    self.record(&p, Err(e));
                    PassOutcome {
                        failed: 1,
                        ..PassOutcome::default()
                    }
                }
            }
        });
        let outcomes: Vec<PassOutcome> = futures::stream::iter(tiers)
            .buffer_unordered(self.config.concurrency.max(1))
            .collect()
            .await;
        let total = PassOutcome {
            failed: load_failures,
            ..PassOutcome::default()
        };
        outcomes.iter().fold(total, |a, o| PassOutcome {
            uploaded: a.uploaded + o.uploaded,
            expired: a.expired + o.expired,
            failed: a.failed + o.failed,
        })
    }

    fn due(&self, p: &Partition) -> bool {
        let b = self.backoff.lock();
        b.get(&(p.topic.clone(), p.id))
            .and_then(|b| b.until)
            .is_none_or(|until| Instant::now() >= until)
    }

    fn record(&self, p: &Partition, res: Result<(), ArchiveError>) {
        let mut all = self.backoff.lock();
        let b = all.entry((p.topic.clone(), p.id)).or_default();
        match res {
            Ok(()) => {
                if b.failures > 0 {
                    tracing::info!(topic = %p.topic, partition = p.id, "archive reachable again; tiering resumes");
                }
                *b = Backoff::default();
            }
            Err(e) => {
                b.failures += 1;
                let wait = Duration::from_secs(1u64 << (b.failures - 1).min(6))
                    .min(self.config.max_backoff);
                b.until = Some(Instant::now() + wait);
                inc(&self.archive.metrics.upload_errors, 1);
                tracing::warn!(topic = %p.topic, partition = p.id, error = %crate::error_chain(&e), failures = b.failures, retry_in_ms = wait.as_millis() as u64, "tiering failed; local segments are kept until their upload is committed");
            }
        }
    }

    /// Reads the partition's manifest (or starts an empty one), drops what
    /// a deleted topic of the same name left, and deletes objects no
    /// manifest lists (interrupted uploads and retention deletes).
    async fn load(&self, topic: &Topic, p: &Partition) -> Result<Arc<Manifest>, ArchiveError> {
        let a = &self.archive;
        let m = match a.fetch_manifest(&p.topic, p.id).await? {
            Some(m) if m.topic_id == topic.meta.id => m,
            Some(stale) => {
                tracing::warn!(topic = %p.topic, partition = p.id, stale_id = %stale.topic_id, "archive holds data of an earlier topic with this name; deleting it");
                self.purge_prefix(&a.partition_dir(&p.topic, p.id)).await?;
                Manifest::empty(&p.topic, &topic.meta.id, p.id)
            }
            None => Manifest::empty(&p.topic, &topic.meta.id, p.id),
        };
        let listed: HashSet<String> = m.files.iter().map(|f| f.path.clone()).collect();
        let data_dir = a.partition_dir(&p.topic, p.id).join("data");
        for path in a.list_paths(&data_dir).await? {
            let rel = format!("data/{}", path.filename().unwrap_or_default());
            if !listed.contains(&rel) {
                tracing::info!(path = %path, "archive: deleting an object no manifest lists (left by an interrupted upload or delete)");
                a.delete_quietly(&path).await;
            }
        }
        self.known
            .lock()
            .insert(p.topic.clone(), topic.meta.id.clone());
        let m = a.set_manifest(m);
        p.set_archive(m.range());
        Ok(m)
    }

    async fn tier_partition(
        &self,
        topic: &Topic,
        p: &Arc<Partition>,
    ) -> Result<PassOutcome, ArchiveError> {
        let mut out = PassOutcome::default();
        let mut m = match self.archive.manifest(&p.topic, p.id) {
            Some(m) => m,
            None => self.load(topic, p).await?,
        };
        let sealed = p.sealed_segments();
        let mut backlog: u64 = sealed
            .iter()
            .filter(|s| s.next_offset > m.end_offset)
            .map(|s| s.size_bytes)
            .sum();
        for seg in sealed {
            if seg.next_offset <= m.end_offset {
                continue;
            }
            if seg.base_offset < m.end_offset {
                return Err(ArchiveError::Corrupt(format!(
                    "local segment {} overlaps the archive, which ends at {}",
                    seg.path.display(),
                    m.end_offset
                )));
            }
            let priority = match self.config.priority {
                ConversionPriority::Idle if backlog > self.config.idle_backlog_bytes => {
                    inc(&self.archive.metrics.backlog_conversions, 1);
                    ConversionPriority::Low
                }
                other => other,
            };
            backlog = backlog.saturating_sub(seg.size_bytes);
            m = self.archive_segment(topic, p, &m, &seg, priority).await?;
            out.uploaded += 1;
        }
        out.expired = self.enforce_retention(p, &m).await?;
        Ok(out)
    }

    /// Steps 1-4 of the module doc for one segment.
    async fn archive_segment(
        &self,
        topic: &Topic,
        p: &Arc<Partition>,
        m: &Manifest,
        seg: &SegmentInfo,
        priority: ConversionPriority,
    ) -> Result<Arc<Manifest>, ArchiveError> {
        let started = Instant::now();
        let staged = self.config.staging_dir.join(format!(
            "{}-{}-{:020}.parquet",
            p.topic, p.id, seg.base_offset
        ));
        let (src, dst) = (seg.path.clone(), staged.clone());
        let (topic_name, topic_id, partition) = (p.topic.clone(), topic.meta.id.clone(), p.id);
        let max_batch =
            p.config().max_message_bytes.max(1 << 20) + sediment_log::batch::LOG_OVERHEAD;
        let pacer = self.pacer.clone();
        let cpu_gate = self.gate.clone();
        let archive = self.archive.clone();
        let decoder = self
            .config
            .value_columns
            .as_ref()
            .and_then(|v| v.for_topic(&p.topic));
        let conv = run_in_background(format!("tier-{}-{}", p.topic, p.id), priority, move || {
            let convert = |typed: Option<&dyn convert::ValueDecoder>| {
                let io = |e: std::io::Error, path: &std::path::Path| {
                    ArchiveError::Io(format!("{}: {e}", path.display()))
                };
                let input = std::fs::File::open(&src).map_err(|e| io(e, &src))?;
                let output = std::fs::File::create(&dst).map_err(|e| io(e, &dst))?;
                let id = FileIdentity {
                    topic: &topic_name,
                    topic_id: &topic_id,
                    partition,
                };
                let mut gate =
                    (priority == ConversionPriority::Idle).then(|| cpu_gate.pass(GATE_MAX_WAIT));
                let mut pace = |bytes: u64| {
                    if let Some(p) = &pacer {
                        p.take(bytes);
                    }
                    if let Some(g) = &mut gate {
                        let waited = g.wait();
                        if !waited.is_zero() {
                            inc(&archive.metrics.conversion_wait_ms, waited.as_millis() as u64);
                        }
                    }
                };
                // Ask the gate before the first byte too: a conversion does
                // not start on a busy machine.
                pace(0);
                convert::segment_to_parquet(input, &id, max_batch, typed, output, &mut pace)
            };
            match convert(decoder.as_deref()) {
                // The raw columns are the archive; typed ones are an
                // optimisation: without them queries decode on read.
                Err(ArchiveError::ValueColumns(e)) => {
                    tracing::warn!(topic = %topic_name, partition, error = %e, "typed value columns failed; archiving without them");
                    convert(None)
                }
                r => r,
            }
        })
        .await;
        let conv = match conv {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_file(&staged);
                return Err(e);
            }
        };
        let converted_ms = started.elapsed().as_millis() as u64;
        let rel = format!("data/{:020}.parquet", seg.base_offset);
        let file = ArchiveFile {
            path: rel,
            base_offset: conv.base_offset,
            next_offset: conv.next_offset,
            min_timestamp: conv.min_timestamp,
            max_timestamp: conv.max_timestamp,
            rows: conv.rows,
            bytes: 0,
            segment_bytes: conv.segment_bytes,
            value_columns: conv.value_columns.clone(),
        };
        let to = self.archive.file_path(&p.topic, p.id, &file);
        let uploaded = self.archive.upload_file(&staged, &to).await;
        let _ = std::fs::remove_file(&staged);
        let bytes = uploaded?;
        let file = ArchiveFile { bytes, ..file };
        let next = m.with_file(file, now_ms())?;
        let committed = self.archive.commit_manifest(next).await?;
        p.set_archive(committed.range());
        let metrics = &self.archive.metrics;
        inc(&metrics.uploaded_files, 1);
        inc(&metrics.uploaded_bytes, bytes);
        inc(&metrics.uploaded_segment_bytes, conv.segment_bytes);
        tracing::debug!(topic = %p.topic, partition = p.id, base_offset = conv.base_offset, next_offset = conv.next_offset, rows = conv.rows, segment_bytes = conv.segment_bytes, parquet_bytes = bytes, converted_ms, total_ms = started.elapsed().as_millis() as u64, "archived segment");
        Ok(committed)
    }

    /// `retention.ms` / `retention.bytes` on the archive: commit a manifest
    /// without the expired oldest files, then delete them.
    async fn enforce_retention(
        &self,
        p: &Partition,
        m: &Arc<Manifest>,
    ) -> Result<usize, ArchiveError> {
        let config = p.config();
        let now = now_ms();
        let files = &m.files;
        let mut n = 0;
        if config.retention_ms >= 0 {
            while n < files.len() && files[n].max_timestamp < now - config.retention_ms {
                n += 1;
            }
        }
        if config.retention_bytes >= 0 {
            let local: u64 = p
                .segments()
                .iter()
                .filter(|s| s.base_offset >= m.end_offset)
                .map(|s| s.size_bytes)
                .sum();
            let mut total: u64 = files[n..].iter().map(|f| f.segment_bytes).sum::<u64>() + local;
            while n < files.len() && total - files[n].segment_bytes >= config.retention_bytes as u64
            {
                total -= files[n].segment_bytes;
                n += 1;
            }
        }
        if n == 0 {
            return Ok(0);
        }
        let committed = self
            .archive
            .commit_manifest(m.without_oldest(n, now))
            .await?;
        p.set_archive(committed.range());
        for f in &files[..n] {
            let path = self.archive.file_path(&p.topic, p.id, f);
            self.archive.forget_cached(path.as_ref());
            if self.archive.delete_quietly(&path).await {
                inc(&self.archive.metrics.deleted_files, 1);
            }
            tracing::info!(topic = %p.topic, partition = p.id, path = %path, "archive retention deleted file");
        }
        Ok(n)
    }

    /// Deletes the archives of topics that no longer exist: those deleted
    /// since the last pass and, once per run, any the archive holds for a
    /// topic this broker does not have (deleted while it was stopped).
    async fn purge_deleted(&self, topics: &[Arc<Topic>]) {
        let current: HashMap<&str, &str> = topics
            .iter()
            .map(|t| (t.meta.name.as_str(), t.meta.id.as_str()))
            .collect();
        if !self.swept.load(std::sync::atomic::Ordering::Acquire) {
            match self.archive.archived_topics().await {
                Ok(names) => {
                    let mut known = self.known.lock();
                    for name in names {
                        if !current.contains_key(name.as_str()) {
                            known.entry(name).or_default();
                        }
                    }
                    self.swept.store(true, std::sync::atomic::Ordering::Release);
                }
                Err(e) => {
                    tracing::warn!(error = %crate::error_chain(&e), "could not list the archive's topics; will retry")
                }
            }
        }
        let gone: Vec<String> = self
            .known
            .lock()
            .iter()
            .filter(|(name, id)| current.get(name.as_str()) != Some(&id.as_str()))
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            self.archive.forget_topic(&name);
            let prefix = self.archive.topic_dir(&name);
            self.archive.forget_cached(prefix.as_ref());
            if current.contains_key(name.as_str()) {
                // Recreated under the same name: the new topic's first load
                // finds the old manifest by its id and clears it.
                self.known.lock().remove(&name);
                continue;
            }
            match self.purge_prefix(&prefix).await {
                Ok(()) => {
                    tracing::info!(topic = %name, "deleted the archive of a deleted topic");
                    self.known.lock().remove(&name);
                }
                Err(e) => {
                    tracing::warn!(topic = %name, error = %e, "could not delete the archive of a deleted topic; will retry")
                }
            }
        }
    }

    async fn purge_prefix(&self, prefix: &object_store::path::Path) -> Result<(), ArchiveError> {
        for path in self.archive.list_paths(prefix).await? {
            if !self.archive.delete_quietly(&path).await {
                return Err(ArchiveError::Io(format!("could not delete {path}")));
            }
        }
        Ok(())
    }
}

/// The longest a conversion waits for an idle machine, in all.
const GATE_MAX_WAIT: Duration = Duration::from_secs(30);

/// Nice value of [`ConversionPriority::Low`] conversion threads: when the
/// cores are busy, produce and fetch win most of the time and tiering waits
/// (its backlog is safe on local disk); when they are idle, tiering runs at
/// full speed.
const CONVERSION_NICE: i32 = 10;

/// Runs `f` on a thread of its own at a lower CPU priority.
pub(crate) async fn run_in_background<T: Send + 'static>(
    name: String,
    priority: ConversionPriority,
    f: impl FnOnce() -> Result<T, ArchiveError> + Send + 'static,
) -> Result<T, ArchiveError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            lower_priority(priority);
            let _ = tx.send(f());
        })
        .map_err(|e| ArchiveError::Io(format!("starting a conversion thread: {e}")))?;
    rx.await
        .map_err(|_| ArchiveError::Io("the conversion thread stopped without a result".into()))?
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn lower_priority(priority: ConversionPriority) {
    let rc = match priority {
        // SAFETY: sched_setscheduler reads the parameter struct we pass and
        // keeps no reference to it; pid 0 is the calling thread. ioprio_set
        // takes plain integers (IOPRIO_WHO_PROCESS, this thread's id, the
        // idle class) and touches no memory of ours.
        ConversionPriority::Idle => unsafe {
            let param = libc::sched_param { sched_priority: 0 };
            let rc = libc::sched_setscheduler(0, libc::SCHED_IDLE, &param);
            const IOPRIO_CLASS_IDLE: libc::c_long = 3;
            const IOPRIO_CLASS_SHIFT: libc::c_long = 13;
            const IOPRIO_WHO_PROCESS: libc::c_long = 1;
            let _ = libc::syscall(
                libc::SYS_ioprio_set,
                IOPRIO_WHO_PROCESS,
                libc::c_long::from(libc::gettid()),
                IOPRIO_CLASS_IDLE << IOPRIO_CLASS_SHIFT,
            );
            rc
        },
        // SAFETY: gettid and setpriority take and return plain integers and
        // touch no memory of ours. On Linux the nice value belongs to a
        // thread, and PRIO_PROCESS with a thread id changes only that thread.
        ConversionPriority::Low => unsafe {
            let tid = libc::gettid();
            libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, CONVERSION_NICE)
        },
    };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), ?priority, "could not lower the conversion thread's priority");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority(_: ConversionPriority) {}

/// Paces conversions to a byte rate: each caller is given the next slot on
/// a virtual clock and sleeps until it, with up to one second of unused
/// rate saved up as burst.
#[derive(Debug)]
pub(crate) struct Pacer {
    bytes_per_second: f64,
    next_free: Mutex<Instant>,
}

impl Pacer {
    pub(crate) fn new(bytes_per_second: u64) -> Self {
        Pacer {
            bytes_per_second: bytes_per_second.max(1) as f64,
            next_free: Mutex::new(Instant::now()),
        }
    }

    /// Blocks until `bytes` may be processed. Call from a blocking thread.
    pub(crate) fn take(&self, bytes: u64) {
        let wait_until = {
            let mut next = self.next_free.lock();
            let now = Instant::now();
            let earliest = now.checked_sub(Duration::from_secs(1)).unwrap_or(now);
            let start = (*next).max(earliest);
            *next = start + Duration::from_secs_f64(bytes as f64 / self.bytes_per_second);
            *next
        };
        let now = Instant::now();
        if wait_until > now {
            std::thread::sleep(wait_until - now);
        }
    }
}
