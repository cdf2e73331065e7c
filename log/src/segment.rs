//! One segment: a file of Kafka record batches plus its in-memory index.
//!
//! Files are named by the base offset, zero-padded to 20 digits:
//! `00000000000000000042.log` and `00000000000000000042.index`.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::{Mutex, RwLock};

use crate::batch::{self, BatchHeader, BATCH_HEADER_LEN};
use crate::index::SegmentIndex;
use crate::keys::KeySet;
use crate::{frame, LogError};

pub const LOG_SUFFIX: &str = "log";
pub const INDEX_SUFFIX: &str = "index";

pub fn file_name(base: i64, suffix: &str) -> String {
    format!("{base:020}.{suffix}")
}

/// Parses `<20 digits>.<suffix>` into a base offset.
pub fn parse_file_name(name: &str, suffix: &str) -> Option<i64> {
    let stem = name.strip_suffix(suffix)?.strip_suffix('.')?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

#[derive(Debug)]
pub struct Segment {
    pub base_offset: i64,
    pub path: PathBuf,
    file: File,
    pub index: RwLock<SegmentIndex>,
    /// Wall-clock ms when the segment was created (or opened), for segment.ms.
    pub created_ms: i64,
    /// The index file on disk matches this sealed segment, so the in-memory
    /// entries may be dropped and reloaded.
    index_on_disk: AtomicBool,
    /// The index entries are in memory.
    entries_loaded: AtomicBool,
    /// Hashes of the records' keys, built by the first key lookup that
    /// reaches this segment ([`crate::keys`]); `None` until then or after
    /// the key cache dropped it.
    pub(crate) keys: Mutex<Option<KeySet>>,
    /// Bytes of `keys`, as last accounted to the key cache.
    pub(crate) key_bytes: AtomicUsize,
}

/// Bounds the memory held by sealed segments' index entries: entries are
/// loaded from `<base>.index` on first use and the oldest loaded are dropped
/// when the total passes the budget. Active segments are never evicted.
#[derive(Debug)]
pub struct IndexCache {
    budget: usize,
    /// (bytes accounted, segments in load order with their bytes)
    state: Mutex<(usize, LoadOrder)>,
}

type LoadOrder = VecDeque<(Weak<Segment>, usize)>;

impl IndexCache {
    pub fn new(budget_bytes: usize) -> Self {
        IndexCache {
            budget: budget_bytes,
            state: Mutex::new((0, VecDeque::new())),
        }
    }

    /// Bytes of index entries currently accounted to sealed segments.
    pub fn used_bytes(&self) -> usize {
        self.state.lock().0
    }

    fn admit(&self, seg: &Arc<Segment>) {
        let bytes = seg.index.read().entries_bytes();
        let mut victims = Vec::new();
        {
            let mut st = self.state.lock();
            st.0 += bytes;
            st.1.push_back((Arc::downgrade(seg), bytes));
            while st.0 > self.budget && st.1.len() > 1 {
                let Some((w, b)) = st.1.pop_front() else {
                    break;
                };
                st.0 -= b;
                victims.push(w);
            }
        }
        for w in victims {
            if let Some(s) = w.upgrade() {
                s.evict_entries();
            }
        }
    }
}

/// What scanning a segment's bytes found.
#[derive(Debug)]
pub struct ScanOutcome {
    pub index: SegmentIndex,
    /// Where valid data ends; bytes beyond are torn or corrupt.
    pub valid_bytes: u64,
    pub error: Option<String>,
    /// Headers of every valid batch, in order (for producer-state replay).
    pub batches: Vec<BatchHeader>,
}

impl Segment {
    pub fn create(dir: &Path, base: i64, now_ms: i64) -> Result<Self, LogError> {
        let path = dir.join(file_name(base, LOG_SUFFIX));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| LogError::io(&path, e))?;
        frame::sync_dir(dir).map_err(|e| LogError::io(dir, e))?;
        Ok(Segment {
            base_offset: base,
            path,
            file,
            index: RwLock::new(SegmentIndex::new(base)),
            created_ms: now_ms,
            index_on_disk: AtomicBool::new(false),
            entries_loaded: AtomicBool::new(true),
            keys: Mutex::new(None),
            key_bytes: AtomicUsize::new(0),
        })
    }

    /// Opens an existing segment file with the given index.
    pub fn open(
        path: PathBuf,
        base: i64,
        index: SegmentIndex,
        now_ms: i64,
    ) -> Result<Self, LogError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| LogError::io(&path, e))?;
        Ok(Segment {
            base_offset: base,
            path,
            file,
            index: RwLock::new(index),
            created_ms: now_ms,
            index_on_disk: AtomicBool::new(false),
            entries_loaded: AtomicBool::new(true),
            keys: Mutex::new(None),
            key_bytes: AtomicUsize::new(0),
        })
    }

    /// Opens a sealed segment knowing only its index summary: the entries
    /// stay on disk until first used.
    pub fn open_sealed(
        path: PathBuf,
        base: i64,
        summary: SegmentIndex,
        now_ms: i64,
    ) -> Result<Self, LogError> {
        let seg = Segment::open(path, base, summary, now_ms)?;
        seg.index_on_disk.store(true, Ordering::Release);
        seg.entries_loaded.store(false, Ordering::Release);
        Ok(seg)
    }

    /// Reads the summary at the start of this segment's index file.
    pub fn read_index_summary(path: &Path, base: i64) -> Option<SegmentIndex> {
        use std::io::Read;
        let mut f = File::open(path).ok()?;
        let mut buf = [0u8; SegmentIndex::SUMMARY_LEN];
        f.read_exact(&mut buf).ok()?;
        match SegmentIndex::decode_summary(&path.display().to_string(), &buf, base) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "unreadable index summary; rebuilding");
                None
            }
        }
    }

    /// Replaces a sealed segment's entries after its index file proved
    /// unreadable; they stay in memory (the file is rewritten if possible).
    pub fn replace_index(&self, index: SegmentIndex) {
        *self.index.write() = index;
        self.index_on_disk.store(false, Ordering::Release);
        self.entries_loaded.store(true, Ordering::Release);
        if let Err(e) = self.write_index() {
            tracing::warn!(error = %e, "could not rewrite index file");
        }
    }

    /// Marks this sealed segment's index file as current and hands its
    /// entries to the cache (which may evict them, or others).
    pub fn index_persisted(self: &Arc<Self>, cache: &IndexCache) {
        self.index_on_disk.store(true, Ordering::Release);
        cache.admit(self);
    }

    fn evict_entries(&self) {
        if self.index_on_disk.load(Ordering::Acquire) {
            let mut idx = self.index.write();
            idx.offsets = Vec::new();
            idx.times = Vec::new();
            self.entries_loaded.store(false, Ordering::Release);
        }
    }

    /// Makes sure the index entries are in memory (reloading a sealed
    /// segment's entries from its index file after eviction).
    pub fn ensure_index(self: &Arc<Self>, cache: &IndexCache) -> Result<(), LogError> {
        if self.entries_loaded.load(Ordering::Acquire) {
            return Ok(());
        }
        let path = self.index_path();
        let bytes = frame::read_file(&path, crate::index::INDEX_LIMIT)
            .map_err(|e| LogError::io(&path, e))?;
        let loaded = SegmentIndex::decode(&path.display().to_string(), &bytes, self.base_offset)
            .map_err(|e| LogError::Corrupt {
                path: path.clone(),
                position: 0,
                reason: e.to_string(),
            })?;
        {
            let mut idx = self.index.write();
            if self.entries_loaded.load(Ordering::Acquire) {
                return Ok(());
            }
            idx.offsets = loaded.offsets;
            idx.times = loaded.times;
            self.entries_loaded.store(true, Ordering::Release);
        }
        cache.admit(self);
        Ok(())
    }

    pub fn info(&self) -> crate::SegmentInfo {
        let i = self.index.read();
        crate::SegmentInfo {
            base_offset: self.base_offset,
            next_offset: i.next_offset,
            size_bytes: i.size,
            max_timestamp: i.max_timestamp,
            path: self.path.clone(),
        }
    }

    pub fn size(&self) -> u64 {
        self.index.read().size
    }

    pub fn next_offset(&self) -> i64 {
        self.index.read().next_offset
    }

    pub fn index_path(&self) -> PathBuf {
        self.path.with_extension(INDEX_SUFFIX)
    }

    pub fn file_len(&self) -> Result<u64, LogError> {
        Ok(self
            .file
            .metadata()
            .map_err(|e| LogError::io(&self.path, e))?
            .len())
    }

    /// Writes bytes at `position` (the current end).
    pub fn write_at(&self, bytes: &[u8], position: u64) -> Result<(), LogError> {
        self.file
            .write_all_at(bytes, position)
            .map_err(|e| LogError::io(&self.path, e))
    }

    /// Cuts the file back to `len` bytes (after a failed write or a torn tail).
    pub fn truncate(&self, len: u64) -> Result<(), LogError> {
        self.file
            .set_len(len)
            .map_err(|e| LogError::io(&self.path, e))
    }

    pub fn sync(&self) -> Result<(), LogError> {
        // Fault injection for tests: segments of topics named "fail-fsync*".
        #[cfg(test)]
        if self.path.to_string_lossy().contains("fail-fsync") {
            return Err(LogError::io(
                &self.path,
                std::io::Error::other("injected fsync failure"),
            ));
        }
        #[cfg(test)]
        sync_gate::pass(&self.path);
        self.file
            .sync_data()
            .map_err(|e| LogError::io(&self.path, e))
    }

    /// Writes the index file atomically.
    pub fn write_index(&self) -> Result<(), LogError> {
        let bytes = self.index.read().encode(self.base_offset);
        let path = self.index_path();
        frame::write_atomic(&path, &bytes).map_err(|e| LogError::io(&path, e))
    }

    pub fn read_at(&self, position: u64, len: usize) -> Result<Vec<u8>, LogError> {
        let mut buf = vec![0u8; len];
        let mut filled = 0;
        while filled < len {
            match self
                .file
                .read_at(&mut buf[filled..], position + filled as u64)
            {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(LogError::io(&self.path, e)),
            }
        }
        buf.truncate(filled);
        Ok(buf)
    }

    /// Reads the header of the batch at `position`, if a whole header is there.
    pub fn header_at(
        &self,
        position: u64,
        max_batch: usize,
    ) -> Result<Option<BatchHeader>, LogError> {
        let buf = self.read_at(position, BATCH_HEADER_LEN)?;
        if buf.len() < BATCH_HEADER_LEN {
            return Ok(None);
        }
        batch::parse_header(&buf, max_batch)
            .map(Some)
            .map_err(|e| LogError::Corrupt {
                path: self.path.clone(),
                position,
                reason: e.to_string(),
            })
    }

    /// Position of the first batch whose last offset is >= `offset`, scanning
    /// forward from the index entry at or before it. `limit` is the segment
    /// size to consider. Returns None if no such batch is in the segment.
    pub fn find(
        &self,
        offset: i64,
        limit: u64,
        max_batch: usize,
    ) -> Result<Option<(u64, BatchHeader)>, LogError> {
        let mut pos = self.index.read().lookup(self.base_offset, offset);
        while pos < limit {
            let Some(h) = self.header_at(pos, max_batch)? else {
                return Ok(None);
            };
            if h.last_offset() >= offset {
                return Ok(Some((pos, h)));
            }
            pos += h.size as u64;
        }
        Ok(None)
    }

    /// Scans the whole file, validating each batch's CRC and that offsets are
    /// contiguous from `base`. Stops at the first torn or corrupt batch.
    pub fn scan(&self, interval: u64, max_batch: usize) -> Result<ScanOutcome, LogError> {
        const CHUNK: usize = 8 << 20;
        let len = self.file_len()?;
        let mut index = SegmentIndex::new(self.base_offset);
        let mut batches = Vec::new();
        let mut pos = 0u64;
        let mut error = None;
        let mut expected = self.base_offset;
        'outer: while pos < len {
            let want = ((len - pos) as usize).min(CHUNK.max(max_batch));
            let buf = self.read_at(pos, want)?;
            let mut it = batch::BatchIter::new(&buf, max_batch, true);
            let mut consumed = 0;
            for (at, h) in it.by_ref() {
                if h.base_offset != expected {
                    error = Some(format!(
                        "batch at byte {} has base offset {}, expected {expected}",
                        pos + at as u64,
                        h.base_offset
                    ));
                    break 'outer;
                }
                index.on_append(self.base_offset, &h, pos + at as u64, interval);
                expected = h.next_offset();
                batches.push(h);
                consumed = at + h.size;
            }
            if let Some(e) = it.error {
                // A batch cut by the end of this chunk is not an error unless
                // the chunk reached the end of the file.
                let at_eof = pos + buf.len() as u64 >= len;
                let truncated = matches!(e, batch::BatchError::Truncated { .. });
                if !truncated || at_eof || consumed == 0 {
                    error = Some(format!("at byte {}: {e}", pos + consumed as u64));
                    break;
                }
            } else if consumed == 0 {
                break;
            }
            pos += consumed as u64;
        }
        Ok(ScanOutcome {
            valid_bytes: index.size,
            index,
            error,
            batches,
        })
    }
}

