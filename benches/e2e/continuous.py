#!/usr/bin/env python3
"""Continuous SQL benchmark: how fast a push query maintains aggregates.

One run on loopback, release binary; everything started is stopped. The
broker runs with the tierer asleep (the records stay in hot segments).

  load   --records JSON records `{"k":"k<n>","x":<int>}` (n spread over --keys
         distinct keys, x in 0..999, record times --event-rate per second
         of event time, default 100,000: 2M records span 20 s) into stream
         `ev` (--partitions partitions), produced with confluent-kafka.
  run    for each query form, a push query from the earliest offset over
         exactly the loaded records (`WHERE _offset < records/partitions`,
         so it ends), wall time and broker CPU seconds (from /proc):
           - `tumbling`: COUNT(*), SUM(x) per key, WINDOW TUMBLING (SIZE 1 MINUTE)
           - `hopping`:  the same, WINDOW HOPPING (SIZE 1 MINUTE, ADVANCE BY 20 SECONDS)
           - `session`:  the same, WINDOW SESSION (1 SECOND) (a key's records
                         are 1 s apart on average with 100k keys: sessions
                         start, grow and merge)
           - `group-by`: the same without a window (non-windowed GROUP BY)
         Each form runs twice: `HAVING count(*) < 0` (no row qualifies:
         the cost of maintaining the state, nothing sent) and as `COPY (...)
         TO STDOUT` read by psycopg (every change sent: the changelog).
         events/s/core = records / broker CPU seconds.
  batch  the non-windowed aggregate as an ordinary query over the same
         records (all groups fetched): the backfill rate to compare with.
  memory broker RSS sampled every 20 ms during the `group-by` run, minus the
         RSS before it, per key: an upper bound of the state per key (it
         also counts decode buffers).

Reading it: all records are in the page cache, so this is CPU cost; the
broker decodes JSON (arrow-json) for every record, which is part of the
figure. Progress to stderr, a markdown table to stdout, everything to --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402
import tiering  # noqa: E402

log = bench.log

# group-by first: its RSS growth is measured on a broker that has not yet
# grown its heap for another query.
FORMS = {
    "group-by": "",
    "tumbling": "WINDOW TUMBLING (SIZE 1 MINUTE)",
    "hopping": "WINDOW HOPPING (SIZE 1 MINUTE, ADVANCE BY 20 SECONDS)",
    "session": "WINDOW SESSION (1 SECOND)",
}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class RssSampler:
    def __init__(self, pid: int):
        self.pid, self.peak, self.stop = pid, 0.0, threading.Event()
        self.t = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, rss_mb(self.pid))
            time.sleep(0.02)

    def __enter__(self):
        self.t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.t.join()


def produce(bootstrap: str, topic: str, records: int, keys: int, partitions: int, base_ts: int,
            rate: int) -> float:
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.size": 1_000_000,
                  "queue.buffering.max.messages": 1_000_000, "enable.idempotence": True})
    t0 = time.monotonic()
    for i in range(records):
        k = (i * 7919) % keys
        value = b'{"k":"k%d","x":%d}' % (k, i % 1000)
        while True:
            try:
                p.produce(topic, value=value, partition=i % partitions, timestamp=base_ts + i * 1000 // rate)
                break
            except BufferError:
                p.poll(0.05)
        if i % 10000 == 0:
            p.poll(0)
    assert p.flush(120) == 0, "records left unsent"
    return time.monotonic() - t0


def common_args(ap: argparse.ArgumentParser, out: str, flush_policy: str) -> None:
    """The arguments every SQL-over-streams harness takes."""
    ap.add_argument("--binary", dest="sediment_bin", default=str(bench.REPO / "target" / "release" / "sediment"))
    ap.add_argument("--records", type=int, default=2_000_000)
    ap.add_argument("--keys", type=int, default=100_000)
    ap.add_argument("--partitions", type=int, default=2)
    ap.add_argument("--work-dir", default=None)
    ap.add_argument("--out", default=out)
    ap.add_argument("--flush-policy", default=flush_policy)


def start(a, name: str, tiering_ms: int, retention_ms: int) -> tuple[bench.Broker, str, dict]:
    """A work dir, the results' header and a broker with a Postgres port: (broker, dsn, results)."""
    import tempfile

    a.work = Path(a.work_dir or tempfile.mkdtemp(prefix=f"sediment-{name}-"))
    a.work.mkdir(parents=True, exist_ok=True)
    res: dict = {"args": {k: str(v) for k, v in vars(a).items()}, "machine": bench.machine_info(a.work)}
    pg_port = bench.free_port()
    b, _, _ = tiering.start_broker(a, a.work / "data", name, tiering_ms, retention_ms, pg_port=pg_port)
    return b, f"host=127.0.0.1 port={pg_port} user=sediment dbname=sediment", res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common_args(ap, "bench-continuous.json", "interval")
    ap.add_argument("--event-rate", type=int, default=100_000, help="records per second of event time")
    a = ap.parse_args()
    import psycopg

    b, dsn, res = start(a, "continuous", 3_600_000, 3_600_000)
    try:
        per_partition = a.records // a.partitions
        records = per_partition * a.partitions
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute(f"CREATE STREAM ev (k VARCHAR, x BIGINT) WITH (KAFKA_TOPIC='ev', PARTITIONS={a.partitions})")
        base_ts = (int(time.time()) - 3600) * 1000
        secs = produce(b.bootstrap, "ev", records, a.keys, a.partitions, base_ts, a.event_rate)
        log(f"loaded {records:,} records ({a.keys:,} keys) in {secs:.1f} s")
        res["load_seconds"] = secs
        runs = {}
        for form, window in FORMS.items():
            for mode in ("state", "changelog"):
                having = "HAVING count(*) < 0 " if mode == "state" else ""
                sql = (f"SELECT k, count(*) AS n, sum(x) AS total FROM ev {window} "
                       f"WHERE _offset < {per_partition} GROUP BY k {having}EMIT CHANGES")
                with psycopg.connect(dsn, autocommit=True) as c:
                    c.execute("SET 'auto.offset.reset' = 'earliest'")
                    rss0 = rss_mb(b.proc.pid)
                    cpu0, t0 = b.cpu(), time.monotonic()
                    rows = 0
                    with RssSampler(b.proc.pid) as s:
                        with c.cursor().copy(f"COPY ({sql}) TO STDOUT") as copy:
                            for _ in copy.rows():
                                rows += 1
                    wall, cpu = time.monotonic() - t0, b.cpu() - cpu0
                r = {"sql": sql, "wall_s": wall, "broker_cpu_s": cpu, "rows_out": rows,
                     "events_per_s": records / wall, "events_per_cpu_s": records / cpu,
                     "rss_before_mb": rss0, "rss_peak_mb": s.peak}
                runs[f"{form}/{mode}"] = r
                log(f"{form:9} {mode:9}: {records / wall:,.0f} events/s, {records / cpu:,.0f} events/s/core "
                    f"({wall:.2f} s wall, {cpu:.2f} CPU-s), {rows:,} rows out, RSS {rss0:.0f} -> {s.peak:.0f} MB")
        res["runs"] = runs
        with psycopg.connect(dsn, autocommit=True) as c:
            sql = f"SELECT k, count(*) AS n, sum(x) AS total FROM ev WHERE _offset < {per_partition} GROUP BY k"
            times = []
            for _ in range(3):
                cpu0, t0 = b.cpu(), time.monotonic()
                n = len(c.execute(sql).fetchall())
                times.append((time.monotonic() - t0, b.cpu() - cpu0))
            wall, cpu = min(times)
            res["batch"] = {"sql": sql, "wall_s": wall, "broker_cpu_s": cpu, "groups": n,
                            "events_per_s": records / wall, "events_per_cpu_s": records / cpu}
            log(f"batch query: {records / wall:,.0f} events/s, {records / cpu:,.0f} events/s/core ({wall:.2f} s, {n:,} groups)")
        g = runs["group-by/state"]
        res["state_bytes_per_key_upper_bound"] = (g["rss_peak_mb"] - g["rss_before_mb"]) * 1024 * 1024 / a.keys
    finally:
        tiering.stop_broker(b, res)
    Path(a.out).write_text(json.dumps(res, indent=2))
    print(f"\n| form | mode | events/s | events/s/core | wall | rows out |\n|---|---|---|---|---|---|")
    for name, r in res["runs"].items():
        form, mode = name.split("/")
        print(f"| {form} | {mode} | {r['events_per_s']:,.0f} | {r['events_per_cpu_s']:,.0f} | "
              f"{r['wall_s']:.2f} s | {r['rows_out']:,} |")
    bt = res["batch"]
    print(f"| batch query (same aggregate, no window) | - | {bt['events_per_s']:,.0f} | "
          f"{bt['events_per_cpu_s']:,.0f} | {bt['wall_s']:.2f} s | {bt['groups']:,} |")
    print(f"\nState per key (upper bound, RSS delta during group-by/state over {a.keys:,} keys): "
          f"{res['state_bytes_per_key_upper_bound']:,.0f} B")
    return 0


if __name__ == "__main__":
    sys.exit(main())
