//! The durable committed-offsets store: recovery, the writer thread (group
//! commit + fsync), and snapshot compaction.
//!
//! Crash-consistency contract:
//! - A commit is visible to readers ([`OffsetStore::read`]) and acknowledged
//!   only after its frames were written and `sync_data` returned.
//! - Frames are only ever appended; a crash can leave at most a torn tail of
//!   frames whose fsync never completed, and recovery truncates it.
//! - Compaction writes a complete snapshot to `offsets.log.tmp`, fsyncs it,
//!   renames it over `offsets.log` and fsyncs the directory. A crash at any
//!   point leaves either the old log or the new snapshot, never a mix;
//!   a leftover `.tmp` is deleted on open.
//! - A corrupt frame followed by further data is not a torn write: replay
//!   stops there, the file is preserved as `offsets.log.corrupt-<ms>` (hard
//!   link), and the log is rewritten from what was replayed (or, with
//!   `fail_on_corruption`, opening fails).

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use tokio::sync::oneshot;
use tracing::{error, info, warn};

use super::super::GroupError;
use super::codec::{self, Decoded, EntryRecord, Record};

/// File name of the offsets log inside the coordinator's directory.
pub(crate) const LOG_FILE: &str = "offsets.log";
const TMP_FILE: &str = "offsets.log.tmp";
/// Target payload size when splitting large commits and snapshots.
const TARGET_PAYLOAD_LEN: usize = 1024 * 1024;
/// Most write requests folded into one fsync.
const MAX_BATCH: usize = 4096;

/// A committed offset as held in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OffsetValue {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_timestamp_ms: i64,
}

/// group id -> (topic, partition) -> committed offset.
pub(crate) type OffsetsMap = HashMap<String, BTreeMap<(String, i32), OffsetValue>>;

/// What recovery found when the store was opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecoveryReport {
    /// Frames replayed successfully.
    pub records_replayed: u64,
    /// Bytes of torn tail removed.
    pub bytes_truncated: u64,
    /// Set when replay stopped at a corrupt frame in the middle of the log.
    pub corruption: Option<CorruptionReport>,
    /// Whether the log was rewritten as a snapshot during open.
    pub compacted: bool,
}

/// Where replay stopped, and where the damaged file was preserved.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CorruptionReport {
    /// Byte offset of the first frame that failed validation.
    pub offset: u64,
    /// Why it failed.
    pub reason: String,
    /// The original file, kept for inspection.
    pub quarantined_to: PathBuf,
}

/// Why an append was not made durable.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub(crate) enum StoreError {
    #[error("the offsets store is shut down")]
    Closed,
    #[error("the offsets log failed earlier and refuses writes until restart: {0}")]
    Failed(String),
    #[error("offsets record cannot be encoded: {0}")]
    Encode(String),
}

type Done = oneshot::Sender<Result<(), StoreError>>;

struct WriteRequest {
    frames: Vec<u8>,
    records: Vec<Record>,
    done: Done,
}

/// Handle to the offsets store. Reads go to the in-memory map; writes go to
/// the writer thread.
pub(crate) struct OffsetStore {
    state: Arc<Mutex<OffsetsMap>>,
    tx: Mutex<Option<mpsc::Sender<WriteRequest>>>,
}

/// Returned by [`OffsetStore::open`] alongside the store.
pub(crate) struct Opened {
    pub store: OffsetStore,
    pub report: RecoveryReport,
    /// Fires when the writer thread has drained its queue and exited.
    pub writer_exited: oneshot::Receiver<()>,
}

/// Settings the store needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StoreConfig {
    pub compact_threshold_bytes: u64,
    pub fail_on_corruption: bool,
}

impl OffsetStore {
    /// Recovers the log in `dir` and starts the writer thread. Blocking.
    pub(crate) fn open(dir: &Path, cfg: StoreConfig) -> Result<Opened, GroupError> {
        let (file, len, map, report, snapshot_len) = recover(dir, cfg)?;
        let state = Arc::new(Mutex::new(map));
        let (tx, rx) = mpsc::channel();
        let (exit_tx, exit_rx) = oneshot::channel();
        let writer = Writer {
            dir: dir.to_path_buf(),
            file,
            len,
            last_snapshot_len: snapshot_len,
            state: Arc::clone(&state),
            cfg,
            failed: None,
        };
        std::thread::Builder::new()
            .name("sediment-offsets-writer".into())
            .spawn(move || {
                writer.run(rx);
                let _ = exit_tx.send(());
            })
            .map_err(|source| GroupError::Io {
                path: dir.to_path_buf(),
                op: "spawn the offsets writer thread",
                source,
            })?;
        Ok(Opened {
            store: OffsetStore {
                state,
                tx: Mutex::new(Some(tx)),
            },
            report,
            writer_exited: exit_rx,
        })
    }

