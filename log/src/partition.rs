//! One partition's log: an ordered list of segments, the last one active.
//!
//! ## Offsets
//! - *log start offset*: first offset still stored (base of the first segment).
//! - *log end offset* (LEO): offset the next appended record will get.
//! - *high watermark* (HW): offsets below it are visible to consumers. With
//!   one broker and `flush = fsync` the HW is the fsynced end of the log, so
//!   a consumer never sees a record that a crash could take back; with
//!   `flush = interval` it follows the LEO. Replication will later make the
//!   HW the in-sync replicas' minimum, so the two are kept distinct here.
//!
//! ## Crash consistency
//! A batch is written with one positional write at the end of the active
//! segment; its index entry lives in memory until the segment seals. An
//! acks>=1 produce is acknowledged only after the flusher's `fdatasync`
//! covers it (group commit: every append that lands before a sync starts
//! shares it). Sealing fsyncs the segment, then writes its index file and a
//! producer-state snapshot atomically. After a crash the active segment (and
//! any sealed segment whose index is missing or stale) is scanned batch by
//! batch, and a torn or corrupt tail of the active segment is truncated.

use std::collections::VecDeque;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;

use crate::batch::{self, BatchHeader};
use crate::config::{TimestampType, TopicConfig};
use crate::index::SegmentIndex;
use crate::keys::{key_hash, KeyCache, KeySet};
use crate::producer::{ProducerState, SequenceCheck};
use crate::segment::{self, IndexCache, Segment, LOG_SUFFIX};
use crate::{frame, FlushPolicy, FlushQueue, LogError};

const SNAPSHOT_SUFFIX: &str = "snapshot";

/// Result of appending one produce request's batches to a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendResult {
    /// Offset of the first record (of the original append, for a duplicate).
    pub base_offset: i64,
    /// Offset after the last appended record; the produce is durable once
    /// the high watermark reaches it.
    pub end_offset: i64,
    /// The broker's timestamp if the topic uses LogAppendTime, else -1.
    pub log_append_time: i64,
    pub log_start_offset: i64,
    /// The batch was a producer retry of one already in the log.
    pub duplicate: bool,
}

/// Bytes read for a fetch, whole batches only.
#[derive(Debug, Clone)]
pub struct ReadResult {
    pub records: Bytes,
    pub high_watermark: i64,
    pub log_start_offset: i64,
}

/// A sealed segment waiting for its fsync, index file and snapshot.
struct PendingSeal {
    segment: Arc<Segment>,
    producers: ProducerState,
    snapshot_offset: i64,
}

struct Inner {
    segments: Vec<Arc<Segment>>,
    log_end_offset: i64,
    high_watermark: i64,
    producers: ProducerState,
    pending_seals: VecDeque<PendingSeal>,
    /// Unsynced bytes were written since the last flush started.
    dirty: bool,
    /// Flushes started and not yet published, oldest first.
    flushes: FlushesInFlight,
    /// Flushes still writing sealed segments' index files and producer
    /// snapshots (after their sync, so after the HW moved).
    sealing: usize,
}

/// Flushes of one partition may overlap: a flush that starts while another
/// is still in `fdatasync` does not wait for it, so an append that lands
/// during a sync waits for one sync, not for the rest of that one plus a
/// whole second one. Results are published in start order: flush *n*'s
/// target becomes durable only when every flush started before it has
/// finished too (an earlier flush may be syncing a sealed segment that a
/// later one does not touch, and an earlier failure must stop the high
/// watermark for good).
#[derive(Debug)]
pub(crate) struct FlushesInFlight {
    /// Ticket of the oldest entry of `pending`.
    first_ticket: u64,
    /// (target offset, finished) per started flush, in start order.
    pub(crate) pending: VecDeque<(i64, bool)>,
    /// Every offset below it is fsynced.
    pub(crate) durable_offset: i64,
}

impl FlushesInFlight {
    pub(crate) fn new(durable_offset: i64) -> Self {
        Self {
            first_ticket: 0,
            pending: VecDeque::new(),
            durable_offset,
        }
    }

    pub(crate) fn start(&mut self, target: i64) -> u64 {
        self.pending.push_back((target, false));
        self.first_ticket + self.pending.len() as u64 - 1
    }

    /// Marks a flush finished; returns the new durable offset if it moved.
    pub(crate) fn finish(&mut self, ticket: u64) -> Option<i64> {
        let i = usize::try_from(ticket.checked_sub(self.first_ticket)?).ok()?;
        self.pending.get_mut(i)?.1 = true;
        let before = self.durable_offset;
        while let Some(&(target, true)) = self.pending.front() {
            self.durable_offset = self.durable_offset.max(target);
            self.pending.pop_front();
            self.first_ticket += 1;
        }
        (self.durable_offset > before).then_some(self.durable_offset)
    }
}

/// Counters exported as metrics.
#[derive(Debug, Default)]
pub struct PartitionStats {
    pub corrupt_segments: AtomicU64,
    pub truncated_bytes: AtomicU64,
}

pub struct Partition {
    pub topic: String,
    pub id: i32,
    dir: PathBuf,
    config: RwLock<Arc<TopicConfig>>,
    inner: Mutex<Inner>,
    hw_tx: watch::Sender<i64>,
    index_cache: Arc<IndexCache>,
    key_cache: Arc<KeyCache>,
    fsync_latency: Arc<crate::Histogram>,
    leader_epoch: i32,
    flush_policy: FlushPolicy,
    flush_queue: Arc<FlushQueue>,
    flush_queued: AtomicBool,
    /// An fsync failed: no more writes are accepted (see `flush`).
    failed: AtomicBool,
    /// Signalled when a flush finishes (see [`Partition::flush`]).
    flushed: parking_lot::Condvar,
    /// The broker archives sealed segments (see [`Partition::tiered`]).
    tiering: bool,
    /// What the archive holds, as last committed by the tierer; `None`
    /// until the tierer has read the partition's manifest.
    archive: RwLock<Option<ArchiveRange>>,
    pub stats: PartitionStats,
}

