#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::stream::BoxStream;
use futures::StreamExt;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use sediment_log::{batch, LogConfig, LogManager};

use crate::convert::{self, FileIdentity};
use crate::{Archive, ArchiveError, ArchiveRead, Manifest, Tierer, TieringConfig};

fn record(offset: i64, ts: i64, producer: (i64, i16, i32)) -> Record {
    let mut headers = indexmap::IndexMap::new();
    if offset % 3 == 0 {
        headers.insert(
            StrBytes::from_static_str("trace"),
            Some(Bytes::from(format!("t{offset}"))),
        );
        headers.insert(StrBytes::from_static_str("empty"), None);
    }
    Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: 0,
        producer_id: producer.0,
        producer_epoch: producer.1,
        timestamp_type: TimestampType::Creation,
        offset,
        sequence: if producer.2 < 0 {
            -1
        } else {
            producer.2 + offset as i32
        },
        timestamp: ts,
        key: (offset % 4 != 1).then(|| Bytes::from(format!("k{}", offset % 10))),
        value: (offset % 7 != 3)
            .then(|| Bytes::from(vec![b'a' + (offset % 26) as u8; (offset % 50) as usize])),
        headers,
    }
}

const LEADER_EPOCH: i32 = 3;

fn batch_count(bytes: &[u8]) -> usize {
    let mut at = 0;
    let mut n = 0;
    while at < bytes.len() {
        at += batch::parse_header(&bytes[at..], 1 << 24).unwrap().size;
        n += 1;
    }
    n
}

/// One batch with records `base..base+n`, as a producer would send it.
fn encode(records: &[Record], compression: Compression) -> Vec<u8> {
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        records,
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )
    .unwrap();
    buf.to_vec()
}

/// A segment's bytes: batches with the broker's base offsets written in.
fn segment(batches: usize, per_batch: i64) -> (Vec<u8>, Vec<Record>) {
    let codecs = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];
    let mut bytes = Vec::new();
    let mut all = Vec::new();
    for b in 0..batches {
        let base = b as i64 * per_batch;
        let producer = if b % 2 == 0 { (7, 1, 0) } else { (-1, -1, -1) };
        let recs: Vec<Record> = (base..base + per_batch)
            .map(|o| record(o, 1_700_000_000_000 + o * 3, producer))
            .collect();
        let enc = encode(&recs, codecs[b % codecs.len()]);
        // The encoder may split records into several batches: stamp each
        // as the broker would (base offsets are the records' own).
        let mut at = 0;
        while at < enc.len() {
            let h = batch::parse_header(&enc[at..], 1 << 24).unwrap();
            let mut one = enc[at..at + h.size].to_vec();
            batch::assign(&mut one, h.base_offset, LEADER_EPOCH);
            bytes.extend_from_slice(&one);
            at += h.size;
        }
        all.extend(recs);
    }
    (bytes, all)
}

fn to_parquet(seg: &[u8]) -> (Vec<u8>, convert::Converted) {
    let mut out = Vec::new();
    let id = FileIdentity {
        topic: "t",
        topic_id: "id",
        partition: 4,
    };
    let c = convert::segment_to_parquet(seg, &id, 1 << 24, None, &mut out, &mut |_| {}).unwrap();
    (out, c)
}

fn read_back(parquet: Vec<u8>) -> Vec<arrow_array::RecordBatch> {
    ParquetRecordBatchReaderBuilder::try_new(Bytes::from(parquet))
        .unwrap()
        .build()
        .unwrap()
        .map(|b| b.unwrap())
        .collect()
}

