//! Tests of the log as a whole: append, read, flush, recovery, retention.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use crate::batch::tests::make_batch;
use crate::batch::{self, BatchIter};
use crate::{LogConfig, LogError, LogManager, Partition};

fn open(dir: &std::path::Path) -> Arc<LogManager> {
    LogManager::open(LogConfig::new(dir)).unwrap()
}

fn configs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn append_n(p: &Arc<Partition>, batches: usize, records: i32, ts: i64) -> Vec<i64> {
    (0..batches)
        .map(|i| {
            let b = make_batch(records, 20, ts + i as i64, (-1, -1, -1));
            p.append(&b, 0).unwrap().base_offset
        })
        .collect()
}

fn read_all(p: &Partition) -> Vec<(i64, i32)> {
    let mut out = Vec::new();
    let mut off = p.log_start_offset();
    loop {
        let r = p.read(off, 1 << 20, true).unwrap();
        if r.records.is_empty() {
            return out;
        }
        for (_, h) in BatchIter::new(&r.records, 1 << 30, true) {
            out.push((h.base_offset, h.record_count));
            off = h.next_offset();
        }
    }
}

#[test]
fn appended_batches_get_contiguous_offsets_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let t = log.create_topic("t", 2, BTreeMap::new()).unwrap();
    let p = &t.partitions[1];
    assert_eq!(append_n(p, 3, 4, 1000), vec![0, 4, 8]);
    p.flush().unwrap();
    assert_eq!(p.high_watermark(), 12);
    assert_eq!(read_all(p), vec![(0, 4), (4, 4), (8, 4)]);
    // A read from the middle of a batch starts at that batch.
    let r = p.read(5, 1 << 20, true).unwrap();
    let first = batch::parse_header(&r.records, 1 << 20).unwrap();
    assert_eq!(first.base_offset, 4);
}

#[test]
fn unflushed_data_is_invisible_with_fsync_policy() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let t = log.create_topic("t", 1, BTreeMap::new()).unwrap();
    let p = &t.partitions[0];
    // The flusher threads may flush at any moment, so flush explicitly and
    // assert the invariant rather than the timing: hw <= leo, data readable to hw.
    append_n(p, 2, 1, 0);
    assert!(p.high_watermark() <= p.log_end_offset());
    p.flush().unwrap();
    assert_eq!(p.high_watermark(), 2);
}

#[test]
fn max_bytes_returns_whole_batches_and_oversize_first_batch() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let t = log.create_topic("t", 1, BTreeMap::new()).unwrap();
    let p = &t.partitions[0];
    append_n(p, 4, 10, 0);
    p.flush().unwrap();
    let one = make_batch(10, 20, 0, (-1, -1, -1)).len();
    let r = p.read(0, one * 2 + 5, false).unwrap();
    assert_eq!(r.records.len(), one * 2);
    let r = p.read(0, 10, true).unwrap();
    assert_eq!(
        r.records.len(),
        one,
        "first batch returned whole even if larger"
    );
    let r = p.read(0, 10, false).unwrap();
    assert!(r.records.is_empty());
}

#[test]
fn out_of_range_offsets_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let t = log.create_topic("t", 1, BTreeMap::new()).unwrap();
    let p = &t.partitions[0];
    append_n(p, 1, 1, 0);
    p.flush().unwrap();
    assert!(p.read(1, 100, true).unwrap().records.is_empty());
    assert!(matches!(
        p.read(2, 100, true),
        Err(LogError::OffsetOutOfRange { .. })
    ));
    assert!(matches!(
        p.read(-1, 100, true),
        Err(LogError::OffsetOutOfRange { .. })
    ));
}

#[test]
fn segments_roll_at_segment_bytes_and_reads_cross_them() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let t = log
        .create_topic("t", 1, configs(&[("segment.bytes", "2048")]))
        .unwrap();
    let p = &t.partitions[0];
    append_n(p, 40, 3, 0);
    p.flush().unwrap();
    assert!(p.segment_count() >= 3, "{}", p.segment_count());
    let all = read_all(p);
    assert_eq!(all.len(), 40);
    for (i, (off, n)) in all.iter().enumerate() {
        assert_eq!(*off, i as i64 * 3);
        assert_eq!(*n, 3);
    }
    // The active segment is the last one, and it starts where the
    // sealed ones end.
    let segs = p.segments();
    let last = segs.last().unwrap();
    assert_eq!(p.active_base_offset(), last.base_offset);
    assert!(p.active_base_offset() > 0 && p.active_base_offset() <= 117);
}

