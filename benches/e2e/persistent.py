#!/usr/bin/env python3
"""Persistent-query benchmark: backfill over the archive, and freshness.

One run on loopback, release binary; everything started is stopped.

  load       --records JSON records `{"k":"k<n>","x":<int>}` (--keys distinct
             keys) into stream `ev` (--partitions partitions; topic with
             remote.storage.enable, segment.bytes=--segment-bytes,
             local.retention.bytes=0), produced with confluent-kafka; the
             produce rate is the machine's "full load" for freshness. Waits
             until everything below the active segments is archived (and
             gone from the local disk).
  backfill   over exactly the archived records (`_offset < E`, E the
             smallest archive end offset), three ways, with wall time and
             broker CPU seconds (from /proc):
               batch  SELECT k, count(*), sum(x) ... GROUP BY k (best of 3)
               push   the same as a push query from the earliest offset
                      (`HAVING count(*) < 0`: state only, nothing sent)
               table  CREATE TABLE AS the same aggregate, timed until
                      `SELECT sum(n)` covers every record (checkpoints and
                      the changelog included); the checkpoint's size.
  freshness  stream `live` (hot tier), table `live_counts` (COUNT by key)
             and a push query `SELECT k FROM live WHERE k LIKE 'probe%'
             EMIT CHANGES` read through COPY by psycopg. A producer in a
             process of its own (so that it does not hold the probe
             clients' GIL) writes --rate records/s (default: half the load
             phase's rate, "half load"); every --probe-ms a probe record
             with a key of its own goes out from a second producer
             (linger.ms=0, acks=all). Latency from the probe's produce()
             call to its row at the push client, and to the first pull
             query `SELECT n FROM live_counts WHERE k = 'probe-<i>'` that
             returns it (polled every 2 ms): p50, p99, max.

Progress to stderr, a markdown summary to stdout, everything to --out.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402
import continuous  # noqa: E402
import tiering  # noqa: E402

log = bench.log


def partitions(c, topic: str) -> list[tuple]:
    return c.execute('SELECT "archive_end_offset", "local_start_offset", "local_segments", "high_watermark" '
                     'FROM sediment.partitions WHERE "topic" = %s ORDER BY "partition"', (topic,)).fetchall()


def wait_archived(c, topic: str, stall: float = 60) -> list[tuple]:
    """Until everything below the active segments is archived; fails after
    `stall` seconds without progress (a partition with less data than a
    segment, or than one producer batch, never seals one)."""
    last, since = None, time.monotonic()
    while True:
        parts = partitions(c, topic)
        if parts and all(p[0] is not None and p[2] <= 1 and p[0] >= p[1] for p in parts):
            return parts
        if parts != last:
            last, since = parts, time.monotonic()
        if time.monotonic() - since > stall:
            raise RuntimeError(f"archive made no progress for {stall:.0f} s (more --records or a smaller "
                               f"--segment-bytes?): {parts}")
        time.sleep(0.5)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def backfill(a, b, dsn: str, res: dict) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as c:
        tiering.create_topic(b.bootstrap, "ev", a.partitions, {
            "remote.storage.enable": "true", "local.retention.bytes": "0",
            "segment.bytes": str(a.segment_bytes)})
        c.execute("CREATE STREAM ev (k VARCHAR, x BIGINT) WITH (KAFKA_TOPIC='ev')")
        base_ts = (int(time.time()) - 7200) * 1000
        secs = continuous.produce(b.bootstrap, "ev", a.records, a.keys, a.partitions, base_ts, 100_000)
        res["load"] = {"records": a.records, "seconds": secs, "records_per_s": a.records / secs}
        log(f"loaded {a.records:,} records in {secs:.1f} s ({a.records / secs:,.0f}/s)")
        parts = wait_archived(c, "ev")
        end = min(p[0] for p in parts)
        rows = c.execute(f"SELECT count(*) FROM ev WHERE _offset < {end}").fetchone()[0]
        files = c.execute("SELECT count(*), sum(bytes) FROM sediment.segments WHERE topic = 'ev' "
                          "AND tier = 'archive'").fetchone()
        res["archived"] = {"end_offset": end, "rows": rows, "files": files[0], "bytes": files[1]}
        log(f"archived: {rows:,} records below offset {end} in {files[0]} files ({files[1] / 1e6:.0f} MB)")
        agg = f"SELECT k, count(*) AS n, sum(x) AS total FROM ev WHERE _offset < {end} GROUP BY k"
        runs = {}
        times = []
        for _ in range(3):
            cpu0, t0 = b.cpu(), time.monotonic()
            groups = len(c.execute(agg).fetchall())
            times.append((time.monotonic() - t0, b.cpu() - cpu0))
        runs["batch"] = {"sql": agg, "wall_s": min(times)[0], "broker_cpu_s": min(times)[1], "groups": groups}
        c.execute("SET 'auto.offset.reset' = 'earliest'")
        push = agg + " HAVING count(*) < 0 EMIT CHANGES"
        cpu0, t0 = b.cpu(), time.monotonic()
        with c.cursor().copy(f"COPY ({push}) TO STDOUT") as copy:
            for _ in copy.rows():
                pass
        runs["push"] = {"sql": push, "wall_s": time.monotonic() - t0, "broker_cpu_s": b.cpu() - cpu0}
        cpu0, t0 = b.cpu(), time.monotonic()
        c.execute(f"CREATE TABLE bf AS {agg}")
        while (c.execute("SELECT sum(n) FROM bf").fetchone()[0] or 0) < rows:
            time.sleep(0.01)
        runs["table"] = {"sql": f"CREATE TABLE bf AS {agg}", "wall_s": time.monotonic() - t0,
                         "broker_cpu_s": b.cpu() - cpu0}
        time.sleep(1)  # the last commit
        ckpt = sorted((a.work / "data" / "sql" / "checkpoints").glob("CTAS_BF-*.ckpt"))
        runs["table"]["checkpoint_bytes"] = ckpt[-1].stat().st_size if ckpt else None
        subprocess.run(["psql", "-X", "-q", dsn, "-c", "DROP TABLE bf"], check=True)
        for name, r in runs.items():
            r["events_per_s"] = rows / r["wall_s"]
            r["events_per_cpu_s"] = rows / r["broker_cpu_s"] if r["broker_cpu_s"] else None
            log(f"backfill {name:6}: {r['events_per_s']:,.0f} events/s, "
                f"{r['events_per_cpu_s'] or 0:,.0f} events/s/core ({r['wall_s']:.2f} s)")
        res["backfill"] = runs


def freshness(a, b, dsn: str, res: dict) -> None:
    import psycopg
    from confluent_kafka import Producer

    rate = a.rate or int(res["load"]["records_per_s"] / 2)
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(f"CREATE STREAM live (k VARCHAR, x BIGINT) WITH (KAFKA_TOPIC='live', PARTITIONS={a.partitions})")
        c.execute("CREATE TABLE live_counts AS SELECT k, count(*) AS n FROM live GROUP BY k")
    # The load runs in a process of its own: in a thread it would hold the
    # GIL for milliseconds at a time and delay the probe and push clients.
    ctx = mp.get_context("fork")
    stop, sent = ctx.Event(), ctx.Value("q", 0)
    loader = ctx.Process(target=load, args=(b.bootstrap, rate, a.keys, a.partitions, stop, sent), daemon=True)
    loader.start()

    push_seen: dict[str, float] = {}

    def push_reader(ready: threading.Event):
        try:
            with psycopg.connect(dsn, autocommit=True) as c:
                sql = "COPY (SELECT k FROM live WHERE k LIKE 'probe%' EMIT CHANGES) TO STDOUT"
                with c.cursor().copy(sql) as copy:
                    ready.set()
                    for row in copy.rows():
                        push_seen.setdefault(row[0], time.monotonic())
                        if stop.is_set():
                            break
        except psycopg.Error:
            if not stop.is_set():
                raise

    ready = threading.Event()
    reader = threading.Thread(target=push_reader, args=(ready,), daemon=True)
    reader.start()
    ready.wait(30)
    time.sleep(2)  # the load settles
    probe = Producer({"bootstrap.servers": b.bootstrap, "linger.ms": 0, "acks": "all"})
    push_lat, pull_lat = [], []
    with psycopg.connect(dsn, autocommit=True) as c:
        cpu0, t_start = b.cpu(), time.monotonic()
        n = 0
        while time.monotonic() - t_start < a.duration:
            key = f"probe-{n}"
            t0 = time.monotonic()
            probe.produce("live", value=json.dumps({"k": key, "x": 1}).encode(), partition=n % a.partitions)
            probe.poll(0)
            deadline = t0 + 10
            while time.monotonic() < deadline:
                if c.execute("SELECT n FROM live_counts WHERE k = %s", (key,)).fetchall():
                    pull_lat.append(time.monotonic() - t0)
                    break
                time.sleep(0.002)
            while key not in push_seen and time.monotonic() < deadline:
                time.sleep(0.001)
            if key in push_seen:
                push_lat.append(push_seen[key] - t0)
            n += 1
            time.sleep(max(0.0, a.probe_ms / 1000 - (time.monotonic() - t0)))
        elapsed, cpu = time.monotonic() - t_start, b.cpu() - cpu0
    stop.set()
    probe.flush(10)
    reader.join(10)
    loader.join(60)
    res["freshness"] = {
        "rate": rate, "records_sent": sent.value, "probes": n, "seconds": elapsed, "broker_cpu_s": cpu,
        "push": {"seen": len(push_lat), **summ(push_lat)},
        "pull": {"seen": len(pull_lat), **summ(pull_lat)},
    }
    f = res["freshness"]
    log(f"freshness at {rate:,} records/s ({n} probes): push p50 {f['push']['p50_ms']:.1f} ms p99 "
        f"{f['push']['p99_ms']:.1f} ms; pull p50 {f['pull']['p50_ms']:.1f} ms p99 {f['pull']['p99_ms']:.1f} ms")


def load(bootstrap: str, rate: int, keys: int, partitions: int, stop, sent) -> None:
    """The background load: `rate` records/s into `live` until `stop`."""
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "queue.buffering.max.messages": 1_000_000})
    t0 = time.monotonic()
    i = 0
    while not stop.is_set():
        due = int((time.monotonic() - t0) * rate)
        while i < due:
            try:
                p.produce("live", value=b'{"k":"k%d","x":%d}' % ((i * 7919) % keys, i % 1000),
                          partition=i % partitions)
                i += 1
            except BufferError:
                p.poll(0.01)
        p.poll(0)
        time.sleep(0.002)
    p.flush(30)
    sent.value = i


def summ(xs: list[float]) -> dict:
    if not xs:
        return {"p50_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan")}
    return {"p50_ms": statistics.median(xs) * 1000, "p99_ms": pct(xs, 0.99) * 1000, "max_ms": max(xs) * 1000}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    continuous.common_args(ap, "bench-persistent.json", "fsync")
    ap.add_argument("--segment-bytes", type=int, default=0,
                    help="segment.bytes of the loaded topic (default: 4 MiB, smaller for small --records so "
                         "that each partition seals a few segments)")
    ap.add_argument("--rate", type=int, default=0, help="freshness load, records/s (default: half the load rate)")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of probes")
    ap.add_argument("--probe-ms", type=int, default=100)
    a = ap.parse_args()
    # About 28 bytes of log per record: at least four sealed segments per
    # partition, so that part of the history is archived.
    a.segment_bytes = a.segment_bytes or max(64 << 10, min(4 << 20, a.records // a.partitions * 28 // 4))
    b, dsn, res = continuous.start(a, "persistent", 200, 500)
    try:
        backfill(a, b, dsn, res)
        freshness(a, b, dsn, res)
    finally:
        tiering.stop_broker(b, res)
        Path(a.out).write_text(json.dumps(res, indent=2))
    print("\n| backfill over the archive | events/s | events/s/core | wall |\n|---|---|---|---|")
    for name, r in res["backfill"].items():
        print(f"| {name} | {r['events_per_s']:,.0f} | {r['events_per_cpu_s'] or 0:,.0f} | {r['wall_s']:.2f} s |")
    f = res["freshness"]
    print(f"\nFreshness at {f['rate']:,} records/s ({f['probes']} probes): push p50 {f['push']['p50_ms']:.1f} ms, "
          f"p99 {f['push']['p99_ms']:.1f} ms, max {f['push']['max_ms']:.1f} ms; pull p50 {f['pull']['p50_ms']:.1f} ms, "
          f"p99 {f['pull']['p99_ms']:.1f} ms, max {f['pull']['max_ms']:.1f} ms")
    for p in res.get("problems", []):
        print(f"problem: {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