    /// Queues `records` to be appended; the receiver resolves after fsync.
    pub(crate) fn append(&self, records: Vec<Record>) -> oneshot::Receiver<Result<(), StoreError>> {
        let (done, rx) = oneshot::channel();
        let mut frames = Vec::new();
        for r in &records {
            if let Err(e) = codec::encode_frame(r, &mut frames) {
                let _ = done.send(Err(StoreError::Encode(e.to_string())));
                return rx;
            }
        }
        let req = WriteRequest {
            frames,
            records,
            done,
        };
        let guard = self.tx.lock();
        match guard.as_ref() {
            Some(tx) => {
                if let Err(mpsc::SendError(req)) = tx.send(req) {
                    let _ = req.done.send(Err(StoreError::Closed));
                }
            }
            None => {
                let _ = req.done.send(Err(StoreError::Closed));
            }
        }
        rx
    }

    /// Stops accepting writes; the writer thread drains and exits.
    pub(crate) fn close(&self) {
        self.tx.lock().take();
    }

    /// Runs `f` with the committed offsets (short critical section).
    pub(crate) fn read<R>(&self, f: impl FnOnce(&OffsetsMap) -> R) -> R {
        f(&self.state.lock())
    }
}

/// Splits a group's entries into commit records of bounded payload size.
pub(crate) fn commit_records(group: &str, entries: Vec<EntryRecord>) -> Vec<Record> {
    let mut out = Vec::new();
    let header = codec::commit_header_len(group);
    let mut chunk = Vec::new();
    let mut size = header;
    for e in entries {
        let n = codec::entry_len(&e);
        if !chunk.is_empty() && size + n > TARGET_PAYLOAD_LEN {
            out.push(Record::Commit {
                group: group.to_string(),
                entries: std::mem::take(&mut chunk),
            });
            size = header;
        }
        size += n;
        chunk.push(e);
    }
    if !chunk.is_empty() {
        out.push(Record::Commit {
            group: group.to_string(),
            entries: chunk,
        });
    }
    out
}

pub(crate) fn apply(map: &mut OffsetsMap, record: Record) {
    match record {
        Record::Commit { group, entries } => {
            let g = map.entry(group).or_default();
            for e in entries {
                g.insert(
                    (e.topic, e.partition),
                    OffsetValue {
                        offset: e.offset,
                        leader_epoch: e.leader_epoch,
                        metadata: e.metadata,
                        commit_timestamp_ms: e.commit_timestamp_ms,
                    },
                );
            }
        }
        Record::Tombstone { group } => {
            map.remove(&group);
        }
    }
}