/// The offsets and bytes a partition has in the archive (object store).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ArchiveRange {
    /// First archived offset (== `end_offset` when the archive is empty).
    pub start_offset: i64,
    /// The offset after the last archived one: every segment that ends at
    /// or below it is safely in the archive and may leave the local disk.
    pub end_offset: i64,
    pub bytes: u64,
    pub files: usize,
}

impl ArchiveRange {
    pub fn is_empty(&self) -> bool {
        self.files == 0
    }
}

impl std::fmt::Debug for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Partition({}-{})", self.topic, self.id)
    }
}

/// Everything the partition needs from its owner.
pub struct PartitionContext {
    pub flush_policy: FlushPolicy,
    pub flush_queue: Arc<FlushQueue>,
    pub index_cache: Arc<IndexCache>,
    pub key_cache: Arc<KeyCache>,
    pub fsync_latency: Arc<crate::Histogram>,
    pub leader_epoch: i32,
    /// The previous run stopped cleanly (index files and snapshots current).
    pub clean: bool,
    pub now_ms: i64,
    /// The broker archives sealed segments of topics with
    /// `remote.storage.enable` (sediment-tiering runs).
    pub tiering: bool,
}

fn snapshot_name(offset: i64) -> String {
    segment::file_name(offset, SNAPSHOT_SUFFIX)
}