/// Test hook: holds the fsync of chosen segment files until released, so a
/// test can run one flush while another is inside `fdatasync`.
#[cfg(test)]
pub(crate) mod sync_gate {
    #![allow(clippy::unwrap_used)]
    use std::path::Path;
    use std::sync::{Condvar, Mutex};

    /// Held gates: (topic, segment file name, syncs waiting at it).
    type Gates = Vec<(String, String, usize)>;
    static HELD: Mutex<Gates> = Mutex::new(Vec::new());
    static CHANGED: Condvar = Condvar::new();

    fn matches(gate: &(String, String, usize), topic: &str, file: &str) -> bool {
        gate.0 == topic && gate.1 == file
    }

    /// Holds the sync of segment file `file` of topic `topic`.
    pub fn hold(topic: &str, file: &str) {
        HELD.lock()
            .unwrap()
            .push((topic.to_string(), file.to_string(), 0));
    }

    pub fn release(topic: &str, file: &str) {
        HELD.lock().unwrap().retain(|g| !matches(g, topic, file));
        CHANGED.notify_all();
    }

    /// Blocks until a sync is waiting at the gate.
    pub fn wait_for_waiter(topic: &str, file: &str) {
        let mut held = HELD.lock().unwrap();
        while !held.iter().any(|g| matches(g, topic, file) && g.2 > 0) {
            held = CHANGED.wait(held).unwrap();
        }
    }