fn io_err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(std::io::Error) -> GroupError + 'a {
    move |source| GroupError::Io {
        path: path.to_path_buf(),
        op,
        source,
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

type Recovered = (File, u64, OffsetsMap, RecoveryReport, u64);

fn recover(dir: &Path, cfg: StoreConfig) -> Result<Recovered, GroupError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir, "create the offsets directory"))?;
    let path = dir.join(LOG_FILE);
    let tmp = dir.join(TMP_FILE);
    match std::fs::remove_file(&tmp) {
        Ok(()) => info!(path = %tmp.display(), "removed an unfinished offsets snapshot"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(&tmp, "remove a stale snapshot")(e)),
    }
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(&path)
        .map_err(io_err(&path, "open the offsets log"))?;
    let mut buf = Vec::new();
    file.read_to_end(&mut buf)
        .map_err(io_err(&path, "read the offsets log"))?;

    let mut map = OffsetsMap::new();
    let mut report = RecoveryReport::default();
    let mut pos = 0usize;
    let mut stop: Option<(usize, String, bool)> = None; // (offset, reason, is_tail)
    while pos < buf.len() {
        let rest = &buf[pos..];
        match codec::decode_frame(rest) {
            Decoded::Record { record, len } => {
                apply(&mut map, record);
                report.records_replayed += 1;
                pos += len;
            }
            Decoded::Incomplete => {
                stop = Some((pos, "incomplete frame".into(), true));
                break;
            }
            Decoded::Invalid { reason, frame_len } => {
                let all_zero = rest.iter().all(|b| *b == 0);
                let reaches_end = frame_len.is_some_and(|n| n >= rest.len());
                stop = Some((pos, reason, all_zero || reaches_end));
                break;
            }
            Decoded::UnsupportedVersion { version } => {
                return Err(GroupError::UnsupportedFormatVersion {
                    path,
                    offset: pos as u64,
                    version,
                });
            }
        }
    }

    let mut len = buf.len() as u64;
    let mut force_compact = false;
    match stop {
        None => {}
        Some((offset, reason, true)) => {
            let dropped = buf.len() - offset;
            warn!(
                path = %path.display(),
                offset,
                bytes = dropped,
                %reason,
                "truncating torn tail of the offsets log (writes that were never acknowledged)"
            );
            file.set_len(offset as u64)
                .map_err(io_err(&path, "truncate the offsets log"))?;
            file.sync_all()
                .map_err(io_err(&path, "fsync the truncated offsets log"))?;
            report.bytes_truncated = dropped as u64;
            len = offset as u64;
        }
        Some((offset, reason, false)) => {
            error!(
                path = %path.display(),
                offset,
                %reason,
                "offsets log is corrupt in the middle; replay stopped at this frame. \
                 Offsets committed after it are lost from this broker's view"
            );
            if cfg.fail_on_corruption {
                return Err(GroupError::Corrupt {
                    path,
                    offset: offset as u64,
                    reason,
                });
            }
            let quarantine = dir.join(format!("{LOG_FILE}.corrupt-{}", now_ms()));
            if std::fs::hard_link(&path, &quarantine).is_err() {
                std::fs::copy(&path, &quarantine)
                    .map_err(io_err(&quarantine, "preserve the corrupt offsets log"))?;
            }
            error!(
                quarantined_to = %quarantine.display(),
                "the corrupt offsets log was preserved; the log is rewritten from the replayed offsets"
            );
            report.corruption = Some(CorruptionReport {
                offset: offset as u64,
                reason,
                quarantined_to: quarantine,
            });
            force_compact = true;
        }
    }

    let mut snapshot_len = len;
    if force_compact || (len >= cfg.compact_threshold_bytes && len >= 2 * encoded_len(&map)) {
        let (f, n) = write_snapshot(dir, &map)?;
        file = f;
        len = n;
        snapshot_len = n;
        report.compacted = true;
    }
    info!(
        path = %path.display(),
        records = report.records_replayed,
        groups = map.len(),
        bytes = len,
        "offsets log recovered"
    );
    Ok((file, len, map, report, snapshot_len))
}

fn encoded_len(map: &OffsetsMap) -> u64 {
    map.iter()
        .map(|(g, parts)| {
            let entries: usize = parts.keys().map(|(t, _)| t.len()).sum::<usize>()
                + parts.values().map(|v| v.metadata.len()).sum::<usize>();
            (codec::HEADER_LEN + codec::commit_header_len(g) + entries + parts.len() * 30) as u64
        })
        .sum()
}

fn snapshot_records(map: &OffsetsMap) -> Vec<Record> {
    let mut groups: Vec<_> = map.iter().collect();
    groups.sort_by(|a, b| a.0.cmp(b.0));
    let mut out = Vec::new();
    for (group, parts) in groups {
        let entries = parts
            .iter()
            .map(|((topic, partition), v)| EntryRecord {
                topic: topic.clone(),
                partition: *partition,
                offset: v.offset,
                leader_epoch: v.leader_epoch,
                commit_timestamp_ms: v.commit_timestamp_ms,
                metadata: v.metadata.clone(),
            })
            .collect();
        out.extend(commit_records(group, entries));
    }
    out
}

