"""Push queries (`SELECT ... EMIT CHANGES`) through real Postgres clients.

Rows produced with confluent-kafka after a push query started reach psycopg
and psql while the query is still running: the tests produce one record,
wait for its row, and only then produce the next (lockstep), so a server that
held rows back until the query ended would stall them. Cancel requests and
closed connections end the query, which then leaves `SHOW QUERIES`.
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import threading
import time

import psycopg
from psycopg import errors

from helpers import consume_partition, consume_to_end, flush_all, producer, unique, wait_for
from test_sql import BASE_TS, connect, psql

LOCKSTEP_TIMEOUT = 30


def make_stream(broker, partitions: int = 2) -> tuple[str, str]:
    topic = unique("push")
    name = topic.replace("-", "_")
    psql(broker, sql=f"CREATE STREAM {name} (user_id VARCHAR, amount DOUBLE, qty BIGINT) "
                     f"WITH (KAFKA_TOPIC='{topic}', PARTITIONS={partitions})")
    return topic, name


def record(i: int) -> bytes:
    return json.dumps({"user_id": f"u{i % 3}", "amount": i * 1.5, "qty": i}).encode()


def produce_one(p, topic: str, i: int, partition: int = 0) -> None:
    p.produce(topic, key=f"k{i}".encode(), value=record(i), partition=partition,
              timestamp=BASE_TS + i)
    flush_all(p)


def running_queries(broker) -> list[tuple]:
    with connect(broker) as conn:
        return conn.execute("SHOW QUERIES").fetchall()


def wait_listed(broker) -> None:
    wait_for(lambda: any(q[1] == "PUSH" for q in running_queries(broker)),
             timeout=LOCKSTEP_TIMEOUT, what="the push query in SHOW QUERIES")


def readline(stream, timeout: float = LOCKSTEP_TIMEOUT) -> str:
    out: list[str] = []
    t = threading.Thread(target=lambda: out.append(stream.readline()), daemon=True)
    t.start()
    t.join(timeout)
    if not out:
        raise AssertionError(f"no line within {timeout} s")
    return out[0]


def test_psycopg_receives_rows_produced_after_the_push_query_started(broker):
    topic, name = make_stream(broker)
    p = producer(broker.bootstrap, **{"linger.ms": 0})
    for i in range(5):  # history, which a push query from the latest offset skips
        produce_one(p, topic, i)
    got: list[tuple] = []
    with connect(broker) as conn:
        failed: list[BaseException] = []

        def feed():
            # Once the query runs: an odd record (filtered out) and an even
            # one, and the next pair only after the even one's row arrived.
            try:
                wait_listed(broker)
                for k in range(4):
                    produce_one(p, topic, 101 + 2 * k, partition=k % 2)
                    produce_one(p, topic, 100 + 2 * k, partition=k % 2)
                    wait_for(lambda: len(got) > k, timeout=LOCKSTEP_TIMEOUT,
                             what=f"the row of record {100 + 2 * k} while the query runs")
            except BaseException as e:  # noqa: BLE001 - reported below
                failed.append(e)
                conn.cancel()
        t = threading.Thread(target=feed, daemon=True)
        t.start()
        # psycopg's stream(): one row at a time, as the server sends them
        for row in conn.cursor().stream(f"SELECT qty, user_id, _partition FROM {name} "
                                        f"WHERE qty % 2 = 0 EMIT CHANGES LIMIT 4"):
            got.append(row)
        t.join(LOCKSTEP_TIMEOUT)
        assert not failed, failed
    assert got == [(q, f"u{q % 3}", k % 2) for k, q in enumerate((100, 102, 104, 106))], got
    wait_for(lambda: not running_queries(broker), timeout=10,
             what="the finished query to leave SHOW QUERIES")


def test_earliest_replays_history_then_follows(broker):
    topic, name = make_stream(broker, partitions=1)
    p = producer(broker.bootstrap, **{"linger.ms": 0})
    for i in range(50):
        produce_one(p, topic, i)
    with connect(broker) as conn:
        conn.execute("SET 'auto.offset.reset' = 'earliest'")
        result = {}

        def run():
            result["rows"] = conn.execute(
                f"SELECT _offset, qty FROM {name} EMIT CHANGES LIMIT 55").fetchall()
        t = threading.Thread(target=run)
        t.start()
        wait_listed(broker)
        for i in range(50, 60):
            produce_one(p, topic, i)
        t.join(LOCKSTEP_TIMEOUT)
        assert not t.is_alive()
        assert result["rows"] == [(i, i) for i in range(55)]
        assert conn.execute("UNSET 'auto.offset.reset'").statusmessage == "UNSET"
        try:
            conn.execute("SET 'auto.offset.reset' = 'sometimes'")
            raise AssertionError("a bad property value was accepted")
        except errors.InvalidParameterValue as e:
            assert "earliest" in str(e)


def test_psql_copy_prints_push_rows_as_they_come(broker):
    topic, name = make_stream(broker)
    p = producer(broker.bootstrap, **{"linger.ms": 0})
    # stdbuf: psql writes COPY rows with stdio, which a pipe would buffer
    proc = subprocess.Popen(
        ["stdbuf", "-oL", "psql", broker.pg_dsn, "-X", "-v", "ON_ERROR_STOP=1", "-c",
         f"COPY (SELECT qty, user_id FROM {name} EMIT CHANGES LIMIT 3) TO STDOUT WITH (FORMAT csv)"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_listed(broker)
        lines = []
        for i in (7, 8, 9):
            produce_one(p, topic, i, partition=i % 2)
            lines.append(readline(proc.stdout).strip())  # as soon as psql prints it
        out, err = proc.communicate(timeout=LOCKSTEP_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert lines == ["7,u1", "8,u2", "9,u0"], (lines, err)
    assert proc.returncode == 0, err


def test_copy_of_a_bounded_query_and_refused_copies(broker):
    topic, name = make_stream(broker, partitions=1)
    p = producer(broker.bootstrap, **{"linger.ms": 0})
    for i in range(3):
        produce_one(p, topic, i)
    out = psql(broker, sql=f"COPY (SELECT qty, user_id FROM {name} ORDER BY qty) TO STDOUT "
                           f"WITH (FORMAT csv, HEADER)").stdout
    assert out.splitlines() == ["qty,user_id", "0,u0", "1,u1", "2,u2"]
    r = psql(broker, sql=f"COPY (SELECT 1) TO '/tmp/{name}.csv'", check=False)
    assert r.returncode != 0 and "not allowed" in r.stderr, r.stderr
    with connect(broker) as conn:
        try:
            conn.execute(f"SELECT user_id FROM {name} ORDER BY user_id EMIT CHANGES")
            raise AssertionError("a push query with ORDER BY was accepted")
        except errors.FeatureNotSupported as e:
            assert "SortExec" in str(e), e
            assert "ORDER BY" in (e.diag.message_hint or ""), e.diag.message_hint


def test_an_aggregating_push_query_emits_each_groups_new_value(broker):
    topic, name = make_stream(broker)
    p = producer(broker.bootstrap, **{"linger.ms": 0})
    for i in range(6):  # history: counted with 'earliest'
        produce_one(p, topic, i, partition=i % 2)
    # history 0..5: u0 {0, 3}, u1 {1, 4}, u2 {2, 5}: (user, count, sum)
    history = {"u0": ("u0", 2, 3), "u1": ("u1", 2, 5), "u2": ("u2", 2, 7)}
    got: list[tuple] = []
    live_from: list[int] = []
    failed: list[BaseException] = []
    with connect(broker) as conn:
        conn.execute("SET 'auto.offset.reset' = 'earliest'")

        def feed():
            # Once every group shows its history, one record at a time:
            # each brings one row, the new count and sum of its user.
            try:
                wait_for(lambda: {r[0]: r for r in got} == history, timeout=LOCKSTEP_TIMEOUT,
                         what="the history's groups", status=lambda: str(got))
                live_from.append(len(got))
                for k, i in enumerate((6, 7, 9)):
                    produce_one(p, topic, i, partition=i % 2)
                    wait_for(lambda: len(got) > live_from[0] + k, timeout=LOCKSTEP_TIMEOUT,
                             what=f"the change of record {i}")
            except BaseException as e:  # noqa: BLE001 - reported below
                failed.append(e)
            conn.cancel()
        t = threading.Thread(target=feed, daemon=True)
        t.start()
        try:
            for row in conn.cursor().stream(f"SELECT user_id, count(*) AS n, sum(qty) AS total "
                                            f"FROM {name} GROUP BY user_id EMIT CHANGES"):
                got.append(row)
        except errors.QueryCanceled:
            pass
        t.join(LOCKSTEP_TIMEOUT)
    assert not failed, failed
    assert got[live_from[0]:] == [("u0", 3, 9), ("u1", 3, 12), ("u0", 4, 18)], got


def test_cancel_and_a_closed_connection_end_a_push_query(broker):
    _, name = make_stream(broker)
    with connect(broker) as conn:
        result = {}

        def run():
            try:
                conn.execute(f"SELECT * FROM {name} EMIT CHANGES")
            except Exception as e:  # noqa: BLE001 - the test inspects it
                result["error"] = e
        t = threading.Thread(target=run)
        t.start()
        wait_for(lambda: len(running_queries(broker)) == 1, timeout=LOCKSTEP_TIMEOUT,
                 what="the push query in SHOW QUERIES")
        conn.cancel()
        t.join(LOCKSTEP_TIMEOUT)
        assert not t.is_alive(), "the push query did not stop after a cancel request"
        assert isinstance(result.get("error"), errors.QueryCanceled), result
        assert conn.execute("SELECT 1").fetchone() == (1,)
    wait_for(lambda: not running_queries(broker), timeout=10, what="the cancelled query to leave SHOW QUERIES")

    # A client that goes away while its query waits for rows: the server
    # notices on its next probe of the idle connection and ends the query.
    pgconn = psycopg.pq.PGconn.connect(broker.pg_dsn.encode())
    assert pgconn.status == psycopg.pq.ConnStatus.OK, pgconn.error_message
    pgconn.send_query(f"SELECT * FROM {name} EMIT CHANGES".encode())
    while pgconn.flush():
        time.sleep(0.01)
    wait_for(lambda: len(running_queries(broker)) == 1, timeout=LOCKSTEP_TIMEOUT,
             what="the push query in SHOW QUERIES")
    pgconn.finish()
    wait_for(lambda: not running_queries(broker), timeout=15,
             what="the push query of a closed connection to end")


def test_persistent_queries_feed_tables_topics_and_survive_a_restart(broker):
    topic, name = make_stream(broker, partitions=1)
    p = producer(broker.bootstrap, **{"linger.ms": 0})
    for i in range(9):
        produce_one(p, topic, i)
    table, out = f"{name}_totals", f"{name}_big"
    assert "CREATE TABLE" in psql(broker, sql=f"CREATE TABLE {table} AS SELECT user_id, count(*) AS n, "
                                              f"sum(qty) AS total FROM {name} GROUP BY user_id EMIT CHANGES").stdout
    assert "CREATE STREAM" in psql(broker, sql=f"CREATE STREAM {out} AS SELECT user_id, qty FROM {name} "
                                               f"WHERE qty >= 6 EMIT CHANGES").stdout

    def pull(sql: str):
        with connect(broker) as conn:
            return conn.execute(sql).fetchall()

    # pull queries on the table; the history (0..8) is counted
    wait_for(lambda: pull(f"SELECT n, total FROM {table} WHERE user_id = 'u0'") == [(3, 9)],
             timeout=LOCKSTEP_TIMEOUT, what="the table's row for u0",
             status=lambda: str(pull(f"SELECT * FROM {table}")))
    produce_one(p, topic, 12)  # u0 again
    wait_for(lambda: pull(f"SELECT n, total FROM {table} WHERE user_id = 'u0'") == [(4, 21)],
             timeout=LOCKSTEP_TIMEOUT, what="the new record in the table")
    # the output stream is a stream (SQL) and a topic (Kafka)
    wait_for(lambda: pull(f"SELECT qty FROM {out} ORDER BY qty") == [(6,), (7,), (8,), (12,)],
             timeout=LOCKSTEP_TIMEOUT, what="the persistent stream's rows")
    msgs = consume_partition(broker.bootstrap, out, 0, 4)
    assert [json.loads(m.value())["qty"] for m in msgs] == [6, 7, 8, 12]
    # the changelog: each change of a group, keyed by the group
    changelog = pull(f"SELECT key FROM topics.{table}")
    assert {bytes(k[0]) for k in changelog} == {b"u0", b"u1", b"u2"}, changelog
    queries = {q[0]: q for q in running_queries(broker)}
    assert {f"CTAS_{table.upper()}", f"CSAS_{out.upper()}"} <= set(queries), queries

    # after a restart the queries resume from their checkpoints: the table
    # is as it was and nothing is written twice
    broker.restart(clean=True)
    wait_for(lambda: pull(f"SELECT n, total FROM {table} WHERE user_id = 'u0'") == [(4, 21)],
             timeout=LOCKSTEP_TIMEOUT, what="the table restored after a restart")
    produce_one(p, topic, 15)  # u0, and qty >= 6
    wait_for(lambda: pull(f"SELECT n, total FROM {table} WHERE user_id = 'u0'") == [(5, 36)],
             timeout=LOCKSTEP_TIMEOUT, what="a record after the restart in the table")
    msgs = consume_partition(broker.bootstrap, out, 0, 5)
    assert [json.loads(m.value())["qty"] for m in msgs] == [6, 7, 8, 12, 15]
    assert "TERMINATE" in psql(broker, sql=f"TERMINATE CSAS_{out.upper()}").stdout
    assert "DROP TABLE" in psql(broker, sql=f"DROP TABLE {table}").stdout
    wait_for(lambda: not running_queries(broker), timeout=10, what="no query left")
    r = psql(broker, sql=f"SELECT * FROM {table}", check=False)
    assert r.returncode != 0 and "does not exist" in r.stderr, r.stderr


def test_kill9_while_persistent_queries_run_leaves_tables_and_outputs_exact(broker):
    """Records keep coming (two partitions, timestamps out of order within
    the grace period) while three persistent queries work; the broker is
    killed with SIGKILL mid-way and restarted. Each table then equals the
    batch query over the same records, and the output stream holds each
    matching record exactly once. One table has session windows: sparse
    records (2.5 s apart per user, jittered by up to 3 s, a 2 s gap) make
    sessions that out-of-order records extend and merge."""
    topic, name = make_stream(broker, partitions=2)
    totals, windows, out = f"{name}_totals", f"{name}_windows", f"{name}_sevens"
    sessions = f"{name}_sessions"
    p = producer(broker.bootstrap, **{"linger.ms": 5, "enable.idempotence": True})
    rng = random.Random(7)
    sent = [0]
    stop = threading.Event()

    def feed():
        while not stop.is_set():
            for _ in range(200):
                i = sent[0]
                sent[0] += 1
                p.produce(topic, key=f"k{i}".encode(), value=record(i), partition=i % 2,
                          timestamp=BASE_TS + i * 5 - rng.randrange(0, 3000))
            p.poll(0)
            time.sleep(0.02)

    t = threading.Thread(target=feed, daemon=True)
    t.start()
    try:
        wait_for(lambda: sent[0] > 2000, timeout=LOCKSTEP_TIMEOUT, what="some input")
        psql(broker, sql=f"CREATE TABLE {totals} AS SELECT user_id, count(*) AS n, sum(qty) AS total, "
                         f"min(amount) AS lo, max(amount) AS hi FROM {name} GROUP BY user_id")
        psql(broker, sql=f"CREATE TABLE {windows} AS SELECT user_id, count(*) AS n, avg(qty) AS mean "
                         f"FROM {name} WINDOW TUMBLING (SIZE 10 SECONDS) GROUP BY user_id")
        psql(broker, sql=f"CREATE STREAM {out} WITH (PARTITIONS=2) AS SELECT qty FROM {name} WHERE qty % 7 = 0")
        psql(broker, sql=f"CREATE TABLE {sessions} AS SELECT user_id, count(*) AS n, sum(qty) AS total "
                         f"FROM {name} WINDOW SESSION (2 SECONDS) WHERE qty % 500 < 3 GROUP BY user_id")
        time.sleep(1.5)
        broker.kill9()
        time.sleep(0.5)
        broker.start()
        time.sleep(1.5)
    finally:
        stop.set()
        t.join(10)
    flush_all(p)
    # The queries resumed from checkpoints taken before the kill.
    plain = re.sub(r"\x1b\[[0-9;]*m", "", broker.log_text())
    assert plain.count("resumed=true") == 4, broker.log_tail()

    def rows(sql: str) -> list[tuple]:
        with connect(broker) as conn:
            return sorted(conn.execute(sql).fetchall())

    batch_totals = f"SELECT user_id, count(*), sum(qty), min(amount), max(amount) FROM {name} GROUP BY user_id"
    batch_windows = (f"SELECT user_id, windowstart, count(*), avg(qty) FROM {name} "
                     f"WINDOW TUMBLING (SIZE 10 SECONDS) GROUP BY user_id")
    want = rows(batch_totals)
    assert sum(r[1] for r in want) >= sent[0] - 1000, (want, sent[0])
    wait_for(lambda: rows(f"SELECT user_id, n, total, lo, hi FROM {totals}") == want,
             timeout=60, what="the table equal to the batch query",
             status=lambda: f"{rows(f'SELECT * FROM {totals}')} != {want}")
    want_windows = rows(batch_windows)
    wait_for(lambda: rows(f"SELECT user_id, windowstart, n, mean FROM {windows}") == want_windows,
             timeout=60, what="the windowed table equal to the batch query")
    want_sessions = rows(f"SELECT user_id, windowstart, windowend, count(*), sum(qty) FROM {name} "
                         f"WINDOW SESSION (2 SECONDS) WHERE qty % 500 < 3 GROUP BY user_id")
    assert len(want_sessions) > 6, want_sessions
    wait_for(lambda: rows(f"SELECT user_id, windowstart, windowend, n, total FROM {sessions}") == want_sessions,
             timeout=60, what="the session table equal to the batch query",
             status=lambda: f"{rows(f'SELECT * FROM {sessions}')} != {want_sessions}")
    want_sevens = sorted(r[0] for r in rows(f"SELECT qty FROM {name} WHERE qty % 7 = 0"))

    def sevens() -> list[int]:
        return sorted(json.loads(m.value())["qty"]
                      for part in (0, 1) for m in consume_to_end(broker.bootstrap, out, part))

    wait_for(lambda: len(sevens()) >= len(want_sevens), timeout=60, what="the output stream caught up")
    assert sevens() == want_sevens

    # The changelog's last row per key is the table's.
    def changelog() -> dict:
        latest = {m.key().decode(): json.loads(m.value()) for m in consume_to_end(broker.bootstrap, totals, 0)}
        return {k: (v["n"], v["total"]) for k, v in latest.items()}

    want_changelog = {r[0]: (r[1], r[2]) for r in want}
    wait_for(lambda: changelog() == want_changelog, timeout=30, what="the changelog's latest rows",
             status=lambda: f"{changelog()} != {want_changelog}")


def test_cursors_fetch_a_push_query_page_by_page(broker):
    """DECLARE ... CURSOR FOR a push query, then FETCH (psycopg, extended
    protocol, and psql, simple protocol): a FETCH waits for the first rows
    and returns what is ready, its timeout bounds the wait, CLOSE ends it.
    A cursor over an ordinary query pages through it."""
    topic, name = make_stream(broker)
    p = producer(broker.bootstrap, **{"linger.ms": 0})
    for i in range(3):
        produce_one(p, topic, i)
    with connect(broker) as conn:
        conn.execute("SET 'auto.offset.reset' = 'earliest'")
        conn.execute(f"DECLARE c CURSOR FOR SELECT qty, user_id FROM {name} EMIT CHANGES")
        got: list[int] = []
        deadline = time.monotonic() + LOCKSTEP_TIMEOUT
        while len(got) < 3 and time.monotonic() < deadline:
            cur = conn.execute("FETCH 10 FROM c")
            assert [d.name for d in cur.description] == ["qty", "user_id"]
            got += [r[0] for r in cur.fetchall()]
        assert sorted(got) == [0, 1, 2]
        # Nothing new: the timeout ends the wait with no rows.
        t0 = time.monotonic()
        assert conn.execute("FETCH 5 FROM c WITH (timeout = '300ms')").fetchall() == []
        assert 0.25 < time.monotonic() - t0 < 10
        # A record produced while FETCH waits is its row.
        threading.Timer(0.5, produce_one, (p, topic, 10)).start()
        assert conn.execute("FETCH NEXT FROM c").fetchall() == [(10, "u1")]
        conn.execute("CLOSE c")
        try:
            conn.execute("FETCH 1 FROM c")
            raise AssertionError("FETCH after CLOSE worked")
        except errors.InvalidCursorName:
            pass
        # A cursor over an ordinary query pages through it, then ends.
        conn.execute(f"DECLARE b CURSOR FOR SELECT qty FROM {name} ORDER BY qty")
        assert conn.execute("FETCH 2 FROM b").fetchall() == [(0,), (1,)]
        assert conn.execute("FETCH ALL FROM b").fetchall() == [(2,), (10,)]
        assert conn.execute("FETCH 1 FROM b").fetchall() == []
        try:
            conn.execute("FETCH PRIOR FROM b")
            raise AssertionError("FETCH PRIOR worked")
        except errors.FeatureNotSupported:
            pass
    # psql: one session, one statement per -c (the simple protocol).
    r = psql(broker, "-c", "SET 'auto.offset.reset' = 'earliest'",
             "-c", f"DECLARE p CURSOR FOR SELECT qty FROM {name} WHERE qty >= 2 EMIT CHANGES",
             "-c", "FETCH 1 FROM p", "-c", "FETCH 1 FROM p", "-c", "CLOSE p")
    assert r.stdout.split() == ["SET", "DECLARE", "CURSOR", "2", "10", "CLOSE", "CURSOR"], r.stdout
    # The connection's cursors end with it: no push query is left running.
    wait_for(lambda: not [q for q in running_queries(broker) if q[1] == "PUSH"], timeout=10,
             what="the cursors' queries to end with their connections")


def test_psycopg_named_cursors_page_through_a_push_query(broker):
    """psycopg's server-side cursors (`conn.cursor(name=...)`): DECLARE,
    a Describe of the portal by the cursor's name, FETCH FORWARD n, CLOSE,
    over a push query (in a transaction, psycopg's default) and over an
    ordinary query (WITH HOLD, autocommit)."""
    topic, name = make_stream(broker)
    p = producer(broker.bootstrap, **{"linger.ms": 0})
    for i in range(3):
        produce_one(p, topic, i)
    with psycopg.connect(broker.pg_dsn, connect_timeout=10) as conn:
        conn.execute("SET 'auto.offset.reset' = 'earliest'")
        with conn.cursor(name="live") as cur:
            cur.execute(f"SELECT qty, user_id FROM {name} EMIT CHANGES")
            assert [d.name for d in cur.description] == ["qty", "user_id"]
            got: list[tuple] = []
            deadline = time.monotonic() + LOCKSTEP_TIMEOUT
            while len(got) < 3 and time.monotonic() < deadline:
                got += cur.fetchmany(10)
            assert sorted(got) == [(0, "u0"), (1, "u1"), (2, "u2")]
            # A record produced while the fetch waits is its row.
            threading.Timer(0.5, produce_one, (p, topic, 4)).start()
            assert cur.fetchone() == (4, "u1")
        conn.commit()
    # The cursor's push query ended with its CLOSE.
    wait_for(lambda: not [q for q in running_queries(broker) if q[1] == "PUSH"], timeout=10,
             what="the named cursor's push query to end")
    with psycopg.connect(broker.pg_dsn, autocommit=True, connect_timeout=10) as conn:
        with conn.cursor(name="paged", withhold=True) as cur:
            cur.itersize = 2
            cur.execute(f"SELECT qty FROM {name} ORDER BY qty")
            assert [r[0] for r in cur] == [0, 1, 2, 4]