#[test]
fn clean_restart_keeps_everything_and_skips_recovery() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = open(dir.path());
        let t = log
            .create_topic(
                "t",
                1,
                configs(&[("segment.bytes", "4096"), ("retention.ms", "-1")]),
            )
            .unwrap();
        append_n(&t.partitions[0], 50, 2, 0);
        log.shutdown().unwrap();
    }
    let log = open(dir.path());
    assert!(log.recovered_clean());
    let t = log.topic("t").unwrap();
    assert_eq!(t.config.retention_ms, -1);
    let p = &t.partitions[0];
    assert_eq!(p.log_end_offset(), 100);
    assert_eq!(read_all(p).len(), 50);
    // The marker is consumed: a crash now must not look clean.
    assert!(!dir.path().join("clean-shutdown").exists());
}

#[test]
fn torn_tail_is_truncated_on_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let seg_path;
    {
        let log = open(dir.path());
        let t = log.create_topic("t", 1, BTreeMap::new()).unwrap();
        let p = &t.partitions[0];
        append_n(p, 5, 2, 0);
        p.flush().unwrap();
        seg_path = p.segments().last().unwrap().path.clone();
        // no shutdown: simulates kill -9
    }
    // Append half a batch, as a crash mid-write would leave.
    let b = make_batch(2, 20, 0, (-1, -1, -1));
    let mut f = OpenOptions::new().append(true).open(&seg_path).unwrap();
    f.write_all(&b[..b.len() / 2]).unwrap();
    drop(f);
    let log = open(dir.path());
    assert!(!log.recovered_clean());
    let p = log.partition("t", 0).unwrap();
    assert_eq!(p.log_end_offset(), 10);
    assert_eq!(
        p.stats
            .truncated_bytes
            .load(std::sync::atomic::Ordering::Relaxed),
        (b.len() / 2) as u64
    );
    assert_eq!(append_n(&p, 1, 1, 0), vec![10]);
}

#[test]
fn corrupt_sealed_segment_is_reported_and_rest_stays_readable() {
    let dir = tempfile::tempdir().unwrap();
    let first_seg;
    {
        let log = open(dir.path());
        let t = log
            .create_topic("t", 1, configs(&[("segment.bytes", "2048")]))
            .unwrap();
        let p = &t.partitions[0];
        append_n(p, 30, 3, 0);
        p.flush().unwrap();
        first_seg = p.segments()[0].clone();
    }
    // Flip a byte inside the first batch's records and drop its index.
    let mut bytes = std::fs::read(&first_seg.path).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&first_seg.path, &bytes).unwrap();
    std::fs::remove_file(first_seg.path.with_extension("index")).unwrap();
    let log = open(dir.path());
    let p = log.partition("t", 0).unwrap();
    assert_eq!(
        p.stats
            .corrupt_segments
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(p.log_end_offset(), 90);
    // Later segments read fine.
    let r = p.read(first_seg.next_offset, 1 << 20, true).unwrap();
    assert!(!r.records.is_empty());
}

#[test]
fn idempotent_retry_is_not_appended_twice_even_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let b = make_batch(3, 10, 0, (7, 0, 0));
    {
        let log = open(dir.path());
        let t = log
            .create_topic("t", 1, configs(&[("segment.bytes", "1024")]))
            .unwrap();
        let p = &t.partitions[0];
        append_n(p, 20, 1, 0);
        assert_eq!(p.append(&b, 0).unwrap().base_offset, 20);
        let again = p.append(&b, 0).unwrap();
        assert!(again.duplicate);
        assert_eq!(again.base_offset, 20);
        p.flush().unwrap();
    }
    // Crash recovery rebuilds producer state from snapshots + scan.
    let log = open(dir.path());
    let p = log.partition("t", 0).unwrap();
    let again = p.append(&b, 0).unwrap();
    assert!(again.duplicate);
    assert_eq!(again.base_offset, 20);
    assert_eq!(p.log_end_offset(), 23);
    let gap = make_batch(1, 10, 0, (7, 0, 9));
    assert!(matches!(
        p.append(&gap, 0),
        Err(LogError::OutOfOrderSequence { .. })
    ));
}