/// Every record of rebuilt batches, compared field by field with what the
/// producer sent, and every rebuilt batch valid (CRC, counts).
fn assert_same_records(rebuilt: &[u8], expected: &[Record], leader_epoch: i32) {
    let mut at = 0;
    while at < rebuilt.len() {
        let h = batch::validate(&rebuilt[at..], 1 << 24).unwrap();
        at += h.size;
    }
    let mut buf = Bytes::copy_from_slice(rebuilt);
    let mut got = Vec::new();
    while !buf.is_empty() {
        got.extend(RecordBatchDecoder::decode(&mut buf).unwrap().records);
    }
    assert_eq!(got.len(), expected.len());
    for (g, e) in got.iter().zip(expected) {
        assert_eq!(
            (g.offset, g.timestamp, &g.key, &g.value, &g.headers),
            (e.offset, e.timestamp, &e.key, &e.value, &e.headers),
            "record {}",
            e.offset
        );
        assert_eq!(
            (
                g.producer_id,
                g.producer_epoch,
                g.sequence,
                g.partition_leader_epoch
            ),
            (e.producer_id, e.producer_epoch, e.sequence, leader_epoch),
            "producer fields of record {}",
            e.offset
        );
    }
}

#[test]
fn segment_round_trips_through_parquet_for_every_codec() {
    let (seg, records) = segment(10, 25);
    let (parquet, conv) = to_parquet(&seg);
    assert_eq!(
        (conv.base_offset, conv.next_offset, conv.rows),
        (0, 250, 250)
    );
    assert_eq!(conv.segment_bytes, seg.len() as u64);
    assert_eq!(conv.min_timestamp, 1_700_000_000_000);
    let rows = read_back(parquet);
    let rebuilt = convert::rebuild(&rows).unwrap();
    assert_eq!(
        rebuilt.batches.len(),
        batch_count(&seg),
        "one batch per original batch"
    );
    assert_same_records(&rebuilt.bytes, &records, LEADER_EPOCH);
    // Slicing: whole batches from the one holding offset 60, within the
    // budget, but always at least one.
    let holder = rebuilt
        .batches
        .iter()
        .position(|b| b.0 <= 60 && 60 < b.1)
        .unwrap();
    let part = rebuilt.slice_from(60, 1);
    let mut b = part.clone();
    let first = RecordBatchDecoder::decode(&mut b).unwrap();
    assert_eq!(first.records[0].offset, rebuilt.batches[holder].0);
    assert!(b.is_empty(), "more than one batch for a 1-byte budget");
    let two = rebuilt.slice_from(60, 4096);
    assert!(two.len() <= 4096 && two.len() > part.len());
    assert!(rebuilt.slice_from(250, 1 << 20).is_empty());
}

#[test]
fn row_groups_end_on_batch_boundaries() {
    // 70 batches of 1000 records: more than one row group.
    let (seg, records) = segment(70, 1000);
    let (parquet, _) = to_parquet(&seg);
    let meta = ParquetRecordBatchReaderBuilder::try_new(Bytes::from(parquet.clone()))
        .unwrap()
        .metadata()
        .clone();
    assert!(meta.num_row_groups() >= 2, "{}", meta.num_row_groups());
    // Each row group rebuilt alone gives whole batches, and together they
    // give back the segment's batches.
    let mut batches = 0;
    let mut rows = 0;
    for rg in 0..meta.num_row_groups() {
        let part: Vec<_> = ParquetRecordBatchReaderBuilder::try_new(Bytes::from(parquet.clone()))
            .unwrap()
            .with_row_groups(vec![rg])
            .build()
            .unwrap()
            .map(|b| b.unwrap())
            .collect();
        let rebuilt = convert::rebuild(&part).unwrap();
        batches += rebuilt.batches.len();
        rows += part.iter().map(|b| b.num_rows()).sum::<usize>();
    }
    assert_eq!(batches, batch_count(&seg), "a row group split a batch");
    assert_eq!(rows, 70_000);
    let rebuilt = convert::rebuild(&read_back(parquet)).unwrap();
    assert_same_records(&rebuilt.bytes, &records, LEADER_EPOCH);
}

#[test]
fn corrupt_segments_are_refused_not_archived() {
    let (mut seg, _) = segment(3, 10);
    let len = seg.len();
    seg[len - 5] ^= 0xff;
    let id = FileIdentity {
        topic: "t",
        topic_id: "id",
        partition: 0,
    };
    let e = convert::segment_to_parquet(&seg[..], &id, 1 << 24, None, Vec::new(), &mut |_| {})
        .unwrap_err();
    assert!(matches!(e, ArchiveError::Corrupt(_)), "{e}");
    let e =
        convert::segment_to_parquet(&seg[..len - 3], &id, 1 << 24, None, Vec::new(), &mut |_| {})
            .unwrap_err();
    assert!(e.to_string().contains("inside"), "{e}");
}

