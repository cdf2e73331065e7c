"""SQL over both tiers, through the Postgres wire protocol, with real clients.

psql (simple query protocol, \\d), psycopg 3 (extended protocol: parameters,
prepared statements, binary results, SQLSTATEs) and Debian's JDBC driver talk
to the real binary. Records are produced with confluent-kafka and every query
result is checked against what was produced: counts, sums, per-key
aggregates and time ranges, over data that lies partly in the Parquet archive
and partly in the hot segments.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import psycopg
import pytest
from psycopg import errors

from helpers import (consume_partition, create_topic, flush_all, producer, unique, wait_for)

TIER_FLAGS = ("--tiering-interval-ms", "200", "--retention-check-interval-ms", "200")
ARCHIVE_TIMEOUT = float(os.environ.get("SEDIMENT_ARCHIVE_TIMEOUT", "90"))
JDBC_JAR = Path("/usr/share/java/postgresql.jar")


def psql(broker, *args: str, sql: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    cmd = ["psql", broker.pg_dsn, "-X", "-v", "ON_ERROR_STOP=1", "-A", "-t", *args]
    if sql is not None:
        cmd += ["-c", sql]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if check and r.returncode != 0:
        raise AssertionError(f"psql {args} {sql!r} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
                             f"\n{broker.log_tail(40)}")
    return r


def connect(broker) -> psycopg.Connection:
    return psycopg.connect(broker.pg_dsn, autocommit=True, connect_timeout=10)


# record times a day old, one second apart: recent enough that retention.ms
# (7 days by default) keeps them on both tiers
BASE_TS = (int(time.time()) // 3600 - 24) * 3_600_000


def trade(i: int) -> dict:
    return {"user_id": f"u{i % 7}", "amount": round(i * 1.25, 2), "qty": i % 11,
            "ts": BASE_TS + i * 1000}


def produce_json(broker, topic: str, rows: list[dict], partitions: int = 1,
                 ts_of=lambda r: r["ts"], **conf) -> None:
    p = producer(broker.bootstrap, **{"linger.ms": 20, **conf})
    for i, r in enumerate(rows):
        p.produce(topic, key=r["user_id"].encode(), value=json.dumps(r).encode(),
                  partition=i % partitions, timestamp=ts_of(r))
    flush_all(p)


def test_psql_creates_a_stream_and_queries_it(broker):
    topic = unique("trades")
    out = psql(broker, sql=f"CREATE STREAM trades (user_id VARCHAR, amount DOUBLE, qty BIGINT) "
                           f"WITH (KAFKA_TOPIC='{topic}', VALUE_FORMAT='JSON', PARTITIONS=3)")
    assert "CREATE STREAM" in out.stdout
    rows = [trade(i) for i in range(300)]
    produce_json(broker, topic, rows, partitions=3)

    got = psql(broker, sql="SELECT count(*), sum(qty), round(sum(amount), 2) FROM trades").stdout.strip()
    assert got == f"300|{sum(r['qty'] for r in rows)}|{round(sum(r['amount'] for r in rows), 2)}"

    by_user = psql(broker, sql="SELECT user_id, count(*) FROM trades GROUP BY user_id ORDER BY user_id")
    expected = {}
    for r in rows:
        expected[r["user_id"]] = expected.get(r["user_id"], 0) + 1
    assert by_user.stdout.split() == [f"{u}|{n}" for u, n in sorted(expected.items())]

    # the raw topic is a table too, with the pseudo-columns' sources
    raw = psql(broker, sql=f'SELECT count(*), count(DISTINCT partition) FROM topics."{topic}"')
    assert raw.stdout.strip() == "300|3"

    # SHOW / DESCRIBE / \\d
    assert "trades" in psql(broker, sql="SHOW STREAMS").stdout
    assert topic in psql(broker, sql="SHOW TOPICS").stdout
    desc = psql(broker, sql="DESCRIBE trades").stdout
    for col in ("_partition|INTEGER", "_offset|BIGINT", "_key|VARCHAR", "user_id|VARCHAR",
                "amount|DOUBLE"):
        assert col in desc, desc
    dt = psql(broker, sql="\\dt").stdout
    assert "trades" in dt, dt
    d = psql(broker, sql="\\d trades").stdout
    assert "user_id" in d and "amount" in d, d


def test_psycopg_parameters_prepared_statements_and_sqlstates(broker):
    topic = unique("orders")
    rows = [trade(i) for i in range(200)]
    with connect(broker) as conn:
        conn.execute(f"CREATE STREAM orders (user_id VARCHAR, amount DOUBLE, qty BIGINT) "
                     f"WITH (KAFKA_TOPIC='{topic}', PARTITIONS=2)")
        produce_json(broker, topic, rows, partitions=2)
        # server-side parameters, text and binary results
        for binary in (False, True):
            cur = conn.cursor(binary=binary)
            cur.execute("SELECT count(*), sum(qty) FROM orders WHERE user_id = %s AND qty >= %s",
                        ("u3", 5))
            want = [r for r in rows if r["user_id"] == "u3" and r["qty"] >= 5]
            assert cur.fetchone() == (len(want), sum(r["qty"] for r in want))
        # an explicitly prepared statement, run repeatedly
        for user in ("u0", "u1", "u2"):
            cur = conn.execute("SELECT count(*) FROM orders WHERE user_id = %s", (user,), prepare=True)
            assert cur.fetchone()[0] == sum(1 for r in rows if r["user_id"] == user)
        # pseudo-columns with their types
        cur = conn.execute("SELECT _partition, _offset, _timestamp, _key FROM orders "
                           "WHERE _partition = 1 AND _offset = 0")
        part, off, ts, key = cur.fetchone()
        assert (part, off, key) == (1, 0, "u1")
        assert int(ts.timestamp() * 1000) == rows[1]["ts"]

        # errors carry SQLSTATEs and the connection stays usable
        with pytest.raises(errors.UndefinedTable):
            conn.execute("SELECT * FROM no_such_stream")
        with pytest.raises(errors.SyntaxError):
            conn.execute("SELEC 1")
        with pytest.raises(errors.UndefinedColumn):
            conn.execute("SELECT no_such_column FROM orders")
        with pytest.raises(errors.DuplicateTable):
            conn.execute(f"CREATE STREAM orders (a INT) WITH (KAFKA_TOPIC='{topic}')")
        with pytest.raises(errors.UndefinedTable) as e:
            conn.execute("CREATE STREAM x (a INT) WITH (KAFKA_TOPIC='missing-topic')")
        assert "PARTITIONS" in str(e.value)
        with pytest.raises(errors.InvalidParameterValue):
            conn.execute(f"CREATE STREAM y (a INT) WITH (KAFKA_TOPIC='{topic}', COLOUR='red')")
        with pytest.raises(errors.DivisionByZero):
            conn.execute("SELECT 1 / 0")
        assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] == 200


def test_queries_spanning_archive_and_hot_tiers_return_exactly_what_was_produced(make_broker):
    broker = make_broker(*TIER_FLAGS)
    topic = unique("spans")
    create_topic(broker.bootstrap, topic, partitions=2,
                 config={"segment.bytes": "4096", "local.retention.bytes": "0"})
    old = [trade(i) for i in range(2000)]
    # small batches, so the 4 KiB segments roll many times
    produce_json(broker, topic, old, partitions=2, **{"batch.size": 2048})
    with connect(broker) as conn:
        conn.execute(f"CREATE STREAM spans (user_id VARCHAR, amount DOUBLE, qty BIGINT, "
                     f"ts BIGINT) WITH (KAFKA_TOPIC='{topic}')")

        def archived():
            rows = conn.execute("SELECT min(archive_end_offset), min(local_start_offset) "
                                "FROM sediment.partitions WHERE topic = %s", (topic,)).fetchall()
            end, local = rows[0]
            return end is not None and end >= 500 and local >= 500
        wait_for(archived, ARCHIVE_TIMEOUT, "the archive to hold and the disk to drop old records",
                 lambda: str(conn.execute("SELECT * FROM sediment.partitions WHERE topic = %s",
                                          (topic,)).fetchall()))
        new = [trade(i) for i in range(2000, 2600)]
        produce_json(broker, topic, new, partitions=2)
        rows = old + new

        got = conn.execute("SELECT count(*), count(DISTINCT (_partition, _offset)), sum(qty), "
                           "min(_offset), max(ts) FROM spans").fetchone()
        assert got == (2600, 2600, sum(r["qty"] for r in rows), 0, rows[-1]["ts"])

        per_user = dict(conn.execute("SELECT user_id, sum(qty) FROM spans GROUP BY user_id").fetchall())
        want = {}
        for r in rows:
            want[r["user_id"]] = want.get(r["user_id"], 0) + r["qty"]
        assert per_user == want

        # a time range that crosses the tier boundary (record timestamps = ts)
        lo, hi = rows[900]["ts"], rows[2300]["ts"]
        got = conn.execute("SELECT count(*), sum(qty) FROM spans WHERE _timestamp >= to_timestamp_millis(%s) "
                           "AND _timestamp < to_timestamp_millis(%s)", (lo, hi)).fetchone()
        sel = [r for r in rows if lo <= r["ts"] < hi]
        assert got == (len(sel), sum(r["qty"] for r in sel))

        # replaying history is a query over the timestamp
        got = conn.execute("SELECT count(*) FROM spans WHERE _timestamp BETWEEN "
                           "to_timestamp_millis(%s) AND to_timestamp_millis(%s)",
                           (rows[10]["ts"], rows[19]["ts"])).fetchone()
        assert got == (10,)

        # EXPLAIN names what each tier reads
        plan = "\n".join(r[1] for r in conn.execute("EXPLAIN SELECT * FROM spans").fetchall())
        assert "DataSourceExec" in plan and "HotScanExec" in plan, plan
        plan = "\n".join(r[1] for r in conn.execute(
            "EXPLAIN SELECT * FROM spans WHERE _offset >= 1000000").fetchall())
        assert "DataSourceExec" not in plan, plan

        segs = dict(conn.execute("SELECT tier, count(*) FROM sediment.segments WHERE topic = %s "
                                 "GROUP BY tier", (topic,)).fetchall())
        assert segs.get("archive", 0) > 0 and segs.get("local", 0) > 0, segs


def test_archive_files_carry_a_streams_typed_columns(make_broker):
    """A stream declared before its records are archived: the Parquet files
    gain `value.<column>` columns that DuckDB reads, the stream reads them
    (EXPLAIN says so) with the same answers, and Kafka consumers still get
    the original JSON values from the same files."""
    import duckdb

    broker = make_broker(*TIER_FLAGS)
    topic = unique("typed")
    create_topic(broker.bootstrap, topic, partitions=2,
                 config={"segment.bytes": "4096", "local.retention.bytes": "0"})
    rows = [trade(i) for i in range(1200)]
    with connect(broker) as conn:
        conn.execute(f"CREATE STREAM typed (user_id VARCHAR, amount DOUBLE, qty BIGINT) "
                     f"WITH (KAFKA_TOPIC='{topic}')")
        produce_json(broker, topic, rows, partitions=2, **{"batch.size": 2048})

        def archived():
            end = conn.execute("SELECT min(archive_end_offset) FROM sediment.partitions "
                               "WHERE topic = %s", (topic,)).fetchone()[0]
            return end is not None and end >= 300
        wait_for(archived, ARCHIVE_TIMEOUT, "the archive to hold old records")
        files = [r[0] for r in conn.execute(
            "SELECT path FROM sediment.segments WHERE topic = %s AND tier = 'archive'",
            (topic,)).fetchall()]
        assert files
        # paths in the object store, relative to the archive's root
        paths = [str(broker.archive_dir / f) for f in files]
        assert all(os.path.exists(p) for p in paths), paths
        duck = duckdb.connect()
        got = duck.execute(
            'SELECT count(*), sum("value.qty"), count(DISTINCT "value.user_id") '
            "FROM read_parquet(?) ", [paths]).fetchone()
        n = got[0]
        assert n >= 300 and got[2] == 7, got
        # the typed columns are exactly the JSON values' fields
        sample = duck.execute(
            'SELECT partition, "offset", value, "value.user_id", "value.amount", '
            '"value.qty" FROM read_parquet(?) ORDER BY partition, "offset" LIMIT 50',
            [paths]).fetchall()
        for _, _, raw, user, amount, qty in sample:
            v = json.loads(raw)
            assert (user, amount, qty) == (v["user_id"], v["amount"], v["qty"])

        plan = "\n".join(r[1] for r in conn.execute("EXPLAIN SELECT sum(qty) FROM typed").fetchall())
        assert "from=typed archive columns" in plan, plan
        got = conn.execute("SELECT count(*), sum(qty), sum(amount) FROM typed").fetchone()
        assert got[0] == len(rows) and got[1] == sum(r["qty"] for r in rows), got
        assert abs(got[2] - sum(r["amount"] for r in rows)) < 1e-6, got
        got = conn.execute("SELECT count(*) FROM typed WHERE qty = 3 AND user_id = 'u2'").fetchone()
        assert got == (sum(1 for r in rows if r["qty"] == 3 and r["user_id"] == "u2"),)

    # Kafka consumers read the archived records unchanged
    msgs = consume_partition(broker.bootstrap, topic, 0, 600)
    assert [json.loads(m.value()) for m in msgs] == rows[0::2]


def test_malformed_values_give_null_rows_and_are_counted(broker):
    topic = unique("messy")
    with connect(broker) as conn:
        conn.execute(f"CREATE STREAM messy (id BIGINT, name VARCHAR) "
                     f"WITH (KAFKA_TOPIC='{topic}', PARTITIONS=1)")
        p = producer(broker.bootstrap)
        values = [b'{"id": 1, "name": "a"}', b"not json at all", b'{"id": "x"}', None,
                  b'{"id": 4, "name": "d", "extra": [1, 2]}', b'[1, 2, 3]', b'{"id": 6}']
        for v in values:
            p.produce(topic, key=b"k", value=v, partition=0)
        flush_all(p)
        got = conn.execute("SELECT _offset, id, name FROM messy ORDER BY _offset").fetchall()
        assert got == [(0, 1, "a"), (1, None, None), (2, None, None), (3, None, None),
                       (4, 4, "d"), (5, None, None), (6, 6, None)]
        errs = conn.execute("SELECT \"offset\", reason FROM sediment.decode_errors "
                            "WHERE stream = 'messy' ORDER BY \"offset\"").fetchall()
        assert [e[0] for e in errs] == [1, 2, 5], errs  # the tombstone (3) is not an error


def test_stream_definitions_survive_a_restart(broker):
    topic = unique("durable")
    psql(broker, sql=f"CREATE STREAM durable (v BIGINT) WITH (KAFKA_TOPIC='{topic}', PARTITIONS=2)")
    produce_json(broker, topic, [{"user_id": "a", "v": i, "ts": BASE_TS + i} for i in range(10)], 2)
    broker.restart()
    assert psql(broker, sql="SELECT sum(v) FROM durable").stdout.strip() == "45"
    psql(broker, sql="DROP STREAM durable")
    broker.restart()
    r = psql(broker, sql="SELECT * FROM durable", check=False)
    assert r.returncode != 0 and "does not exist" in r.stderr, r
    # the topic outlives the stream (DROP STREAM ... DELETE TOPIC removes it)
    assert topic in psql(broker, sql="SHOW TOPICS").stdout


def test_system_tables_show_groups_and_their_lag(group_broker):
    broker = group_broker
    topic = unique("lagged")
    create_topic(broker.bootstrap, topic, partitions=1)
    produce_json(broker, topic, [trade(i) for i in range(50)])
    from helpers import consumer
    from confluent_kafka import TopicPartition
    group = unique("grp")
    c = consumer(broker.bootstrap, group=group)
    c.subscribe([topic])
    seen = 0
    deadline = time.monotonic() + 60
    while seen < 20 and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is not None and not m.error():
            seen += 1
    c.commit(offsets=[TopicPartition(topic, 0, 20)], asynchronous=False)
    with connect(broker) as conn:
        lag = conn.execute("SELECT committed_offset, high_watermark, lag FROM sediment.consumer_lag "
                           "WHERE group_id = %s AND topic = %s", (group, topic)).fetchall()
        assert lag == [(20, 50, 30)]
        groups = conn.execute("SELECT group_id, members FROM sediment.consumer_groups "
                              "WHERE group_id = %s", (group,)).fetchall()
        assert groups == [(group, 1)], groups
    c.close()


def test_a_long_query_is_cancelled_from_the_client(broker):
    with connect(broker) as conn:
        result = {}

        def run():
            try:
                conn.execute("SELECT count(*) FROM generate_series(1, 20000000000) a")
                result["ok"] = True
            except Exception as e:  # noqa: BLE001 - the test inspects it
                result["error"] = e
        t = threading.Thread(target=run)
        t0 = time.monotonic()
        t.start()
        time.sleep(1.5)
        conn.cancel()
        t.join(60)
        assert not t.is_alive(), "the query did not stop after a cancel request"
        assert isinstance(result.get("error"), errors.QueryCanceled), result
        assert time.monotonic() - t0 < 30
        # the connection is usable afterwards
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_psql_interrupt_cancels_a_running_query(broker):
    p = subprocess.Popen(["psql", broker.pg_dsn, "-X", "-c",
                          "SELECT count(*) FROM generate_series(1, 20000000000) a"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(2)
    p.send_signal(2)  # Ctrl-C: psql sends a cancel request
    out, err = p.communicate(timeout=60)
    assert "canceling statement" in err or "57014" in err or "cancel" in err.lower(), (out, err)


@pytest.mark.skipif(not JDBC_JAR.exists() or shutil.which("java") is None,
                    reason="needs Debian's libpostgresql-jdbc-java and a JDK (scripts/test-all.sh installs them)")
def test_jdbc_reads_metadata_and_runs_prepared_statements(broker, tmp_path):
    topic = unique("jdbc")
    psql(broker, sql=f"CREATE STREAM jdbc_trades (user_id VARCHAR, qty BIGINT) "
                     f"WITH (KAFKA_TOPIC='{topic}', PARTITIONS=1)")
    rows = [trade(i) for i in range(40)]
    produce_json(broker, topic, rows)
    src = tmp_path / "JdbcCheck.java"
    src.write_text("""
