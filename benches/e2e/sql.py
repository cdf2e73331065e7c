#!/usr/bin/env python3
"""SQL benchmark: the DataFusion engine over the Parquet archive and the hot tier.

One run, loopback only, on the release binary; everything it starts is
stopped. It reuses bench.py (Broker, rdkperf build, ceilings, machine info)
and tiering.py (topics with configs, the rdkperf produce step, broker stop
with log checks). The run has two broker lives on one data dir:

  load   `--tiering-interval-ms 200 --retention-check-interval-ms 200`:
         rdkperf fills `sql-cold` (--records x --size B, `--payload text`,
         --partitions, segment.bytes=--segment-bytes, local.retention.bytes=0)
         and the first half of `sql-mixed` (same settings, --mixed-records);
         confluent-kafka fills the first half of `sql-keyed` (keys
         k0000000000, k0000000001, ... or a permutation with --key-order
         random; segment.bytes=--keyed-segment-bytes). The harness polls
         `sediment.partitions` until every partition is archived up to its
         active segment (and the local copies are gone); if the archive of
         sql-cold does not yet cover offset ceil(records / partitions) in
         every partition, it produces just enough more to seal the active
         segments and waits again.
  query  restarted on the same data dir with the tierer and the retention
         loop asleep (`--tiering-interval-ms 3600000`), so nothing moves
         between tiers while queries run; the second halves of sql-mixed and
         sql-keyed are produced and stay hot. Then:

1. Historical aggregates over the archived range of sql-cold
   (`"offset" < ceil(records / partitions)` in every partition: >= --records
   rows, all in Parquet, no hot rows planned), each run --warmup + --repeats
   times, interleaved with DuckDB (in this process, `SET threads` = cores)
   reading the same Parquet files (the manifest's list, from
   `sediment.segments`) with the same SQL; results are compared row by row.
   Queries: per-partition count / value bytes / min and max timestamp,
   count + time bounds, per-second histogram. The value-length expression
   is the first of octet_length(value), length(value),
   length(CAST(value AS VARCHAR)) that Sediment accepts (DataFusion's
   octet_length takes strings only; length() casts BYTEA to UTF-8, which is
   why the payload is `text`); DuckDB uses octet_length(value). Timestamps
   are compared as epoch milliseconds.
2. Read amplification of a time range: `EXPLAIN ANALYZE SELECT count(*),
   sum(<len>) FROM topics."sql-cold" WHERE "timestamp" >= A AND "timestamp"
   < B` for a range holding --range-fraction (1%) of the archived rows,
   starting at the --range-start (50%) quantile of their timestamps (by
   rows, not clock: the archived span has gaps between produce runs). bytes_scanned (summed over the
   DataSourceExec lines; DataFusion counts the byte ranges it fetches from
   the files, not the footer and page index, and prints it rounded to 3-4
   digits) is divided by the bytes the query needs, computed with pyarrow
   from the files' metadata: the compressed size of the columns the scan
   reads (its projection plus the predicate's columns, from the plan) in
   every row group whose timestamp statistics overlap [A, B). A pro-rata
   figure (those bytes x the share of each row group's rows in the range)
   is reported too: what a reader with perfect page pruning would fetch.
3. Hot vs cold: the per-partition aggregate over three offset windows of
   sql-mixed with the same number of rows per partition (W): all in Parquet
   [0, W), all hot [max archive end, + W) and straddling the tier boundary;
   ratio spanning / Parquet-only (target <= 1.5) and hot / Parquet-only.
4. Point lookups, one psycopg connection, server-side prepared statements
   (`prepare=True`), --lookups random targets each: `SELECT * ... WHERE
   "partition" = $1 AND "offset" = $2` in the archive (sql-cold) and the hot
   tier (sql-mixed), and `SELECT * ... WHERE key = $1` in the archive and
   hot parts of sql-keyed; p50 / p99 / max in ms and a check that each
   lookup returned exactly its row. If a form fails (e.g. SELECT * with the
   headers column, or a BYTEA parameter), the next one is tried (explicit
   columns, untyped ints, %b/%t, a literal) and the one used is named.
5. Same-run reference points: disk (dd with fdatasync) and loopback TCP
   bandwidth, machine info, versions (DuckDB, pyarrow, psycopg, librdkafka).

Reading it: all data sits in the page cache (it was just written), so the
numbers are CPU cost, not disk or object-store latency; the broker, DuckDB
and the harness share the same cores (DuckDB runs while the broker idles);
"first" is the first (warm-up) run, which pays for Parquet footers, page
indexes and DuckDB's metadata cache; best and median are over the
--repeats runs after it. A markdown table goes to stdout, progress to
stderr, everything (SQL texts, plans, per-run times) to --out. See
benches/README.md ("SQL").
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
import traceback
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (benches/e2e/bench.py)
import tiering  # noqa: E402  (benches/e2e/tiering.py)

MB = bench.MB
MiB = 1 << 20
log = bench.log
WARMUP_TOPIC = bench.WARMUP_TOPIC
ASLEEP_MS = 3_600_000
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

COLD, MIXED, KEYED = "sql-cold", "sql-mixed", "sql-keyed"
PARQUET_COLUMNS = ("partition", "offset", "timestamp", "timestamp_type", "key", "value", "headers",
                   "producer_id", "producer_epoch", "sequence", "leader_epoch", "batch_offset")
LEN_CANDIDATES = ("octet_length(value)", "length(value)", "length(CAST(value AS VARCHAR))")
EXPLICIT_COLUMNS = '"partition", "offset", "timestamp", key, value'

# (name, template). {table}, {where}, {len}, {tsmin}, {tsmax}, {sec} are
# filled per engine (see engine_terms); everything else is the same text.
AGG_QUERIES = [
    ("per-partition count, value bytes, min/max timestamp",
     'SELECT "partition", count(*) AS n, sum({len}) AS value_bytes, {tsmin} AS min_ts, {tsmax} AS max_ts '
     'FROM {table} WHERE {where} GROUP BY "partition" ORDER BY "partition"'),
    ("count + time bounds (timestamp column only)",
     'SELECT count(*) AS n, {tsmin} AS min_ts, {tsmax} AS max_ts FROM {table} WHERE {where}'),
    ("per-second histogram",
     'SELECT {sec} AS second, count(*) AS n FROM {table} WHERE {where} GROUP BY 1 ORDER BY 1'),
]

# ----------------------------------------------------------------------------
# Postgres client
# ----------------------------------------------------------------------------


class Pg:
    """One psycopg connection (autocommit) with a per-query watchdog that
    sends a cancel request after `timeout` seconds."""

    def __init__(self, dsn: str, timeout: float):
        self.dsn = dsn
        self.timeout = timeout
        self.conn = None

    def connect(self) -> None:
        import psycopg

        self.close()
        self.conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=10)

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:  # noqa: BLE001
                pass
            self.conn = None

    def query(self, sql: str, params=None, prepare: bool | None = False,
              timeout: float | None = None) -> tuple[list[tuple], float]:
        """(rows, wall seconds). Without params psycopg uses the simple query
        protocol, with params the extended one; prepare=True makes it a named
        server-side prepared statement. The default (False) also stops
        psycopg's automatic preparation after 5 runs of the same text, so a
        repeated query keeps the protocol path it started on."""
        if self.conn is None or self.conn.closed:
            self.connect()
        conn = self.conn
        fired = threading.Event()

        def cancel():
            fired.set()
            try:
                (getattr(conn, "cancel_safe", None) or conn.cancel)()
            except Exception:  # noqa: BLE001
                pass

        timer = threading.Timer(timeout or self.timeout, cancel)
        timer.daemon = True
        timer.start()
        t0 = time.perf_counter()
        try:
            cur = conn.execute(sql, params, prepare=prepare)
            rows = cur.fetchall() if cur.description is not None else []
            secs = time.perf_counter() - t0
        except Exception as e:
            if fired.is_set():
                raise RuntimeError(f"query cancelled after {timeout or self.timeout:.0f}s: {sql[:200]}") from e
            if conn.closed or conn.broken:
                self.close()
            raise
        finally:
            timer.cancel()
        return rows, secs


def first_line(e: BaseException) -> str:
    s = str(e).strip()
    return (s.splitlines()[0] if s else type(e).__name__)[:300]


def ms_of(v):
    """Timestamps as epoch milliseconds, NUMERIC/HUGEINT as int, the rest as is."""
    if isinstance(v, datetime):
        if v.tzinfo is None:
            v = v.replace(tzinfo=timezone.utc)
        return (v - EPOCH) // timedelta(milliseconds=1)
    if isinstance(v, Decimal):
        return int(v)
    if isinstance(v, memoryview):
        return bytes(v)
    return v


def norm(rows) -> list[tuple]:
    return [tuple(ms_of(x) for x in r) for r in rows]


def iso_ms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="milliseconds")


def stats(runs: list[float]) -> dict:
    return {"runs_s": runs, "best_s": min(runs) if runs else None,
            "median_s": statistics.median(runs) if runs else None}


# ----------------------------------------------------------------------------
# broker and partition state
# ----------------------------------------------------------------------------


def start_broker(a, data: Path, name: str, tiering_ms: int, retention_ms: int) -> bench.Broker:
    """tiering.start_broker, with the Postgres port and DSN kept on the broker."""
    pg_port = bench.free_port()
    b, mport, _ = tiering.start_broker(a, data, name, tiering_ms, retention_ms, pg_port=pg_port)
    b.pg_port, b.mport = pg_port, mport
    b.dsn = f"host=127.0.0.1 port={pg_port} user=sediment dbname=sediment"
    return b


def connect_pg(a, b: bench.Broker) -> Pg:
    pg = Pg(b.dsn, a.query_timeout)
    deadline = time.monotonic() + 30
    while True:
        try:
            pg.connect()
            pg.query("SELECT 1")
            return pg
        except Exception as e:  # noqa: BLE001 - not up yet
            if not b.alive():
                raise RuntimeError(f"{b.name} died; log:\n{b.tail(20)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"postgres listener on port {b.pg_port} not answering: {first_line(e)}")
            time.sleep(0.2)


PART_COLS = ("partition", "archive_start_offset", "archive_end_offset", "local_start_offset",
             "high_watermark", "local_segments", "archive_files", "archive_bytes", "local_bytes")


def partitions(pg: Pg, topic: str) -> list[dict]:
    cols = ", ".join(f'"{c}"' for c in PART_COLS)
    rows, _ = pg.query(f'SELECT {cols} FROM sediment.partitions WHERE "topic" = %s ORDER BY "partition"', (topic,))
    return [dict(zip(PART_COLS, r)) for r in rows]


def arch_end(p: dict) -> int:
    return p["archive_end_offset"] or 0


def arch_start(p: dict) -> int:
    return p["archive_start_offset"] or 0


def drained(parts: list[dict]) -> bool:
    """Everything below the active segment is archived and gone from disk."""
    return bool(parts) and all(p["local_segments"] <= 1 and arch_end(p) >= p["local_start_offset"] for p in parts)


def upload_errors(b: bench.Broker) -> float | None:
    try:
        return tiering.archive_counters(tiering.scrape(b.mport))["errors"]
    except Exception:  # noqa: BLE001
        return None


def summary(parts: list[dict]) -> str:
    return ", ".join(f"p{p['partition']}: archive end {p['archive_end_offset']}, local start "
                     f"{p['local_start_offset']}, hw {p['high_watermark']}, {p['local_segments']} local segs"
                     for p in parts)


def wait_drained(a, pg: Pg, b: bench.Broker, topics: list[str], label: str) -> dict:
    t0 = time.monotonic()
    last, last_change = None, t0
    while True:
        state = {t: partitions(pg, t) for t in topics}
        if all(drained(state[t]) for t in topics):
            log(f"  archive caught up ({label}) after {time.monotonic() - t0:.1f}s: "
                + "; ".join(f"{t} {sum(arch_end(p) - arch_start(p) for p in state[t]):,} rows archived, "
                            f"{sum(p['high_watermark'] - arch_end(p) for p in state[t]):,} hot" for t in topics))
            return {"seconds": time.monotonic() - t0, "partitions": state}
        progress = tuple((arch_end(p), p["local_segments"]) for t in topics for p in state[t])
        now = time.monotonic()
        if progress != last:
            last, last_change = progress, now
        if not b.alive():
            raise RuntimeError(f"{b.name} died while archiving; log:\n{b.tail(20)}")
        if now - last_change > a.stall_seconds or now - t0 > a.drain_timeout:
            raise RuntimeError(f"archive did not catch up ({label}) after {now - t0:.0f}s (upload errors "
                               f"{upload_errors(b)}): " + " | ".join(f"{t}: {summary(state[t])}" for t in topics))
        time.sleep(0.5)


def segments_summary(pg: Pg, topic: str) -> dict:
    rows, _ = pg.query('SELECT "tier", count(*), sum("bytes"), sum("rows") FROM sediment.segments '
                       'WHERE "topic" = %s GROUP BY "tier"', (topic,))
    return {tier: {"files": n, "bytes": nbytes, "rows": nrows} for tier, n, nbytes, nrows in rows}


def archive_files(pg: Pg, data: Path, topic: str) -> list[dict]:
    """The manifest's Parquet files with their local paths (default store: <data>/archive/<path>)."""
    rows, _ = pg.query('SELECT "partition", "base_offset", "next_offset", "min_timestamp", "max_timestamp", "rows", '
                       '"bytes", "path" FROM sediment.segments WHERE "topic" = %s AND "tier" = %s '
                       'ORDER BY "partition", "base_offset"',
                       (topic, "archive"))
    out = []
    for part, base, nxt, tmin, tmax, nrows, nbytes, path in rows:
        p = Path(path)
        local = p if p.is_absolute() and p.exists() else data / "archive" / path.lstrip("/")
        out.append({"partition": part, "base_offset": base, "next_offset": nxt, "min_ts": ms_of(tmin),
                    "max_ts": ms_of(tmax), "rows": nrows, "bytes": nbytes, "path": path, "file": str(local)})
    missing = [f["file"] for f in out if not Path(f["file"]).exists()]
    if missing:
        raise RuntimeError(f"{len(missing)} archive files not found locally, e.g. {missing[0]} (store path "
                           f"{out[0]['path']!r}; the default store is <data-dir>/archive)")
    return out