#[test]
fn bad_crc_is_rejected_and_nothing_is_appended() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let t = log.create_topic("t", 1, BTreeMap::new()).unwrap();
    let p = &t.partitions[0];
    let mut b = make_batch(2, 10, 0, (-1, -1, -1));
    let n = b.len();
    b[n - 3] ^= 1;
    assert!(matches!(p.append(&b, 0), Err(LogError::InvalidBatch(_))));
    assert_eq!(p.log_end_offset(), 0);
}

#[test]
fn oversized_batch_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let t = log
        .create_topic("t", 1, configs(&[("max.message.bytes", "100")]))
        .unwrap();
    let b = make_batch(10, 50, 0, (-1, -1, -1));
    assert!(matches!(
        t.partitions[0].append(&b, 0),
        Err(LogError::MessageTooLarge { .. })
    ));
}

#[test]
fn offsets_for_timestamp_find_first_record_at_or_after() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let t = log
        .create_topic("t", 1, configs(&[("segment.bytes", "2048")]))
        .unwrap();
    let p = &t.partitions[0];
    // batch i has records with timestamps 1000*i + 0..4
    for i in 0..30 {
        let b = make_batch(4, 20, 1000 * i, (-1, -1, -1));
        p.append(&b, 0).unwrap();
    }
    p.flush().unwrap();
    assert_eq!(p.offset_for_timestamp(0).unwrap(), Some((0, 0)));
    assert_eq!(p.offset_for_timestamp(5002).unwrap(), Some((22, 5002)));
    assert_eq!(p.offset_for_timestamp(5004).unwrap(), Some((24, 6000)));
    assert_eq!(p.offset_for_timestamp(1_000_000).unwrap(), None);
    assert_eq!(p.max_timestamp(), Some((116, 29003)));
}

#[test]
fn log_append_time_overwrites_timestamps() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let t = log
        .create_topic(
            "t",
            1,
            configs(&[("message.timestamp.type", "LogAppendTime")]),
        )
        .unwrap();
    let p = &t.partitions[0];
    let r = p
        .append(&make_batch(2, 5, 1, (-1, -1, -1)), 777_000)
        .unwrap();
    assert_eq!(r.log_append_time, 777_000);
    p.flush().unwrap();
    let read = p.read(0, 1 << 20, true).unwrap();
    let h = batch::validate(&read.records, 1 << 20).unwrap();
    assert!(h.is_log_append_time());
    assert_eq!(h.max_timestamp, 777_000);
}

#[test]
fn retention_by_bytes_deletes_oldest_whole_segments() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let t = log
        .create_topic(
            "t",
            1,
            configs(&[
                ("segment.bytes", "2048"),
                ("retention.bytes", "4096"),
                ("retention.ms", "-1"),
            ]),
        )
        .unwrap();
    let p = &t.partitions[0];
    append_n(p, 60, 2, 0);
    p.flush().unwrap();
    let before = p.segment_count();
    let deleted = p.enforce_retention(crate::now_ms()).unwrap();
    assert!(deleted > 0);
    assert_eq!(p.segment_count(), before - deleted);
    assert!(p.size_bytes() <= 4096 + 2048);
    let start = p.log_start_offset();
    assert!(start > 0);
    assert!(matches!(
        p.read(0, 100, true),
        Err(LogError::OffsetOutOfRange { .. })
    ));
    assert!(!p.read(start, 100, true).unwrap().records.is_empty());
}

#[test]
fn retention_by_time_deletes_expired_segments_including_active() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let t = log
        .create_topic("t", 1, configs(&[("retention.ms", "1000")]))
        .unwrap();
    let p = &t.partitions[0];
    append_n(p, 10, 2, 5); // timestamps in 1970: long expired
    p.flush().unwrap();
    assert!(p.enforce_retention(crate::now_ms()).unwrap() >= 1);
    assert_eq!(p.log_start_offset(), 20);
    assert_eq!(p.log_end_offset(), 20);
}