impl Partition {
    /// Opens (creating if needed) the partition directory and recovers it.
    pub fn open(
        dir: PathBuf,
        topic: &str,
        id: i32,
        config: Arc<TopicConfig>,
        ctx: &PartitionContext,
    ) -> Result<Arc<Self>, LogError> {
        fs::create_dir_all(&dir).map_err(|e| LogError::io(&dir, e))?;
        let stats = PartitionStats::default();
        let mut bases = Vec::new();
        let mut snapshots = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| LogError::io(&dir, e))? {
            let entry = entry.map_err(|e| LogError::io(&dir, e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(b) = segment::parse_file_name(&name, LOG_SUFFIX) {
                bases.push(b);
            } else if let Some(o) = segment::parse_file_name(&name, SNAPSHOT_SUFFIX) {
                snapshots.push(o);
            } else if name.ends_with(".tmp") {
                // Leftover of an interrupted atomic write: the target is intact.
                let _ = fs::remove_file(entry.path());
            }
        }
        bases.sort_unstable();
        snapshots.sort_unstable();
        let max_batch = config.max_message_bytes.max(1 << 20) + batch::LOG_OVERHEAD;
        let interval = config.index_interval_bytes;
        let mut segments: Vec<Arc<Segment>> = Vec::with_capacity(bases.len().max(1));
        let mut scanned: Vec<(usize, Vec<BatchHeader>)> = Vec::new();
        for (i, &base) in bases.iter().enumerate() {
            let path = dir.join(segment::file_name(base, LOG_SUFFIX));
            let is_active = i + 1 == bases.len();
            let file_len = fs::metadata(&path)
                .map_err(|e| LogError::io(&path, e))?
                .len();
            let index_path = path.with_extension(segment::INDEX_SUFFIX);
            // Sealed segments: only the index summary is read now (start-up
            // time does not grow with data); entries load on first use.
            // The active segment after a clean stop: its whole index.
            let summary = if is_active {
                None
            } else {
                Segment::read_index_summary(&index_path, base).filter(|s| {
                    let ok = s.size == file_len && bases.get(i + 1).is_none_or(|&n| s.next_offset == n);
                    if !ok {
                        tracing::warn!(path = %index_path.display(), indexed = s.size, file_len, "index does not match its segment; rebuilding");
                    }
                    ok
                })
            };
            let trusted = if summary.is_some() || (is_active && !ctx.clean) {
                None
            } else {
                match frame::read_file(&index_path, crate::index::INDEX_LIMIT) {
                    Ok(bytes) => {
                        match SegmentIndex::decode(&index_path.display().to_string(), &bytes, base)
                        {
                            Ok(idx) if idx.size == file_len => Some(idx),
                            Ok(idx) => {
                                tracing::warn!(path = %index_path.display(), indexed = idx.size, file_len, "index does not match segment size; rebuilding");
                                None
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "unreadable index; rebuilding");
                                None
                            }
                        }
                    }
                    Err(_) => None,
                }
            };
            let mut persisted = trusted.is_some() && !is_active;
            let seg = match (summary, trusted) {
                (Some(summary), _) => Segment::open_sealed(path, base, summary, ctx.now_ms)?,
                (None, Some(idx)) => Segment::open(path, base, idx, ctx.now_ms)?,
                (None, None) => {
                    let seg =
                        Segment::open(path.clone(), base, SegmentIndex::new(base), ctx.now_ms)?;
                    let out = seg.scan(interval, max_batch)?;
                    if let Some(err) = &out.error {
                        if is_active {
                            let cut = file_len - out.valid_bytes;
                            tracing::warn!(path = %path.display(), valid_bytes = out.valid_bytes, truncated_bytes = cut, reason = %err, "truncating torn or corrupt tail of the active segment");
                            seg.truncate(out.valid_bytes)?;
                            seg.sync()?;
                            stats.truncated_bytes.fetch_add(cut, Ordering::Relaxed);
                        } else {
                            tracing::error!(path = %path.display(), valid_bytes = out.valid_bytes, reason = %err, "corrupt bytes in a sealed segment; records after this point in the segment are unreadable, the rest of the partition stays available");
                            stats.corrupt_segments.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    let mut idx = out.index;
                    if !is_active && out.error.is_some() {
                        // Keep the real end so that offsets stay contiguous with
                        // the next segment; the damaged range reads as corrupt.
                        idx.size = file_len;
                        if let Some(&next_base) = bases.get(i + 1) {
                            idx.next_offset = next_base;
                        }
                    }
                    *seg.index.write() = idx;
                    if !is_active && out.error.is_none() {
                        seg.write_index()?;
                        persisted = true;
                    }
                    scanned.push((i, out.batches));
                    seg
                }
            };
            let seg = Arc::new(seg);
            if persisted {
                seg.index_persisted(&ctx.index_cache);
            }
            segments.push(seg);
        }
        if segments.is_empty() {
            let base = snapshots.last().copied().unwrap_or(0);
            segments.push(Arc::new(Segment::create(&dir, base, ctx.now_ms)?));
        }
        let log_end_offset = segments.last().map(|s| s.next_offset()).unwrap_or(0);

        // Producer state: newest snapshot at or below the LEO, then replay.
        let mut producers = ProducerState::default();
        let mut covered = segments[0].base_offset;
        for &off in snapshots.iter().rev() {
            if off > log_end_offset {
                continue;
            }
            let path = dir.join(snapshot_name(off));
            match frame::read_file(&path, crate::producer::SNAPSHOT_LIMIT)
                .map_err(|e| e.to_string())
                .and_then(|b| ProducerState::decode(&path.display().to_string(), &b))
            {
                Ok((o, s)) => {
                    producers = s;
                    covered = o;
                    break;
                }
                Err(e) => tracing::warn!(error = %e, "skipping unreadable producer snapshot"),
            }
        }
        if covered < log_end_offset {
            for (i, seg) in segments.iter().enumerate() {
                if seg.next_offset() <= covered {
                    continue;
                }
                let headers = match scanned.iter().find(|(j, _)| *j == i) {
                    Some((_, h)) => h.clone(),
                    None => seg.scan(interval, max_batch)?.batches,
                };
                for h in headers.iter().filter(|h| h.base_offset >= covered) {
                    producers.update(h);
                }
            }
        }

        let (hw_tx, _) = watch::channel(log_end_offset);
        let p = Partition {
            topic: topic.to_string(),
            id,
            dir,
            config: RwLock::new(config),
            inner: Mutex::new(Inner {
                segments,
                log_end_offset,
                high_watermark: log_end_offset,
                producers,
                pending_seals: VecDeque::new(),
                dirty: false,
                flushes: FlushesInFlight::new(log_end_offset),
                sealing: 0,
            }),
            hw_tx,
            index_cache: ctx.index_cache.clone(),
            key_cache: ctx.key_cache.clone(),
            fsync_latency: ctx.fsync_latency.clone(),
            leader_epoch: ctx.leader_epoch,
            flush_policy: ctx.flush_policy,
            flush_queue: ctx.flush_queue.clone(),
            flush_queued: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            flushed: parking_lot::Condvar::new(),
            tiering: ctx.tiering,
            archive: RwLock::new(None),
            stats,
        };
        Ok(Arc::new(p))
    }

    /// The epoch and sequence range `(epoch, first, last)` of the last
    /// batch producer `producer_id` appended here, if it is remembered.
    pub fn last_producer_batch(&self, producer_id: i64) -> Option<(i16, i32, i32)> {
        let inner = self.inner.lock();
        let entry = inner.producers.producers.get(&producer_id)?;
        let last = entry.batches.back()?;
        Some((entry.epoch, last.first_seq, last.last_seq))
    }

    pub fn config(&self) -> Arc<TopicConfig> {
        self.config.read().clone()
    }

    pub fn set_config(&self, config: Arc<TopicConfig>) {
        *self.config.write() = config;
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn leader_epoch(&self) -> i32 {
        self.leader_epoch
    }

    pub fn high_watermark(&self) -> i64 {
        self.inner.lock().high_watermark
    }

    pub fn log_end_offset(&self) -> i64 {
        self.inner.lock().log_end_offset
    }

    pub fn log_start_offset(&self) -> i64 {
        self.inner.lock().segments[0].base_offset
    }

    /// Base offset of the active segment (the one appends go to): reads at
    /// or above it are served from bytes written moments ago.
    pub fn active_base_offset(&self) -> i64 {
        let inner = self.inner.lock();
        inner
            .segments
            .last()
            .map_or(inner.log_end_offset, |s| s.base_offset)
    }

    /// Total bytes of all segments.
    pub fn size_bytes(&self) -> u64 {
        self.inner.lock().segments.iter().map(|s| s.size()).sum()
    }

    pub fn segment_count(&self) -> usize {
        self.inner.lock().segments.len()
    }

    /// A receiver that changes whenever the high watermark advances.
    pub fn watch_high_watermark(&self) -> watch::Receiver<i64> {
        self.hw_tx.subscribe()
    }

    /// Loads a sealed segment's index entries; if its index file turns out
    /// to be damaged, rebuilds them by scanning the segment.
    fn ensure_index(&self, seg: &Arc<Segment>, config: &TopicConfig) -> Result<(), LogError> {
        if let Err(e) = seg.ensure_index(&self.index_cache) {
            tracing::warn!(error = %e, path = %seg.path.display(), "index file unreadable; rebuilding from the segment");
            let out = seg.scan(config.index_interval_bytes, Self::max_batch(config))?;
            if let Some(err) = &out.error {
                tracing::error!(path = %seg.path.display(), reason = %err, "corrupt bytes in a sealed segment");
                self.stats.corrupt_segments.fetch_add(1, Ordering::Relaxed);
            }
            let mut idx = out.index;
            let current = seg.index.read().clone();
            idx.size = current.size;
            idx.next_offset = current.next_offset;
            seg.replace_index(idx);
        }
        Ok(())
    }

    fn max_batch(config: &TopicConfig) -> usize {
        config.max_message_bytes.max(1 << 20) + batch::LOG_OVERHEAD
    }

    /// Validates and appends the batches of one produce request (`records`
    /// may hold several). Returns once the bytes are written (not yet
    /// durable: await [`Partition::wait_durable`] for that). Blocking I/O:
    /// call from a blocking thread.
    pub fn append(self: &Arc<Self>, records: &[u8], now_ms: i64) -> Result<AppendResult, LogError> {
        self.check_not_failed()?;
        let config = self.config();
        // Validate everything before touching the log: a request is appended
        // whole or not at all.
        let mut headers = Vec::new();
        let mut pos = 0;
        while pos < records.len() {
            let rest = &records[pos..];
            let size = batch::peek_size(rest, usize::MAX >> 1).map_err(LogError::InvalidBatch)?;
            if size > config.max_message_bytes + batch::LOG_OVERHEAD {
                return Err(LogError::MessageTooLarge {
                    size,
                    max: config.max_message_bytes,
                });
            }
            let h = batch::validate_for_append(rest, size).map_err(LogError::InvalidBatch)?;
            headers.push((pos, h));
            pos += h.size;
        }
        if headers.is_empty() {
            return Err(LogError::InvalidBatch(batch::BatchError::Truncated {
                needed: batch::BATCH_HEADER_LEN,
                available: 0,
            }));
        }
        let log_append_time = match config.timestamp_type {
            TimestampType::LogAppendTime => now_ms,
            TimestampType::CreateTime => -1,
        };

        let mut inner = self.inner.lock();
        // Idempotence: check every batch first so a rejected request appends nothing.
        for (_, h) in &headers {
            match inner.producers.check(h) {
                SequenceCheck::Accept => {}
                SequenceCheck::Duplicate { base_offset } => {
                    if headers.len() == 1 {
                        return Ok(AppendResult {
                            base_offset,
                            end_offset: h.last_offset() - h.base_offset + base_offset + 1,
                            log_append_time,
                            log_start_offset: inner.segments[0].base_offset,
                            duplicate: true,
                        });
                    }
                    return Err(LogError::DuplicateSequence);
                }
                SequenceCheck::FencedEpoch { current } => {
                    return Err(LogError::InvalidProducerEpoch {
                        producer_id: h.producer_id,
                        epoch: h.producer_epoch,
                        current,
                    })
                }
                SequenceCheck::OutOfOrder { expected, got } => {
                    return Err(LogError::OutOfOrderSequence {
                        producer_id: h.producer_id,
                        expected,
                        got,
                    })
                }
            }
        }
        let base_offset = inner.log_end_offset;
        for (at, h) in &headers {
            // Only the 61-byte header changes: write it and the untouched
            // body separately instead of copying the batch.
            let mut head = [0u8; batch::BATCH_HEADER_LEN];
            head.copy_from_slice(&records[*at..*at + batch::BATCH_HEADER_LEN]);
            let body = &records[*at + batch::BATCH_HEADER_LEN..*at + h.size];
            let offset = inner.log_end_offset;
            batch::assign(&mut head, offset, self.leader_epoch);
            if log_append_time >= 0 {
                batch::set_log_append_time_split(&mut head, body, log_append_time);
            }
            let mut h = *h;
            h.base_offset = offset;
            if log_append_time >= 0 {
                h.max_timestamp = log_append_time;
            }
            self.maybe_roll(&mut inner, &config, h.size as u64, h.next_offset(), now_ms)?;
            let active = inner
                .segments
                .last()
                .cloned()
                .ok_or(LogError::NoActiveSegment)?;
            let position = active.size();
            let written = active
                .write_at(&head, position)
                .and_then(|()| active.write_at(body, position + head.len() as u64));
            if let Err(e) = written {
                // Leave the file as it was: nothing of this batch is in the log.
                let _ = active.truncate(position);
                return Err(e);
            }
            active.index.write().on_append(
                active.base_offset,
                &h,
                position,
                config.index_interval_bytes,
            );
            inner.producers.update(&h);
            inner.log_end_offset = h.next_offset();
        }
        inner.dirty = true;
        let end_offset = inner.log_end_offset;
        let log_start_offset = inner.segments[0].base_offset;
        if self.flush_policy != FlushPolicy::Fsync {
            inner.high_watermark = end_offset;
            self.publish_hw(end_offset);
        }
        drop(inner);
        self.request_flush();
        Ok(AppendResult {
            base_offset,
            end_offset,
            log_append_time,
            log_start_offset,
            duplicate: false,
        })
    }

    fn publish_hw(&self, hw: i64) {
        self.hw_tx.send_replace(hw);
    }

    fn request_flush(self: &Arc<Self>) {
        if !self.flush_queued.swap(true, Ordering::AcqRel) {
            self.flush_queue.push(self.clone());
        }
    }

    /// Rolls the active segment if the next batch would overflow it or it is
    /// older than segment.ms.
    fn maybe_roll(
        &self,
        inner: &mut Inner,
        config: &TopicConfig,
        batch_size: u64,
        next_offset: i64,
        now_ms: i64,
    ) -> Result<(), LogError> {
        let Some(active) = inner.segments.last() else {
            return Err(LogError::NoActiveSegment);
        };
        let size = active.size();
        if size == 0 {
            return Ok(());
        }
        let full = size + batch_size > config.segment_bytes;
        let old = now_ms - active.created_ms >= config.segment_ms;
        let offsets_overflow = next_offset - active.base_offset > i64::from(u32::MAX >> 1);
        if full || old || offsets_overflow {
            self.roll(inner, now_ms)?;
        }
        Ok(())
    }

    fn roll(&self, inner: &mut Inner, now_ms: i64) -> Result<(), LogError> {
        let base = inner.log_end_offset;
        let seg = Arc::new(Segment::create(&self.dir, base, now_ms)?);
        if let Some(old) = inner.segments.last().cloned() {
            inner.pending_seals.push_back(PendingSeal {
                segment: old,
                producers: inner.producers.clone(),
                snapshot_offset: base,
            });
        }
        inner.segments.push(seg);
        inner.dirty = true;
        Ok(())
    }

    /// Rolls the active segment now if it holds data (used by retention so
    /// that an expired active segment can be deleted, and by tests).
    pub fn force_roll(self: &Arc<Self>, now_ms: i64) -> Result<(), LogError> {
        let mut inner = self.inner.lock();
        if inner.segments.last().map(|s| s.size()).unwrap_or(0) == 0 {
            return Ok(());
        }
        self.roll(&mut inner, now_ms)?;
        drop(inner);
        self.request_flush();
        Ok(())
    }

    /// Whether sealed segments of this partition go to the archive: the
    /// broker runs tiering and the topic has `remote.storage.enable`.
    pub fn tiered(&self) -> bool {
        self.tiering && self.config().remote_storage_enable
    }

    /// Records what the archive holds after a manifest commit (or load).
    /// Local retention deletes only segments below `range.end_offset`.
    pub fn set_archive(&self, range: ArchiveRange) {
        *self.archive.write() = Some(range);
    }

    /// What the archive holds, if the tierer has read the manifest yet.
    pub fn archive(&self) -> Option<ArchiveRange> {
        *self.archive.read()
    }

    /// The first offset a consumer can read from either tier: Kafka's log
    /// start offset (ListOffsets earliest). Fails while the archive's
    /// extent is unknown and could matter (local data was deleted before).
    pub fn earliest_offset(&self) -> Result<i64, LogError> {
        let local = self.log_start_offset();
        if !self.tiered() {
            return Ok(local);
        }
        match self.archive() {
            Some(a) if !a.is_empty() => Ok(a.start_offset.min(local)),
            Some(_) => Ok(local),
            None if local == 0 => Ok(0),
            None => Err(LogError::ArchiveUnavailable {
                message: format!(
                    "the archive of {}-{} has not been read yet",
                    self.topic, self.id
                ),
            }),
        }
    }

    /// Whether a failed fsync has stopped this partition (see [`Partition::flush`]).
    pub fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    fn check_not_failed(&self) -> Result<(), LogError> {
        if self.is_failed() {
            return Err(LogError::PartitionFailed {
                topic: self.topic.clone(),
                partition: self.id,
            });
        }
        Ok(())
    }

    /// Makes everything appended before the call durable and advances the
    /// high watermark; returns once it is (waiting for flushes already
    /// running). Blocking. Fails with [`LogError::PartitionFailed`] once an
    /// fsync has failed.
    pub fn flush(&self) -> Result<(), LogError> {
        let target = self.flush_once()?;
        let mut inner = self.inner.lock();
        loop {
            self.check_not_failed()?;
            // Durable, and no flush still writing the index files of
            // segments sealed before the call.
            if inner.flushes.durable_offset >= target && inner.sealing == 0 {
                return Ok(());
            }
            // Otherwise a flush is running (the one this call started, or,
            // when there was nothing new to sync, an earlier one): it
            // signals when it finishes.
            debug_assert!(!inner.flushes.pending.is_empty() || inner.sealing > 0);
            self.flushed.wait(&mut inner);
        }
    }

    /// One flush as the flusher threads run it: syncs what was appended
    /// since the last flush started and publishes it in start order, without
    /// waiting for earlier flushes still running. Returns the log end offset
    /// that is durable once every flush started so far has finished.
    pub(crate) fn flush_once(&self) -> Result<i64, LogError> {
        self.flush_queued.store(false, Ordering::Release);
        // A failed partition has data that will never be durable: say so.
        self.check_not_failed()?;
        let (ticket, seals, active, target) = {
            let mut inner = self.inner.lock();
            let target = inner.log_end_offset;
            if !inner.dirty {
                return Ok(target);
            }
            inner.dirty = false;
            let seals: Vec<PendingSeal> = inner.pending_seals.drain(..).collect();
            let active = inner.segments.last().cloned();
            inner.sealing += usize::from(!seals.is_empty());
            (inner.flushes.start(target), seals, active, target)
        };
        // fsync first. A failed fsync is not retried: the kernel may have
        // dropped the dirty pages, so a later "successful" fsync would prove
        // nothing. The partition stops taking writes, and its ticket is never
        // finished, so no later flush moves the high watermark either; what
        // is below it stays durable and readable.
        let synced = (|| {
            for seg in seals.iter().map(|s| &s.segment).chain(active.iter()) {
                let started = std::time::Instant::now();
                seg.sync()?;
                self.fsync_latency.record(started.elapsed());
            }
            Ok::<(), LogError>(())
        })();
        if let Err(e) = synced {
            self.failed.store(true, Ordering::Release);
            // Wake producers and flush() callers waiting for durability: it
            // will not come.
            self.hw_tx.send_modify(|_| {});
            let mut inner = self.inner.lock();
            inner.sealing -= usize::from(!seals.is_empty());
            self.flushed.notify_all();
            tracing::error!(topic = %self.topic, partition = self.id, error = %e, "fsync failed: the partition refuses writes until the broker restarts and recovers it");
            return Err(e);
        }
        {
            let mut inner = self.inner.lock();
            if let Some(durable) = inner.flushes.finish(ticket) {
                if self.flush_policy == FlushPolicy::Fsync && durable > inner.high_watermark {
                    inner.high_watermark = durable;
                    self.publish_hw(durable);
                }
            }
            self.flushed.notify_all();
        }
        // Sealed segments' index files and producer snapshots: written
        // atomically once their own segment is synced; on failure they are
        // retried by the next flush.
        let sealed = !seals.is_empty();
        let mut unfinished = Vec::new();
        let mut first_error = None;
        for seal in seals {
            let done = (|| {
                seal.segment.write_index()?;
                seal.segment.index_persisted(&self.index_cache);
                let path = self.dir.join(snapshot_name(seal.snapshot_offset));
                frame::write_atomic(&path, &seal.producers.encode(seal.snapshot_offset))
                    .map_err(|e| LogError::io(&path, e))?;
                self.prune_snapshots(seal.snapshot_offset);
                Ok::<(), LogError>(())
            })();
            if let Err(e) = done {
                first_error.get_or_insert(e);
                unfinished.push(seal);
            }
        }
        if sealed || first_error.is_some() {
            let mut inner = self.inner.lock();
            inner.sealing -= usize::from(sealed);
            if first_error.is_some() {
                inner.dirty = true;
                for seal in unfinished.into_iter().rev() {
                    inner.pending_seals.push_front(seal);
                }
            }
            self.flushed.notify_all();
        }
        match first_error {
            None => Ok(target),
            Some(e) => Err(e),
        }
    }

    fn prune_snapshots(&self, newest: i64) {
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return;
        };
        let mut offs: Vec<i64> = rd
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                segment::parse_file_name(&e.file_name().to_string_lossy(), SNAPSHOT_SUFFIX)
            })
            .filter(|&o| o <= newest)
            .collect();
        offs.sort_unstable();
        // Keep the two newest.
        for o in offs.iter().rev().skip(2) {
            let _ = fs::remove_file(self.dir.join(snapshot_name(*o)));
        }
    }

