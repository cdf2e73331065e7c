#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{Float64Type, Int32Type, Int64Type};
use object_store::memory::InMemory;
use object_store::path::Path;
use sediment_log::{batch, LogConfig, LogManager};
use sediment_tiering::{Archive, Tierer, TieringConfig};

use crate::{Engine, Outcome};

struct Fixture {
    _dir: Option<tempfile::TempDir>,
    log: Arc<LogManager>,
    archive: Arc<Archive>,
    tierer: Arc<Tierer>,
    engine: Arc<Engine>,
    /// Base record time of the fixture's data.
    t0: i64,
}

fn fixture_at(path: &std::path::Path, dir: Option<tempfile::TempDir>) -> Fixture {
    let mut config = LogConfig::new(path);
    config.tiering = true;
    let log = LogManager::open(config).unwrap();
    let archive = Arc::new(Archive::new(
        Arc::new(InMemory::new()),
        Path::from("arch"),
        "memory://",
        1 << 24,
    ));
    let engine = Engine::new(log.clone(), archive.clone()).unwrap();
    let mut tiering = TieringConfig::new(path);
    tiering.value_columns = Some(engine.value_columns());
    let tierer = Tierer::new(archive.clone(), log.clone(), tiering).unwrap();
    Fixture {
        _dir: dir,
        log,
        archive,
        tierer,
        engine,
        t0: t0(),
    }
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    fixture_at(&path, Some(dir))
}

/// Record times of the spanning fixture: recent, so that archive retention
/// (retention.ms, 7 days by default) keeps them.
fn t0() -> i64 {
    // A fixed hour boundary within the last day keeps the numbers readable.
    (sediment_log::now_ms() / 3_600_000 - 12) * 3_600_000
}

/// Produces `values` to one partition as one batch, timestamps `ts0 + i`.
fn produce(f: &Fixture, topic: &str, partition: i32, values: &[String], ts0: i64) {
    let p = f.log.partition(topic, partition).unwrap();
    let keys: Vec<String> = (0..values.len()).map(|i| format!("k{}", i % 7)).collect();
    let recs: Vec<batch::SimpleRecord<'_>> = values
        .iter()
        .enumerate()
        .map(|(i, v)| (Some(keys[i].as_bytes()), Some(v.as_bytes()), ts0 + i as i64))
        .collect();
    p.append(&batch::encode_simple(&recs), sediment_log::now_ms())
        .unwrap();
    p.flush().unwrap();
}

fn roll(f: &Fixture, topic: &str) {
    for p in &f.log.topic(topic).unwrap().partitions {
        p.force_roll(sediment_log::now_ms()).unwrap();
        p.flush().unwrap();
    }
}

async fn rows(f: &Fixture, sql: &str) -> Vec<RecordBatch> {
    match f
        .engine
        .execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
    {
        Outcome::Rows(_, b) => b,
        Outcome::Command(c) => panic!("{sql}: no rows but {c}"),
    }
}

async fn scalar_i64(f: &Fixture, sql: &str) -> i64 {
    let b = rows(f, sql).await;
    assert_eq!(
        b.iter().map(RecordBatch::num_rows).sum::<usize>(),
        1,
        "{sql}"
    );
    let b = b.into_iter().find(|b| b.num_rows() == 1).unwrap();
    let c = b.column(0);
    match c.data_type() {
        datafusion::arrow::datatypes::DataType::Int64 => c.as_primitive::<Int64Type>().value(0),
        datafusion::arrow::datatypes::DataType::Int32 => {
            i64::from(c.as_primitive::<Int32Type>().value(0))
        }
        datafusion::arrow::datatypes::DataType::Float64 => {
            c.as_primitive::<Float64Type>().value(0) as i64
        }
        other => panic!("{sql}: {other}"),
    }
}