/// An object store that fails on demand: everything, or only manifest
/// writes (an upload that lands but whose commit does not).
#[derive(Debug)]
struct Faulty {
    inner: InMemory,
    down: AtomicBool,
    manifests_down: AtomicBool,
}

impl fmt::Display for Faulty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Faulty")
    }
}

impl Faulty {
    fn check(&self, path: Option<&Path>, write: bool) -> object_store::Result<()> {
        let manifest = path.is_some_and(|p| p.as_ref().contains("/manifest/"));
        if self.down.load(Ordering::SeqCst)
            || (write && manifest && self.manifests_down.load(Ordering::SeqCst))
        {
            return Err(object_store::Error::Generic {
                store: "Faulty",
                source: "connection refused".into(),
            });
        }
        Ok(())
    }
}

#[async_trait]
impl ObjectStore for Faulty {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.check(Some(location), true)?;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.check(Some(location), true)?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.check(Some(location), false)?;
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        if self.down.load(Ordering::SeqCst) {
            return futures::stream::once(async {
                Err(object_store::Error::Generic {
                    store: "Faulty",
                    source: "connection refused".into(),
                })
            })
            .boxed();
        }
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        if let Err(e) = self.check(None, false) {
            return futures::stream::once(async { Err(e) }).boxed();
        }
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.check(None, false)?;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.check(Some(to), true)?;
        self.inner.copy_opts(from, to, options).await
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    data_dir: std::path::PathBuf,
    store: Arc<Faulty>,
    log: Arc<LogManager>,
    archive: Arc<Archive>,
    tierer: Arc<Tierer>,
}

fn fixture_with(store: Arc<Faulty>, dir: tempfile::TempDir) -> Fixture {
    let data_dir = dir.path().to_path_buf();
    let mut config = LogConfig::new(&data_dir);
    config.tiering = true;
    let log = LogManager::open(config).unwrap();
    let archive = Arc::new(Archive::new(
        store.clone(),
        Path::from("arch"),
        "memory://",
        1 << 20,
    ));
    let tierer = Tierer::new(archive.clone(), log.clone(), TieringConfig::new(&data_dir)).unwrap();
    Fixture {
        _dir: dir,
        data_dir,
        store,
        log,
        archive,
        tierer,
    }
}

fn fixture() -> Fixture {
    let store = Arc::new(Faulty {
        inner: InMemory::new(),
        down: AtomicBool::new(false),
        manifests_down: AtomicBool::new(false),
    });
    fixture_with(store, tempfile::tempdir().unwrap())
}

/// Appends `batches` batches of 10 records, rolling after each so that
/// every batch becomes a sealed segment; returns what was produced.
fn produce(f: &Fixture, topic: &str, batches: usize) -> Vec<Record> {
    let p = f.log.partition(topic, 0).unwrap();
    let mut all = Vec::new();
    for _ in 0..batches {
        let base = p.log_end_offset();
        let recs: Vec<Record> = (base..base + 10)
            .map(|o| record(o, sediment_log::now_ms(), (-1, -1, -1)))
            .collect();
        p.append(&encode(&recs, Compression::None), sediment_log::now_ms())
            .unwrap();
        p.force_roll(sediment_log::now_ms()).unwrap();
        p.flush().unwrap();
        all.extend(recs);
    }
    all
}

fn create(f: &Fixture, topic: &str, configs: &[(&str, &str)]) {
    let c: BTreeMap<String, String> = configs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    f.log.create_topic(topic, 1, c).unwrap();
}