#[test]
fn topic_lifecycle_and_name_rules() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    assert!(log.create_topic("bad/name", 1, BTreeMap::new()).is_err());
    assert!(log.create_topic("ok", 0, BTreeMap::new()).is_err());
    log.create_topic("ok", 3, BTreeMap::new()).unwrap();
    assert!(matches!(
        log.create_topic("ok", 1, BTreeMap::new()),
        Err(LogError::TopicExists { .. })
    ));
    log.delete_topic("ok").unwrap();
    assert!(log.topic("ok").is_none());
    log.shutdown().unwrap();
    let log = open(dir.path());
    assert!(log.topics().is_empty());
}

#[test]
fn producer_ids_are_never_reused_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let a = {
        let log = open(dir.path());
        log.allocate_producer_id().unwrap();
        log.allocate_producer_id().unwrap()
    };
    let log = open(dir.path());
    assert!(log.allocate_producer_id().unwrap() > a);
}

#[tokio::test]
async fn wait_durable_returns_once_flusher_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let t = log.create_topic("t", 1, BTreeMap::new()).unwrap();
    let p = t.partitions[0].clone();
    let r = p.append(&make_batch(1, 5, 0, (-1, -1, -1)), 0).unwrap();
    p.wait_durable(r.end_offset, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(p.high_watermark(), 1);
}