import java.sql.*;
public class JdbcCheck {
  public static void main(String[] a) throws Exception {
    try (Connection c = DriverManager.getConnection(a[0], "sediment", "")) {
      DatabaseMetaData md = c.getMetaData();
      System.out.println("product=" + md.getDatabaseProductName());
      try (ResultSet t = md.getTables(null, null, "jdbc_trades", null)) {
        while (t.next()) System.out.println("table=" + t.getString("TABLE_NAME"));
      }
      try (PreparedStatement ps = c.prepareStatement(
             "SELECT count(*), sum(qty) FROM jdbc_trades WHERE user_id = ?")) {
        ps.setString(1, "u2");
        try (ResultSet r = ps.executeQuery()) {
          r.next();
          System.out.println("count=" + r.getLong(1) + " sum=" + r.getLong(2));
        }
      }
      try (Statement s = c.createStatement()) {
        s.executeQuery("SELECT * FROM no_such_table");
      } catch (SQLException e) {
        System.out.println("sqlstate=" + e.getSQLState());
      }
    }
  }
}
""")
    url = f"jdbc:postgresql://{broker.host}:{broker.pg_port}/sediment"
    r = subprocess.run(["java", "-cp", str(JDBC_JAR), str(src), url], capture_output=True,
                       text=True, timeout=180)
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr}\n{broker.log_tail(40)}"
    want = [x for x in rows if x["user_id"] == "u2"]
    assert f"count={len(want)} sum={sum(x['qty'] for x in want)}" in r.stdout, r.stdout
    assert "table=jdbc_trades" in r.stdout, r.stdout
    assert "sqlstate=42P01" in r.stdout, r.stdout


def test_insert_produces_records_kafka_consumers_read(broker):
    topic = unique("inserted")
    with connect(broker) as conn:
        conn.execute(f"CREATE STREAM ins (user_id VARCHAR, amount DOUBLE) "
                     f"WITH (KAFKA_TOPIC='{topic}', PARTITIONS=1)")
        cur = conn.execute("INSERT INTO ins (_key, user_id, amount) VALUES (%s, %s, %s), ('k2', 'b', 2.5)",
                           ("k1", "a", 1.5))
        assert cur.rowcount == 2
        conn.execute("INSERT INTO ins (user_id, amount) SELECT user_id, amount * 2 FROM ins")
        assert conn.execute("SELECT sum(amount) FROM ins").fetchone() == (12.0,)
    msgs = consume_partition(broker.bootstrap, topic, 0, 4)
    values = [json.loads(m.value()) for m in msgs]
    assert values[:2] == [{"user_id": "a", "amount": 1.5}, {"user_id": "b", "amount": 2.5}]
    assert [m.key() for m in msgs[:2]] == [b"k1", b"k2"]
    assert sorted(v["amount"] for v in values[2:]) == [3.0, 5.0]