    /// Waits until the high watermark reaches `end_offset` (the produce is
    /// durable), or the timeout passes.
    pub async fn wait_durable(
        &self,
        end_offset: i64,
        timeout: std::time::Duration,
    ) -> Result<(), LogError> {
        let mut rx = self.hw_tx.subscribe();
        let res = tokio::time::timeout(
            timeout,
            rx.wait_for(|hw| *hw >= end_offset || self.is_failed()),
        )
        .await
        .map(|r| r.map(|hw| *hw >= end_offset));
        match res {
            Ok(Ok(true)) => Ok(()),
            Ok(Ok(false)) => self.check_not_failed(),
            Ok(Err(_)) => Err(LogError::ShuttingDown),
            Err(_) => Err(LogError::Timeout),
        }
    }

    /// Reads whole batches starting at the batch that contains `offset`, up
    /// to `max_bytes` (at least one whole batch if `allow_oversize`), never
    /// past the high watermark. Blocking I/O.
    pub fn read(
        &self,
        offset: i64,
        max_bytes: usize,
        allow_oversize: bool,
    ) -> Result<ReadResult, LogError> {
        let config = self.config();
        let max_batch = Self::max_batch(&config);
        let (seg, hw, start, limit) = {
            let inner = self.inner.lock();
            let start = inner.segments[0].base_offset;
            let hw = inner.high_watermark;
            if offset < start || offset > hw {
                return Err(LogError::OffsetOutOfRange {
                    offset,
                    start,
                    end: hw,
                });
            }
            let i = inner.segments.partition_point(|s| s.base_offset <= offset);
            let seg = inner.segments[i.saturating_sub(1)].clone();
            let limit = seg.size();
            (seg, hw, start, limit)
        };
        let empty = ReadResult {
            records: Bytes::new(),
            high_watermark: hw,
            log_start_offset: start,
        };
        if offset == hw {
            return Ok(empty);
        }
        self.ensure_index(&seg, &config)?;
        let Some((pos, first)) = seg.find(offset, limit, max_batch)? else {
            return Ok(empty);
        };
        if first.base_offset >= hw {
            return Ok(empty);
        }
        let want = ((limit - pos) as usize).min(max_bytes);
        let mut buf = seg.read_at(
            pos,
            want.max(if allow_oversize {
                first.size.min((limit - pos) as usize)
            } else {
                0
            }),
        )?;
        let mut end = 0;
        for (at, h) in batch::BatchIter::new(&buf, max_batch, false) {
            if h.base_offset >= hw || (at + h.size > max_bytes && at > 0) {
                break;
            }
            end = at + h.size;
        }
        buf.truncate(end);
        Ok(ReadResult {
            records: Bytes::from(buf),
            high_watermark: hw,
            log_start_offset: start,
        })
    }