/// Waits (bounded) until `log` has run `n` fdatasyncs in all.
fn wait_for_syncs(log: &LogManager, n: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while log.fsync_latency().snapshot().1 < n {
        assert!(std::time::Instant::now() < deadline, "no fsync happened");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_flush_overlapping_a_slow_one_publishes_only_after_it() {
    use crate::segment::{file_name, sync_gate, LOG_SUFFIX};
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let t = log
        .create_topic("gated-overlap", 1, BTreeMap::new())
        .unwrap();
    let p = t.partitions[0].clone();
    append_n(&p, 1, 5, 0);
    p.flush().unwrap();
    assert_eq!(p.high_watermark(), 5);

    // Flush 1 takes the sealed first segment and is held inside its fsync.
    let first = file_name(0, LOG_SUFFIX);
    sync_gate::hold("gated-overlap", &first);
    p.force_roll(0).unwrap();
    sync_gate::wait_for_waiter("gated-overlap", &first);

    // Flush 2 covers a later append in the new segment and finishes first,
    // but must not publish past flush 1, which may still fail.
    let syncs = log.fsync_latency().snapshot().1;
    append_n(&p, 1, 5, 0);
    wait_for_syncs(&log, syncs + 1);
    assert_eq!(p.high_watermark(), 5);
    let waiter = {
        let p = p.clone();
        std::thread::spawn(move || {
            p.flush().unwrap();
            p.high_watermark()
        })
    };
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        !waiter.is_finished(),
        "flush() returned before the held sync"
    );
    assert_eq!(p.high_watermark(), 5);

    sync_gate::release("gated-overlap", &first);
    assert_eq!(waiter.join().unwrap(), 10);
    assert_eq!(p.high_watermark(), 10);
    assert_eq!(read_all(&p), vec![(0, 5), (5, 5)]);
    // The sealed segment's index was written once its own sync finished.
    log.shutdown().unwrap();
    let log = open(dir.path());
    assert_eq!(
        read_all(&log.partition("gated-overlap", 0).unwrap()).len(),
        2
    );
}

#[test]
fn flushes_publish_in_start_order() {
    let mut f = super::partition::FlushesInFlight::new(3);
    let a = f.start(5);
    let b = f.start(8);
    let c = f.start(9);
    assert_eq!(f.finish(b), None);
    assert_eq!(f.finish(c), None);
    assert_eq!(f.finish(a), Some(9));
    assert!(f.pending.is_empty());
    // Unknown or repeated tickets change nothing.
    assert_eq!(f.finish(a), None);
    assert_eq!(f.finish(42), None);
    let d = f.start(12);
    assert_eq!(f.finish(d), Some(12));
    assert_eq!(f.durable_offset, 12);
}

/// Frozen fixtures of every framed format at version 1: a build must keep
/// reading what earlier builds wrote. Regenerate only when adding a version
/// (`cargo test -p sediment-log -- --ignored write_v1_fixtures`), never to
/// make a failing test pass.
mod fixtures {
    use super::*;
    use crate::index::SegmentIndex;
    use crate::producer::ProducerState;

    fn dir() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1")
    }

    fn sample_index() -> SegmentIndex {
        let mut idx = SegmentIndex::new(100);
        let mut pos = 0;
        for i in 0..3 {
            let mut b = make_batch(2, 10, 5000 + i, (-1, -1, -1));
            batch::assign(&mut b, 100 + i * 2, 0);
            let h = batch::validate(&b, 1 << 20).unwrap();
            idx.on_append(100, &h, pos, 0);
            pos += h.size as u64;
        }
        idx
    }

    fn sample_producers() -> ProducerState {
        let mut s = ProducerState::default();
        let mut b = make_batch(3, 1, 0, (42, 7, 10));
        batch::assign(&mut b, 9, 0);
        s.update(&batch::validate(&b, 1 << 20).unwrap());
        s
    }

    #[test]
    #[ignore]
    fn write_v1_fixtures() {
        std::fs::create_dir_all(dir()).unwrap();
        std::fs::write(
            dir().join("00000000000000000100.index"),
            sample_index().encode(100),
        )
        .unwrap();
        std::fs::write(
            dir().join("00000000000000000012.snapshot"),
            sample_producers().encode(12),
        )
        .unwrap();
        let log_dir = tempfile::tempdir().unwrap();
        let log = open(log_dir.path());
        log.create_topic("fixture", 2, configs(&[("retention.ms", "-1")]))
            .unwrap();
        log.shutdown().unwrap();
        for name in ["broker.meta", "clean-shutdown"] {
            std::fs::copy(log_dir.path().join(name), dir().join(name)).unwrap();
        }
        std::fs::copy(
            log_dir.path().join("topics/fixture/topic.meta"),
            dir().join("topic.meta"),
        )
        .unwrap();
    }

    #[test]
    fn v1_index_fixture_still_decodes() {
        let bytes = std::fs::read(dir().join("00000000000000000100.index")).unwrap();
        let idx = SegmentIndex::decode("fixture", &bytes, 100).unwrap();
        let want = sample_index();
        assert_eq!(
            (idx.size, idx.next_offset, idx.max_timestamp),
            (want.size, want.next_offset, want.max_timestamp)
        );
        assert_eq!((&idx.offsets, &idx.times), (&want.offsets, &want.times));
        assert_eq!(idx.encode(100), bytes, "re-encoding changes the v1 bytes");
    }

    #[test]
    fn v1_producer_snapshot_fixture_still_decodes() {
        let bytes = std::fs::read(dir().join("00000000000000000012.snapshot")).unwrap();
        let (offset, state) = ProducerState::decode("fixture", &bytes).unwrap();
        assert_eq!(offset, 12);
        assert_eq!(state, sample_producers());
    }

    #[test]
    fn v1_data_dir_fixture_opens() {
        let d = tempfile::tempdir().unwrap();
        for name in ["broker.meta", "clean-shutdown"] {
            std::fs::copy(dir().join(name), d.path().join(name)).unwrap();
        }
        let tdir = d.path().join("topics/fixture");
        std::fs::create_dir_all(&tdir).unwrap();
        std::fs::copy(dir().join("topic.meta"), tdir.join("topic.meta")).unwrap();
        let log = open(d.path());
        assert!(log.recovered_clean());
        let t = log.topic("fixture").unwrap();
        assert_eq!(t.partitions.len(), 2);
        assert_eq!(t.config.retention_ms, -1);
    }
}

#[test]
fn sealed_index_memory_stays_within_the_cache_budget() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = LogConfig::new(dir.path());
    cfg.index_cache_bytes = 256;
    let log = LogManager::open(cfg.clone()).unwrap();
    let t = log
        .create_topic(
            "t",
            1,
            configs(&[
                ("segment.bytes", "2048"),
                ("index.interval.bytes", "1"),
                ("retention.ms", "-1"),
            ]),
        )
        .unwrap();
    let p = &t.partitions[0];
    append_n(p, 200, 1, 0);
    p.flush().unwrap();
    assert!(p.segment_count() >= 5, "{}", p.segment_count());
    // Every segment's entries were loaded once; the cache keeps few of them.
    assert!(
        log.index_cache_bytes() <= 256 + 512,
        "{}",
        log.index_cache_bytes()
    );
    // Reads through evicted indexes reload them and stay correct, after a
    // clean restart too.
    assert_eq!(read_all(p).len(), 200);
    assert!(log.index_cache_bytes() <= 256 + 512);
    log.shutdown().unwrap();
    let log = LogManager::open(cfg).unwrap();
    let p = log.partition("t", 0).unwrap();
    assert_eq!(read_all(&p).len(), 200);
    assert_eq!(p.offset_for_timestamp(150).unwrap(), Some((150, 150)));
    assert!(log.index_cache_bytes() <= 256 + 512);
}