# ----------------------------------------------------------------------------
# producing
# ----------------------------------------------------------------------------


def key_of(order: str, i: int) -> bytes:
    # random: i * an odd constant mod 2^32 is a permutation, so keys stay unique
    return b"k%010d" % (i if order == "sequential" else (i * 2654435761) & 0xFFFFFFFF)


def produce_keyed(a, b: bench.Broker, topic: str, start: int, end: int) -> dict:
    """Records start..end-1 with key key_of(i), values of --size bytes (printable lines), via confluent-kafka."""
    from confluent_kafka import Producer

    errors = [0, ""]

    def on_error(err, _msg):
        errors[0] += 1
        errors[1] = str(err)

    conf = bench.producer_conf(b.bootstrap, a.linger_ms, a.batch_bytes)
    p = Producer(dict(conf, **{"delivery.report.only.error": True, "on_delivery": on_error}))
    p.list_topics(topic, timeout=30)
    values = bench.payload_lines(a.size)
    produce, poll = p.produce, p.poll
    t0 = time.monotonic()
    for i in range(start, end):
        while True:
            try:
                produce(topic, key=key_of(a.key_order, i), value=values[i % len(values)])
                break
            except BufferError:
                poll(0.005)
        if i % 20000 == 0:
            poll(0)
    left = p.flush(max(30.0, a.max_run_seconds))
    secs = time.monotonic() - t0
    n = end - start
    out = {"topic": topic, "records": n, "keys": f"{key_of(a.key_order, start)!r}..", "key_order": a.key_order,
           "seconds": secs, "records_per_s": n / secs if secs > 0 else 0.0, "errors": errors[0] + left}
    if out["errors"]:
        out["warning"] = f"{errors[0]} delivery errors, {left} unflushed ({errors[1]})"
    log(f"  produce {topic} (keyed, confluent-kafka): {n:,} records in {secs:.1f}s"
        f"{' ⚠ ' + out['warning'] if 'warning' in out else ''}")
    return out


def top_up(a, pg: Pg, b: bench.Broker, topic: str, target: int, res: dict) -> None:
    """Produces until every partition's archive reaches offset `target` (seals the active segments)."""
    for attempt in range(3):
        parts = partitions(pg, topic)
        if parts and min(arch_end(p) for p in parts) >= target:
            return
        rows, _ = pg.query('SELECT "partition", "base_offset", "next_offset", "bytes" FROM sediment.segments '
                           'WHERE "topic" = %s AND "tier" = %s', (topic, "local"))
        active: dict[int, tuple] = {}
        for part, base, nxt, nbytes in rows:
            if part not in active or base > active[part][0]:
                active[part] = (base, nxt, nbytes)
        need = 0
        for p in parts:
            base, nxt, nbytes = active.get(p["partition"], (p["high_watermark"], p["high_watermark"], 0))
            bpr = nbytes / (nxt - base) if nxt > base and nbytes else a.size * 1.1 + 12
            n = math.ceil(max(0, a.segment_bytes - nbytes) / bpr * 1.02) + 200
            need = max(need, n + max(0, target - p["high_watermark"]))
        extra = need * len(parts)
        log(f"  {topic}: archive ends {[arch_end(p) for p in parts]} < {target:,} in some partition; producing "
            f"{extra:,} more records to seal the active segments (attempt {attempt + 1})")
        res.setdefault("top_up", []).append(tiering.produce(a, b, topic, a.size, extra, a.payload))
        res.setdefault("drain_after_top_up", []).append(
            {k: v for k, v in wait_drained(a, pg, b, [topic], f"{topic} top-up").items() if k == "seconds"})
    parts = partitions(pg, topic)
    if min(arch_end(p) for p in parts) < target:
        raise RuntimeError(f"{topic}: archive still short of offset {target} after 3 top-ups: {summary(parts)}")


# ----------------------------------------------------------------------------
# EXPLAIN ANALYZE
# ----------------------------------------------------------------------------

