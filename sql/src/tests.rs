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