#[test]
fn clean_restart_reads_only_index_summaries_and_repairs_a_damaged_index_on_use() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig::new(dir.path());
    let seg_path = {
        let log = LogManager::open(cfg.clone()).unwrap();
        let t = log
            .create_topic(
                "t",
                1,
                configs(&[("segment.bytes", "2048"), ("retention.ms", "-1")]),
            )
            .unwrap();
        append_n(&t.partitions[0], 100, 2, 0);
        let first = t.partitions[0].segments()[0].path.clone();
        log.shutdown().unwrap();
        first
    };
    // Damage the entries (not the summary) of the first segment's index.
    let idx_path = seg_path.with_extension("index");
    let mut bytes = std::fs::read(&idx_path).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0xff;
    std::fs::write(&idx_path, &bytes).unwrap();
    let log = LogManager::open(cfg).unwrap();
    assert_eq!(
        log.index_cache_bytes(),
        0,
        "no index entries loaded at start-up"
    );
    let p = log.partition("t", 0).unwrap();
    assert_eq!(read_all(&p).len(), 100);
    assert_eq!(p.offset_for_timestamp(50).unwrap(), Some((99, 50)));
    // The damaged index was rebuilt and rewritten.
    let fixed = std::fs::read(&idx_path).unwrap();
    assert!(crate::index::SegmentIndex::decode("t", &fixed, 0).is_ok());
}

#[test]
fn failed_fsync_stops_writes_and_is_not_reported_clean() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let t = log.create_topic("fail-fsync", 1, BTreeMap::new()).unwrap();
    let ok = log.create_topic("fine", 1, BTreeMap::new()).unwrap();
    let p = &t.partitions[0];
    p.append(&make_batch(1, 5, 0, (-1, -1, -1)), 0).unwrap();
    assert!(p.flush().is_err());
    // Nothing unsynced becomes visible, and no more writes are taken.
    assert_eq!(p.high_watermark(), 0);
    // A producer waiting for durability hears of the failure at once
    // rather than at its timeout.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let waited = rt.block_on(p.wait_durable(5, Duration::from_secs(60)));
    assert!(
        matches!(waited, Err(LogError::PartitionFailed { .. })),
        "{waited:?}"
    );
    assert!(matches!(
        p.append(&make_batch(1, 5, 0, (-1, -1, -1)), 0),
        Err(LogError::PartitionFailed { .. })
    ));
    // Other partitions carry on.
    append_n(&ok.partitions[0], 1, 1, 0);
    ok.partitions[0].flush().unwrap();
    assert_eq!(ok.partitions[0].high_watermark(), 1);
    // A stop is not clean, so the next start recovers.
    assert!(log.shutdown().is_err());
    assert!(!dir.path().join("clean-shutdown").exists());
}

#[test]
fn histogram_buckets_are_cumulative() {
    let h = crate::Histogram::default();
    h.record(Duration::from_micros(50));
    h.record(Duration::from_micros(300));
    h.record(Duration::from_secs(5));
    h.record(Duration::from_secs(60));
    let (buckets, count, sum) = h.snapshot();
    assert_eq!(count, 4);
    // A bound is inclusive; each bucket counts everything at or below it.
    assert_eq!(buckets[0], (50, 1));
    assert_eq!(buckets[3], (500, 2));
    let at = |le_us: u64| buckets.iter().find(|b| b.0 == le_us).unwrap().1;
    assert_eq!(at(5_000_000), 3);
    // Past the last bound: only in +Inf (the total count).
    assert_eq!(buckets.last().unwrap(), &(30_000_000, 3));
    assert_eq!(sum, 65_000_350);
}