    /// The earliest offset whose record timestamp is >= `ts`, with that
    /// timestamp; None if every record is older. Blocking I/O.
    pub fn offset_for_timestamp(&self, ts: i64) -> Result<Option<(i64, i64)>, LogError> {
        let config = self.config();
        let max_batch = Self::max_batch(&config);
        let (segments, hw) = {
            let inner = self.inner.lock();
            (inner.segments.clone(), inner.high_watermark)
        };
        for seg in segments {
            if seg.index.read().max_timestamp < ts {
                continue;
            }
            self.ensure_index(&seg, &config)?;
            let (max_ts, start_off, limit) = {
                let idx = seg.index.read();
                (
                    idx.max_timestamp,
                    idx.lookup_time(seg.base_offset, ts),
                    idx.size,
                )
            };
            if max_ts < ts {
                continue;
            }
            let Some((mut pos, _)) = seg.find(start_off, limit, max_batch)? else {
                continue;
            };
            while pos < limit {
                let Some(h) = seg.header_at(pos, max_batch)? else {
                    break;
                };
                if h.base_offset >= hw {
                    return Ok(None);
                }
                if h.max_timestamp >= ts {
                    let bytes = seg.read_at(pos, h.size)?;
                    let found =
                        crate::records::first_at_or_after(&bytes, max_batch, ts).map_err(|e| {
                            LogError::Corrupt {
                                path: seg.path.clone(),
                                position: pos,
                                reason: e.to_string(),
                            }
                        })?;
                    if found.is_some() {
                        return Ok(found);
                    }
                }
                pos += h.size as u64;
            }
        }
        Ok(None)
    }