    pub(super) fn pass(path: &Path) {
        let (Some(file), Some(dir)) = (path.file_name(), path.parent()) else {
            return;
        };
        let file = file.to_string_lossy().into_owned();
        let dir = dir.to_string_lossy().into_owned();
        let mut held = HELD.lock().unwrap();
        let Some(i) = held
            .iter()
            .position(|g| g.1 == file && dir.contains(&format!("/topics/{}/", g.0)))
        else {
            return;
        };
        held[i].2 += 1;
        let (topic, file) = (held[i].0.clone(), held[i].1.clone());
        CHANGED.notify_all();
        while held.iter().any(|g| matches(g, &topic, &file)) {
            held = CHANGED.wait(held).unwrap();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::batch::tests::make_batch;

    #[test]
    fn file_names_round_trip_and_reject_strays() {
        assert_eq!(parse_file_name(&file_name(42, "log"), "log"), Some(42));
        assert_eq!(parse_file_name("42.log", "log"), None);
        assert_eq!(parse_file_name("0000000000000000004x.log", "log"), None);
        assert_eq!(parse_file_name(&file_name(42, "index"), "log"), None);
    }

    #[test]
    fn scan_stops_at_torn_tail_for_every_cut() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = Vec::new();
        let mut next = 0;
        for n in [3, 1, 4] {
            let mut b = make_batch(n, 7, 10, (-1, -1, -1));
            batch::assign(&mut b, next, 0);
            next += i64::from(n);
            bytes.extend(b);
        }
        let full = bytes.len();
        let seg = Segment::create(dir.path(), 0, 0).unwrap();
        seg.write_at(&bytes, 0).unwrap();
        let whole = seg.scan(0, 1 << 20).unwrap();
        assert!(whole.error.is_none());
        assert_eq!(whole.index.next_offset, 8);
        let boundaries: Vec<u64> = whole
            .batches
            .iter()
            .scan(0u64, |p, h| {
                *p += h.size as u64;
                Some(*p)
            })
            .collect();
        for cut in 0..full {
            seg.truncate(cut as u64).unwrap();
            let out = seg.scan(0, 1 << 20).unwrap();
            let expect = boundaries
                .iter()
                .copied()
                .filter(|&b| b <= cut as u64)
                .max()
                .unwrap_or(0);
            assert_eq!(out.valid_bytes, expect, "cut at {cut}");
            assert_eq!(out.error.is_some(), expect != cut as u64, "cut at {cut}");
            seg.write_at(&bytes[cut..], cut as u64).unwrap();
        }
    }

    #[test]
    fn scan_detects_flipped_byte_in_middle() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = make_batch(2, 5, 0, (-1, -1, -1));
        batch::assign(&mut a, 0, 0);
        let mut b = make_batch(2, 5, 0, (-1, -1, -1));
        batch::assign(&mut b, 2, 0);
        let seg = Segment::create(dir.path(), 0, 0).unwrap();
        let mut all = a.clone();
        all.extend(&b);
        all[a.len() + 70] ^= 0x10;
        seg.write_at(&all, 0).unwrap();
        let out = seg.scan(0, 1 << 20).unwrap();
        assert_eq!(out.valid_bytes, a.len() as u64);
        assert!(out.error.unwrap().contains("CRC"));
    }
}