#[test]
fn key_ranges_keep_only_segments_holding_the_key_and_follow_the_active_segment() {
    use crate::keys::key_hash;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = LogConfig::new(dir.path());
    cfg.key_cache_bytes = 1 << 20;
    let log = LogManager::open(cfg).unwrap();
    let t = log
        .create_topic(
            "t",
            1,
            configs(&[("segment.bytes", "1024"), ("retention.ms", "-1")]),
        )
        .unwrap();
    let p = &t.partitions[0];
    // 40 batches of 5 records: keys k<batch>, one null key per batch.
    for b in 0..40 {
        let key = format!("k{b}");
        let recs: Vec<batch::SimpleRecord<'_>> = (0..5)
            .map(|i| {
                let k = (i < 4).then_some(key.as_bytes());
                (k, Some(&b"value-value-value"[..]), 1000 + b)
            })
            .collect();
        p.append(&batch::encode_simple(&recs), 0).unwrap();
    }
    p.flush().unwrap();
    assert_eq!(p.high_watermark(), 200);
    let segs = p.segments();
    assert!(segs.len() >= 4, "{} segments", segs.len());
    let holding = |offset: i64| {
        segs.iter()
            .find(|s| s.base_offset <= offset && offset < s.next_offset)
            .map(|s| (s.base_offset, s.next_offset))
            .unwrap()
    };
    // k7 is at offsets 35..39: exactly its segment.
    let (lo, hi) = holding(35);
    assert_eq!(
        p.key_ranges(&[key_hash(b"k7")], 0, 200),
        vec![(lo, hi.min(200))]
    );
    // Narrower asked ranges clip it; a range before it is empty.
    assert_eq!(p.key_ranges(&[key_hash(b"k7")], 36, 37), vec![(36, 37)]);
    assert!(p.key_ranges(&[key_hash(b"k7")], 0, lo).is_empty());
    // Absent keys: nothing to read. Two keys: both segments.
    assert!(p.key_ranges(&[key_hash(b"nope")], 0, 200).is_empty());
    let two = p.key_ranges(&[key_hash(b"k0"), key_hash(b"k39")], 0, 200);
    assert_eq!(two.first().unwrap().0, 0);
    assert_eq!(two.last().unwrap().1, 200);
    assert!(two.len() <= 2);
    assert!(log.key_cache_bytes() > 0);
    // New records in the active segment are found after the set was built,
    // and records past the high watermark are not asked for.
    let recs = [(Some(&b"late"[..]), Some(&b"v"[..]), 5000)];
    p.append(&batch::encode_simple(&recs), 0).unwrap();
    p.flush().unwrap();
    let last = p.segments().last().unwrap().base_offset;
    assert_eq!(
        p.key_ranges(&[key_hash(b"late")], 0, 201),
        vec![(last, 201)]
    );
}

#[test]
fn key_sets_stay_within_the_key_cache_budget_and_stay_correct_after_eviction() {
    use crate::keys::key_hash;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = LogConfig::new(dir.path());
    cfg.key_cache_bytes = 600;
    let log = LogManager::open(cfg).unwrap();
    let t = log
        .create_topic(
            "t",
            1,
            configs(&[("segment.bytes", "2048"), ("retention.ms", "-1")]),
        )
        .unwrap();
    let p = &t.partitions[0];
    for i in 0..300 {
        let key = format!("key-{i}");
        let recs = [(Some(key.as_bytes()), Some(&b"value"[..]), i)];
        p.append(&batch::encode_simple(&recs), 0).unwrap();
    }
    p.flush().unwrap();
    assert!(p.segment_count() >= 5, "{}", p.segment_count());
    for round in 0..2 {
        for i in (0..300).step_by(37) {
            let r = p.key_ranges(&[key_hash(format!("key-{i}").as_bytes())], 0, 300);
            assert_eq!(r.len(), 1, "round {round} key-{i}: {r:?}");
            assert!(r[0].0 <= i && i < r[0].1, "round {round} key-{i}: {r:?}");
            // The set just used is kept even if alone over the budget.
            assert!(
                log.key_cache_bytes() <= 600 + 2048,
                "{}",
                log.key_cache_bytes()
            );
        }
    }
}
