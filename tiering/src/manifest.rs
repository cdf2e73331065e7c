//! The partition manifest: the archive's table of contents.
//!
//! One JSON object per commit, at
//! `topics/<topic>/<partition>/manifest/<generation, 20 digits>.json`; the
//! highest generation is current. A commit writes generation N+1 with a
//! create-only conditional put, so two writers can never both commit on top
//! of N, and a reader never sees a half-written manifest. The manifest
//! lists every file with its offset range, time range, row count and size,
//! so reads are planned without listing the bucket. See docs/FORMAT.md.

use serde::{Deserialize, Serialize};

/// `format` field of every manifest.
pub const MANIFEST_FORMAT: &str = "sediment-archive-manifest";
/// The version this build writes. Readers accept it and older ones.
pub const MANIFEST_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub topic: String,
    /// The topic's id: a manifest left by a deleted topic of the same name
    /// is recognised and not appended to.
    pub topic_id: String,
    pub partition: i32,
    pub generation: u64,
    /// First offset readable from the archive.
    pub start_offset: i64,
    /// Offset after the last archived record.
    pub end_offset: i64,
    /// Files in offset order, never overlapping.
    pub files: Vec<ArchiveFile>,
    /// When this generation was committed (ms since the epoch).
    #[serde(default)]
    pub committed_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveFile {
    /// Relative to the partition's directory, e.g. `data/…0042.parquet`.
    pub path: String,
    pub base_offset: i64,
    /// Offset after the file's last record.
    pub next_offset: i64,
    pub min_timestamp: i64,
    pub max_timestamp: i64,
    pub rows: u64,
    /// Size of the Parquet object.
    pub bytes: u64,
    /// Size of the segment it was made from (retention.bytes counts these,
    /// so a topic's retention means the same on both tiers).
    pub segment_bytes: u64,
    /// Typed columns decoded from the values (`value.<name>` in the file),
    /// in file order; empty for files without them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub value_columns: Vec<ValueColumn>,
}

/// A typed column decoded from record values: its name as declared and its
/// Arrow type as Arrow prints it (`Utf8`, `Float64`, `Timestamp(ms, "UTC")`...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValueColumn {
    pub name: String,
    #[serde(rename = "type")]
    pub data_type: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is not JSON of the expected shape: {0}")]
    Malformed(String),
    #[error("not a Sediment manifest (format '{0}')")]
    WrongFormat(String),
    #[error("manifest version {0} is newer than this build understands ({MANIFEST_VERSION})")]
    TooNew(u32),
    #[error("manifest is inconsistent: {0}")]
    Inconsistent(String),
}