    /// The parts of offsets `[from, to)` that may hold a record whose key
    /// hashes ([`crate::keys::key_hash`]) to one of `hashes`: one range per
    /// segment whose key set has one of them, adjacent ranges merged.
    /// Builds or extends the segments' key sets as needed (reading their
    /// committed batches once); a segment whose set cannot be built is kept
    /// whole, as are offsets below the local start, so no matching record
    /// is ever left out. Blocking I/O.
    pub fn key_ranges(&self, hashes: &[u64], from: i64, to: i64) -> Vec<(i64, i64)> {
        let (segments, hw) = {
            let inner = self.inner.lock();
            (inner.segments.clone(), inner.high_watermark)
        };
        let mut out: Vec<(i64, i64)> = Vec::new();
        // Offsets that left the local log since the caller planned (retention
        // after archiving) are kept whole: the caller reads them elsewhere.
        let local_start = segments.first().map_or(hw, |s| s.base_offset);
        if from < local_start.min(to) {
            out.push((from, local_start.min(to)));
        }
        for (i, seg) in segments.iter().enumerate() {
            let seg_end = segments.get(i + 1).map_or(hw, |s| s.base_offset.min(hw));
            let (lo, hi) = (from.max(seg.base_offset), to.min(seg_end));
            if lo >= hi {
                continue;
            }
            let (may_hold, grew) = {
                let mut slot = seg.keys.lock();
                let set = slot.get_or_insert_with(|| KeySet::new(seg.base_offset));
                let grew = set.next_offset < hi;
                if grew {
                    match self.key_hashes(seg, set.next_offset, seg_end) {
                        Ok((added, next)) => set.extend(added, next),
                        Err(e) => tracing::warn!(
                            topic = %self.topic, partition = self.id, segment = seg.base_offset,
                            error = %e, "cannot index the segment's keys; reading it whole"
                        ),
                    }
                }
                seg.key_bytes.store(set.bytes(), Ordering::Release);
                // Offsets the set does not cover yet may hold anything.
                let may_hold = set.next_offset < hi || hashes.iter().any(|h| set.contains(*h));
                (may_hold, grew)
            };
            if grew {
                self.key_cache.admit(seg);
            }
            if may_hold {
                match out.last_mut() {
                    Some(last) if last.1 == lo => last.1 = hi,
                    _ => out.push((lo, hi)),
                }
            }
        }
        out
    }