/// Writes `map` as a fresh log: tmp file, fsync, rename, fsync dir.
/// Returns the new log opened for appending, and its length.
fn write_snapshot(dir: &Path, map: &OffsetsMap) -> Result<(File, u64), GroupError> {
    let path = dir.join(LOG_FILE);
    let tmp = dir.join(TMP_FILE);
    let mut bytes = Vec::new();
    for r in snapshot_records(map) {
        codec::encode_frame(&r, &mut bytes).map_err(|e| GroupError::Corrupt {
            path: path.clone(),
            offset: 0,
            reason: format!("snapshot record cannot be encoded: {e}"),
        })?;
    }
    let mut f = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .truncate(false)
        .open(&tmp)
        .map_err(io_err(&tmp, "create the offsets snapshot"))?;
    f.set_len(0)
        .map_err(io_err(&tmp, "reset the offsets snapshot"))?;
    f.write_all(&bytes)
        .map_err(io_err(&tmp, "write the offsets snapshot"))?;
    f.sync_all()
        .map_err(io_err(&tmp, "fsync the offsets snapshot"))?;
    std::fs::rename(&tmp, &path).map_err(io_err(&path, "rename the offsets snapshot"))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir, "fsync the offsets directory"))?;
    Ok((f, bytes.len() as u64))
}