SUFFIX = {"": 1, "K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}


def parse_quantity(s: str) -> float | None:
    """DataFusion's metric text: counts are human_readable_count ("12.34 M",
    "512"), byte sizes human_readable_size ("12.3 MB", "512.0 B")."""
    m = re.match(r"\s*([\d.]+)\s*([KMBT]B?|GB)?\s*$", s)
    if not m:
        return None
    v, unit = float(m.group(1)), m.group(2) or ""
    if unit == "B" and "." in m.group(1) and v < 2048 and m.group(1).endswith(".0"):
        return v  # "512.0 B" is a byte size, not 512 billion
    return v * SUFFIX[unit]


def plan_ops(text: str) -> list[dict]:
    """One entry per operator line: name, the line, its metrics (raw strings)."""
    ops = []
    for line in text.splitlines():
        s = line.strip()
        m = re.match(r"([A-Za-z]\w*Exec)\b", s)
        if not m:
            continue
        metrics = {}
        mm = re.search(r"metrics=\[(.*)\]\s*$", s)
        if mm:
            for part in re.split(r",\s(?=[a-z_]+=)", mm.group(1)):
                if "=" in part:
                    k, v = part.split("=", 1)
                    metrics[k.strip()] = v.strip()
        ops.append({"op": m.group(1), "line": s, "metrics": metrics})
    return ops


def explain_analyze(pg: Pg, sql: str) -> dict:
    rows, secs = pg.query("EXPLAIN ANALYZE " + sql)
    text = "\n".join(str(r[-1]) for r in rows)
    ops = plan_ops(text)
    scans = [o for o in ops if o["op"] == "DataSourceExec"]
    hot = [o for o in ops if o["op"] == "HotScanExec"]
    out = {"plan": text, "seconds": secs, "datasource_lines": len(scans), "hot_scan_lines": len(hot)}
    total, ok = 0.0, bool(scans)
    for o in scans:
        v = parse_quantity(o["metrics"].get("bytes_scanned", ""))
        if v is None:
            ok = False
        else:
            total += v
    out["bytes_scanned"] = total if ok else None
    for key in ("row_groups_pruned_statistics", "page_index_rows_pruned", "page_index_pages_pruned",
                "files_ranges_pruned_statistics", "pushdown_rows_pruned", "pushdown_rows_matched", "output_rows"):
        vals = [o["metrics"][key] for o in scans if key in o["metrics"]]
        if vals:
            out[key] = vals if len(vals) > 1 else vals[0]
    cols: set[str] = set()
    for o in scans:
        pm = re.search(r"projection=\[([^\]]*)\]", o["line"])
        if pm:
            cols |= {c for c in PARQUET_COLUMNS if re.search(rf"(?<![\w]){c}(?![\w])", pm.group(1))}
        pr = re.search(r"(?<![_\w])predicate=(.*?)(?:, pruning_predicate=|, required_guarantees=|, metrics=|$)",
                       o["line"])
        if pr:
            cols |= {c for c in PARQUET_COLUMNS if re.search(rf"(?<![\w]){c}@\d+", pr.group(1))}
        files = set(re.findall(r"[\w./=-]+\.parquet", o["line"]))
        out["files_listed_in_plan"] = out.get("files_listed_in_plan", 0) + len(files)
        out["file_list_truncated"] = "..." in o["line"].split("projection=")[0]
    out["columns_read"] = sorted(cols)
    hot_rows = 0
    for o in hot:
        for lo, hi in re.findall(r"p\d+=\[(\d+),(\d+)\)", o["line"]):
            hot_rows += int(hi) - int(lo)
    out["hot_rows_planned"] = hot_rows
    unions = [o for o in ops if o["op"] == "UnionExec" and "output_rows" in o["metrics"]]
    scan_rows = [parse_quantity(o["metrics"].get("output_rows", "")) for o in scans]
    if hot and unions and all(v is not None for v in scan_rows):
        u = parse_quantity(unions[0]["metrics"]["output_rows"])
        if u is not None:
            out["hot_rows_output_approx"] = max(0.0, u - sum(scan_rows))
    return out


def parquet_needed(files: list[str], columns: list[str], lo_ms: int, hi_ms: int) -> dict:
    """Bytes a scan for timestamp in [lo_ms, hi_ms) needs, from the Parquet metadata:
    compressed column-chunk bytes of `columns` in row groups whose timestamp
    statistics overlap the range; and the pro-rata share of the rows really in range."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    out = {"files": len(files), "files_overlapping": 0, "row_groups": 0, "row_groups_overlapping": 0,
           "rows": 0, "rows_in_range": 0, "needed_bytes": 0, "pro_rata_bytes": 0.0,
           "columns": columns, "all_bytes_of_columns": 0, "file_bytes": 0, "row_groups_without_stats": 0}
    for f in files:
        pf = pq.ParquetFile(f)
        md = pf.metadata
        out["file_bytes"] += Path(f).stat().st_size
        if md.num_row_groups == 0:
            continue
        rg0 = md.row_group(0)
        idx = {rg0.column(j).path_in_schema: j for j in range(md.num_columns)}
        ts_j = idx["timestamp"]
        hit = False
        for r in range(md.num_row_groups):
            rg = md.row_group(r)
            out["row_groups"] += 1
            out["rows"] += rg.num_rows
            size = sum(rg.column(idx[c]).total_compressed_size for c in columns if c in idx)
            out["all_bytes_of_columns"] += size
            st = rg.column(ts_j).statistics
            if st is not None and st.has_min_max:
                overlap = st.max_raw >= lo_ms and st.min_raw < hi_ms
            else:
                out["row_groups_without_stats"] += 1
                overlap = True
            if not overlap:
                continue
            hit = True
            out["row_groups_overlapping"] += 1
            out["needed_bytes"] += size
            ts = pf.read_row_group(r, columns=["timestamp"]).column(0)
            ints = pc.cast(ts, pa.int64())
            n_in = pc.sum(pc.and_(pc.greater_equal(ints, lo_ms), pc.less(ints, hi_ms)).cast(pa.int64())).as_py() or 0
            out["rows_in_range"] += n_in
            out["pro_rata_bytes"] += size * n_in / rg.num_rows if rg.num_rows else 0
        out["files_overlapping"] += int(hit)
    return out


# ----------------------------------------------------------------------------
# 1. historical aggregates: Sediment vs DuckDB
# ----------------------------------------------------------------------------


def engine_terms(len_expr: str, engine: str) -> dict:
    if engine == "sediment":
        return {"len": len_expr, "tsmin": 'min("timestamp")', "tsmax": 'max("timestamp")',
                "sec": "date_trunc('second', \"timestamp\")"}
    return {"len": "octet_length(value)", "tsmin": 'epoch_ms(min("timestamp"))', "tsmax": 'epoch_ms(max("timestamp"))',
            "sec": "epoch_ms(date_trunc('second', \"timestamp\"))"}


def sediment_len_expr(a, pg: Pg, topic: str) -> tuple[str, dict]:
    tried = {}
    for e in LEN_CANDIDATES:
        try:
            rows, _ = pg.query(f'SELECT {e} FROM topics."{topic}" WHERE "partition" = 0 AND "offset" = 0')
            if rows and ms_of(rows[0][0]) == a.size:
                return e, tried
            tried[e] = f"returned {rows!r:.100}, expected {a.size}"
        except Exception as ex:  # noqa: BLE001
            tried[e] = first_line(ex)
    raise RuntimeError(f"no value-length expression works in Sediment: {tried}")


def duck_connect(a, files: list[str]):
    import duckdb

    con = duckdb.connect()
    settings = {"version": duckdb.__version__, "threads": a.duckdb_threads}
    con.execute(f"SET threads = {int(a.duckdb_threads)}")
    for stmt in ("SET parquet_metadata_cache = true", "SET TimeZone = 'UTC'"):
        try:
            con.execute(stmt)
            settings[stmt] = "ok"
        except Exception as e:  # noqa: BLE001
            settings[stmt] = f"failed: {first_line(e)}"
    lst = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
    con.execute(f"CREATE OR REPLACE VIEW archive AS SELECT * FROM read_parquet([{lst}], hive_partitioning = false)")
    settings["threads_effective"] = con.execute("SELECT current_setting('threads')").fetchone()[0]
    return con, settings


def part_aggregate(a, pg: Pg, b: bench.Broker, data: Path, res: dict) -> dict:
    parts = partitions(pg, COLD)
    n_parts = len(parts)
    target = math.ceil(a.records / n_parts)
    short = min(arch_end(p) for p in parts)
    out: dict = {"topic": COLD, "partitions": n_parts, "problems": []}
    if short < target:
        out["problems"].append(f"the archive of {COLD} ends at {short:,} in some partition, short of {target:,}: "
                               f"comparing on offset < {short:,}")
        target = short
    if min(arch_start(p) for p in parts) != 0:
        out["problems"].append(f"archive starts at {[arch_start(p) for p in parts]}, not 0")
    rows_expected = sum(max(0, target - arch_start(p)) for p in parts)
    out.update({"offset_below": target, "rows": rows_expected})
    files = archive_files(pg, data, COLD)
    glob = sorted(str(p) for p in (data / "archive" / "topics" / COLD).glob("*/data/*.parquet"))
    out["files"] = {"manifest": len(files), "glob": len(glob), "bytes": sum(f["bytes"] for f in files),
                    "rows": sum(f["rows"] or 0 for f in files),
                    "below_bound": sum(1 for f in files if f["base_offset"] < target)}
    if len(glob) != len(files):
        out["problems"].append(f"{len(glob)} .parquet files under the topic dir, {len(files)} in the manifest: "
                               "DuckDB reads the manifest's list")
    res["cold_files"] = files
    len_expr, tried = sediment_len_expr(a, pg, COLD)
    out["value_length"] = {"sediment": len_expr, "duckdb": "octet_length(value)", "rejected": tried}
    if len_expr != "octet_length(value)" and a.payload != "text":
        out["problems"].append(f"Sediment's value length is {len_expr} (a cast to UTF-8) with payload {a.payload}")
    log(f"== 1. historical aggregates: {rows_expected:,} archived rows ({COLD}, offset < {target:,} in each of "
        f"{n_parts} partitions), {len(files)} Parquet files, {out['files']['bytes'] / MB:,.1f} MB; "
        f"value length: {len_expr}")
    con = None
    if "duckdb" not in a.skip:
        try:
            con, out["duckdb"] = duck_connect(a, [f["file"] for f in files])
        except Exception as e:  # noqa: BLE001
            out["problems"].append(f"DuckDB unavailable: {first_line(e)}")
    where = f'"offset" < {target}'
    s_terms, d_terms = engine_terms(len_expr, "sediment"), engine_terms(len_expr, "duckdb")
    out["queries"] = []
    for name, tpl in AGG_QUERIES:
        q = {"name": name, "sediment_sql": tpl.format(table=f'topics."{COLD}"', where=where, **s_terms),
             "duckdb_sql": tpl.format(table="archive", where=where, **d_terms)}
        out["queries"].append(q)
        try:
            s_runs, d_runs, s_rows, d_rows, cpu = [], [], None, None, 0.0
            for i in range(a.warmup + a.repeats):
                c0 = b.cpu()
                rows, secs = pg.query(q["sediment_sql"])
                c1 = b.cpu()
                cpu += (c1 - c0) if c0 is not None and c1 is not None and i >= a.warmup else 0.0
                s_runs.append(secs)
                s_rows = norm(rows)
                if con is not None:
                    t0 = time.perf_counter()
                    rows = con.execute(q["duckdb_sql"]).fetchall()
                    d_runs.append(time.perf_counter() - t0)
                    d_rows = norm(rows)
            q["sediment"] = dict(stats(s_runs[a.warmup:]), first_s=s_runs[0],
                                 broker_cpu_s_per_run=cpu / a.repeats if a.repeats else None)
            q["result_rows"] = len(s_rows)
            q["result_head"] = [list(map(str, r)) for r in s_rows[:8]]
            if name.startswith("per-partition"):
                got = sum(r[1] for r in s_rows)
                if got != rows_expected:
                    out["problems"].append(f"{name}: Sediment counted {got:,} rows, expected {rows_expected:,}")
            if d_runs:
                q["duckdb"] = dict(stats(d_runs[a.warmup:]), first_s=d_runs[0])
                q["same_result"] = s_rows == d_rows
                if not q["same_result"]:
                    diff = next((i for i, (x, y) in enumerate(zip(s_rows, d_rows)) if x != y), min(len(s_rows), len(d_rows)))
                    q["mismatch"] = {"row": diff, "sediment": str(s_rows[diff:diff + 2]),
                                     "duckdb": str(d_rows[diff:diff + 2]), "rows": [len(s_rows), len(d_rows)]}
                    out["problems"].append(f"{name}: results differ at row {diff}: Sediment "
                                           f"{q['mismatch']['sediment']} vs DuckDB {q['mismatch']['duckdb']}")
                q["ratio_best"] = q["sediment"]["best_s"] / q["duckdb"]["best_s"]
                q["ratio_median"] = q["sediment"]["median_s"] / q["duckdb"]["median_s"]
            log(f"  {name}: Sediment best {q['sediment']['best_s'] * 1000:,.0f} ms, median "
                f"{q['sediment']['median_s'] * 1000:,.0f} ms (first {s_runs[0] * 1000:,.0f})"
                + (f"; DuckDB best {q['duckdb']['best_s'] * 1000:,.0f} ms, median {q['duckdb']['median_s'] * 1000:,.0f} ms "
                   f"(first {d_runs[0] * 1000:,.0f}); Sediment/DuckDB median {q['ratio_median']:.2f}; "
                   f"same result: {q['same_result']}" if d_runs else ""))
        except Exception as e:  # noqa: BLE001 - next query
            q["error"] = first_line(e)
            out["problems"].append(f"{name}: {first_line(e)}")
            log(f"  ERROR {name}: {first_line(e)}")
    try:  # where the first query's time goes, for the record
        ea = explain_analyze(pg, out["queries"][0]["sediment_sql"])
        out["queries"][0]["explain_analyze"] = ea
        log(f"  EXPLAIN ANALYZE (first query): bytes_scanned {ea['bytes_scanned'] or 0:,.0f}, columns "
            f"{ea['columns_read']}, hot rows planned {ea['hot_rows_planned']:,}")
    except Exception as e:  # noqa: BLE001
        out["problems"].append(f"EXPLAIN ANALYZE: {first_line(e)}")
    if con is not None:
        con.close()
    return out


# ----------------------------------------------------------------------------
# 2. time-range read amplification
# ----------------------------------------------------------------------------


def part_time_range(a, pg: Pg, b: bench.Broker, data: Path, res: dict) -> dict:
    files = res.get("cold_files") or archive_files(pg, data, COLD)
    lo_all = min(f["min_ts"] for f in files if f["min_ts"] is not None)
    hi_all = max(f["max_ts"] for f in files if f["max_ts"] is not None)
    span = hi_all - lo_all
    # By rows, not by clock: the archive's span has gaps (the load's
    # produce runs and the top-up happen at different times), so a slice of
    # the span can hold no row at all. The range starts at the
    # --range-start quantile of the archived timestamps and holds about
    # --range-fraction of the rows.
    import duckdb
    q = duckdb.connect().execute(
        'SELECT quantile_disc(epoch_ms("timestamp"), ?) FROM read_parquet(?)',
        [[a.range_start, min(1.0, a.range_start + a.range_fraction)], [f["file"] for f in files]]).fetchone()[0]
    lo, hi = int(q[0]), max(int(q[1]), int(q[0]) + 1)
    len_expr = res.get("aggregate", {}).get("value_length", {}).get("sediment") or sediment_len_expr(a, pg, COLD)[0]
    sql = (f'SELECT count(*) AS n, sum({len_expr}) AS value_bytes FROM topics."{COLD}" '
           f"WHERE \"timestamp\" >= '{iso_ms(lo)}' AND \"timestamp\" < '{iso_ms(hi)}'")
    out: dict = {"topic": COLD, "sql": sql, "range_ms": [lo, hi], "archive_span_ms": [lo_all, hi_all],
                 "range_fraction": a.range_fraction, "problems": []}
    log(f"== 2. time range: {iso_ms(lo)} .. {iso_ms(hi)} ({(hi - lo):,} ms of a {span:,} ms archived span; "
        f"quantiles {a.range_start} .. {a.range_start + a.range_fraction} of the rows)")
    runs, n = [], None
    for _ in range(a.warmup + a.repeats):
        rows, secs = pg.query(sql)
        runs.append(secs)
        n = norm(rows)[0]
    out["query"] = dict(stats(runs[a.warmup:]), first_s=runs[0])
    out["result"] = list(n)
    try:
        eas = [explain_analyze(pg, sql) for _ in range(2)]
    except Exception as e:  # noqa: BLE001 - keep the timings
        out["problems"].append(f"EXPLAIN ANALYZE: {first_line(e)}")
        return out
    ea = eas[-1]
    out["explain_analyze"] = ea
    out["bytes_scanned_runs"] = [e["bytes_scanned"] for e in eas]
    cols = ea["columns_read"] or ["timestamp", "value"]
    if not ea["columns_read"]:
        out["problems"].append("could not read the scan's columns from the plan; assuming timestamp, value")
    need = parquet_needed([f["file"] for f in files], cols, lo, hi)
    out["needed"] = need
    if ea["bytes_scanned"] is not None and need["needed_bytes"]:
        out["ratio"] = ea["bytes_scanned"] / need["needed_bytes"]
    if ea["bytes_scanned"] is not None and need["pro_rata_bytes"]:
        out["ratio_pro_rata"] = ea["bytes_scanned"] / need["pro_rata_bytes"]
    if n and n[0] != need["rows_in_range"]:
        out["problems"].append(f"Sediment counted {n[0]:,} rows in the range, the Parquet files hold "
                               f"{need['rows_in_range']:,} (hot rows in range?)")
    if ea["hot_rows_planned"]:
        out.setdefault("notes", []).append(f"the plan has a HotScanExec over {ea['hot_rows_planned']:,} hot rows (the active "
                               "segments) although the range lies in the archive: hot ranges are bounded by "
                               "offsets and the lower time bound only")
    log(f"  rows {n[0]:,}; bytes_scanned {ea['bytes_scanned'] or 0:,.0f} vs needed "
        f"{need['needed_bytes']:,} ({need['row_groups_overlapping']}/{need['row_groups']} row groups, columns "
        f"{', '.join(cols)}): ratio {out.get('ratio', float('nan')):.2f}; pro-rata {need['pro_rata_bytes']:,.0f} B; "
        f"query best {out['query']['best_s'] * 1000:,.1f} ms")
    return out


# ----------------------------------------------------------------------------
# 3. hot vs cold
# ----------------------------------------------------------------------------


def part_hot_cold(a, pg: Pg, b: bench.Broker, res: dict) -> dict:
    parts = partitions(pg, MIXED)
    ends = [arch_end(p) for p in parts]
    hws = [p["high_watermark"] for p in parts]
    a_min, a_max, h_min = min(ends), max(ends), min(hws)
    w = min(a_min - max(arch_start(p) for p in parts), h_min - a_max)
    out: dict = {"topic": MIXED, "archive_ends": ends, "high_watermarks": hws, "problems": []}
    if w <= 0:
        raise RuntimeError(f"{MIXED}: no room for equal windows (archive ends {ends}, high watermarks {hws})")
    c = (a_min + a_max) // 2
    windows = {"Parquet only": (0, w), "hot only": (a_max, a_max + w), "spanning": (c - w // 2, c - w // 2 + w)}
    len_expr = res.get("aggregate", {}).get("value_length", {}).get("sediment") or sediment_len_expr(a, pg, MIXED)[0]
    tpl = AGG_QUERIES[0][1]
    terms = engine_terms(len_expr, "sediment")
    out["window_rows_per_partition"] = w
    out["windows"] = {}
    for name, (lo, hi) in windows.items():
        sql = tpl.format(table=f'topics."{MIXED}"', where=f'"offset" >= {lo} AND "offset" < {hi}', **terms)
        share = sum(max(0, min(hi, e) - lo) for e in ends) / (w * len(parts))
        out["windows"][name] = {"offsets": [lo, hi], "rows": w * len(parts), "parquet_share": share, "sql": sql,
                                "runs": []}
        try:
            rows, _ = pg.query("EXPLAIN " + sql)
            plan = "\n".join(str(r[-1]) for r in rows)
            out["windows"][name]["plan"] = plan
            out["windows"][name]["plan_has"] = {"DataSourceExec": "DataSourceExec" in plan,
                                                "HotScanExec": "HotScanExec" in plan}
        except Exception as e:  # noqa: BLE001
            out["problems"].append(f"EXPLAIN {name}: {first_line(e)}")
    log(f"== 3. hot vs cold on {MIXED}: {w:,} offsets per partition per window; archive ends {ends}, "
        f"high watermarks {hws}")
    for i in range(a.warmup + a.repeats):  # interleaved, so drift hits every window alike
        for name, win in out["windows"].items():
            if win.get("error"):
                continue
            try:
                rows, secs = pg.query(win["sql"])
                win["runs"].append(secs)
                counts = [r[1] for r in rows]
                if counts != [w] * len(parts):
                    win.setdefault("wrong_counts", counts)
            except Exception as e:  # noqa: BLE001
                win["error"] = first_line(e)
                out["problems"].append(f"{name}: {first_line(e)}")
    for name, win in out["windows"].items():
        if win["runs"]:
            win.update(stats(win["runs"][a.warmup:]), first_s=win["runs"][0])
        if win.get("wrong_counts"):
            out["problems"].append(f"{name}: per-partition counts {win['wrong_counts']}, expected {w} each")
        if win.get("best_s") is not None:
            log(f"  {name} (Parquet share {win['parquet_share'] * 100:.0f}%): best {win['best_s'] * 1000:,.0f} ms, "
                f"median {win['median_s'] * 1000:,.0f} ms")
    cold, hot, span = (out["windows"][k] for k in ("Parquet only", "hot only", "spanning"))
    if cold.get("median_s") and span.get("median_s"):
        out["spanning_over_parquet_median"] = span["median_s"] / cold["median_s"]
        out["spanning_over_parquet_best"] = span["best_s"] / cold["best_s"]
    if cold.get("median_s") and hot.get("median_s"):
        out["hot_over_parquet_median"] = hot["median_s"] / cold["median_s"]
    return out


# ----------------------------------------------------------------------------
# 4. point lookups
# ----------------------------------------------------------------------------


def run_lookups(a, pg: Pg, label: str, forms: list[tuple], targets: list[dict], check, warm: int) -> dict:
    """forms: (name, sql(target) -> str, params(target) -> tuple | None, prepare). The first
    form that returns the right row for targets[0] is used: targets[:warm] untimed (the
    statement gets prepared, caches fill), targets[warm:] timed."""
    tried = {}
    chosen = None
    for form in forms:
        name, sql_of, params_of, prep = form
        try:
            rows, _ = pg.query(sql_of(targets[0]), params_of(targets[0]), prepare=prep)
            ok, why = check(targets[0], norm(rows))
            if ok:
                chosen = form
                break
            tried[name] = why
        except Exception as e:  # noqa: BLE001
            tried[name] = first_line(e)
    if chosen is None:
        raise RuntimeError(f"every lookup form failed: {tried}")
    name, sql_of, params_of, prep = chosen
    for t in targets[1:warm]:
        pg.query(sql_of(t), params_of(t), prepare=prep)
    lat, wrong, examples = [], 0, []
    for t in targets[warm:]:
        rows, secs = pg.query(sql_of(t), params_of(t), prepare=prep)
        lat.append(secs * 1000)
        ok, why = check(t, norm(rows))
        if not ok:
            wrong += 1
            if len(examples) < 3:
                examples.append(why)
    s = sorted(lat)
    out = {"lookup": label, "form": name, "sql": sql_of(targets[0]), "prepared": bool(prep), "n": len(lat),
           "p50_ms": bench.percentile(s, 0.50), "p99_ms": bench.percentile(s, 0.99), "max_ms": s[-1],
           "mean_ms": statistics.mean(s), "wrong_results": wrong, "wrong_examples": examples,
           "forms_rejected": tried, "latencies_ms": lat}
    log(f"  {label}: p50 {out['p50_ms']:.2f} ms, p99 {out['p99_ms']:.2f} ms, max {out['max_ms']:.2f} ms "
        f"({len(lat)} lookups, form: {name}{f', {wrong} wrong' if wrong else ''})")
    return out


def offset_forms(topic: str) -> list[tuple]:
    from psycopg.types.numeric import Int4, Int8

    forms = []
    for cols in ("*", EXPLICIT_COLUMNS):
        sql = f'SELECT {cols} FROM topics."{topic}" WHERE "partition" = %s AND "offset" = %s'
        what = "SELECT *" if cols == "*" else "explicit columns"
        forms.append((f"prepared, int4/int8 parameters, {what}", lambda t, s=sql: s,
                      lambda t: (Int4(t["p"]), Int8(t["o"])), True))
        forms.append((f"prepared, untyped int parameters, {what}", lambda t, s=sql: s,
                      lambda t: (t["p"], t["o"]), True))
    forms.append(("literal SQL (not prepared), explicit columns",
                  lambda t: f'SELECT {EXPLICIT_COLUMNS} FROM topics."{topic}" WHERE "partition" = {t["p"]} '
                            f'AND "offset" = {t["o"]}', lambda t: None, False))
    return forms


def key_forms(topic: str) -> list[tuple]:
    forms = []
    for cols in ("*", EXPLICIT_COLUMNS):
        what = "SELECT *" if cols == "*" else "explicit columns"
        for ph, how in (("%s", "auto"), ("%b", "binary"), ("%t", "text")):
            sql = f'SELECT {cols} FROM topics."{topic}" WHERE key = {ph}'
            forms.append((f"prepared, bytea parameter ({how}), {what}", lambda t, s=sql: s,
                          lambda t: (t["key"],), True))
    forms.append(("literal X'..' (not prepared), explicit columns",
                  lambda t: f"SELECT {EXPLICIT_COLUMNS} FROM topics.\"{topic}\" WHERE key = X'{t['key'].hex()}'",
                  lambda t: None, False))
    return forms


def check_offset(t: dict, rows: list[tuple]) -> tuple[bool, str]:
    if len(rows) == 1 and rows[0][0] == t["p"] and rows[0][1] == t["o"]:
        return True, ""
    return False, f"p{t['p']} offset {t['o']}: got {len(rows)} rows {str(rows[:1])[:120]}"


def check_key(t: dict, rows: list[tuple]) -> tuple[bool, str]:
    if len(rows) == 1 and rows[0][0] == t["p"] and rows[0][1] == t["o"]:
        return True, ""
    return False, f"key {t.get('key')!r} (p{t['p']} offset {t['o']}): got {len(rows)} rows {str(rows[:1])[:120]}"


def random_targets(rnd: random.Random, parts: list[dict], tier: str, n: int) -> list[dict]:
    ranges = []
    for p in parts:
        lo, hi = ((arch_start(p), arch_end(p)) if tier == "archive"
                  else (max(arch_end(p), p["local_start_offset"]), p["high_watermark"]))
        if hi > lo:
            ranges.append((p["partition"], lo, hi))
    if not ranges:
        raise RuntimeError(f"no {tier} records to look up")
    out = []
    for _ in range(n):
        part, lo, hi = rnd.choice(ranges)
        out.append({"p": part, "o": rnd.randrange(lo, hi)})
    return out


def part_lookups(a, pg: Pg, b: bench.Broker, res: dict) -> dict:
    rnd = random.Random(a.seed)
    out: dict = {"results": [], "problems": []}
    warm = max(1, a.lookup_warmup)
    n = a.lookups + warm
    log(f"== 4. point lookups: {a.lookups} per kind, one connection, prepared statements")
    for topic, tier in ((COLD, "archive"), (MIXED, "hot")):
        label = f"by offset, {tier} ({topic})"
        try:
            targets = random_targets(rnd, partitions(pg, topic), tier, n)
            r = run_lookups(a, pg, label, offset_forms(topic), targets, check_offset, warm)
            r.update({"kind": "offset", "tier": tier, "topic": topic})
            out["results"].append(r)
        except Exception as e:  # noqa: BLE001
            out["problems"].append(f"{label}: {first_line(e)}")
            out["results"].append({"lookup": label, "kind": "offset", "tier": tier, "error": first_line(e)})
            log(f"  ERROR {label}: {first_line(e)}")
    for tier in ("archive", "hot"):
        label = f"by key, {tier} ({KEYED})"
        try:
            targets = random_targets(rnd, partitions(pg, KEYED), tier, n)
            for t in targets:  # the key at (partition, offset), read by offset
                rows, _ = pg.query(f'SELECT key FROM topics."{KEYED}" WHERE "partition" = {t["p"]} '
                                   f'AND "offset" = {t["o"]}')
                if not rows:
                    raise RuntimeError(f"no record at p{t['p']} offset {t['o']}")
                t["key"] = ms_of(rows[0][0])
            r = run_lookups(a, pg, label, key_forms(KEYED), targets, check_key, warm)
            r.update({"kind": "key", "tier": tier, "topic": KEYED})
            out["results"].append(r)
        except Exception as e:  # noqa: BLE001
            out["problems"].append(f"{label}: {first_line(e)}")
            out["results"].append({"lookup": label, "kind": "key", "tier": tier, "error": first_line(e)})
            log(f"  ERROR {label}: {first_line(e)}")
    for r in out["results"]:
        if r.get("wrong_results"):
            out["problems"].append(f"{r['lookup']}: {r['wrong_results']} lookups returned the wrong rows, e.g. "
                                   f"{r['wrong_examples'][0]}")
    return out


# ----------------------------------------------------------------------------
# the run
# ----------------------------------------------------------------------------


def load_phase(a, data: Path, res: dict) -> dict:
    """Broker `load`: fills the topics and waits for the archive; returns partition state at the end."""
    load: dict = res.setdefault("load", {"problems": []})
    b = start_broker(a, data, "sql-load", a.tiering_ms, a.retention_ms)
    try:
        pg = connect_pg(a, b)
        tiering.create_topic(b.bootstrap, WARMUP_TOPIC, 1, {"remote.storage.enable": "false"})
        tier_cfg = {"local.retention.bytes": "0", "remote.storage.enable": "true"}
        tiering.create_topic(b.bootstrap, COLD, a.partitions, dict(tier_cfg, **{"segment.bytes": str(a.segment_bytes)}))
        tiering.create_topic(b.bootstrap, MIXED, a.partitions, dict(tier_cfg, **{"segment.bytes": str(a.segment_bytes)}))
        tiering.create_topic(b.bootstrap, KEYED, a.partitions,
                             dict(tier_cfg, **{"segment.bytes": str(a.keyed_segment_bytes)}))
        log(f"== load: {a.records:,} x {a.size} B ({a.payload}) into {COLD}, {a.mixed_records // 2:,} into {MIXED}, "
            f"{a.keyed_records // 2:,} keyed into {KEYED}")
        topics = []
        for key, fn in (("cold", lambda: tiering.produce(a, b, COLD, a.size, a.records, a.payload)),
                        ("mixed_first_half", lambda: tiering.produce(a, b, MIXED, a.size, a.mixed_records // 2,
                                                                     a.payload)),
                        ("keyed_first_half", lambda: produce_keyed(a, b, KEYED, 0, a.keyed_records // 2))):
            try:
                load[key] = fn()
                topics.append({"cold": COLD, "mixed_first_half": MIXED, "keyed_first_half": KEYED}[key])
                if load[key].get("warning"):
                    load["problems"].append(f"produce {key}: {load[key]['warning']}")
            except Exception as e:  # noqa: BLE001
                load["problems"].append(f"produce {key}: {first_line(e)}")
                log(f"  ERROR produce {key}: {first_line(e)}")
            if not b.alive():
                raise RuntimeError(f"broker died; log:\n{b.tail(20)}")
        try:
            load["drain_seconds"] = wait_drained(a, pg, b, topics, "load")["seconds"]
        except Exception as e:  # noqa: BLE001 - the queries still run on what is archived
            load["problems"].append(first_line(e))
            log(f"  ERROR {first_line(e)}")
        if COLD in topics and load.get("drain_seconds") is not None:
            try:
                top_up(a, pg, b, COLD, math.ceil(a.records / a.partitions), load)
            except Exception as e:  # noqa: BLE001
                load["problems"].append(f"top-up {COLD}: {first_line(e)}")
                log(f"  ERROR top-up: {first_line(e)}")
        try:
            load["archive_counters"] = tiering.archive_counters(tiering.scrape(b.mport))
            if load["archive_counters"]["errors"]:
                load["problems"].append(f"{load['archive_counters']['errors']:.0f} archive upload errors")
        except Exception:  # noqa: BLE001
            pass
        state = {t: partitions(pg, t) for t in (COLD, MIXED, KEYED)}
        load["partitions_at_end"] = state
        load["peak_rss_mb"] = b.peak_rss_mb()
        pg.close()
        return state
    finally:
        tiering.stop_broker(b, res)


def query_phase(a, data: Path, res: dict, before: dict) -> None:
    b = start_broker(a, data, "sql-query", ASLEEP_MS, ASLEEP_MS)
    try:
        pg = connect_pg(a, b)
        deadline = time.monotonic() + 60
        while True:  # manifests load after start-up: wait for the archive ends seen before the restart
            now = {t: {p["partition"]: p for p in partitions(pg, t)} for t in before}
            behind = [(t, p["partition"]) for t, ps in before.items() for p in ps
                      if arch_end(now[t].get(p["partition"], {"archive_end_offset": None})) < arch_end(p)]
            if not behind:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"archive not visible 60 s after the restart for {behind[:4]}")
            time.sleep(0.2)
        q = res.setdefault("query_phase", {"problems": []})
        log(f"== restarted with the tierer asleep; the second halves stay hot")
        for key, fn in (("mixed_second_half", lambda: tiering.produce(a, b, MIXED, a.size,
                                                                      a.mixed_records - a.mixed_records // 2, a.payload)),
                        ("keyed_second_half", lambda: produce_keyed(a, b, KEYED, a.keyed_records // 2,
                                                                    a.keyed_records))):
            try:
                q[key] = fn()
            except Exception as e:  # noqa: BLE001
                q["problems"].append(f"produce {key}: {first_line(e)}")
                log(f"  ERROR produce {key}: {first_line(e)}")
        state = {t: partitions(pg, t) for t in (COLD, MIXED, KEYED)}
        q["partitions_before_queries"] = state
        res["dataset"] = {t: {"partitions": len(ps), "archived_rows": sum(arch_end(p) - arch_start(p) for p in ps),
                              "hot_rows": sum(p["high_watermark"] - arch_end(p) for p in ps),
                              "segments": segments_summary(pg, t)} for t, ps in state.items()}
        for t, d in res["dataset"].items():
            log(f"  {t}: {d['archived_rows']:,} rows archived, {d['hot_rows']:,} hot; {d['segments']}")
        for name, fn in (("aggregate", lambda: part_aggregate(a, pg, b, data, res)),
                         ("time_range", lambda: part_time_range(a, pg, b, data, res)),
                         ("hot_cold", lambda: part_hot_cold(a, pg, b, res)),
                         ("lookups", lambda: part_lookups(a, pg, b, res))):
            if name in a.skip:
                continue
            c0, t0 = b.cpu(), time.monotonic()
            try:
                res[name] = fn()
            except Exception as e:  # noqa: BLE001 - report it, run the next part
                log(f"  ERROR {name}: {first_line(e)}")
                res[name] = {"fatal": str(e)[:2000], "traceback": traceback.format_exc()[-3000:]}
            c1 = b.cpu()
            res[name]["part_seconds"] = time.monotonic() - t0
            res[name]["broker_cpu_s"] = (c1 - c0) if c0 is not None and c1 is not None else None
            if not b.alive():
                raise RuntimeError(f"broker died during {name}; log:\n{b.tail(20)}")
        after = {t: partitions(pg, t) for t in (COLD, MIXED, KEYED)}
        moved = [(t, p["partition"]) for t in after for p, p0 in zip(after[t], state[t]) if arch_end(p) != arch_end(p0)]
        if moved:
            q["problems"].append(f"the archive moved while queries ran: {moved}")
        q["peak_rss_mb"] = b.peak_rss_mb()
        pg.close()
    finally:
        tiering.stop_broker(b, res)


# ----------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------


def ms(s: float | None) -> str:
    if s is None:
        return "n/a"
    return f"{s * 1000:,.0f} ms" if s >= 0.1 else f"{s * 1000:,.1f} ms"


def size_mb(n: float | None) -> str:
    return "n/a" if n is None else f"{n / MB:,.2f} MB"


def problems_of(res: dict) -> list[str]:
    out = []
    for key in ("load", "query_phase", "aggregate", "time_range", "hot_cold", "lookups"):
        r = res.get(key) or {}
        if r.get("fatal"):
            out.append(f"- {key}: FATAL {r['fatal'].splitlines()[0][:300]}")
        out += [f"- {key}: {p}" for p in r.get("problems", [])]
    out += [f"- {p}" for p in res.get("problems", [])]
    return out


def markdown(res: dict, a) -> str:
    m, c, v = res.get("machine", {}), res.get("ceilings", {}), res.get("versions", {})
    disk = c.get("disk", {}).get("write_fdatasync_MBps")
    net = c.get("loopback", {}).get("tcp_MBps")
    agg, tr, hc, lk = (res.get(k) or {} for k in ("aggregate", "time_range", "hot_cold", "lookups"))
    duck = agg.get("duckdb", {})
    lines = [f"## Sediment SQL benchmark{' (QUICK smoke run: sizes too small to mean anything)' if a.quick else ''}",
             "",
             f"Machine: {m.get('nproc')} cores, {m.get('cpu')}, {m.get('mem_gib')} GiB RAM, Linux {m.get('kernel')}, "
             f"data dir on {m.get('data_dir_fs')}. Commit {v.get('sediment_commit', '?')}, {v.get('sediment', '')}; "
             f"DuckDB {v.get('duckdb', '?')} (threads={duck.get('threads_effective', a.duckdb_threads)}), "
             f"pyarrow {v.get('pyarrow', '?')}, psycopg {v.get('psycopg', '?')}, rdkperf on librdkafka "
             f"{res.get('rdkperf_librdkafka', '?')}.",
             f"Same-run ceilings: {f'{disk:,.0f} MB/s' if disk else 'n/a'} sequential write with fdatasync (dd), "
             f"loopback TCP {f'{net:,.0f} MB/s' if net else 'n/a'} ({c.get('loopback', {}).get('tool', '?')}). "
             f"Load average at start / end: {res.get('loadavg_start', '?')} / {res.get('loadavg_end', '?')}.",
             "",
             f"Data: {a.records:,} records of {a.size} B (`{a.payload}` payload) into `{COLD}`, {a.mixed_records:,} into "
             f"`{MIXED}` (second half produced with the tierer asleep: hot), {a.keyed_records:,} keyed "
             f"({a.key_order} keys) into `{KEYED}`; {a.partitions} partitions, segment.bytes={a.segment_bytes} "
             f"({a.keyed_segment_bytes} for `{KEYED}`), local.retention.bytes=0, loaded by {a.producers} rdkperf "
             f"producers with flush policy {a.flush_policy}."]
    for t, d in (res.get("dataset") or {}).items():
        arch = d["segments"].get("archive", {})
        lines.append(f"- `{t}`: {d['archived_rows']:,} rows archived in {arch.get('files', 0)} Parquet files "
                     f"({size_mb(arch.get('bytes'))}), {d['hot_rows']:,} rows hot "
                     f"({size_mb(d['segments'].get('local', {}).get('bytes'))} of local segments)")
    # 1
    lines += ["", f"### 1. Historical aggregates over {agg.get('rows', 0):,} archived rows: Sediment vs DuckDB on the "
                  f"same Parquet files",
              ""]
    if agg.get("fatal"):
        lines.append(f"failed ⚠: {agg['fatal'].splitlines()[0][:300]}")
    else:
        lines += [f"`{COLD}`, `\"offset\" < {agg.get('offset_below', 0):,}` in each partition: "
                  f"{agg.get('files', {}).get('below_bound', '?')} of {agg.get('files', {}).get('manifest', '?')} files; "
                  f"{a.warmup} warm-up + {a.repeats} timed runs, interleaved; Sediment = wall time of the query "
                  f"through psycopg (simple protocol), DuckDB = in-process `execute().fetchall()` over "
                  f"`read_parquet([manifest files])`. Value length: Sediment "
                  f"`{agg.get('value_length', {}).get('sediment', '?')}`, DuckDB `octet_length(value)`.",
                  "",
                  "| query | Sediment best / median (first) | DuckDB best / median (first) | Sediment / DuckDB (median) "
                  "| same result |",
                  "|---|---|---|---|---|"]
        for q in agg.get("queries", []):
            s, d = q.get("sediment"), q.get("duckdb")
            if q.get("error"):
                lines.append(f"| {q['name']} | failed ⚠: {q['error'][:120]} | | | |")
                continue
            sc = f"{ms(s['best_s'])} / {ms(s['median_s'])} ({ms(s['first_s'])})" if s else "n/a"
            dc = f"{ms(d['best_s'])} / {ms(d['median_s'])} ({ms(d['first_s'])})" if d else "n/a"
            ratio = f"{q['ratio_median']:.2f}" if q.get("ratio_median") is not None else "n/a"
            same = {True: "yes", False: "NO ⚠"}.get(q.get("same_result"), "n/a")
            lines.append(f"| {q['name']} | {sc} | {dc} | {ratio} | {same} |")
        ea = (agg.get("queries") or [{}])[0].get("explain_analyze")
        if ea:
            lines += ["", f"First query, EXPLAIN ANALYZE: bytes_scanned {size_mb(ea.get('bytes_scanned'))} "
                          f"(columns {', '.join(ea.get('columns_read', []))}), row groups "
                          f"{ea.get('row_groups_pruned_statistics', '?')}; broker CPU "
                          f"{(agg['queries'][0].get('sediment') or {}).get('broker_cpu_s_per_run') or 0:.2f} s per run."]
    # 2
    lines += ["", "### 2. Time range: bytes read vs bytes needed", ""]
    if tr.get("fatal"):
        lines.append(f"failed ⚠: {tr['fatal'].splitlines()[0][:300]}")
    elif tr:
        nd = tr.get("needed", {})
        ea = tr.get("explain_analyze", {})
        lo, hi = tr["range_ms"]
        lines += [f"`{tr['sql']}` — {hi - lo:,} ms holding {a.range_fraction * 100:g}% of the archived rows (from the {a.range_start:g} quantile of their timestamps). Needed = "
                  f"compressed bytes of the columns the scan reads ({', '.join(nd.get('columns', []))}) in the row "
                  f"groups whose timestamp statistics overlap the range (pyarrow, file metadata); pro-rata = the same "
                  f"scaled by each row group's share of rows in the range.",
                  "",
                  "| rows in range | bytes_scanned | needed (row groups) | bytes_scanned / needed | pro-rata needed "
                  "| row groups overlapping / all | DataFusion row groups (statistics) | page index rows | query best / "
                  "median |",
                  "|---|---|---|---|---|---|---|---|---|",
                  f"| {tr['result'][0]:,} | {size_mb(ea.get('bytes_scanned'))} | {size_mb(nd.get('needed_bytes'))} "
                  f"| {tr['ratio']:.2f} | {size_mb(nd.get('pro_rata_bytes'))} "
                  f"| {nd.get('row_groups_overlapping')} / {nd.get('row_groups')} "
                  f"| {ea.get('row_groups_pruned_statistics', '?')} | {ea.get('page_index_rows_pruned', '?')} "
                  f"| {ms(tr['query']['best_s'])} / {ms(tr['query']['median_s'])} |"
                  if tr.get("ratio") is not None else
                  f"| {tr.get('result', ['?'])[0]} | {size_mb(ea.get('bytes_scanned'))} | "
                  f"{size_mb(nd.get('needed_bytes'))} | n/a ⚠ | | | | | |"]
        if ea.get("hot_rows_planned"):
            lines += ["", f"The plan also scans {ea['hot_rows_planned']:,} hot rows (HotScanExec over the active "
                          "segments), which bytes_scanned does not count."]
    # 3
    lines += ["", f"### 3. Hot vs cold: the same aggregate over {hc.get('window_rows_per_partition', 0):,} offsets per "
                  f"partition of `{MIXED}`", ""]
    if hc.get("fatal"):
        lines.append(f"failed ⚠: {hc['fatal'].splitlines()[0][:300]}")
    elif hc:
        lines += ["| window | offsets | rows | from Parquet | best | median | median vs Parquet only |",
                  "|---|---|---|---|---|---|---|"]
        base = (hc["windows"].get("Parquet only") or {}).get("median_s")
        for name, w in hc["windows"].items():
            rel = f"{w['median_s'] / base:.2f}x" if base and w.get("median_s") else "n/a"
            flag = " ⚠" if w.get("error") or w.get("wrong_counts") else ""
            lines.append(f"| {name}{flag} | [{w['offsets'][0]:,}, {w['offsets'][1]:,}) | {w['rows']:,} "
                         f"| {w['parquet_share'] * 100:.0f}% | {ms(w.get('best_s'))} | {ms(w.get('median_s'))} | {rel} |")
    # 4
    lines += ["", f"### 4. Point lookups ({a.lookups} each, one psycopg connection, server-side prepared statements)", ""]
    if lk.get("fatal"):
        lines.append(f"failed ⚠: {lk['fatal'].splitlines()[0][:300]}")
    elif lk:
        lines += ["| lookup | p50 | p99 | max | mean | form |", "|---|---|---|---|---|---|"]
        for r in lk.get("results", []):
            if r.get("error"):
                lines.append(f"| {r['lookup']} | failed ⚠: {r['error'][:150]} | | | | |")
                continue
            flag = f" ⚠ {r['wrong_results']} wrong" if r.get("wrong_results") else ""
            lines.append(f"| {r['lookup']}{flag} | {r['p50_ms']:.2f} ms | {r['p99_ms']:.2f} ms | {r['max_ms']:.2f} ms "
                         f"| {r['mean_ms']:.2f} ms | {r['form']} |")
    # targets
    lines += ["", "Targets:"]
    qs = [q for q in agg.get("queries", []) if q.get("ratio_median") is not None]
    n_rows = agg.get("rows", 0)
    small = "" if n_rows >= 10_000_000 else f" (only {n_rows:,} rows: the target is about >= 10M)"
    for q in qs:
        ok = q["ratio_median"] <= 1.0 and q.get("same_result") is True
        differ = "" if q.get("same_result") else "; results differ"
        lines.append(f"- [{'x' if ok else ' '}] historical aggregate no slower than DuckDB, {q['name']}: "
                     f"{q['ratio_median']:.2f}x DuckDB's median{small}{differ}")
    if tr.get("ratio") is not None:
        lines.append(f"- [{'x' if tr['ratio'] <= 2.0 else ' '}] time range reads <= 2x the bytes it needs: "
                     f"{tr['ratio']:.2f}x")
    if hc.get("spanning_over_parquet_median") is not None:
        r = hc["spanning_over_parquet_median"]
        lines.append(f"- [{'x' if r <= 1.5 else ' '}] query spanning hot and cold <= 1.5x Parquet only: {r:.2f}x (median)")
    probs = problems_of(res)
    if probs:
        lines += ["", "Problems seen (⚠):", *probs]
    notes = [f"- {k}: {n}" for k in ("aggregate", "time_range", "hot_cold", "lookups")
             for n in (res.get(k) or {}).get("notes", [])]
    if notes:
        lines += ["", "Notes:", *notes]
    lines += ["", f"Run took {res.get('elapsed_seconds', 0):.0f} s; JSON: {a.out}"]
    return "\n".join(lines)


# ----------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--binary", "--sediment-bin", dest="sediment_bin",
                    default=str(bench.REPO / "target" / "release" / "sediment"), help="the sediment binary")
    ap.add_argument("--out", default="bench-sql.json", help="JSON results file")
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke run of a minute or two")
    ap.add_argument("--work-dir", default=None, help="data dir, logs, dd file (default: a fresh temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (data, archive, broker logs)")
    ap.add_argument("--client", default="rdkperf", choices=list(bench.RDKPERF_CLIENTS),
                    help="rdkperf build that loads the data")
    ap.add_argument("--flush-policy", default="interval", choices=["fsync", "interval"],
                    help="broker flush policy (loading speed only: the load is not what is measured)")
    ap.add_argument("--records", type=int, default=10_000_000, help=f"records in {COLD} (the archived data set)")
    ap.add_argument("--size", type=int, default=100, help="record value bytes")
    ap.add_argument("--payload", default="text", choices=list(tiering.PAYLOADS),
                    help="rdkperf payload; text keeps values valid UTF-8 for length(value)")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--segment-bytes", type=int, default=64 * MiB, help=f"segment.bytes of {COLD} and {MIXED}")
    ap.add_argument("--mixed-records", type=int, default=None,
                    help=f"records in {MIXED}, half archived, half hot (default: --records)")
    ap.add_argument("--keyed-records", type=int, default=1_000_000, help=f"keyed records in {KEYED}, half hot")
    ap.add_argument("--keyed-segment-bytes", type=int, default=4 * MiB, help=f"segment.bytes of {KEYED}")
    ap.add_argument("--key-order", default="sequential", choices=["sequential", "random"],
                    help="keys increase with the offset (row-group key statistics prune) or are a permutation")
    ap.add_argument("--producers", type=int, default=2, help="rdkperf producer processes")
    ap.add_argument("--linger-ms", type=float, default=10)
    ap.add_argument("--batch-bytes", type=int, default=1_000_000, help="producer batch.size")
    ap.add_argument("--tiering-ms", type=int, default=200, help="--tiering-interval-ms while loading")
    ap.add_argument("--retention-ms", type=int, default=200, help="--retention-check-interval-ms while loading")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per query (after --warmup)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed first runs per query (reported as 'first')")
    ap.add_argument("--range-fraction", type=float, default=0.01, help="time range width, share of the archived rows")
    ap.add_argument("--range-start", type=float, default=0.5, help="the time range starts at this quantile of the archived rows' timestamps (0..1)")
    ap.add_argument("--lookups", type=int, default=200, help="timed point lookups per kind")
    ap.add_argument("--lookup-warmup", type=int, default=5, help="untimed lookups per kind first")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--duckdb-threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--query-timeout", type=float, default=600, help="a query is cancelled after this long")
    ap.add_argument("--max-run-seconds", type=float, default=600, help="cap on any one produce run")
    ap.add_argument("--stall-seconds", type=float, default=120, help="archiving without progress this long fails")
    ap.add_argument("--drain-timeout", type=float, default=1200, help="cap on waiting for the archive")
    ap.add_argument("--dd-mib", type=int, default=1024)
    ap.add_argument("--dsync-writes", type=int, default=1000)
    ap.add_argument("--iperf-seconds", type=float, default=3)
    ap.add_argument("--skip", default="",
                    help="comma list: ceilings,aggregate,duckdb,time_range,hot_cold,lookups")
    a = ap.parse_args(argv)
    if a.quick:  # smaller defaults; options given explicitly still win
        for name, value in (("records", 1_000_000), ("keyed_records", 100_000), ("segment_bytes", 4 * MiB),
                            ("keyed_segment_bytes", 512 * 1024), ("repeats", 2), ("lookups", 30),
                            ("lookup_warmup", 2), ("dd_mib", 64), ("dsync_writes", 100), ("iperf_seconds", 1),
                            ("max_run_seconds", 120), ("stall_seconds", 30), ("drain_timeout", 180),
                            ("query_timeout", 120)):
            if getattr(a, name) == ap.get_default(name):
                setattr(a, name, value)
    if a.mixed_records is None:
        a.mixed_records = a.records
    for name in ("records", "mixed_records", "keyed_records", "repeats", "lookups", "partitions", "size"):
        if getattr(a, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    if not 0 < a.range_fraction <= 1 or not 0 <= a.range_start < 1:
        ap.error("--range-fraction must be in (0, 1] and --range-start in [0, 1)")
    a.skip = {s.strip() for s in a.skip.split(",") if s.strip()}
    unknown = a.skip - {"ceilings", "aggregate", "duckdb", "time_range", "hot_cold", "lookups"}
    if unknown:
        ap.error(f"unknown --skip entries: {', '.join(sorted(unknown))}")
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    if bench.missing_binary(a.sediment_bin):
        return 2
    bench.stop_children_on_signal()
    a.work = Path(a.work_dir) if a.work_dir else Path(tempfile.mkdtemp(prefix="sediment-sql-"))
    a.work.mkdir(parents=True, exist_ok=True)
    data = a.work / "data"
    t_begin = time.monotonic()
    loadavg = lambda: " ".join(Path("/proc/loadavg").read_text().split()[:3])  # noqa: E731
    res: dict = {"command": " ".join([sys.executable, *sys.argv]), "quick": a.quick,
                 "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                 "settings": {k: (sorted(v) if isinstance(v, set) else v) for k, v in vars(a).items() if k != "work"},
                 "loadavg_start": loadavg(), "problems": []}
    try:
        res["machine"] = bench.machine_info(a.work)
        bench.prepare_run(a, res)
        for mod in ("duckdb", "pyarrow", "psycopg"):
            try:
                res["versions"][mod] = str(__import__(mod).__version__)
            except Exception as e:  # noqa: BLE001
                res["versions"][mod] = f"missing ({first_line(e)})"
        log(f"machine: {res['machine']}")
        log(f"versions: {res['versions']}")
        before: dict = {}
        try:
            before = load_phase(a, data, res)
        except Exception as e:  # noqa: BLE001 - still try the queries on whatever landed
            log(f"ERROR load: {e}")
            res["problems"].append(f"FATAL load: {first_line(e)}")
            res["fatal_traceback_load"] = traceback.format_exc()[-3000:]
        finally:
            bench.stop_all_children()
        if data.exists():
            try:
                query_phase(a, data, res, before)
            except Exception as e:  # noqa: BLE001
                log(f"ERROR query phase: {e}")
                res["problems"].append(f"FATAL query phase: {first_line(e)}")
                res["fatal_traceback_query"] = traceback.format_exc()[-3000:]
            finally:
                bench.stop_all_children()
    finally:
        bench.stop_all_children()
        if not a.keep and not a.work_dir:
            shutil.rmtree(a.work, ignore_errors=True)
        elif not a.keep:
            shutil.rmtree(data, ignore_errors=True)
    res.pop("cold_files", None)
    res["elapsed_seconds"] = time.monotonic() - t_begin
    res["loadavg_end"] = loadavg()
    try:
        text = markdown(res, a)
    except Exception:  # noqa: BLE001 - never lose the JSON to a formatting bug
        text = "report formatting failed:\n" + traceback.format_exc()
    res["markdown"] = text
    Path(a.out).write_text(json.dumps(res, indent=2, default=str) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