    /// Key hashes of the committed records of `seg` from offset `from` (a
    /// batch boundary) to `end` (its next segment's base or the high
    /// watermark), and the offset they reach.
    fn key_hashes(&self, seg: &Segment, from: i64, end: i64) -> Result<(Vec<u64>, i64), LogError> {
        let corrupt = |h: &BatchHeader, e: crate::records::RecordError| LogError::Corrupt {
            path: seg.path.clone(),
            position: 0,
            reason: format!("batch at offset {}: {e}", h.base_offset),
        };
        let mut hashes = Vec::new();
        let mut pos = from;
        while pos < end {
            let chunk = self.read(pos, 1 << 20, true)?.records;
            let before = pos;
            for (at, h) in batch::BatchIter::new(&chunk, chunk.len(), false) {
                if h.base_offset >= end {
                    break;
                }
                if !h.is_control() {
                    let raw = &chunk[at..at + h.size];
                    let payload = crate::records::payload(raw, &h).map_err(|e| corrupt(&h, e))?;
                    let recs = crate::records::decode(&h, &payload).map_err(|e| corrupt(&h, e))?;
                    hashes.extend(recs.iter().filter_map(|r| r.key.map(key_hash)));
                }
                pos = h.next_offset();
            }
            if pos <= before {
                break;
            }
        }
        Ok((hashes, pos))
    }