struct Writer {
    dir: PathBuf,
    file: File,
    len: u64,
    last_snapshot_len: u64,
    state: Arc<Mutex<OffsetsMap>>,
    cfg: StoreConfig,
    failed: Option<String>,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<WriteRequest>) {
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            self.write_batch(batch);
            self.maybe_compact();
        }
    }

    fn write_batch(&mut self, batch: Vec<WriteRequest>) {
        if let Some(reason) = &self.failed {
            for r in batch {
                let _ = r.done.send(Err(StoreError::Failed(reason.clone())));
            }
            return;
        }
        let total: usize = batch.iter().map(|r| r.frames.len()).sum();
        let mut buf = Vec::with_capacity(total);
        for r in &batch {
            buf.extend_from_slice(&r.frames);
        }
        let result = self
            .file
            .write_all(&buf)
            .and_then(|()| self.file.sync_data());
        match result {
            Ok(()) => {
                self.len += buf.len() as u64;
                let mut dones = Vec::with_capacity(batch.len());
                {
                    let mut map = self.state.lock();
                    for r in batch {
                        for record in r.records {
                            apply(&mut map, record);
                        }
                        dones.push(r.done);
                    }
                }
                for d in dones {
                    let _ = d.send(Ok(()));
                }
            }
            Err(e) => {
                // After a failed write or fsync the file's contents are
                // unknown (the page cache may have dropped dirty pages), so
                // acknowledge nothing further until a restart re-reads it.
                let reason = format!("{}: {e}", self.dir.join(LOG_FILE).display());
                error!(%reason, "offsets log write failed; refusing further commits until restart");
                for r in batch {
                    let _ = r.done.send(Err(StoreError::Failed(reason.clone())));
                }
                self.failed = Some(reason);
            }
        }
    }

    fn maybe_compact(&mut self) {
        if self.failed.is_some()
            || self.len < self.cfg.compact_threshold_bytes
            || self.len < 2 * self.last_snapshot_len
        {
            return;
        }
        let snapshot = self.state.lock().clone();
        match write_snapshot(&self.dir, &snapshot) {
            Ok((file, len)) => {
                info!(before = self.len, after = len, "compacted the offsets log");
                self.file = file;
                self.len = len;
                self.last_snapshot_len = len.max(1);
            }
            Err(e) => {
                // The old log is intact (rename is the commit point); keep
                // appending to it and retry after it has grown further.
                warn!(error = %e, "offsets log compaction failed; will retry later");
                self.last_snapshot_len = self.len;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn cfg() -> StoreConfig {
        StoreConfig {
            compact_threshold_bytes: u64::MAX,
            fail_on_corruption: false,
        }
    }

    fn entry(topic: &str, partition: i32, offset: i64) -> EntryRecord {
        EntryRecord {
            topic: topic.into(),
            partition,
            offset,
            leader_epoch: -1,
            commit_timestamp_ms: 1,
            metadata: String::new(),
        }
    }

    async fn commit(store: &OffsetStore, group: &str, entries: Vec<EntryRecord>) {
        store
            .append(commit_records(group, entries))
            .await
            .unwrap()
            .unwrap();
    }

    async fn reopen(dir: &Path, cfg: StoreConfig) -> Opened {
        let dir = dir.to_path_buf();
        tokio::task::spawn_blocking(move || OffsetStore::open(&dir, cfg))
            .await
            .unwrap()
            .unwrap()
    }

    async fn close(opened: Opened) {
        opened.store.close();
        opened.writer_exited.await.unwrap();
    }

    fn offset_of(store: &OffsetStore, g: &str, t: &str, p: i32) -> Option<i64> {
        store.read(|m| {
            m.get(g)
                .and_then(|parts| parts.get(&(t.to_string(), p)))
                .map(|v| v.offset)
        })
    }

    #[tokio::test]
    async fn compaction_keeps_latest_offsets_and_shrinks_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let c = StoreConfig {
            compact_threshold_bytes: 4096,
            fail_on_corruption: false,
        };
        let opened = reopen(dir.path(), c).await;
        for i in 0..500 {
            commit(&opened.store, "g", vec![entry("t", i % 3, i64::from(i))]).await;
        }
        close(opened).await;
        let size = std::fs::metadata(dir.path().join(LOG_FILE)).unwrap().len();
        assert!(size < 4096 * 2, "log was not compacted: {size} bytes");
        let opened = reopen(dir.path(), cfg()).await;
        assert_eq!(offset_of(&opened.store, "g", "t", 0), Some(498));
        assert_eq!(offset_of(&opened.store, "g", "t", 1), Some(499));
        assert_eq!(offset_of(&opened.store, "g", "t", 2), Some(497));
        close(opened).await;
    }

    #[tokio::test]
    async fn tombstone_forgets_the_group_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let opened = reopen(dir.path(), cfg()).await;
        commit(&opened.store, "a", vec![entry("t", 0, 5)]).await;
        commit(&opened.store, "b", vec![entry("t", 0, 6)]).await;
        opened
            .store
            .append(vec![Record::Tombstone { group: "a".into() }])
            .await
            .unwrap()
            .unwrap();
        close(opened).await;
        let opened = reopen(dir.path(), cfg()).await;
        assert_eq!(offset_of(&opened.store, "a", "t", 0), None);
        assert_eq!(offset_of(&opened.store, "b", "t", 0), Some(6));
        close(opened).await;
    }

    #[tokio::test]
    async fn torn_tail_is_truncated_at_every_byte_of_the_last_record() {
        let dir = tempfile::tempdir().unwrap();
        let opened = reopen(dir.path(), cfg()).await;
        commit(&opened.store, "g", vec![entry("t", 0, 10)]).await;
        let good_len = std::fs::metadata(dir.path().join(LOG_FILE)).unwrap().len();
        commit(
            &opened.store,
            "g",
            vec![entry("t", 0, 11), entry("u", 1, 3)],
        )
        .await;
        close(opened).await;
        let full = std::fs::read(dir.path().join(LOG_FILE)).unwrap();
        let good_len = usize::try_from(good_len).unwrap();
        for cut in good_len..full.len() {
            let case = tempfile::tempdir().unwrap();
            std::fs::write(case.path().join(LOG_FILE), &full[..cut]).unwrap();
            let opened = reopen(case.path(), cfg()).await;
            assert_eq!(
                opened.report.bytes_truncated,
                (cut - good_len) as u64,
                "cut at {cut}"
            );
            assert!(opened.report.corruption.is_none());
            assert_eq!(
                offset_of(&opened.store, "g", "t", 0),
                Some(10),
                "cut at {cut}"
            );
            assert_eq!(offset_of(&opened.store, "g", "u", 1), None);
            close(opened).await;
            let after = std::fs::metadata(case.path().join(LOG_FILE)).unwrap().len();
            assert_eq!(
                after, good_len as u64,
                "file not truncated for cut at {cut}"
            );
        }
    }

    #[tokio::test]
    async fn corrupt_crc_in_last_record_is_treated_as_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let opened = reopen(dir.path(), cfg()).await;
        commit(&opened.store, "g", vec![entry("t", 0, 1)]).await;
        commit(&opened.store, "g", vec![entry("t", 0, 2)]).await;
        close(opened).await;
        let path = dir.path().join(LOG_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let opened = reopen(dir.path(), cfg()).await;
        assert!(opened.report.bytes_truncated > 0);
        assert!(opened.report.corruption.is_none());
        assert_eq!(offset_of(&opened.store, "g", "t", 0), Some(1));
        close(opened).await;
    }

    #[tokio::test]
    async fn zero_filled_tail_is_treated_as_torn() {
        let dir = tempfile::tempdir().unwrap();
        let opened = reopen(dir.path(), cfg()).await;
        commit(&opened.store, "g", vec![entry("t", 0, 1)]).await;
        close(opened).await;
        let path = dir.path().join(LOG_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(&[0u8; 4096]);
        std::fs::write(&path, &bytes).unwrap();
        let opened = reopen(dir.path(), cfg()).await;
        assert_eq!(opened.report.bytes_truncated, 4096);
        assert_eq!(offset_of(&opened.store, "g", "t", 0), Some(1));
        close(opened).await;
    }

    async fn log_with_corrupt_middle(dir: &Path) -> Vec<u8> {
        let opened = reopen(dir, cfg()).await;
        commit(&opened.store, "g", vec![entry("t", 0, 1)]).await;
        let first_len = std::fs::metadata(dir.join(LOG_FILE)).unwrap().len() as usize;
        commit(&opened.store, "g", vec![entry("t", 1, 2)]).await;
        commit(&opened.store, "g", vec![entry("t", 2, 3)]).await;
        close(opened).await;
        let path = dir.join(LOG_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        // Flip a payload byte of the second frame.
        bytes[first_len + codec::HEADER_LEN + 3] ^= 0x55;
        std::fs::write(&path, &bytes).unwrap();
        bytes
    }

    #[tokio::test]
    async fn mid_file_corruption_stops_replay_and_preserves_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let corrupt = log_with_corrupt_middle(dir.path()).await;
        let opened = reopen(dir.path(), cfg()).await;
        let report = opened.report.clone();
        let c = report.corruption.expect("corruption must be reported");
        assert!(c.reason.contains("crc32c"), "{}", c.reason);
        assert_eq!(std::fs::read(&c.quarantined_to).unwrap(), corrupt);
        assert!(report.compacted);
        // Records before the corruption survive; the ones after are not replayed.
        assert_eq!(offset_of(&opened.store, "g", "t", 0), Some(1));
        assert_eq!(offset_of(&opened.store, "g", "t", 1), None);
        assert_eq!(offset_of(&opened.store, "g", "t", 2), None);
        // The rewritten log accepts new commits and replays cleanly.
        commit(&opened.store, "g", vec![entry("t", 3, 4)]).await;
        close(opened).await;
        let opened = reopen(dir.path(), cfg()).await;
        assert!(opened.report.corruption.is_none());
        assert_eq!(offset_of(&opened.store, "g", "t", 0), Some(1));
        assert_eq!(offset_of(&opened.store, "g", "t", 3), Some(4));
        close(opened).await;
    }

    #[tokio::test]
    async fn mid_file_corruption_fails_open_when_configured_strict() {
        let dir = tempfile::tempdir().unwrap();
        log_with_corrupt_middle(dir.path()).await;
        let strict = StoreConfig {
            compact_threshold_bytes: u64::MAX,
            fail_on_corruption: true,
        };
        let d = dir.path().to_path_buf();
        let res = tokio::task::spawn_blocking(move || OffsetStore::open(&d, strict))
            .await
            .unwrap();
        assert!(matches!(res, Err(GroupError::Corrupt { .. })));
    }

    #[tokio::test]
    async fn large_commits_are_split_into_bounded_frames() {
        let dir = tempfile::tempdir().unwrap();
        let opened = reopen(dir.path(), cfg()).await;
        let big = "m".repeat(4000);
        let entries: Vec<_> = (0..1000)
            .map(|p| EntryRecord {
                metadata: big.clone(),
                ..entry("t", p, i64::from(p))
            })
            .collect();
        let records = commit_records("g", entries);
        assert!(records.len() > 1);
        opened.store.append(records).await.unwrap().unwrap();
        close(opened).await;
        let opened = reopen(dir.path(), cfg()).await;
        assert_eq!(offset_of(&opened.store, "g", "t", 999), Some(999));
        close(opened).await;
    }
}