/// Reads the whole partition through the archive (below the local start)
/// and the local tier, as a consumer would.
async fn consume_all(f: &Fixture, topic: &str) -> Vec<u8> {
    let p = f.log.partition(topic, 0).unwrap();
    let mut offset = p.earliest_offset().unwrap();
    let mut out = Vec::new();
    while offset < p.high_watermark() {
        let chunk = if offset < p.log_start_offset() {
            match f.archive.read(topic, 0, offset, 1 << 20).await.unwrap() {
                ArchiveRead::Batches(b) => b,
                ArchiveRead::NotArchived => panic!("offset {offset} is in neither tier"),
            }
        } else {
            p.read(offset, 1 << 20, true).unwrap().records
        };
        let mut at = 0;
        while at < chunk.len() {
            let h = batch::parse_header(&chunk[at..], 1 << 24).unwrap();
            offset = h.next_offset();
            at += h.size;
        }
        out.extend_from_slice(&chunk);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_segments_are_archived_then_deleted_locally_and_still_consumable() {
    let f = fixture();
    create(&f, "t", &[("local.retention.bytes", "0")]);
    let records = produce(&f, "t", 5);
    let p = f.log.partition("t", 0).unwrap();
    // Before tiering, nothing local may go.
    f.log.enforce_retention();
    assert_eq!(p.log_start_offset(), 0);
    let o = f.tierer.pass().await;
    assert_eq!((o.uploaded, o.failed), (5, 0));
    let m = f.archive.manifest("t", 0).unwrap();
    assert_eq!((m.start_offset, m.end_offset, m.files.len()), (0, 50, 5));
    assert_eq!(p.archive().unwrap().end_offset, 50);
    f.log.enforce_retention();
    assert_eq!(p.log_start_offset(), 50, "archived segments leave the disk");
    assert_eq!(p.earliest_offset().unwrap(), 0);
    assert_same_records(&consume_all(&f, "t").await, &records, 0);
    // Each file (one row group each) was fetched and rebuilt once, however
    // reads and read-ahead overlapped.
    assert_eq!(
        f.archive.metrics.row_groups_loaded.load(Ordering::Relaxed),
        5
    );
    assert_same_records(&consume_all(&f, "t").await, &records, 0);
    assert_eq!(
        f.archive.metrics.row_groups_loaded.load(Ordering::Relaxed),
        5,
        "a second read is served from the cache"
    );
    // A second pass with nothing new commits nothing.
    assert_eq!(f.tierer.pass().await.uploaded, 0);
    assert_eq!(f.archive.manifest("t", 0).unwrap().generation, m.generation);
    // Nothing staged is left behind.
    let staged = std::fs::read_dir(crate::staging_dir(&f.data_dir))
        .unwrap()
        .count();
    assert_eq!(staged, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_store_keeps_local_segments_and_the_backlog_drains_later() {
    let f = fixture();
    create(&f, "t", &[("local.retention.bytes", "0")]);
    f.store.down.store(true, Ordering::SeqCst);
    let records = produce(&f, "t", 3);
    let p = f.log.partition("t", 0).unwrap();
    let o = f.tierer.pass().await;
    assert_eq!((o.uploaded, o.failed), (0, 1));
    f.log.enforce_retention();
    assert_eq!(
        p.log_start_offset(),
        0,
        "nothing deleted while the store is down"
    );
    // Produce goes on meanwhile.
    let more = produce(&f, "t", 2);
    f.store.down.store(false, Ordering::SeqCst);
    // The partition backs off; a fresh tierer (as after a restart) retries at once.
    let t2 = Tierer::new(
        f.archive.clone(),
        f.log.clone(),
        TieringConfig::new(&f.data_dir),
    )
    .unwrap();
    let o = t2.pass().await;
    assert_eq!((o.uploaded, o.failed), (5, 0));
    f.log.enforce_retention();
    assert_eq!(p.log_start_offset(), 50);
    let all: Vec<Record> = records.into_iter().chain(more).collect();
    assert_same_records(&consume_all(&f, "t").await, &all, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_whose_commit_failed_is_redone_once_after_a_restart() {
    let f = fixture();
    create(&f, "t", &[("local.retention.bytes", "0")]);
    let records = produce(&f, "t", 2);
    f.store.manifests_down.store(true, Ordering::SeqCst);
    let o = f.tierer.pass().await;
    assert_eq!(o.failed, 1);
    // The data file landed, the manifest did not: nothing is archived.
    let data = Path::from("arch/topics/t/0/data");
    let listed: Vec<_> = f.store.inner.list(Some(&data)).collect().await;
    assert_eq!(listed.len(), 1, "the uploaded but uncommitted file");
    f.log.enforce_retention();
    let p = f.log.partition("t", 0).unwrap();
    assert_eq!(p.log_start_offset(), 0);
    // "Restart": a new archive and tierer over the same store and log.
    f.store.manifests_down.store(false, Ordering::SeqCst);
    let archive = Arc::new(Archive::new(
        f.store.clone(),
        Path::from("arch"),
        "memory://",
        1 << 20,
    ));
    let t2 = Tierer::new(
        archive.clone(),
        f.log.clone(),
        TieringConfig::new(&f.data_dir),
    )
    .unwrap();
    assert_eq!(t2.pass().await.uploaded, 2);
    let m = archive.manifest("t", 0).unwrap();
    assert_eq!((m.start_offset, m.end_offset, m.files.len()), (0, 20, 2));
    let listed: Vec<_> = f.store.inner.list(Some(&data)).collect().await;
    assert_eq!(listed.len(), 2, "each segment stored once");
    f.log.enforce_retention();
    let f2 = Fixture {
        archive,
        tierer: t2,
        ..f
    };
    assert_same_records(&consume_all(&f2, "t").await, &records, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_writer_cannot_commit_the_same_generation() {
    let f = fixture();
    create(&f, "t", &[]);
    produce(&f, "t", 1);
    f.tierer.pass().await;
    let m = f.archive.manifest("t", 0).unwrap();
    // Another writer's generation N+1 differs from ours: refused.
    let mut theirs = (*m).clone();
    theirs.generation += 1;
    theirs.committed_ms = 1;
    f.archive.commit_manifest(theirs.clone()).await.unwrap();
    let mut ours = (*m).clone();
    ours.generation += 1;
    ours.committed_ms = 2;
    let e = f.archive.commit_manifest(ours).await.unwrap_err();
    assert!(matches!(e, ArchiveError::Conflict { .. }), "{e}");
    // Our own commit repeated (a lost response) is recognised as done.
    f.archive.commit_manifest(theirs).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_retention_commits_first_then_deletes() {
    let f = fixture();
    create(
        &f,
        "t",
        &[("retention.bytes", "0"), ("local.retention.bytes", "0")],
    );
    produce(&f, "t", 3);
    let o = f.tierer.pass().await;
    assert_eq!(o.uploaded, 3);
    // retention.bytes=0: every archived file beyond the limit goes; the
    // manifest keeps the end offset so the log stays contiguous.
    let m = f.archive.manifest("t", 0).unwrap();
    assert!(m.files.is_empty(), "{m:?}");
    assert_eq!((m.start_offset, m.end_offset), (30, 30));
    let listed: Vec<_> = f
        .store
        .inner
        .list(Some(&Path::from("arch/topics/t/0/data")))
        .collect()
        .await;
    assert!(listed.is_empty());
    f.log.enforce_retention();
    let p = f.log.partition("t", 0).unwrap();
    assert_eq!(p.earliest_offset().unwrap(), 30);
    assert!(matches!(
        f.archive.read("t", 0, 5, 1 << 20).await.unwrap(),
        ArchiveRead::NotArchived
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_archive_file_is_an_error_not_a_gap() {
    let f = fixture();
    create(&f, "t", &[("local.retention.bytes", "0")]);
    produce(&f, "t", 2);
    f.tierer.pass().await;
    f.store
        .inner
        .delete(&Path::from(
            "arch/topics/t/0/data/00000000000000000000.parquet",
        ))
        .await
        .unwrap();
    assert!(f.archive.read("t", 0, 3, 1 << 20).await.is_err());
    assert!(matches!(
        f.archive.read("t", 0, 12, 1 << 20).await.unwrap(),
        ArchiveRead::Batches(_)
    ));
    assert_eq!(f.archive.metrics.read_errors.load(Ordering::Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_topic_does_not_inherit_the_old_archive() {
    let f = fixture();
    create(&f, "t", &[]);
    produce(&f, "t", 2);
    f.tierer.pass().await;
    f.log.delete_topic("t").unwrap();
    create(&f, "t", &[]);
    produce(&f, "t", 1);
    f.tierer.pass().await;
    let m = f.archive.manifest("t", 0).unwrap();
    assert_eq!(m.topic_id, f.log.topic("t").unwrap().meta.id);
    assert_eq!((m.start_offset, m.end_offset, m.files.len()), (0, 10, 1));
    let _: &Manifest = &m;
}

#[test]
fn the_pacer_holds_conversions_to_their_rate() {
    let pacer = crate::tierer::Pacer::new(4 << 20);
    let started = std::time::Instant::now();
    // 1 s of burst is free; 6 MiB more at 4 MiB/s takes about 1.5 s.
    for _ in 0..10 {
        pacer.take(1 << 20);
    }
    let took = started.elapsed().as_secs_f64();
    assert!((1.2..3.0).contains(&took), "{took}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_archive_of_a_topic_deleted_while_stopped_is_purged_at_start() {
    let f = fixture();
    create(&f, "gone", &[]);
    create(&f, "kept", &[]);
    produce(&f, "gone", 2);
    produce(&f, "kept", 2);
    assert_eq!(f.tierer.pass().await.uploaded, 4);
    // "Stopped": the topic goes while no tierer runs.
    f.log.delete_topic("gone").unwrap();
    let t2 = Tierer::new(
        f.archive.clone(),
        f.log.clone(),
        TieringConfig::new(&f.data_dir),
    )
    .unwrap();
    t2.pass().await;
    let left = |prefix: &'static str| {
        let store = f.store.clone();
        async move {
            store
                .inner
                .list(Some(&Path::from(prefix)))
                .collect::<Vec<_>>()
                .await
                .len()
        }
    };
    assert_eq!(
        left("arch/topics/gone").await,
        0,
        "the deleted topic's archive remains"
    );
    assert!(
        left("arch/topics/kept").await > 0,
        "a live topic's archive was purged"
    );
}

/// (nice, scheduling policy) of the calling thread, from
/// /proc/thread-self/stat (fields 19 and 41).
#[cfg(target_os = "linux")]
fn own_priority() -> (i64, u32) {
    // Nice values below 0 do not occur here: conversion only lowers them.
    let [nice, policy] = crate::gate::thread_stat_fields([19, 41]).unwrap();
    (nice as i64, policy as u32)
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn conversion_threads_run_at_their_priority() {
    use crate::tierer::{run_in_background, ConversionPriority};
    const SCHED_OTHER: u32 = 0;
    const SCHED_IDLE: u32 = 5;
    let idle = run_in_background("t-idle".into(), ConversionPriority::Idle, || {
        Ok(own_priority())
    });
    assert_eq!(idle.await.unwrap().1, SCHED_IDLE);
    let low = run_in_background("t-low".into(), ConversionPriority::Low, || {
        Ok(own_priority())
    });
    assert_eq!(low.await.unwrap(), (10, SCHED_OTHER));
    // The caller's own thread is left alone.
    assert_eq!(own_priority().1, SCHED_OTHER);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_with_a_large_backlog_converts_at_low_priority() {
    let f = fixture();
    create(&f, "t", &[]);
    produce(&f, "t", 5);
    let p = f.log.partition("t", 0).unwrap();
    let sizes: Vec<u64> = p.sealed_segments().iter().map(|s| s.size_bytes).collect();
    assert_eq!(sizes.len(), 5);
    let mut config = TieringConfig::new(&f.data_dir);
    // Idle once no more than the last two segments and a half are left.
    config.idle_backlog_bytes = sizes[3] + sizes[4] + sizes[2] / 2;
    let tierer = Tierer::new(f.archive.clone(), f.log.clone(), config).unwrap();
    assert_eq!(tierer.pass().await.uploaded, 5);
    assert_eq!(
        f.archive
            .metrics
            .backlog_conversions
            .load(Ordering::Relaxed),
        3,
        "the first three conversions had more than the limit behind them"
    );
    assert_eq!(f.archive.manifest("t", 0).unwrap().end_offset, 50);
}

#[cfg(target_os = "linux")]
#[test]
fn the_cpu_gate_holds_conversions_while_every_core_is_busy() {
    use crate::gate::CpuGate;
    use std::time::{Duration, Instant};
    let gate = CpuGate::new();
    let cores = gate.cores();
    // Every core spins for 1.5 s.
    let stop_at = Instant::now() + Duration::from_millis(1500);
    let spinners: Vec<_> = (0..cores)
        .map(|_| {
            std::thread::spawn(move || {
                let mut x = 0u64;
                while Instant::now() < stop_at {
                    x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                }
                x
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // A conversion that starts on a busy machine is held at its first
    // call: it does not get its first MiB through before the first sample.
    let mut pass = gate.pass(Duration::from_secs(20));
    let started = Instant::now();
    let slept = pass.wait();
    let resumed = Instant::now();
    for s in spinners {
        s.join().unwrap();
    }
    assert!(
        slept >= Duration::from_millis(500),
        "the gate let a conversion run while {cores} cores were busy (slept {slept:?})"
    );
    // It opened only after several idle samples in a row (at least two
    // whole ones after the spinners stopped), long before its limit.
    assert!(
        resumed >= stop_at + Duration::from_millis(150),
        "resumed {:?} after the cores went idle",
        resumed.saturating_duration_since(stop_at)
    );
    assert!(started.elapsed() < Duration::from_secs(15));
    // Within the same 100 ms an open gate does not sample again.
    assert!(pass.wait().is_zero());
}

#[test]
fn the_cpu_gate_decides_from_samples_with_hysteresis() {
    use crate::gate::{GateState, MachineTicks, Verdict, GATE_SAMPLE, GATE_STALE};
    use std::time::{Duration, Instant};
    // Two cores; 10 ticks per core per 100 ms window.
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let mut idle = 0;
    let mut total = 0;
    // One window of 20 ticks, `idle_ticks` of them idle.
    let mut window = |idle_ticks: u64| {
        idle += idle_ticks;
        total += 20;
        MachineTicks { idle, total }
    };
    let mut g = GateState::default();
    let wait = Some(Verdict::Wait(GATE_SAMPLE));
    // The first call starts a window and decides at its end.
    assert_eq!(g.check(at(0), 2.0, || Some(window(0))), wait);
    let no_read = || -> Option<MachineTicks> { panic!("sampled within a window") };
    assert_eq!(
        g.check(at(40), 2.0, no_read),
        Some(Verdict::Wait(Duration::from_millis(60)))
    );
    // Busy (1 idle tick of 20: 0.1 core): held.
    assert_eq!(g.check(at(100), 2.0, || Some(window(1))), wait);
    // Two spare windows (1 core idle) are not enough to reopen...
    assert_eq!(g.check(at(200), 2.0, || Some(window(10))), wait);
    assert_eq!(g.check(at(300), 2.0, || Some(window(10))), wait);
    // ...a busy one starts the count again...
    assert_eq!(g.check(at(400), 2.0, || Some(window(2))), wait);
    assert_eq!(g.check(at(500), 2.0, || Some(window(10))), wait);
    assert_eq!(g.check(at(600), 2.0, || Some(window(10))), wait);
    // ...and the third spare window in a row opens it.
    assert_eq!(
        g.check(at(700), 2.0, || Some(window(10))),
        Some(Verdict::Go)
    );
    // Open and fresh: go without sampling.
    assert_eq!(g.check(at(750), 2.0, no_read), Some(Verdict::Go));
    // CPU the conversions report counts as spare: the machine was busy only
    // with tiering (20 of 20 ticks), so the gate stays open.
    g.report(20);
    assert_eq!(g.check(at(800), 2.0, || Some(window(0))), Some(Verdict::Go));
    // Open, one busy window closes it at once.
    assert_eq!(g.check(at(900), 2.0, || Some(window(0))), wait);
    // A stale sample is not trusted either way: a new window starts.
    let later = 900 + GATE_STALE.as_millis() as u64 + 1;
    assert_eq!(g.check(at(later), 2.0, || Some(window(20))), wait);
    // And one spare window at its end is enough: the old hold is forgotten.
    assert_eq!(
        g.check(at(later + 100), 2.0, || Some(window(20))),
        Some(Verdict::Go)
    );
    // No /proc: no verdict (the caller goes on).
    let mut blind = GateState::default();
    assert_eq!(blind.check(at(0), 2.0, || None), None);
}