fn json(i: i64) -> String {
    format!(r#"{{"user_id":"u{}","amount":{}}}"#, i % 5, i)
}

/// Two partitions; offsets [0, 300) of each archived (and deleted locally),
/// [300, 500) hot.
async fn spanning_fixture() -> Fixture {
    let f = fixture();
    let t0 = f.t0;
    let mut configs = BTreeMap::new();
    configs.insert("local.retention.bytes".to_string(), "0".to_string());
    f.log.create_topic("trades", 2, configs).unwrap();
    for p in 0..2 {
        for chunk in 0..3 {
            let values: Vec<String> = (0..100).map(|i| json(chunk * 100 + i)).collect();
            produce(&f, "trades", p, &values, t0 + chunk * 100);
        }
    }
    roll(&f, "trades");
    let o = f.tierer.pass().await;
    assert_eq!(o.failed, 0);
    f.log.enforce_retention();
    for p in 0..2 {
        assert_eq!(
            f.log.partition("trades", p).unwrap().log_start_offset(),
            300
        );
        let values: Vec<String> = (300..500).map(json).collect();
        produce(&f, "trades", p, &values, t0 + 300);
    }
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_is_one_table_over_both_tiers_with_no_gap_or_duplicate() {
    let f = spanning_fixture().await;
    assert_eq!(
        scalar_i64(&f, "SELECT count(*) FROM topics.trades").await,
        1000
    );
    assert_eq!(
        scalar_i64(
            &f,
            "SELECT count(DISTINCT (partition, \"offset\")) FROM topics.trades"
        )
        .await,
        1000
    );
    assert_eq!(
        scalar_i64(&f, "SELECT sum(\"offset\") FROM topics.trades").await,
        2 * (0..500).sum::<i64>()
    );
    // Offset and time ranges across the boundary.
    assert_eq!(
        scalar_i64(
            &f,
            "SELECT count(*) FROM topics.trades WHERE \"offset\" >= 250 AND \"offset\" < 350 AND partition = 1"
        )
        .await,
        100
    );
    let t0 = f.t0;
    let sql = format!(
        "SELECT count(*) FROM topics.trades WHERE timestamp >= to_timestamp_millis({}) \
         AND timestamp < to_timestamp_millis({})",
        t0 + 290,
        t0 + 310
    );
    assert_eq!(scalar_i64(&f, &sql).await, 40);
    // Time bounds inside the hot range are applied by the scan alone (no
    // FilterExec), row by row: the same count as a filter it cannot take.
    let within = format!(
        "timestamp BETWEEN to_timestamp_millis({}) AND to_timestamp_millis({})",
        t0 + 400,
        t0 + 409
    );
    let sql = format!("SELECT count(*) FROM topics.trades WHERE {within}");
    assert!(!explain(&f, &sql).await.contains("FilterExec"));
    assert_eq!(scalar_i64(&f, &sql).await, 20);
    let sql = format!("SELECT count(*) FROM topics.trades WHERE {within} OR \"offset\" < 0");
    assert!(explain(&f, &sql).await.contains("FilterExec"));
    assert_eq!(scalar_i64(&f, &sql).await, 20);
    let sql = format!("SELECT count(*) FROM (SELECT * FROM topics.trades WHERE {within} LIMIT 15)");
    assert_eq!(scalar_i64(&f, &sql).await, 15);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_decode_json_and_filters_prune_both_tiers() {
    let f = spanning_fixture().await;
    let out = f
        .engine
        .execute(
            "CREATE STREAM trades (user_id VARCHAR, amount DOUBLE) \
             WITH (KAFKA_TOPIC='trades', VALUE_FORMAT='JSON')",
        )
        .await
        .unwrap();
    assert!(matches!(out, Outcome::Command(ref c) if c == "CREATE STREAM"));
    assert_eq!(
        scalar_i64(&f, "SELECT sum(amount) FROM trades").await,
        2 * (0..500).sum::<i64>()
    );
    assert_eq!(
        scalar_i64(&f, "SELECT count(*) FROM trades WHERE user_id = 'u3'").await,
        200
    );
    assert_eq!(
        scalar_i64(
            &f,
            "SELECT count(*) FROM trades WHERE _offset BETWEEN 290 AND 309 AND _partition = 0"
        )
        .await,
        20
    );
    assert_eq!(
        scalar_i64(&f, "SELECT count(*) FROM trades WHERE _key = 'k3'").await,
        // Keys are k{i % 7} by position within each produce call: three
        // archived calls of 100 records and one hot call of 200, per partition.
        2 * (3 * (0..100).filter(|i| i % 7 == 3).count() + (0..200).filter(|i| i % 7 == 3).count())
            as i64
    );
    // EXPLAIN shows what each tier reads: a filter on the hot range reads
    // no archive file.
    let plan = explain(&f, "SELECT * FROM trades WHERE _offset >= 450").await;
    assert!(plan.contains("HotScanExec"), "{plan}");
    assert!(!plan.contains("DataSourceExec"), "{plan}");
    let plan = explain(&f, "SELECT * FROM trades WHERE _offset < 150").await;
    assert!(plan.contains("DataSourceExec"), "{plan}");
    assert!(!plan.contains("HotScanExec"), "{plan}");
}

/// Key lookups on the hot tier read only the segments whose key sets hold
/// the key, and answer exactly what a full scan answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_lookups_read_only_hot_segments_holding_the_key() {
    let f = fixture();
    let mut configs = BTreeMap::new();
    configs.insert("segment.bytes".to_string(), "2048".to_string());
    let t = f.log.create_topic("keyed", 1, configs).unwrap();
    let p = &t.partitions[0];
    // Batch b: 30 records keyed key-b-0 .. key-b-2, then one with no key.
    for b in 0..12 {
        let keys: Vec<String> = (0..30).map(|i| format!("key-{b}-{}", i % 3)).collect();
        let mut recs: Vec<batch::SimpleRecord<'_>> = keys
            .iter()
            .map(|k| (Some(k.as_bytes()), Some(&b"{}"[..]), f.t0 + b))
            .collect();
        recs.push((None, Some(&b"{}"[..]), f.t0 + b));
        p.append(&batch::encode_simple(&recs), sediment_log::now_ms())
            .unwrap();
    }
    p.flush().unwrap();
    assert!(p.segment_count() >= 4, "{} segments", p.segment_count());
    assert_eq!(f.log.key_cache_bytes(), 0);
    let hex = |k: &str| k.bytes().map(|b| format!("{b:02x}")).collect::<String>();
    let count = |cond: String| {
        let f = &f;
        async move {
            scalar_i64(
                f,
                &format!("SELECT count(*) FROM topics.keyed WHERE {cond}"),
            )
            .await
        }
    };
    let k = hex("key-7-1");
    assert_eq!(count(format!("key = X'{k}'")).await, 10);
    assert!(f.log.key_cache_bytes() > 0, "the lookup built key sets");
    // The same answer from a filter the key sets cannot serve.
    assert_eq!(count(format!("key = X'{k}' OR \"offset\" < 0")).await, 10);
    let both = format!("key IN (X'{k}', X'{}')", hex("key-0-2"));
    assert_eq!(count(both.clone()).await, 20);
    assert_eq!(count(format!("key = X'{}'", hex("absent"))).await, 0);
    assert_eq!(
        count(format!("key = X'{k}' AND key = X'{}'", hex("key-0-2"))).await,
        0
    );
    assert_eq!(count("key IS NULL".into()).await, 12);
    let plan = explain(&f, &format!("SELECT * FROM topics.keyed WHERE {both}")).await;
    assert!(plan.contains("key_filter=2"), "{plan}");
    // Records appended after the key sets were built are found too.
    let late = [(Some(&b"key-7-1"[..]), Some(&b"{}"[..]), f.t0 + 99)];
    p.append(&batch::encode_simple(&late), sediment_log::now_ms())
        .unwrap();
    p.flush().unwrap();
    assert_eq!(count(format!("key = X'{k}'")).await, 11);
    // Streams: `_key = 'text'` takes the same path.
    f.engine
        .execute("CREATE STREAM keyed_s (x INT) WITH (KAFKA_TOPIC='keyed', VALUE_FORMAT='JSON')")
        .await
        .unwrap();
    assert_eq!(
        scalar_i64(&f, "SELECT count(*) FROM keyed_s WHERE _key = 'key-7-1'").await,
        11
    );
}

/// A stream declared before its records are archived: new archive files
/// carry its typed columns, scans read them instead of the JSON (same
/// answers as decoding), filters on them reach the Parquet scan, bad
/// values are counted once at archive time, and Kafka reads of the same
/// files still rebuild the original batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archived_files_carry_the_stream_columns_and_scans_read_them() {
    let f = fixture();
    let t0 = f.t0;
    f.engine
        .execute(
            "CREATE STREAM trades (user_id VARCHAR, amount DOUBLE) \
             WITH (KAFKA_TOPIC='trades', PARTITIONS=2)",
        )
        .await
        .unwrap();
    // A second stream over the topic with other columns: decoded on read.
    f.engine
        .execute(
            "CREATE STREAM trades_wide (user_id VARCHAR, amount DOUBLE, note VARCHAR) \
             WITH (KAFKA_TOPIC='trades')",
        )
        .await
        .unwrap();
    for p in 0..2 {
        let mut values: Vec<String> = (0..300).map(json).collect();
        values[7] = "not json".into();
        produce(&f, "trades", p, &values, t0);
    }
    roll(&f, "trades");
    assert_eq!(f.tierer.pass().await.failed, 0);
    for p in 0..2 {
        let m = f.archive.manifest("trades", p).unwrap();
        let cols: Vec<(&str, &str)> = m.files[0]
            .value_columns
            .iter()
            .map(|c| (c.name.as_str(), c.data_type.as_str()))
            .collect();
        assert_eq!(cols, [("user_id", "Utf8"), ("amount", "Float64")]);
        // The hot tail after the archive.
        let values: Vec<String> = (300..400).map(json).collect();
        produce(&f, "trades", p, &values, t0 + 300);
    }
    // Found while archiving: one per partition, counted once.
    assert_eq!(
        scalar_i64(
            &f,
            "SELECT count(*) FROM sediment.decode_errors WHERE stream = 'trades'"
        )
        .await,
        2
    );
    let plan = explain(&f, "SELECT sum(amount) FROM trades").await;
    assert!(plan.contains("from=typed archive columns"), "{plan}");
    assert!(plan.contains("columns=typed"), "{plan}");
    assert!(plan.contains("from=JSON"), "{plan}");
    let wide = explain(&f, "SELECT sum(amount) FROM trades_wide").await;
    assert!(!wide.contains("typed"), "{wide}");
    let expected = 2 * ((0..400).sum::<i64>() - 7);
    for stream in ["trades", "trades_wide"] {
        assert_eq!(
            scalar_i64(&f, &format!("SELECT sum(amount) FROM {stream}")).await,
            expected
        );
        assert_eq!(
            scalar_i64(
                &f,
                &format!("SELECT count(*) FROM {stream} WHERE user_id IS NULL")
            )
            .await,
            2
        );
        assert_eq!(
            scalar_i64(
                &f,
                &format!("SELECT count(*) FROM {stream} WHERE user_id = 'u3' AND amount >= 100")
            )
            .await,
            2 * (100..400).filter(|i| i % 5 == 3).count() as i64
        );
    }
    // The filter on a declared column reaches the typed Parquet scan.
    let plan = explain(&f, "SELECT count(*) FROM trades WHERE amount > 350").await;
    assert!(plan.contains("predicate=value.amount"), "{plan}");
    assert_eq!(
        scalar_i64(&f, "SELECT count(*) FROM trades WHERE amount > 350").await,
        2 * 49
    );
    // Kafka reads of a typed file rebuild the produced batches.
    match f.archive.read("trades", 1, 0, 1 << 20).await.unwrap() {
        sediment_tiering::ArchiveRead::Batches(b) => {
            let mut n = 0;
            for (at, h) in batch::BatchIter::new(&b, 1 << 24, false) {
                let payload = sediment_log::records::payload(&b[at..at + h.size], &h).unwrap();
                n += sediment_log::records::decode(&h, &payload).unwrap().len();
            }
            assert_eq!(n, 300);
        }
        other => panic!("{other:?}"),
    }
}

/// EXPLAIN names the archive files and row groups a scan will read, before
/// it runs: offset and time bounds are checked against each row group's
/// statistics while planning, and the scan skips the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_lists_the_row_groups_planning_kept() {
    let f = fixture();
    let t0 = f.t0;
    f.log.create_topic("big", 1, BTreeMap::new()).unwrap();
    // 70 batches of 1,000: row groups of offsets [0, 33000), [33000,
    // 66000) and [66000, 70000) (32Ki rows, ended on a batch boundary).
    for b in 0..70 {
        let values: Vec<String> = (0..1000).map(|i| json(b * 1000 + i)).collect();
        produce(&f, "big", 0, &values, t0 + b * 1000);
    }
    roll(&f, "big");
    assert_eq!(f.tierer.pass().await.failed, 0);
    let plan = explain(&f, "SELECT count(*) FROM topics.big").await;
    assert!(
        plan.contains("ArchiveScanExec: files=1 row_groups=3 of 3"),
        "{plan}"
    );
    let sql = "SELECT count(*) FROM topics.big WHERE \"offset\" >= 66000";
    let plan = explain(&f, sql).await;
    assert!(
        plan.contains("ArchiveScanExec: files=1 row_groups=1 of 3"),
        "{plan}"
    );
    // That row group lies wholly inside the bound: no row is tested, and
    // DataFusion left the filter to the scan.
    assert!(!plan.contains("predicate="), "{plan}");
    assert!(!plan.contains("FilterExec"), "{plan}");
    assert_eq!(scalar_i64(&f, sql).await, 4_000);
    // A bound inside a row group: only that one is filtered by row.
    let sql = "SELECT count(*) FROM topics.big WHERE \"offset\" >= 40000";
    let plan = explain(&f, sql).await;
    assert!(
        plan.contains("ArchiveScanExec: files=1 row_groups=2 of 3 filtered_row_groups=1"),
        "{plan}"
    );
    assert_eq!(
        plan.matches("predicate=offset@1 >= 40000").count(),
        1,
        "{plan}"
    );
    assert_eq!(scalar_i64(&f, sql).await, 30_000);
    // Exact at every edge, with and without a limit, over row groups.
    for (sql, n) in [
        ("\"offset\" > 32999 AND \"offset\" < 66001", 33_001),
        ("\"offset\" BETWEEN 0 AND 32999", 33_000),
        ("\"offset\" = 65999 AND \"partition\" = 0", 1),
        ("\"offset\" >= 69999", 1),
        ("\"partition\" IN (1, 5000000000)", 0),
    ] {
        let q = format!("SELECT count(*) FROM topics.big WHERE {sql}");
        assert_eq!(scalar_i64(&f, &q).await, n, "{q}");
        let q = format!("SELECT count(*) FROM (SELECT * FROM topics.big WHERE {sql} LIMIT 40000)");
        assert_eq!(scalar_i64(&f, &q).await, n.min(40_000), "{q}");
    }
    let sql = format!(
        "SELECT count(*) FROM topics.big WHERE timestamp < to_timestamp_millis({})",
        t0 + 10_000
    );
    let plan = explain(&f, &sql).await;
    assert!(
        plan.contains("ArchiveScanExec: files=1 row_groups=1 of 3"),
        "{plan}"
    );
    assert_eq!(scalar_i64(&f, &sql).await, 10_000);
    // Nothing in range: the file is not read at all.
    let sql = "SELECT count(*) FROM topics.big WHERE \"offset\" BETWEEN 33000 AND 32999";
    assert!(!explain(&f, sql).await.contains("ArchiveScanExec"));
    // Typed files of a stream are listed the same way.
    f.engine
        .execute("CREATE STREAM big (user_id VARCHAR, amount DOUBLE) WITH (KAFKA_TOPIC='big')")
        .await
        .unwrap();
    let plan = explain(&f, "SELECT sum(amount) FROM big WHERE _offset < 1000").await;
    assert!(
        plan.contains("ArchiveScanExec: files=1 row_groups=1 of 3"),
        "{plan}"
    );
    assert_eq!(
        scalar_i64(&f, "SELECT sum(amount) FROM big WHERE _offset < 1000").await,
        (0..1000).sum::<i64>()
    );
}