    /// The largest timestamp in the partition and its offset (ListOffsets -3).
    pub fn max_timestamp(&self) -> Option<(i64, i64)> {
        let inner = self.inner.lock();
        inner
            .segments
            .iter()
            .map(|s| {
                let i = s.index.read();
                (i.max_timestamp, i.max_timestamp_offset)
            })
            .filter(|(t, _)| *t >= 0)
            .max_by_key(|(t, _)| *t)
            .map(|(t, o)| (o, t))
    }

    /// Deletes whole sealed segments beyond retention.ms / retention.bytes
    /// and returns how many were deleted. Rolls an expired active segment
    /// first so that it can go too. Blocking I/O.
    ///
    /// A tiered partition keeps the local tier within `local.retention.*`
    /// instead, and deletes a segment only once the archive's committed
    /// manifest covers it (upload, then manifest, then delete: see
    /// sediment-tiering); the archive's own retention is the tierer's.
    pub fn enforce_retention(self: &Arc<Self>, now_ms: i64) -> Result<usize, LogError> {
        let config = self.config();
        let tiered = self.tiered();
        let (retention_ms, retention_bytes) = if tiered {
            config.local_limits()
        } else {
            (config.retention_ms, config.retention_bytes)
        };
        let archived_end = if tiered {
            self.archive().map_or(i64::MIN, |a| a.end_offset)
        } else {
            i64::MAX
        };
        if retention_ms >= 0 {
            let active_expired = {
                let inner = self.inner.lock();
                let a = inner.segments.last().map(|s| {
                    let i = s.index.read();
                    i.size > 0 && i.max_timestamp < now_ms - retention_ms
                });
                a.unwrap_or(false)
            };
            if active_expired {
                self.force_roll(now_ms)?;
                self.flush()?;
            }
        }
        let mut doomed = Vec::new();
        {
            let mut inner = self.inner.lock();
            let pending: Vec<i64> = inner
                .pending_seals
                .iter()
                .map(|p| p.segment.base_offset)
                .collect();
            let mut total: u64 = inner.segments.iter().map(|s| s.size()).sum();
            while inner.segments.len() > 1 {
                let first = &inner.segments[0];
                if pending.contains(&first.base_offset)
                    || first.next_offset() > inner.high_watermark
                    || first.next_offset() > archived_end
                {
                    break;
                }
                let (size, max_ts) = {
                    let i = first.index.read();
                    (i.size, i.max_timestamp)
                };
                let by_time = retention_ms >= 0 && max_ts < now_ms - retention_ms;
                let by_size = retention_bytes >= 0 && total - size >= retention_bytes as u64;
                if !(by_time || by_size) {
                    break;
                }
                total -= size;
                doomed.push(inner.segments.remove(0));
            }
        }
        for seg in &doomed {
            tracing::info!(topic = %self.topic, partition = self.id, base_offset = seg.base_offset, "retention deleted segment");
            for path in [seg.path.clone(), seg.index_path()] {
                if let Err(e) = fs::remove_file(&path) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        return Err(LogError::io(&path, e));
                    }
                }
            }
        }
        Ok(doomed.len())
    }

    /// Rolls the active segment when it is older than segment.ms.
    pub fn roll_if_old(self: &Arc<Self>, now_ms: i64) -> Result<(), LogError> {
        let config = self.config();
        let old = {
            let inner = self.inner.lock();
            inner
                .segments
                .last()
                .map(|s| s.size() > 0 && now_ms - s.created_ms >= config.segment_ms)
                .unwrap_or(false)
        };
        if old {
            self.force_roll(now_ms)?;
        }
        Ok(())
    }

    /// Clean stop: everything synced, the active segment's index and a
    /// producer snapshot written, so the next open skips recovery.
    pub fn close(&self) -> Result<(), LogError> {
        // A failed partition is not stopped cleanly: the next start must
        // recover it.
        self.check_not_failed()?;
        {
            self.inner.lock().dirty = true;
        }
        self.flush()?;
        let (active, producers, leo) = {
            let inner = self.inner.lock();
            (
                inner.segments.last().cloned(),
                inner.producers.clone(),
                inner.log_end_offset,
            )
        };
        if let Some(active) = active {
            active.write_index()?;
        }
        let path = self.dir.join(snapshot_name(leo));
        frame::write_atomic(&path, &producers.encode(leo)).map_err(|e| LogError::io(&path, e))?;
        self.prune_snapshots(leo);
        Ok(())
    }

    /// Segment summaries (base offset, next offset, bytes, max timestamp).
    pub fn segments(&self) -> Vec<SegmentInfo> {
        let inner = self.inner.lock();
        inner.segments.iter().map(|s| s.info()).collect()
    }

    /// Sealed segments whose every byte is durable (fsynced, below the high
    /// watermark), oldest first: what the tierer may archive. The active
    /// segment is never included.
    pub fn sealed_segments(&self) -> Vec<SegmentInfo> {
        let inner = self.inner.lock();
        let sealed = inner.segments.len().saturating_sub(1);
        inner.segments[..sealed]
            .iter()
            .filter(|s| {
                !inner
                    .pending_seals
                    .iter()
                    .any(|p| p.segment.base_offset == s.base_offset)
            })
            .map(|s| s.info())
            .filter(|i| i.next_offset <= inner.high_watermark)
            .collect()
    }
}

#[derive(Debug, Clone)]
pub struct SegmentInfo {
    pub base_offset: i64,
    pub next_offset: i64,
    pub size_bytes: u64,
    pub max_timestamp: i64,
    pub path: PathBuf,
}