impl Manifest {
    /// An empty manifest (generation 0 is never stored).
    pub fn empty(topic: &str, topic_id: &str, partition: i32) -> Self {
        Manifest {
            format: MANIFEST_FORMAT.to_string(),
            version: MANIFEST_VERSION,
            topic: topic.to_string(),
            topic_id: topic_id.to_string(),
            partition,
            generation: 0,
            start_offset: 0,
            end_offset: 0,
            files: Vec::new(),
            committed_ms: 0,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        // A struct of plain fields always serializes.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, ManifestError> {
        let m: Manifest =
            serde_json::from_slice(bytes).map_err(|e| ManifestError::Malformed(e.to_string()))?;
        if m.format != MANIFEST_FORMAT {
            return Err(ManifestError::WrongFormat(m.format));
        }
        if m.version > MANIFEST_VERSION {
            return Err(ManifestError::TooNew(m.version));
        }
        m.check()?;
        Ok(m)
    }

    /// Files sorted, non-overlapping, inside [start, end).
    pub fn check(&self) -> Result<(), ManifestError> {
        let bad = |m: String| Err(ManifestError::Inconsistent(m));
        let mut prev_end = i64::MIN;
        for f in &self.files {
            if f.next_offset <= f.base_offset {
                return bad(format!("{} covers no offsets", f.path));
            }
            if f.base_offset < prev_end {
                return bad(format!(
                    "{} starts at {} before the previous file ends at {prev_end}",
                    f.path, f.base_offset
                ));
            }
            prev_end = f.next_offset;
        }
        if (!self.files.is_empty() && self.end_offset < prev_end)
            || self.start_offset > self.end_offset
        {
            return bad(format!(
                "range {}..{} does not hold its files",
                self.start_offset, self.end_offset
            ));
        }
        Ok(())
    }

    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes).sum()
    }

    pub fn range(&self) -> sediment_log::ArchiveRange {
        sediment_log::ArchiveRange {
            start_offset: self.start_offset,
            end_offset: self.end_offset,
            bytes: self.bytes(),
            files: self.files.len(),
        }
    }

    /// The next generation with `file` appended. The file must start at or
    /// after the current end (a gap is allowed: data deleted locally before
    /// tiering was enabled), so no two files ever cover the same offset.
    pub fn with_file(&self, file: ArchiveFile, now_ms: i64) -> Result<Self, ManifestError> {
        if file.base_offset < self.end_offset {
            return Err(ManifestError::Inconsistent(format!(
                "{} starts at {} but the archive already ends at {}",
                file.path, file.base_offset, self.end_offset
            )));
        }
        let mut next = self.clone();
        if next.files.is_empty() {
            next.start_offset = file.base_offset;
        }
        next.end_offset = file.next_offset;
        next.files.push(file);
        next.generation += 1;
        next.version = MANIFEST_VERSION;
        next.committed_ms = now_ms;
        next.check()?;
        Ok(next)
    }

    /// The next generation without the first `n` files (archive retention).
    pub fn without_oldest(&self, n: usize, now_ms: i64) -> Self {
        let mut next = self.clone();
        let n = n.min(next.files.len());
        next.files.drain(..n);
        next.start_offset = next
            .files
            .first()
            .map_or(next.end_offset, |f| f.base_offset);
        next.generation += 1;
        next.version = MANIFEST_VERSION;
        next.committed_ms = now_ms;
        next
    }

    /// The file holding `offset`, or failing that the first file after it
    /// (offsets in a gap read on from the next file, as in Kafka).
    pub fn file_for(&self, offset: i64) -> Option<&ArchiveFile> {
        let i = self.files.partition_point(|f| f.next_offset <= offset);
        self.files.get(i)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn file(base: i64, next: i64) -> ArchiveFile {
        ArchiveFile {
            path: format!("data/{base:020}.parquet"),
            base_offset: base,
            next_offset: next,
            min_timestamp: 1000 + base,
            max_timestamp: 1000 + next - 1,
            rows: (next - base) as u64,
            bytes: 100,
            segment_bytes: 400,
            value_columns: Vec::new(),
        }
    }

    #[test]
    fn value_columns_are_written_only_when_present_and_round_trip() {
        let m = Manifest::empty("t", "id", 0)
            .with_file(file(0, 10), 1)
            .unwrap();
        let text = String::from_utf8(m.encode()).unwrap();
        assert!(!text.contains("value_columns"), "{text}");
        let mut f = file(10, 20);
        f.value_columns = vec![ValueColumn {
            name: "amount".into(),
            data_type: "Float64".into(),
        }];
        let m = m.with_file(f, 2).unwrap();
        let text = String::from_utf8(m.encode()).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            json["files"][1]["value_columns"],
            serde_json::json!([{"name": "amount", "type": "Float64"}])
        );
        let back = Manifest::decode(text.as_bytes()).unwrap();
        assert_eq!(back, m);
        assert!(back.files[0].value_columns.is_empty());
    }

    #[test]
    fn appends_are_contiguous_and_overlaps_refused() {
        let m = Manifest::empty("t", "id", 0);
        let m = m.with_file(file(10, 20), 1).unwrap();
        assert_eq!((m.start_offset, m.end_offset, m.generation), (10, 20, 1));
        let m = m.with_file(file(20, 35), 2).unwrap();
        assert!(m.with_file(file(30, 40), 3).is_err(), "overlap accepted");
        let gap = m.with_file(file(50, 60), 3).unwrap();
        assert_eq!(gap.file_for(40).unwrap().base_offset, 50);
        assert_eq!(m.file_for(25).unwrap().base_offset, 20);
        assert!(m.file_for(35).is_none());
        let trimmed = m.without_oldest(1, 4);
        assert_eq!(trimmed.start_offset, 20);
        assert_eq!(trimmed.generation, 3);
        let empty = trimmed.without_oldest(5, 5);
        assert_eq!((empty.start_offset, empty.end_offset), (35, 35));
        assert_eq!(Manifest::decode(&m.encode()).unwrap(), m);
    }

    #[test]
    fn foreign_newer_and_inconsistent_manifests_are_rejected() {
        let mut m = Manifest::empty("t", "id", 0)
            .with_file(file(0, 10), 1)
            .unwrap();
        m.version = MANIFEST_VERSION + 1;
        assert!(matches!(
            Manifest::decode(&m.encode()),
            Err(ManifestError::TooNew(_))
        ));
        m.version = 1;
        m.format = "other".into();
        assert!(matches!(
            Manifest::decode(&m.encode()),
            Err(ManifestError::WrongFormat(_))
        ));
        m.format = MANIFEST_FORMAT.into();
        m.files.push(file(5, 12));
        m.end_offset = 12;
        assert!(matches!(
            Manifest::decode(&m.encode()),
            Err(ManifestError::Inconsistent(_))
        ));
        assert!(Manifest::decode(b"{not json").is_err());
    }

    /// Version 1 as written by the first release: must always decode.
    #[test]
    fn frozen_v1_manifest_decodes() {
        let bytes = include_bytes!("../tests/fixtures/manifest-v1.json");
        let m = Manifest::decode(bytes).unwrap();
        assert_eq!(m.version, 1);
        assert_eq!(m.files.len(), 2);
        assert_eq!((m.start_offset, m.end_offset), (0, 250));
        assert_eq!(
            m.file_for(120).unwrap().path,
            "data/00000000000000000100.parquet"
        );
    }
}