async fn explain(f: &Fixture, sql: &str) -> String {
    let b = rows(f, &format!("EXPLAIN {sql}")).await;
    datafusion::arrow::util::pretty::pretty_format_batches(&b)
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_values_are_null_rows_counted_in_a_system_table() {
    let f = fixture();
    f.engine
        .execute("CREATE STREAM s (a BIGINT, b VARCHAR) WITH (KAFKA_TOPIC='raw', PARTITIONS=1)")
        .await
        .unwrap();
    produce(
        &f,
        "raw",
        0,
        &[
            r#"{"a":1,"b":"x"}"#.to_string(),
            "garbage".to_string(),
            r#"{"a":"not a number"}"#.to_string(),
            r#"{"a":4}"#.to_string(),
        ],
        5,
    );
    assert_eq!(scalar_i64(&f, "SELECT count(*) FROM s").await, 4);
    assert_eq!(scalar_i64(&f, "SELECT count(a) FROM s").await, 2);
    assert_eq!(scalar_i64(&f, "SELECT sum(a) FROM s").await, 5);
    assert_eq!(
        scalar_i64(
            &f,
            "SELECT count(*) FROM sediment.decode_errors WHERE stream = 's'"
        )
        .await,
        2
    );
    assert_eq!(
        scalar_i64(&f, "SELECT min(\"offset\") FROM sediment.decode_errors").await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_definitions_survive_a_restart_and_drop_removes_them() {
    let dir = tempfile::tempdir().unwrap();
    {
        let f = fixture_at(dir.path(), None);
        f.engine
            .execute("CREATE STREAM s (a BIGINT) WITH (KAFKA_TOPIC='t', PARTITIONS=3)")
            .await
            .unwrap();
        produce(&f, "t", 2, &[r#"{"a":7}"#.to_string()], 1);
        f.log.shutdown().unwrap();
    }
    let f = fixture_at(dir.path(), None);
    assert_eq!(
        scalar_i64(&f, "SELECT sum(a) FROM s WHERE _partition = 2").await,
        7
    );
    let b = rows(&f, "SHOW STREAMS").await;
    assert_eq!(b.iter().map(RecordBatch::num_rows).sum::<usize>(), 1);
    f.engine.execute("DROP STREAM s").await.unwrap();
    let e = f.engine.execute("SELECT * FROM s").await.unwrap_err();
    assert_eq!(e.code, "42P01", "{e:?}");
    // The topic stays unless DELETE TOPIC was said.
    assert!(f.log.topic("t").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_carry_sqlstates_and_say_what_to_do() {
    let f = fixture();
    let code = |sql: &'static str| {
        let engine = f.engine.clone();
        async move { engine.execute(sql).await.unwrap_err() }
    };
    let e = code("SELECT * FROM nope").await;
    assert_eq!(
        (e.code, e.message.as_str()),
        ("42P01", "relation \"nope\" does not exist")
    );
    assert!(e.hint.is_some());
    assert_eq!(code("SELEC 1").await.code, "42601");
    let e = code("CREATE STREAM s (a INT) WITH (KAFKA_TOPIC='missing')").await;
    assert_eq!(e.code, "42P01");
    assert!(e.message.contains("PARTITIONS"), "{e:?}");
    let e = code("CREATE STREAM s (a INT) WITH (KAFKA_TOPIC='t', PARTITIONS=1, COLOR='red')").await;
    assert_eq!(e.code, "22023");
    let e =
        code("CREATE STREAM s (a INT) WITH (KAFKA_TOPIC='t', VALUE_FORMAT='AVRO', PARTITIONS=1)")
            .await;
    assert_eq!(e.code, "0A000");
    let e = code("CREATE STREAM s (_offset INT) WITH (KAFKA_TOPIC='t', PARTITIONS=1)").await;
    assert_eq!(e.code, "42701");
    f.engine
        .execute("CREATE STREAM s (a INT) WITH (KAFKA_TOPIC='t', PARTITIONS=1)")
        .await
        .unwrap();
    assert_eq!(
        code("CREATE STREAM s (a INT) WITH (KAFKA_TOPIC='t')")
            .await
            .code,
        "42P07"
    );
    f.engine
        .execute("CREATE STREAM IF NOT EXISTS s (a INT) WITH (KAFKA_TOPIC='t')")
        .await
        .unwrap();
    assert_eq!(code("SELECT nope FROM s").await.code, "42703");
    assert_eq!(code("DROP STREAM nope").await.code, "42P01");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_tables_describe_partitions_and_segments_of_both_tiers() {
    let f = spanning_fixture().await;
    let b = rows(
        &f,
        "SELECT partition, log_start_offset, archive_start_offset, archive_end_offset, \
         local_start_offset, high_watermark FROM sediment.partitions WHERE topic = 'trades' ORDER BY partition",
    )
    .await;
    let b = &b[0];
    assert_eq!(b.num_rows(), 2);
    for (col, want) in [(1, 0), (2, 0), (3, 300), (4, 300), (5, 500)] {
        assert_eq!(
            b.column(col).as_primitive::<Int64Type>().value(1),
            want,
            "column {col}"
        );
    }
    assert_eq!(
        scalar_i64(
            &f,
            "SELECT count(*) FROM sediment.segments WHERE tier = 'archive'"
        )
        .await,
        2
    );
    assert!(
        scalar_i64(
            &f,
            "SELECT count(*) FROM sediment.segments WHERE tier = 'local'"
        )
        .await
            >= 2
    );
    let d = rows(&f, "DESCRIBE topics.trades").await;
    assert_eq!(d.iter().map(RecordBatch::num_rows).sum::<usize>(), 6);
    assert!(f.archive.manifest("trades", 0).is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insert_produces_json_records_keyed_like_a_kafka_producer() {
    let f = fixture();
    f.engine
        .execute("CREATE STREAM s (name VARCHAR, n BIGINT) WITH (KAFKA_TOPIC='t', PARTITIONS=4)")
        .await
        .unwrap();
    let out = f
        .engine
        .execute("INSERT INTO s (_key, name, n) VALUES ('foobar', 'a', 1), ('foobar', 'b', 2)")
        .await
        .unwrap();
    assert!(matches!(out, Outcome::Rows(..)));
    // Kafka's partitioner: murmur2("foobar") = -790332482 -> 0x7fffffff & h % 4.
    let want = ((-790332482i32 as u32 & 0x7fff_ffff) % 4) as i32;
    let p = f.log.partition("t", want).unwrap();
    assert_eq!(p.high_watermark(), 2);
    let read = p.read(0, 1 << 20, true).unwrap().records;
    let h = batch::parse_header(&read, 1 << 20).unwrap();
    let payload = sediment_log::records::payload(&read[..h.size], &h).unwrap();
    let recs = sediment_log::records::decode(&h, &payload).unwrap();
    assert_eq!(recs[0].key, Some(b"foobar".as_slice()));
    assert_eq!(recs[1].value, Some(br#"{"name":"b","n":2}"#.as_slice()));
    // INSERT ... SELECT, and what was inserted reads back.
    f.engine
        .execute("INSERT INTO s (name, n) SELECT name, n * 10 FROM s")
        .await
        .unwrap();
    assert_eq!(scalar_i64(&f, "SELECT sum(n) FROM s").await, 33);
    let e = f
        .engine
        .execute("INSERT INTO s (_offset, n) VALUES (5, 1)")
        .await
        .unwrap_err();
    assert_eq!(e.code, "428C9", "{e:?}");
    let e = f
        .engine
        .execute("INSERT INTO s (_partition, n) VALUES (9, 1)")
        .await
        .unwrap_err();
    assert_eq!(e.code, "22023", "{e:?}");
}

/// The sqllogictest files in `sql/tests/slt/`, each on a fresh engine, run
/// through [`Engine::execute`] (the dispatcher the Postgres front door
/// uses, so Sediment's statements and error mapping are covered).
mod slt {
    use super::*;
    use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
    use sqllogictest::{DBOutput, DefaultColumnType};

    struct Db {
        f: Fixture,
    }

    #[derive(Debug)]
    struct SltError(crate::SqlError);

    impl std::fmt::Display for SltError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{} ({})", self.0.message, self.0.code)
        }
    }

    impl std::error::Error for SltError {}

    #[async_trait::async_trait]
    impl sqllogictest::AsyncDB for Db {
        type Error = SltError;
        type ColumnType = DefaultColumnType;

        async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, SltError> {
            match self.f.engine.execute(sql).await.map_err(SltError)? {
                Outcome::Command(_) => Ok(DBOutput::StatementComplete(0)),
                Outcome::Rows(schema, batches) => {
                    let options = FormatOptions::default().with_null("NULL");
                    let mut rows = Vec::new();
                    for b in &batches {
                        let formatters: Vec<_> = b
                            .columns()
                            .iter()
                            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).unwrap())
                            .collect();
                        for r in 0..b.num_rows() {
                            rows.push(formatters.iter().map(|f| f.value(r).to_string()).collect());
                        }
                    }
                    Ok(DBOutput::Rows {
                        types: vec![DefaultColumnType::Any; schema.fields().len()],
                        rows,
                    })
                }
            }
        }

        async fn shutdown(&mut self) {}

        fn engine_name(&self) -> &str {
            "sediment"
        }

        fn error_sql_state(err: &SltError) -> Option<String> {
            Some(err.0.code.to_string())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqllogictest_files() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/slt");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "slt"))
            .collect();
        files.sort();
        assert!(!files.is_empty(), "no .slt files in {}", dir.display());
        for file in files {
            let mut runner = sqllogictest::Runner::new(|| async { Ok(Db { f: fixture() }) });
            runner
                .run_file_async(&file)
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        }
    }
}

/// Push queries follow the log: from the high watermark by default, from
/// the beginning of history (archive, then hot, then new records, with no
/// gap or duplicate at either handover) with `auto.offset.reset` =
/// `earliest`; filters apply to live rows; LIMIT ends them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_queries_follow_the_log_from_latest_or_earliest() {
    use crate::{OffsetReset, Properties};
    use futures::StreamExt;
    let f = spanning_fixture().await;
    f.engine
        .execute(
            "CREATE STREAM trades (user_id VARCHAR, amount DOUBLE) WITH (KAFKA_TOPIC='trades')",
        )
        .await
        .unwrap();
    let start = |sql: &str, reset: OffsetReset| {
        let q = crate::push::parse(sql).unwrap().unwrap();
        let engine = f.engine.clone();
        async move {
            engine
                .push(
                    &q,
                    &Properties {
                        offset_reset: reset,
                    },
                )
                .await
                .unwrap()
        }
    };
    let collect = |p: crate::push::PushStream| async move {
        let batches: Vec<RecordBatch> = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            p.stream.map(|b| b.unwrap()).collect::<Vec<_>>(),
        )
        .await
        .expect("the push query ended");
        batches
    };
    let column_i64 = |batches: &[RecordBatch], i: usize| -> Vec<i64> {
        batches
            .iter()
            .flat_map(|b| {
                let c = datafusion::arrow::compute::cast(
                    b.column(i),
                    &datafusion::arrow::datatypes::DataType::Int64,
                )
                .unwrap();
                c.as_primitive::<Int64Type>().values().to_vec()
            })
            .collect()
    };

    // Latest: only records produced after the start, filtered.
    let latest = start(
        "SELECT _partition, amount FROM trades WHERE amount >= 600 EMIT CHANGES LIMIT 4",
        OffsetReset::Latest,
    )
    .await;
    let values: Vec<String> = (598..610).map(json).collect();
    produce(&f, "trades", 0, &values, f.t0 + 1000);
    let got = collect(latest).await;
    assert_eq!(column_i64(&got, 1), vec![600, 601, 602, 603]);
    assert_eq!(column_i64(&got, 0), vec![0; 4]);

    // Earliest: offsets 0..512 of partition 1 (300 archived, 200 hot at
    // the start, 12 produced after), each once, in order.
    let earliest = start(
        "SELECT _offset FROM trades WHERE _partition = 1 EMIT CHANGES LIMIT 512",
        OffsetReset::Earliest,
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    produce(&f, "trades", 1, &values, f.t0 + 1000);
    let got = collect(earliest).await;
    assert_eq!(column_i64(&got, 0), (0..512).collect::<Vec<_>>());

    // A raw topic, with an exact time bound on live rows.
    let topic = start(
        &format!(
            "SELECT \"offset\" FROM topics.trades WHERE partition = 0 \
             AND timestamp >= to_timestamp_millis({}) EMIT CHANGES LIMIT 2",
            f.t0 + 5000
        ),
        OffsetReset::Latest,
    )
    .await;
    produce(&f, "trades", 0, &values[..2], f.t0 + 4000);
    produce(&f, "trades", 0, &values[..2], f.t0 + 5000);
    let got = collect(topic).await;
    assert_eq!(column_i64(&got, 0), vec![514, 515]);

    // What a push query cannot do is refused with a reason.
    let q = crate::push::parse("SELECT user_id FROM trades ORDER BY user_id EMIT CHANGES")
        .unwrap()
        .unwrap();
    let e = f
        .engine
        .push(&q, &Properties::default())
        .await
        .err()
        .unwrap();
    assert_eq!(e.code, "0A000", "{e:?}");
    let q = crate::push::parse("INSERT INTO trades (user_id) VALUES ('x') EMIT CHANGES")
        .unwrap()
        .unwrap();
    let e = f
        .engine
        .push(&q, &Properties::default())
        .await
        .err()
        .unwrap();
    assert_eq!(e.code, "42601", "{e:?}");
}

/// Every row of `batches` as text, one string per row.
fn row_strings(batches: &[RecordBatch]) -> Vec<String> {
    use datafusion::arrow::util::display::array_value_to_string;
    let mut out = Vec::new();
    for b in batches {
        for r in 0..b.num_rows() {
            let cells: Vec<String> = b
                .columns()
                .iter()
                .map(|c| array_value_to_string(c, r).unwrap())
                .collect();
            out.push(cells.join("|"));
        }
    }
    out
}

/// The `events` stream over 3 partitions of random keyed records
/// (13 keys, NULLs now and then, ten minutes of out-of-order record time),
/// `per_partition` records each, the first half of each archived.
async fn random_events(f: &Fixture, per_partition: usize, seed: u64) {
    f.engine
        .execute(
            "CREATE STREAM events (k VARCHAR, x BIGINT, y DOUBLE, name VARCHAR) \
             WITH (KAFKA_TOPIC='events', PARTITIONS=3)",
        )
        .await
        .unwrap();
    let mut seed = seed;
    let mut next = move |n: u64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % n
    };
    for p in 0..3 {
        for chunk in 0..4 {
            let recs: Vec<(String, String, i64)> = (0..per_partition / 4)
                .map(|_| {
                    let k = format!("k{}", next(13));
                    // A NULL now and then: COUNT(x), SUM, MIN, MAX skip it.
                    let x = if next(10) == 0 {
                        "null".to_string()
                    } else {
                        next(1000).to_string()
                    };
                    let y = next(400) as f64 * 0.5;
                    let value = format!(r#"{{"k":"{k}","x":{x},"y":{y},"name":"n{}"}}"#, next(50));
                    // Up to ten minutes of record time, out of order.
                    (k, value, f.t0 + next(600_000) as i64)
                })
                .collect();
            let part = f.log.partition("events", p).unwrap();
            let batch: Vec<batch::SimpleRecord<'_>> = recs
                .iter()
                .map(|(k, v, ts)| (Some(k.as_bytes()), Some(v.as_bytes()), *ts))
                .collect();
            part.append(&batch::encode_simple(&batch), sediment_log::now_ms())
                .unwrap();
            part.flush().unwrap();
            if chunk == 1 {
                // Half of the history in the archive.
                part.force_roll(sediment_log::now_ms()).unwrap();
            }
        }
    }
    assert_eq!(f.tierer.pass().await.failed, 0);
}

/// Every maintained aggregate, over the columns of [`random_events`].
const AGGREGATES: &str = "count(*) AS n, count(x) AS nx, sum(x) AS sx, min(x) AS lo, max(x) AS hi, \
                          avg(y) AS ay, sum(y) AS sy, min(name) AS first_name, max(_timestamp) AS last_ts";

/// Random keyed records with out-of-order timestamps in 3 partitions; for
/// each query form (no window, tumbling, hopping) and every maintained
/// aggregate, the last change of each group from a push query over the
/// whole history equals the batch result of the same SQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuous_aggregates_equal_the_batch_result() {
    use crate::{OffsetReset, Properties};
    use futures::StreamExt;
    let f = fixture();
    let per_partition = 400;
    random_events(&f, per_partition, 42).await;
    let aggregates = AGGREGATES;
    let filter = format!("_offset < {per_partition}");
    for (keys, window) in [
        ("k", ""),
        (
            "k, windowstart, windowend",
            "WINDOW TUMBLING (SIZE 1 MINUTE, GRACE PERIOD 1 HOUR)",
        ),
        (
            "k, windowstart, windowend",
            "WINDOW HOPPING (SIZE 2 MINUTES, ADVANCE BY 30 SECONDS, GRACE PERIOD 1 HOUR)",
        ),
    ] {
        let group_by = keys
            .split(", ")
            .filter(|k| !k.starts_with("window"))
            .collect::<Vec<_>>()
            .join(", ");
        let batch_sql = format!(
            "SELECT {keys}, {aggregates} FROM events {window} WHERE {filter} GROUP BY {group_by}"
        );
        let mut expected = row_strings(&rows(&f, &format!("{batch_sql} ORDER BY {keys}")).await);
        assert!(expected.len() >= 13, "{batch_sql}: {expected:?}");
        let q = crate::push::parse(&format!("{batch_sql} EMIT CHANGES"))
            .unwrap()
            .unwrap();
        let push = f
            .engine
            .push(
                &q,
                &Properties {
                    offset_reset: OffsetReset::Earliest,
                },
            )
            .await
            .unwrap_or_else(|e| panic!("{batch_sql}: {e:?}"));
        let changes: Vec<RecordBatch> = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            push.stream.map(|b| b.unwrap()).collect::<Vec<_>>(),
        )
        .await
        .expect("the bounded push query ended");
        // The last change of each group is its value.
        let key_columns = keys.split(", ").count();
        let mut last = std::collections::BTreeMap::new();
        for row in row_strings(&changes) {
            let key: Vec<&str> = row.split('|').take(key_columns).collect();
            last.insert(key.join("|"), row.clone());
        }
        let mut got: Vec<String> = last.into_values().collect();
        got.sort();
        expected.sort();
        assert_eq!(got, expected, "{batch_sql}");
    }
}

/// Tables over random out-of-order records in 3 partitions (half of them
/// archived), with every maintained aggregate, with no window, tumbling
/// and hopping windows: each equals the batch query over the same records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_of_every_window_equal_the_batch_result() {
    let f = fixture();
    random_events(&f, 400, 23).await;
    for (table, keys, window) in [
        ("plain", "k", ""),
        (
            "tumbling",
            "k, windowstart, windowend",
            "WINDOW TUMBLING (SIZE 1 MINUTE, GRACE PERIOD 1 HOUR)",
        ),
        (
            "hopping",
            "k, windowstart, windowend",
            "WINDOW HOPPING (SIZE 2 MINUTES, ADVANCE BY 30 SECONDS, GRACE PERIOD 1 HOUR)",
        ),
    ] {
        let query = format!("SELECT {keys}, {AGGREGATES} FROM events {window} GROUP BY k");
        f.engine
            .execute(&format!("CREATE TABLE {table} AS {query} EMIT CHANGES"))
            .await
            .unwrap_or_else(|e| panic!("{table}: {e:?}"));
        let columns = "n, nx, sx, lo, hi, ay, sy, first_name, last_ts";
        converge(
            &f,
            &format!("SELECT {keys}, {columns} FROM {table} ORDER BY {keys}"),
            &format!("{query} ORDER BY {keys}"),
        )
        .await;
    }
}

/// Creates the one-partition stream `clicks (k VARCHAR)` and starts push
/// query `sql` over it (from the latest offset).
async fn clicks_push(f: &Fixture, sql: &str) -> crate::push::PushStream {
    f.engine
        .execute("CREATE STREAM clicks (k VARCHAR) WITH (KAFKA_TOPIC='clicks', PARTITIONS=1)")
        .await
        .unwrap();
    let q = crate::push::parse(sql).unwrap().unwrap();
    f.engine
        .push(&q, &crate::Properties::default())
        .await
        .unwrap()
}

/// A record later than its window's grace period is dropped and counted;
/// EMIT FINAL emits each window once, when stream time passes its end
/// plus grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_records_are_dropped_and_final_windows_emit_once() {
    use futures::StreamExt;
    let f = fixture();
    let push = clicks_push(
        &f,
        "SELECT k, windowstart, count(*) AS n FROM clicks \
         WINDOW TUMBLING (SIZE 10 SECONDS, GRACE PERIOD 2 SECONDS) GROUP BY k EMIT FINAL",
    )
    .await;
    let t0 = f.t0;
    let send = |ts: i64| produce(&f, "clicks", 0, &[r#"{"k":"a"}"#.to_string()], ts);
    send(t0 + 1_000); // window [0, 10s)
    send(t0 + 9_000);
    send(t0 + 11_000); // window [10s, 20s); [0, 10s) is still in grace
    send(t0 + 5_000); // in grace: counted in [0, 10s)
    send(t0 + 12_500); // stream time passes 10s + 2s: [0, 10s) closes
    send(t0 + 3_000); // late: dropped
    send(t0 + 25_000); // [10s, 20s) closes
    let mut stream = push.stream;
    let mut counts: Vec<i64> = Vec::new();
    while counts.len() < 2 {
        let b = tokio::time::timeout(std::time::Duration::from_secs(20), stream.next())
            .await
            .expect("two final windows")
            .unwrap()
            .unwrap();
        counts.extend(b.column(2).as_primitive::<Int64Type>().values().iter());
    }
    assert_eq!(counts, vec![3, 2]);
    // The query still runs (no LIMIT): it shows the record it dropped.
    let queries = rows(&f, "SELECT late_records FROM sediment.queries").await;
    let late = queries[0].column(0).as_primitive::<Int64Type>().value(0);
    assert_eq!(late, 1);
}

/// CREATE TABLE AS maintains a table that pull queries read and writes
/// its changelog to a topic; CREATE STREAM AS writes a stream; both are
/// listed, survive a restart (resumed from their checkpoints), and
/// TERMINATE / DROP stop them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_queries_maintain_tables_and_streams() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let wait = |f: &Fixture, sql: String, want: i64| {
        let engine = f.engine.clone();
        async move {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            loop {
                let got = match engine.execute(&sql).await {
                    Ok(Outcome::Rows(_, b))
                        if b.iter().map(RecordBatch::num_rows).sum::<usize>() == 1 =>
                    {
                        let c = datafusion::arrow::compute::cast(
                            b.iter().find(|b| b.num_rows() == 1).unwrap().column(0),
                            &datafusion::arrow::datatypes::DataType::Int64,
                        )
                        .unwrap();
                        Some(c.as_primitive::<Int64Type>().value(0))
                    }
                    _ => None,
                };
                if got == Some(want) {
                    return;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{sql}: {got:?}, want {want}"
                );
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    };
    {
        let f = fixture_at(&path, None);
        f.engine
            .execute("CREATE STREAM trades (user_id VARCHAR, amount DOUBLE) WITH (KAFKA_TOPIC='trades', PARTITIONS=2)")
            .await
            .unwrap();
        let values: Vec<String> = (0..100).map(json).collect();
        produce(&f, "trades", 0, &values, f.t0);
        f.engine
            .execute(
                "CREATE TABLE totals AS SELECT user_id, count(*) AS n, sum(amount) AS total \
                 FROM trades GROUP BY user_id EMIT CHANGES",
            )
            .await
            .unwrap();
        f.engine
            .execute("CREATE STREAM big WITH (PARTITIONS=1) AS SELECT user_id, amount FROM trades WHERE amount >= 95")
            .await
            .unwrap();
        // Pull queries see the history, then new records.
        wait(&f, "SELECT n FROM totals WHERE user_id = 'u3'".into(), 20).await;
        let more: Vec<String> = (100..110).map(json).collect();
        produce(&f, "trades", 1, &more, f.t0 + 100);
        wait(&f, "SELECT n FROM totals WHERE user_id = 'u3'".into(), 22).await;
        wait(&f, "SELECT count(*) FROM totals".into(), 5).await;
        wait(
            &f,
            "SELECT sum(total) FROM totals".into(),
            (0..110).sum::<i64>(),
        )
        .await;
        // The output stream is a stream; the changelog a topic.
        wait(&f, "SELECT count(*) FROM big".into(), 15).await;
        wait(
            &f,
            "SELECT count(DISTINCT key) FROM topics.totals".into(),
            5,
        )
        .await;
        let queries = row_strings(&rows(&f, "SHOW QUERIES").await);
        assert!(
            queries
                .iter()
                .any(|q| q.starts_with("CTAS_TOTALS|PERSISTENT")),
            "{queries:?}"
        );
        assert!(
            queries.iter().any(|q| q.starts_with("CSAS_BIG|PERSISTENT")),
            "{queries:?}"
        );
        f.engine.stop_persistent_queries().await;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        f.log.shutdown().unwrap();
    }
    // After a restart the queries resume from their checkpoints: the
    // table is restored, and nothing is appended twice.
    let f = fixture_at(&path, Some(dir));
    assert_eq!(f.engine.start_persistent_queries().await.unwrap(), 2);
    wait(&f, "SELECT n FROM totals WHERE user_id = 'u3'".into(), 22).await;
    let later: Vec<String> = (110..115).map(json).collect();
    produce(&f, "trades", 0, &later, f.t0 + 200);
    wait(&f, "SELECT n FROM totals WHERE user_id = 'u3'".into(), 23).await;
    // 110..115 all have amount >= 95: 15 + 5 rows, not the 15 again.
    wait(&f, "SELECT count(*) FROM big".into(), 20).await;
    let tag = |o: Outcome| match o {
        Outcome::Command(c) => c,
        Outcome::Rows(..) => panic!("rows, not a command"),
    };
    assert_eq!(
        tag(f.engine.execute("TERMINATE csas_big").await.unwrap()),
        "TERMINATE"
    );
    assert_eq!(
        tag(f.engine.execute("DROP TABLE totals").await.unwrap()),
        "DROP TABLE"
    );
    assert!(f.engine.execute("SELECT * FROM totals").await.is_err());
    let e = f.engine.execute("TERMINATE nope").await.unwrap_err();
    assert_eq!(e.code, "42704");
    let e = f
        .engine
        .execute("CREATE TABLE bad AS SELECT user_id FROM trades")
        .await
        .unwrap_err();
    assert_eq!(e.code, "42601", "{e:?}");
}

/// A table whose HAVING clause stops admitting a group deletes its row
/// (a tombstone in the changelog) and admits it again later: over random
/// records and then live ones it equals the batch query with the same
/// HAVING, and after a restart it still does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn having_deletes_the_groups_it_stops_admitting() {
    const SELECT: &str = "SELECT k, count(*) AS n, sum(x) AS sx FROM events";
    const HAVING: &str = "GROUP BY k HAVING count(*) % 2 = 0 AND sum(x) IS NOT NULL";
    const TABLE: &str = "SELECT k, n, sx FROM evens ORDER BY k";
    fn batch_sql() -> String {
        format!("{SELECT} {HAVING} ORDER BY k")
    }
    /// Whether the table has k1.
    async fn admitted(f: &Fixture) -> bool {
        let b = rows(f, "SELECT n FROM evens WHERE k = 'k1'").await;
        b.iter().map(RecordBatch::num_rows).sum::<usize>() == 1
    }
    /// Whether k1's last changelog record is a tombstone.
    async fn tombstone_last(f: &Fixture) -> Option<bool> {
        let b = rows(
            f,
            "SELECT value IS NULL FROM topics.evens WHERE CAST(key AS VARCHAR) = 'k1' \
             ORDER BY partition, \"offset\"",
        )
        .await;
        row_strings(&b).last().map(|gone| gone == "true")
    }
    /// One more record of k1, which flips its count's parity: its row
    /// goes (a tombstone) or comes back (a record).
    async fn flip(f: &Fixture, x: i64, was: bool) {
        let v = format!(r#"{{"k":"k1","x":{x},"y":1.0,"name":"z"}}"#);
        produce(f, "events", 0, &[v], f.t0);
        converge(f, TABLE, &batch_sql()).await;
        assert_eq!(admitted(f).await, !was);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while tombstone_last(f).await != Some(was) {
            assert!(
                std::time::Instant::now() < deadline,
                "k1's last changelog record"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let f = fixture_at(&path, None);
    random_events(&f, 400, 11).await;
    f.engine
        .execute(&format!(
            "CREATE TABLE evens AS {SELECT} {HAVING} EMIT CHANGES"
        ))
        .await
        .unwrap();
    converge(&f, TABLE, &batch_sql()).await;
    let was = admitted(&f).await;
    flip(&f, 1, was).await;
    flip(&f, 2, !was).await;
    f.engine.stop_persistent_queries().await;
    f.log.shutdown().unwrap();
    drop(f);
    let f = fixture_at(&path, Some(dir));
    assert_eq!(f.engine.start_persistent_queries().await.unwrap(), 1);
    converge(&f, TABLE, &batch_sql()).await;
    assert_eq!(admitted(&f).await, was);
    flip(&f, 3, was).await;
}

/// A table's changelog gets a record only for a row that changed: input
/// that leaves a group's row as it was writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_that_did_not_change_write_nothing_to_the_changelog() {
    let f = fixture();
    f.engine
        .execute("CREATE STREAM trades (user_id VARCHAR, amount DOUBLE) WITH (KAFKA_TOPIC='trades', PARTITIONS=1)")
        .await
        .unwrap();
    produce(
        &f,
        "trades",
        0,
        &(0..10).map(json).collect::<Vec<_>>(),
        f.t0,
    );
    f.engine
        .execute("CREATE TABLE tops WITH (PARTITIONS=1) AS SELECT user_id, max(amount) AS best FROM trades GROUP BY user_id")
        .await
        .unwrap();
    converge(&f, "SELECT sum(best) FROM tops", "SELECT 35.0::DOUBLE").await;
    // Every row is in the changelog once the table is complete.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut before = 0;
    while before < 5 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        before = scalar_i64(&f, "SELECT count(DISTINCT key) FROM topics.tops").await;
    }
    assert_eq!(before, 5);
    let before = scalar_i64(&f, "SELECT count(*) FROM topics.tops").await;
    // One batch: a smaller amount for every user (no change), then a new
    // maximum for u0 (one change).
    let mut values: Vec<String> = (0..5).map(json).collect();
    values.push(json(100));
    produce(&f, "trades", 0, &values, f.t0 + 100);
    converge(
        &f,
        "SELECT best FROM tops WHERE user_id = 'u0'",
        "SELECT 100.0::DOUBLE",
    )
    .await;
    // The one batch of input is one commit, whose output is appended in
    // one batch: u0's record comes alone.
    converge(
        &f,
        "SELECT count(*) FROM topics.tops",
        &format!("SELECT {}::BIGINT", before + 1),
    )
    .await;
    tokio::time::sleep(crate::persistent::COMMIT_INTERVAL * 3).await;
    assert_eq!(
        scalar_i64(&f, "SELECT count(*) FROM topics.tops").await,
        before + 1
    );
}

/// Waits until `got` returns the rows of `want` (30 s at most).
async fn converge(f: &Fixture, got: &str, want: &str) {
    let want = row_strings(&rows(f, want).await);
    assert!(!want.is_empty(), "{want:?}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let have = match f.engine.execute(got).await {
            Ok(Outcome::Rows(_, b)) => row_strings(&b),
            _ => Vec::new(),
        };
        if have == want {
            return;
        }
        if std::time::Instant::now() > deadline {
            assert_eq!(have, want, "{got}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// A session-windowed table (every maintained aggregate) equals the
/// sessions of the batch query over the same out-of-order records:
/// sessions grow and merge as records arrive, the table deletes the rows
/// they replace, and its changelog, read key by key to its last record,
/// holds the same sessions (tombstones for the replaced ones). After a
/// restart from the checkpoint and more records, it still does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_window_tables_equal_the_batch_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let batch_sql = format!(
        "SELECT k, windowstart, windowend, {AGGREGATES} FROM events \
         WINDOW SESSION (5 SECONDS, GRACE PERIOD 1 HOUR) WHERE x IS DISTINCT FROM 7 GROUP BY k \
         ORDER BY k, windowstart"
    );
    let table_sql =
        "SELECT k, windowstart, windowend, n, nx, sx, lo, hi, ay, sy, first_name, last_ts \
                     FROM sess ORDER BY k, windowstart";
    // The changelog's live keys: each key's last record, tombstones
    // removing it.
    let changelog = |f: &Fixture| {
        let engine = f.engine.clone();
        async move {
            let Outcome::Rows(_, b) = engine
                .execute(
                    "SELECT CAST(key AS VARCHAR), value IS NULL FROM topics.sess \
                     ORDER BY partition, \"offset\"",
                )
                .await
                .unwrap()
            else {
                panic!("no rows");
            };
            let mut live = std::collections::BTreeSet::new();
            let mut tombstones = 0;
            for row in row_strings(&b) {
                let (key, gone) = row.rsplit_once('|').unwrap();
                if gone == "true" {
                    live.remove(key);
                    tombstones += 1;
                } else {
                    live.insert(key.to_string());
                }
            }
            (live.len(), tombstones)
        }
    };
    {
        let f = fixture_at(&path, None);
        random_events(&f, 400, 7).await;
        f.engine
            .execute(&format!(
                "CREATE TABLE sess AS SELECT k, windowstart, windowend, {AGGREGATES} FROM events \
                 WINDOW SESSION (5 SECONDS, GRACE PERIOD 1 HOUR) WHERE x IS DISTINCT FROM 7 \
                 GROUP BY k EMIT CHANGES"
            ))
            .await
            .unwrap();
        converge(&f, table_sql, &batch_sql).await;
        let sessions = rows(&f, &batch_sql).await;
        let sessions: usize = sessions.iter().map(RecordBatch::num_rows).sum();
        // Ten minutes of records over 13 keys, 5 s gaps: many sessions,
        // some of them merged from several.
        assert!(sessions > 100, "{sessions}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let (live, tombstones) = changelog(&f).await;
            if live == sessions {
                assert!(tombstones > 0);
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{live} != {sessions}");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        f.engine.stop_persistent_queries().await;
        f.log.shutdown().unwrap();
    }
    let f = fixture_at(&path, Some(dir));
    assert_eq!(f.engine.start_persistent_queries().await.unwrap(), 1);
    // More records, between and across the sessions there are.
    let more: Vec<(String, String, i64)> = (0..300)
        .map(|i| {
            let k = format!("k{}", i % 13);
            let v = format!(r#"{{"k":"{k}","x":{i},"y":1.5,"name":"m{i}"}}"#);
            (k, v, f.t0 + (i * 7_919 % 600_000))
        })
        .collect();
    let part = f.log.partition("events", 1).unwrap();
    let recs: Vec<batch::SimpleRecord<'_>> = more
        .iter()
        .map(|(k, v, ts)| (Some(k.as_bytes()), Some(v.as_bytes()), *ts))
        .collect();
    part.append(&batch::encode_simple(&recs), sediment_log::now_ms())
        .unwrap();
    part.flush().unwrap();
    converge(&f, table_sql, &batch_sql).await;
}

/// Session windows over a live stream: a record within the gap extends
/// its key's session (even out of order), a session closes when stream
/// time passes its end plus gap plus grace, EMIT FINAL emits it once then,
/// and a record that would extend a closed session is dropped as late.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_windows_close_and_emit_final_once() {
    use futures::StreamExt;
    let f = fixture();
    let push = clicks_push(
        &f,
        "SELECT k, windowstart, windowend, count(*) AS n FROM clicks \
         WINDOW SESSION (10 SECONDS, GRACE PERIOD 2 SECONDS) GROUP BY k EMIT FINAL",
    )
    .await;
    let t0 = f.t0;
    let send = |ts: i64| produce(&f, "clicks", 0, &[r#"{"k":"a"}"#.to_string()], ts);
    send(t0 + 1_000); // session [1s, 1s]
    send(t0 + 5_000); // [1s, 5s]
    send(t0 + 30_000); // a new session; [1s, 5s] closes (30 > 5 + 10 + 2)
    send(t0 + 3_000); // would extend the closed session: late
    send(t0 + 36_000); // [30s, 36s]
    send(t0 + 20_000); // out of order, within the gap: [20s, 36s]
    send(t0 + 60_000); // [20s, 36s] closes
    let mut stream = push.stream;
    let mut got: Vec<(i64, i64, i64)> = Vec::new();
    while got.len() < 2 {
        let b = tokio::time::timeout(std::time::Duration::from_secs(20), stream.next())
            .await
            .expect("two final sessions")
            .unwrap()
            .unwrap();
        let ms = |c: usize| {
            datafusion::arrow::compute::cast(
                b.column(c),
                &datafusion::arrow::datatypes::DataType::Int64,
            )
            .unwrap()
        };
        let (s, e) = (ms(1), ms(2));
        for r in 0..b.num_rows() {
            got.push((
                s.as_primitive::<Int64Type>().value(r) - t0,
                e.as_primitive::<Int64Type>().value(r) - t0,
                b.column(3).as_primitive::<Int64Type>().value(r),
            ));
        }
    }
    assert_eq!(got, vec![(1_000, 5_000, 2), (20_000, 36_000, 3)]);
    let queries = rows(&f, "SELECT late_records FROM sediment.queries").await;
    assert_eq!(queries[0].column(0).as_primitive::<Int64Type>().value(0), 1);
}
