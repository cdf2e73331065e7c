"""Tiering: sealed segments become Parquet files in the archive; Kafka reads span both tiers.

The broker runs with a short tiering interval and local-retention interval
(TIER_FLAGS) and topics use 4 KiB segments, so a few thousand records make
dozens of sealed segments and the archive fills within seconds.

What the archive is checked against is the interface, not the code:

  <store>/topics/<topic>/<partition>/data/<base offset, 20 digits>.parquet
  <store>/topics/<topic>/<partition>/manifest/<generation, 20 digits>.json  (highest = current)

The default store is file://<data-dir>/archive; the S3 tests run moto's server
on loopback (the s3_server fixture in conftest.py). Every record a test
produces has a known key, value, headers and CreateTime timestamp (nulls and
empty values included), and is compared field by field wherever it shows up:
in the Parquet files (read with pyarrow and with duckdb), and as consumed from
offset 0 by confluent-kafka and by kcat.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from confluent_kafka import OFFSET_BEGINNING, TIMESTAMP_CREATE_TIME, TopicPartition

import kafka_raw
from conftest import free_port
from helpers import (consume_partition, consume_to_end, consumer, create_topic, flush_all,
                     local_segments, partition_dir, producer, topic_configs, unique, wait_for,
                     watermarks)

TIER_FLAGS = ("--tiering-interval-ms", "200", "--retention-check-interval-ms", "200")
SEGMENT_BYTES = "4096"
# a sealed segment leaves the local tier as soon as it is in the archive
ARCHIVE_AND_DROP = {"segment.bytes": SEGMENT_BYTES, "local.retention.bytes": "0"}
# how long the archive may take to catch up (a debug build on two shared cores)
ARCHIVE_TIMEOUT = float(os.environ.get("SEDIMENT_ARCHIVE_TIMEOUT", "90"))
CRASH_ROUNDS = int(os.environ.get("SEDIMENT_TIER_CRASH_ROUNDS", "3"))

# ListOffsets special timestamps
LATEST, EARLIEST, EARLIEST_LOCAL, LATEST_TIERED = -1, -2, -4, -5


def now_ms() -> int:
    return int(time.time() * 1000)


# --- records with known contents ------------------------------------------------------

@dataclass(frozen=True)
class Rec:
    key: Optional[bytes]
    value: Optional[bytes]
    headers: tuple  # ((str, Optional[bytes]), ...)
    ts: int  # CreateTime, ms


def gen_records(n: int, seed: int, ts0: Optional[int] = None) -> list[Rec]:
    """Keys and values that are null, empty, text or arbitrary bytes; zero to three
    headers (null, empty and text values, a repeated name now and then)."""
    rng = random.Random(seed)
    ts0 = now_ms() - 60_000 if ts0 is None else ts0
    out = []
    for i in range(n):
        r = rng.random()
        if r < 0.2:
            key = None
        elif r < 0.28:
            key = b""
        elif r < 0.4:
            key = rng.randbytes(rng.randint(1, 12))
        else:
            key = b"key-%d" % i
        r = rng.random()
        if r < 0.12:
            value = None
        elif r < 0.2:
            value = b""
        elif r < 0.35:
            value = rng.randbytes(rng.randint(1, 120))
        else:
            value = b"value-%d-" % i + b"x" * rng.randint(0, 100)
        headers = []
        for h in range(rng.choice((0, 0, 1, 2, 3))):
            r = rng.random()
            hv = None if r < 0.25 else b"" if r < 0.4 else b"v%d%s" % (i, b"y" * rng.randint(0, 8))
            headers.append((f"h{h}", hv))
        if headers and rng.random() < 0.1:
            headers.append((headers[0][0], b"again"))
        out.append(Rec(key, value, tuple(headers), ts0 + i))
    return out


def produce_records(bootstrap: str, topic: str, recs: list[Rec], partitions: int = 1,
                    **conf) -> dict[int, dict[int, Rec]]:
    """acks=all, batches of at most 20 records (so a 4 KiB segment holds a few);
    record i goes to partition i % partitions. Returns {partition: {offset: Rec}}
    from the delivery reports."""
    got: dict[int, dict[int, Rec]] = {p: {} for p in range(partitions)}
    errors: list = []

    def report(err, msg, rec):
        if err is not None:
            errors.append(err)
        else:
            assert msg.offset() not in got[msg.partition()], f"offset {msg.offset()} acked twice"
            got[msg.partition()][msg.offset()] = rec

    p = producer(bootstrap, **{"linger.ms": 2, "batch.num.messages": 20, **conf})
    for i, rec in enumerate(recs):
        while True:
            try:
                p.produce(topic, key=rec.key, value=rec.value, headers=list(rec.headers) or None,
                          partition=i % partitions, timestamp=rec.ts,
                          on_delivery=lambda err, msg, rec=rec: report(err, msg, rec))
                break
            except BufferError:
                p.poll(0.05)
    flush_all(p, 60)
    assert not errors, f"{len(errors)} records not delivered, first: {errors[0]}"
    assert sum(len(v) for v in got.values()) == len(recs)
    return got


def assert_consumed(msgs, expected: dict[int, Rec], start: int, end: int, who: str) -> None:
    offsets = [m.offset() for m in msgs]
    assert offsets == list(range(start, end)), \
        f"{who}: expected offsets {start}..{end - 1}, got {len(offsets)} " \
        f"from {offsets[:1]} to {offsets[-1:]}"
    for m in msgs:
        rec = expected[m.offset()]
        got = (m.key(), m.value(), tuple(m.headers() or ()), m.timestamp())
        want = (rec.key, rec.value, rec.headers, (TIMESTAMP_CREATE_TIME, rec.ts))
        assert got == want, f"{who}: offset {m.offset()}: got {got!r}, produced {want!r}"


def list_offset(bootstrap: str, topic: str, partition: int, spec: int) -> int:
    with kafka_raw.KafkaConn.to(bootstrap) as c:
        r = c.list_offsets(topic, partition, spec)
    assert r["error_code"] == kafka_raw.NONE, \
        f"ListOffsets({spec}) for {topic}/{partition}: error {r['error_code']}"
    return r["offset"]


def metric_sum(addr: str, name: str) -> Optional[float]:
    """Sum of a metric over all its label sets, None if it is not exported."""
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=10) as r:
        text = r.read().decode()
    vals = [float(m.group(2)) for m in
            re.finditer(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", text, re.M)]
    return sum(vals) if vals else None


# --- the archive, wherever it is ------------------------------------------------------

class FileArchive:
    """The file:// store: a directory."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def __str__(self) -> str:
        return f"file://{self.root}"

    def list(self, prefix: str) -> dict[str, int]:
        """{key: size} of every object under prefix (keys relative to the store root)."""
        base = self.root / prefix
        out = {}
        if not base.is_dir():
            return out
        for f in base.rglob("*"):
            try:
                if f.is_file():
                    out[f.relative_to(self.root).as_posix()] = f.stat().st_size
            except FileNotFoundError:  # renamed or deleted while we looked
                pass
        return out

    def read(self, key: str) -> bytes:
        return (self.root / key).read_bytes()

    def path(self, key: str) -> Path:
        return self.root / key


class S3Archive:
    """An s3://bucket/prefix store, read directly (not through whatever the broker uses)."""

    def __init__(self, client, bucket: str, prefix: str):
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def _full(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def list(self, prefix: str) -> dict[str, int]:
        out = {}
        cut = len(self.prefix) + 1 if self.prefix else 0
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self._full(prefix))
        for page in pages:
            for o in page.get("Contents", []):
                out[o["Key"][cut:]] = o["Size"]
        return out

    def read(self, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._full(key))["Body"].read()
        except self.client.exceptions.NoSuchKey as e:
            raise FileNotFoundError(key) from e


DATA_RE = re.compile(r"data/(\d{20})\.parquet")
MANIFEST_RE = re.compile(r"manifest/(\d{20})\.json")


def part_prefix(topic: str, partition: int) -> str:
    return f"topics/{topic}/{partition}/"


def data_files(arch, topic: str, partition: int) -> dict[str, int]:
    """{path relative to the partition dir ("data/...parquet"): size}."""
    pre = part_prefix(topic, partition)
    return {k[len(pre):]: size for k, size in arch.list(pre + "data/").items()
            if DATA_RE.fullmatch(k[len(pre):])}


def manifest(arch, topic: str, partition: int) -> Optional[dict]:
    """The current (highest-generation) manifest, None if there is none yet."""
    pre = part_prefix(topic, partition)
    for attempt in range(5):
        names = sorted(k[len(pre):] for k in arch.list(pre + "manifest/")
                       if MANIFEST_RE.fullmatch(k[len(pre):]))
        if not names:
            return None
        try:
            m = json.loads(arch.read(pre + names[-1]))
        except (FileNotFoundError, ValueError):
            if attempt == 4:
                raise
            time.sleep(0.1)  # replaced or pruned under us: look again
            continue
        gen = int(MANIFEST_RE.fullmatch(names[-1]).group(1))
        assert m.get("generation") == gen, \
            f"{arch}/{pre}{names[-1]} says generation {m.get('generation')}"
        return m
    return None


def check_contiguous(m: dict, where: str) -> None:
    """Files in offset order, each starting where the previous ended: no gap, no overlap."""
    files = m["files"]
    assert [f["base_offset"] for f in files] == sorted(f["base_offset"] for f in files), \
        f"{where}: manifest files not in offset order"
    at = m["start_offset"]
    for f in files:
        assert f["base_offset"] == at, \
            f"{where}: {f['path']} starts at {f['base_offset']}, previous file ended at {at} " \
            f"({'overlap' if f['base_offset'] < at else 'gap'})"
        assert f["next_offset"] > f["base_offset"], f"{where}: empty range in {f}"
        at = f["next_offset"]
    assert at == m["end_offset"], f"{where}: files end at {at}, manifest says {m['end_offset']}"


def wait_archived(arch, data_dir: Path, topic: str, partitions=(0,),
                  timeout: float = ARCHIVE_TIMEOUT) -> dict[int, dict]:
    """Until every sealed segment is archived and gone locally (needs local.retention.bytes=0):
    one local segment left, the active one, starting where the archive ends."""
    seen = {}

    def done():
        ok = True
        for p in partitions:
            segs = local_segments(data_dir, topic, p)
            m = manifest(arch, topic, p)
            seen[p] = {"local segments": segs[:3] + (["..."] if len(segs) > 3 else []),
                       "count": len(segs),
                       "archive": m and (m["start_offset"], m["end_offset"], len(m["files"]))}
            ok = ok and m is not None and len(segs) == 1 and m["end_offset"] == segs[0]
        return ok

    wait_for(done, timeout, f"{topic} to be archived in {arch}", lambda: f"last seen {seen}",
             interval=0.2)
    return {p: manifest(arch, topic, p) for p in partitions}


# --- Parquet ------------------------------------------------------------------------------

EXPECTED_COLUMNS = {
    "partition": "int32", "offset": "int64", "timestamp": "timestamp[ms, tz=UTC]",
    "timestamp_type": "int8", "key": "binary", "value": "binary",
    "headers": "list<struct<key: binary, value: binary>>", "producer_id": "int64",
    "producer_epoch": "int16", "sequence": "int32", "leader_epoch": "int32",
    "batch_offset": "int64",
}


def type_name(t: pa.DataType) -> str:
    """Arrow type without list item names or nullability, UTC spelled one way."""
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return f"list<{type_name(t.value_type)}>"
    if pa.types.is_struct(t):
        return "struct<" + ", ".join(f"{f.name}: {type_name(f.type)}" for f in t) + ">"
    if pa.types.is_timestamp(t) and t.tz in ("UTC", "+00:00", "Z", "Etc/UTC"):
        return f"timestamp[{t.unit}, tz=UTC]"
    return str(t)


def check_parquet_file(data: bytes, where: str) -> pa.Table:
    pf = pq.ParquetFile(pa.BufferReader(data))
    schema = pf.schema_arrow
    got = {f.name: type_name(f.type) for f in schema}
    assert got == EXPECTED_COLUMNS, f"{where}: columns {got}"
    md = pf.metadata
    for i in range(md.num_row_groups):
        rg = md.row_group(i)
        for j in range(rg.num_columns):
            col = rg.column(j)
            assert col.compression == "ZSTD", f"{where}: {col.path_in_schema} is {col.compression}"
            if col.path_in_schema in ("offset", "timestamp"):
                st = col.statistics
                assert st is not None and st.has_min_max, \
                    f"{where}: row group {i} has no min/max statistics for {col.path_in_schema}"
    return pf.read()


def row_headers(h) -> tuple:
    return tuple((x["key"].decode(), x["value"]) for x in (h or []))


def check_archive(arch, topic: str, partition: int, expected: Optional[dict[int, Rec]],
                  exact: bool = True) -> tuple[dict, dict[int, dict]]:
    """The current manifest against the files in the store and every row against what was
    produced. exact: no data file outside the manifest either (False after a crash, where
    an upload may have been left behind uncommitted). Returns (manifest, {offset: row})."""
    where = f"{arch}/{part_prefix(topic, partition)}"
    m = manifest(arch, topic, partition)
    assert m is not None, f"{where}: no manifest"
    assert m.get("format") == "sediment-archive-manifest" and m.get("version") == 1, \
        f"{where}: manifest header {dict((k, m.get(k)) for k in ('format', 'version'))}"
    assert m["topic"] == topic and m["partition"] == partition, f"{where}: {m}"
    assert m.get("topic_id"), f"{where}: manifest without a topic_id"
    assert m["files"], f"{where}: manifest lists no files"
    check_contiguous(m, where)
    stored = data_files(arch, topic, partition)
    listed = [f["path"] for f in m["files"]]
    missing = [p for p in listed if p not in stored]
    assert not missing, f"{where}: the manifest lists files that are not in the store: {missing}"
    if exact:
        orphans = sorted(set(stored) - set(listed))
        assert not orphans, f"{where}: data files no manifest lists: {orphans}"
    rows: dict[int, dict] = {}
    for f in m["files"]:
        fw = f"{where}{f['path']}"
        assert f["path"] == f"data/{f['base_offset']:020d}.parquet", f"{where}: {f}"
        data = arch.read(part_prefix(topic, partition) + f["path"])
        assert f["bytes"] == len(data), \
            f"{fw}: manifest says {f['bytes']} bytes, file has {len(data)}"
        assert f["segment_bytes"] > 0, f"{fw}: {f}"
        t = check_parquet_file(data, fw)
        assert t.num_rows == f["rows"], f"{fw}: {t.num_rows} rows, manifest says {f['rows']}"
        offsets = t.column("offset").to_pylist()
        assert offsets == list(range(f["base_offset"], f["next_offset"])), \
            f"{fw}: offsets not {f['base_offset']}..{f['next_offset'] - 1} in order: " \
            f"{offsets[:5]}...{offsets[-5:]}"
        ts = pc.cast(t.column("timestamp"), pa.int64()).to_pylist()
        assert (min(ts), max(ts)) == (f["min_timestamp"], f["max_timestamp"]), \
            f"{fw}: timestamps {min(ts)}..{max(ts)}, manifest says " \
            f"{f['min_timestamp']}..{f['max_timestamp']}"
        in_file = set(offsets)
        for row, t_ms in zip(t.to_pylist(), ts):
            off = row["offset"]
            assert off not in rows, f"{fw}: offset {off} is in the archive twice"
            assert row["partition"] == partition, \
                f"{fw}: offset {off}: partition {row['partition']}"
            assert row["timestamp_type"] == 0, f"{fw}: offset {off}: timestamp type {row}"
            assert row["batch_offset"] in in_file and row["batch_offset"] <= off, \
                f"{fw}: offset {off}: batch_offset {row['batch_offset']}"
            assert row["leader_epoch"] is not None and row["producer_epoch"] is not None, row
            row["ts"] = t_ms
            rows[off] = row
            if expected is None:
                continue
            rec = expected.get(off)
            assert rec is not None, f"{fw}: offset {off} was never produced"
            got = (row["key"], row["value"], row_headers(row["headers"]), t_ms)
            want = (rec.key, rec.value, rec.headers, rec.ts)
            assert got == want, f"{fw}: offset {off}: archive has {got!r}, produced {want!r}"
            # these tests produce without idempotence: no producer id, no sequence numbers
            assert (row["producer_id"], row["producer_epoch"], row["sequence"]) == (-1, -1, -1), \
                f"{fw}: offset {off}: producer fields {row}"
    return m, rows


# --- kcat ----------------------------------------------------------------------------------

def kcat_consume(bootstrap: str, topic: str, partition: int) -> list[tuple]:
    """Everything from `-o beginning` (ListOffsets earliest) to the end, as
    (offset, timestamp, key, value, headers) with keys and values byte-exact."""
    kcat = shutil.which("kcat") or shutil.which("kafkacat")
    if kcat is None:
        pytest.fail("kcat is not installed (apt-get install kcat; scripts/test-all.sh does)")
    # a text line with lengths (-1 = null) and headers, then the raw key and value bytes
    args = [kcat, "-b", bootstrap, "-C", "-t", topic, "-p", str(partition), "-o", "beginning",
            "-e", "-q", "-f", "%o %T %K %S %h\n%k%s\n"]
    p = subprocess.run(args, capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, f"{' '.join(args)} exited {p.returncode}\n{p.stderr[-3000:]!r}"
    out, pos, res = p.stdout, 0, []
    while pos < len(out):
        nl = out.index(b"\n", pos)
        off, ts, klen, vlen, hdrs = out[pos:nl].decode().split(" ", 4)
        pos = nl + 1
        klen, vlen = int(klen), int(vlen)
        key = out[pos:pos + max(klen, 0)]
        pos += max(klen, 0)
        value = out[pos:pos + max(vlen, 0)]
        pos += max(vlen, 0)
        assert out[pos:pos + 1] == b"\n", f"kcat output out of step at offset {off}"
        pos += 1
        headers = []
        for h in hdrs.split(",") if hdrs else []:
            name, _, v = h.partition("=")
            headers.append((name, None if v == "NULL" else v.encode()))
        res.append((int(off), int(ts), None if klen < 0 else key, None if vlen < 0 else value,
                    tuple(headers)))
    return res


# --- 1. the file:// archive ------------------------------------------------------------

@pytest.mark.timeout(240)
def test_local_archive_holds_every_record_once_and_reads_span_both_tiers(make_broker):
    maddr = f"127.0.0.1:{free_port()}"
    b = make_broker(*TIER_FLAGS, "--metrics-addr", maddr)
    topic = unique("tier-local")
    create_topic(b.bootstrap, topic, partitions=2, config=dict(ARCHIVE_AND_DROP))
    recs = gen_records(3000, seed=1)
    expected = produce_records(b.bootstrap, topic, recs, partitions=2,
                               **{"compression.type": "lz4"})
    arch = FileArchive(b.archive_dir)
    manifests = wait_archived(arch, b.data_dir, topic, partitions=(0, 1))

    archived_rows = {}
    for p in (0, 1):
        hi = len(expected[p])
        assert sorted(expected[p]) == list(range(hi))
        m, rows = check_archive(arch, topic, p, expected[p])
        assert m == manifests[p], "the manifest changed although nothing was produced"
        archived_rows[p] = rows
        local_start = local_segments(b.data_dir, topic, p)[0]
        assert m["start_offset"] == 0, f"partition {p}: archive starts at {m['start_offset']}"
        assert 0 < m["end_offset"] == local_start < hi, \
            f"partition {p}: archive ends at {m['end_offset']}, local starts at {local_start}, " \
            f"high watermark {hi}"
        assert len(m["files"]) >= 5, \
            f"partition {p}: only {len(m['files'])} files: segments too big?"
        # offsets across the tiers
        assert list_offset(b.bootstrap, topic, p, EARLIEST) == 0
        assert list_offset(b.bootstrap, topic, p, EARLIEST_LOCAL) == local_start
        assert list_offset(b.bootstrap, topic, p, LATEST_TIERED) == m["end_offset"] - 1
        assert list_offset(b.bootstrap, topic, p, LATEST) == hi
        assert watermarks(b.bootstrap, topic, p) == (0, hi)

    # duckdb reads the same rows through one glob over both partitions
    glob = str(b.archive_dir / "topics" / topic / "*" / "data" / "*.parquet")
    con = duckdb.connect()
    try:
        dup = con.execute('select "partition", "offset", count(*) from read_parquet(?) '
                          'group by all having count(*) > 1 limit 5', [glob]).fetchall()
        assert not dup, f"duckdb: offsets more than once: {dup}"
        drows = con.execute('select "partition", "offset", epoch_ms("timestamp"), key, value, '
                            'headers from read_parquet(?) order by 1, 2', [glob]).fetchall()
    finally:
        con.close()
    want_keys = sorted((p, o) for p in (0, 1) for o in archived_rows[p])
    assert [(r[0], r[1]) for r in drows] == want_keys, "duckdb sees other offsets than pyarrow"
    for p, off, ts, key, value, headers in drows:
        rec = expected[p][off]
        got = (key, value, row_headers(headers), ts)
        assert got == (rec.key, rec.value, rec.headers, rec.ts), \
            f"duckdb: {p}/{off}: {got!r} != {rec!r}"

    # consumers: from offset 0 (partition 0) and from the beginning (partition 1)
    for p, start in ((0, 0), (1, OFFSET_BEGINNING)):
        hi = len(expected[p])
        msgs = consume_partition(b.bootstrap, topic, p, hi, start=start, timeout=90)
        assert_consumed(msgs, expected[p], 0, hi, f"confluent-kafka {topic}/{p}")
    for p in (0, 1):
        got = kcat_consume(b.bootstrap, topic, p)
        want = [(o, r.ts, r.key, r.value, r.headers) for o, r in sorted(expected[p].items())]
        assert len(got) == len(want), f"kcat {topic}/{p}: {len(got)} records, produced {len(want)}"
        for g, w in zip(got, want):
            assert g == w, f"kcat {topic}/{p}: got {g!r}, produced {w!r}"

    files = sum(len(manifests[p]["files"]) for p in (0, 1))
    size = sum(f["bytes"] for p in (0, 1) for f in manifests[p]["files"])
    uploaded = metric_sum(maddr, "sediment_archive_uploaded_files_total")
    assert uploaded is not None and uploaded >= files, \
        f"uploaded files {uploaded}, archive has {files}"
    uploaded_bytes = metric_sum(maddr, "sediment_archive_uploaded_bytes_total")
    assert uploaded_bytes is not None and uploaded_bytes >= size, \
        f"uploaded bytes {uploaded_bytes}, archive has {size}"
    assert metric_sum(maddr, "sediment_archive_upload_errors_total") == 0
    b.assert_alive()


# --- 2. S3 (moto) ----------------------------------------------------------------------

@pytest.mark.timeout(240)
def test_s3_archive_holds_every_record_and_survives_a_restart(make_broker, s3_server):
    bucket = s3_server.make_bucket()
    prefix = "cluster-a/archive"
    b = make_broker(*TIER_FLAGS, "--object-store", f"s3://{bucket}/{prefix}",
                    env=s3_server.broker_env())
    topic = unique("tier-s3")
    create_topic(b.bootstrap, topic, partitions=1, config=dict(ARCHIVE_AND_DROP))
    expected = produce_records(b.bootstrap, topic, gen_records(1500, seed=2))[0]
    hi = len(expected)
    arch = S3Archive(s3_server.client(), bucket, prefix)
    wait_archived(arch, b.data_dir, topic)

    # everything the broker wrote is under the prefix, in the layout
    keys = {o["Key"] for page in s3_server.client().get_paginator("list_objects_v2")
            .paginate(Bucket=bucket) for o in page.get("Contents", [])}
    stray = [k for k in keys if not k.startswith(f"{prefix}/")]
    assert not stray, f"objects outside the prefix {prefix}/: {stray[:10]}"
    mine = [k for k in keys if k.startswith(f"{prefix}/topics/{topic}/0/")]
    assert any(DATA_RE.search(k) for k in mine) and any(MANIFEST_RE.search(k) for k in mine), keys
    assert not (b.archive_dir / "topics").exists(), "the default file:// archive was written too"

    m, _ = check_archive(arch, topic, 0, expected)
    assert m["start_offset"] == 0
    assert list_offset(b.bootstrap, topic, 0, EARLIEST) == 0
    assert list_offset(b.bootstrap, topic, 0, EARLIEST_LOCAL) == m["end_offset"] > 0
    msgs = consume_partition(b.bootstrap, topic, 0, hi, start=0, timeout=90)
    assert_consumed(msgs, expected, 0, hi, "confluent-kafka from S3")

    # the archive is found again after a restart (the manifest is read back from S3)
    b.restart(clean=True)
    assert list_offset(b.bootstrap, topic, 0, EARLIEST) == 0
    msgs = consume_partition(b.bootstrap, topic, 0, hi, start=0, timeout=90)
    assert_consumed(msgs, expected, 0, hi, "confluent-kafka from S3 after a restart")


# --- 3. kill -9 while tiering ---------------------------------------------------------------

class PacedLoad(threading.Thread):
    """A producer at a steady rate (acks=all, no retries: an unacknowledged record may or
    may not be in the log, but never twice)."""

    def __init__(self, bootstrap: str, topic: str, tag: str, partitions: int, rate: int = 2000):
        super().__init__(daemon=True)
        self.topic, self.tag, self.partitions, self.rate = topic, tag, partitions, rate
        self.stop_flag = threading.Event()
        self.acked: list = []  # (partition, offset, value)
        self.p = producer(bootstrap, **{
            "linger.ms": 2, "batch.num.messages": 20, "retries": 0,
            "message.timeout.ms": 30000, "reconnect.backoff.ms": 50,
            "reconnect.backoff.max.ms": 500})

    def _report(self, err, msg):
        if err is None:
            self.acked.append((msg.partition(), msg.offset(), msg.value()))

    def run(self):
        i, t0 = 0, time.monotonic()
        while not self.stop_flag.is_set():
            due = int((time.monotonic() - t0) * self.rate)
            while i < due and not self.stop_flag.is_set():
                value = f"{self.tag}-{i}-".encode() + b"p" * (i % 64)
                try:
                    self.p.produce(self.topic, key=b"%d" % i, value=value,
                                   partition=i % self.partitions, on_delivery=self._report)
                except BufferError:
                    break
                i += 1
            self.p.poll(0.005)

    def finish(self):
        self.stop_flag.set()
        self.join(30)
        self.p.purge(in_queue=True, in_flight=True, blocking=False)
        self.p.flush(10)
        self.p = None


def _verify_after_crash(b, arch, topic: str, partitions: int, acked: dict) -> dict:
    """Every acknowledged record at its offset, every record once, rounds in order, and a
    current manifest whose files neither overlap nor leave gaps. Returns {p: messages}."""
    logs = {}
    for p in range(partitions):
        m = manifest(arch, topic, p)
        if m is not None:
            check_contiguous(m, f"{topic}/{p} after restart")
            stored = data_files(arch, topic, p)
            missing = [f["path"] for f in m["files"] if f["path"] not in stored]
            assert not missing, f"{topic}/{p}: manifest lists missing files {missing}"
            assert m["start_offset"] == 0
        assert list_offset(b.bootstrap, topic, p, EARLIEST) == 0
        hi = list_offset(b.bootstrap, topic, p, LATEST)
        msgs = consume_partition(b.bootstrap, topic, p, hi, start=0, timeout=120)
        assert [x.offset() for x in msgs] == list(range(hi)), \
            f"{topic}/{p}: offsets not 0..{hi - 1}"
        values = [x.value() for x in msgs]
        dups = len(values) - len(set(values))
        assert dups == 0, f"{topic}/{p}: {dups} records are in the log twice"
        for off, v in acked[p].items():
            assert off < hi, f"{topic}/{p}: acked offset {off} is past the end {hi}"
            assert values[off] == v, f"{topic}/{p}: acked {v!r} at {off}, log has {values[off]!r}"
        last: dict = {}
        for v in values:
            tag, seq = v.decode().split("-")[:2]
            assert int(seq) > last.get(tag, -1), f"{topic}/{p}: {v!r} out of order"
            last[tag] = int(seq)
        logs[p] = msgs
    return logs


@pytest.mark.timeout(280)
def test_kill9_while_tiering_loses_nothing_and_keeps_the_manifest_consistent(make_broker):
    b = make_broker(*TIER_FLAGS)
    topic = unique("tier-crash")
    partitions = 2
    create_topic(b.bootstrap, topic, partitions=partitions, config=dict(ARCHIVE_AND_DROP))
    arch = FileArchive(b.archive_dir)
    rng = random.Random(int(os.environ.get("SEDIMENT_CRASH_SEED", "20240611")))
    acked: dict = {p: {} for p in range(partitions)}
    for rnd in range(CRASH_ROUNDS):
        gen_before = {p: (manifest(arch, topic, p) or {"generation": -1})["generation"]
                      for p in range(partitions)}
        load = PacedLoad(b.bootstrap, topic, f"r{rnd}", partitions)
        load.start()
        try:
            # crash while the tierer is busy: after it has committed something this round
            wait_for(lambda: any((manifest(arch, topic, p) or {"generation": -1})["generation"]
                                 > gen_before[p] for p in range(partitions)),
                     60, f"a manifest commit in round {rnd}")
            time.sleep(rng.uniform(0.05, 0.6))
        finally:
            b.kill9()
            load.finish()
        n = 0
        for part, off, value in load.acked:
            prev = acked[part].get(off)
            assert prev is None or prev == value, \
                f"offset {part}/{off} acknowledged as {prev!r} and as {value!r}"
            acked[part][off] = value
            n += 1
        assert n > 0, f"round {rnd}: nothing acknowledged"
        b.start()
        _verify_after_crash(b, arch, topic, partitions, acked)

    # after the last restart the tierer catches up, and the archive holds the log exactly
    wait_archived(arch, b.data_dir, topic, partitions=range(partitions))
    logs = _verify_after_crash(b, arch, topic, partitions, acked)
    for p in range(partitions):
        expected = {x.offset(): Rec(x.key(), x.value(), tuple(x.headers() or ()), x.timestamp()[1])
                    for x in logs[p]}
        check_archive(arch, topic, p, expected, exact=False)


# --- 4. the store goes away and comes back ------------------------------------------------

@pytest.mark.timeout(420)
def test_s3_outage_keeps_the_hot_tier_working_and_the_backlog_drains(make_broker, s3_server,
                                                                     s3_proxy):
    """moto keeps its buckets only in memory, so the outage is a cut link, not a stopped
    server: the broker reaches moto through a proxy (conftest.CuttableProxy) that, while
    cut, resets every connection. The test reads the store directly, past the proxy."""
    maddr = f"127.0.0.1:{free_port()}"
    bucket = s3_server.make_bucket()
    prefix = "outage"
    b = make_broker(*TIER_FLAGS, "--metrics-addr", maddr,
                    "--object-store", f"s3://{bucket}/{prefix}",
                    env=s3_server.broker_env(s3_proxy.endpoint))
    topic = unique("tier-outage")
    create_topic(b.bootstrap, topic, partitions=1, config=dict(ARCHIVE_AND_DROP))
    arch = S3Archive(s3_server.client(), bucket, prefix)
    recs = gen_records(2000, seed=4)
    expected = produce_records(b.bootstrap, topic, recs[:500])[0]
    m0 = wait_archived(arch, b.data_dir, topic)[0]
    end0 = m0["end_offset"]

    s3_proxy.cut()
    refused0 = s3_proxy.refused
    t0 = time.monotonic()
    more = produce_records(b.bootstrap, topic, recs[500:])[0]
    assert time.monotonic() - t0 < 30, "producing slowed down while the store was unreachable"
    expected.update(more)
    hi = len(expected)
    assert sorted(expected) == list(range(hi))
    # the hot tier serves what could not be archived
    msgs = consume_partition(b.bootstrap, topic, 0, hi - end0, start=end0, timeout=60)
    assert_consumed(msgs, expected, end0, hi, "hot tier during the outage")

    # the tierer keeps trying; nothing that is not archived is deleted meanwhile
    wait_for(lambda: s3_proxy.refused >= refused0 + 3, 60,
             "the broker to try the store during the outage",
             lambda: f"{s3_proxy.refused - refused0} connections refused")

    def local_tier_intact() -> list[int]:
        segs = local_segments(b.data_dir, topic, 0)
        assert segs[0] == end0, \
            f"local segments from {end0} deleted while the store was down: now from {segs[0]}"
        return segs

    # absence can only be watched for: ten tiering and retention intervals
    watch_until = time.monotonic() + 2.0
    while time.monotonic() < watch_until:
        local_tier_intact()
        time.sleep(0.1)
    # and once an upload has failed for good (object_store's own retries can take a
    # minute with its default settings), still nothing is deleted
    wait_for(lambda: local_tier_intact() and
             (metric_sum(maddr, "sediment_archive_upload_errors_total") or 0) > 0,
             150, "an upload error to be counted during the outage",
             lambda: f"sediment_archive_upload_errors_total = "
                     f"{metric_sum(maddr, 'sediment_archive_upload_errors_total')}",
             interval=0.2)
    segs = local_tier_intact()
    assert len(segs) > 1, "no sealed segment waiting for the archive: produce more?"
    m = manifest(arch, topic, 0)
    assert (m["generation"], m["end_offset"]) == (m0["generation"], end0), \
        "the manifest moved although the store was unreachable"
    assert list_offset(b.bootstrap, topic, 0, EARLIEST) == 0
    assert list_offset(b.bootstrap, topic, 0, EARLIEST_LOCAL) == end0
    b.assert_alive()

    s3_proxy.restore()
    # object_store backs off between retries (up to 15 s), so allow for a slow start
    wait_archived(arch, b.data_dir, topic, timeout=max(ARCHIVE_TIMEOUT, 120))
    m, _ = check_archive(arch, topic, 0, expected)
    assert m["start_offset"] == 0 and m["end_offset"] > end0
    msgs = consume_partition(b.bootstrap, topic, 0, hi, start=0, timeout=90)
    assert_consumed(msgs, expected, 0, hi, "from 0 after the outage")


# --- 5. remote.storage.enable=false --------------------------------------------------------

@pytest.mark.timeout(180)
def test_topic_with_remote_storage_disabled_is_not_archived_and_retention_deletes(make_broker):
    b = make_broker(*TIER_FLAGS)
    hot = unique("tier-off")
    tiered = unique("tier-on")
    create_topic(b.bootstrap, hot, partitions=1,
                 config={"segment.bytes": "2048", "retention.bytes": "8192",
                         "remote.storage.enable": "false"})
    create_topic(b.bootstrap, tiered, partitions=1, config=dict(ARCHIVE_AND_DROP))
    assert topic_configs(b.bootstrap, hot)["remote.storage.enable"] == "false"
    # one record per batch, as in test_retention, so segment sizes are predictable
    p = producer(b.bootstrap, **{"linger.ms": 0, "compression.type": "none"})
    values = [b"%04d:" % i + b"x" * 200 for i in range(200)]
    for v in values:
        p.produce(hot, value=v, partition=0)
        p.flush(10)
    flush_all(p)
    produce_records(b.bootstrap, tiered, gen_records(600, seed=5))

    arch = FileArchive(b.archive_dir)
    wait_archived(arch, b.data_dir, tiered)  # the tierer is running
    lo = wait_for(lambda: watermarks(b.bootstrap, hot, 0)[0], 30,
                  "retention to delete the oldest local segments")
    # retention.bytes bounds the local log as it always did (one segment of slack)
    wait_for(lambda: sum(f.stat().st_size for f in partition_dir(b.data_dir, hot, 0)
                         .glob("*.log")) <= 8192 + 2048 + 600, 30, "retention.bytes to hold")
    lo, hi = watermarks(b.bootstrap, hot, 0)
    assert hi == 200
    assert lo == local_segments(b.data_dir, hot, 0)[0]
    assert list_offset(b.bootstrap, hot, 0, EARLIEST) == lo
    assert list_offset(b.bootstrap, hot, 0, EARLIEST_LOCAL) == lo
    assert list_offset(b.bootstrap, hot, 0, LATEST_TIERED) == -1
    msgs = consume_to_end(b.bootstrap, hot, 0)
    assert [m.value() for m in msgs] == values[lo:]
    # and nothing of it went to the archive
    uploaded = sorted(arch.list(f"topics/{hot}/"))
    assert not uploaded, f"{hot} was uploaded: {uploaded}"
    assert manifest(arch, hot, 0) is None


# --- 6. archive retention --------------------------------------------------------------------

@pytest.mark.timeout(180)
def test_archive_retention_ms_removes_old_files_and_moves_the_log_start(make_broker):
    b = make_broker(*TIER_FLAGS)
    topic = unique("tier-ret")
    retention_ms = 600_000
    create_topic(b.bootstrap, topic, partitions=1,
                 config={**ARCHIVE_AND_DROP, "retention.ms": str(retention_ms)})
    now = now_ms()
    old = gen_records(600, seed=6, ts0=now - 3_600_000)  # an hour old: past retention.ms
    new = gen_records(300, seed=7, ts0=now)
    expected = produce_records(b.bootstrap, topic, old + new)[0]
    hi = len(expected)
    arch = FileArchive(b.archive_dir)

    seen = {}

    def settled():
        m = manifest(arch, topic, 0)
        segs = local_segments(b.data_dir, topic, 0)
        stored = set(data_files(arch, topic, 0))
        seen.update(manifest=m and (m["start_offset"], m["end_offset"], len(m["files"])),
                    local=segs[:3], stored=len(stored))
        return (m is not None and m["start_offset"] > 0 and len(segs) == 1
                and m["end_offset"] == segs[0]
                and stored == {f["path"] for f in m["files"]})

    wait_for(settled, ARCHIVE_TIMEOUT, "old archive files to expire and be deleted",
             lambda: f"last seen {seen}", interval=0.2)
    m, _ = check_archive(arch, topic, 0, expected)
    start = m["start_offset"]
    first = m["files"][0]
    # the first file left is the one holding the first fresh record (offset 600)
    assert first["base_offset"] == start <= 600 < first["next_offset"], \
        f"archive starts at {start}: first file {first}"
    assert all(f["max_timestamp"] >= now - retention_ms for f in m["files"]), m["files"]
    assert list_offset(b.bootstrap, topic, 0, EARLIEST) == start
    assert watermarks(b.bootstrap, topic, 0) == (start, hi)
    msgs = consume_partition(b.bootstrap, topic, 0, hi - start, start=OFFSET_BEGINNING, timeout=60)
    assert_consumed(msgs, expected, start, hi, "from the beginning after archive retention")
    # offset 0 is gone: auto.offset.reset=earliest moves a consumer to the new start
    c = consumer(b.bootstrap, **{"auto.offset.reset": "earliest"})
    try:
        c.assign([TopicPartition(topic, 0, 0)])
        first_msg = wait_for(lambda: next((x for x in [c.poll(0.5)]
                                           if x is not None and not x.error()), None),
                             30, "a record after the offset reset", interval=0)
        assert first_msg.offset() == start, \
            f"reset to {first_msg.offset()}, archive starts at {start}"
    finally:
        c.close()


# --- 7. a missing or corrupt archive file ----------------------------------------------------

@pytest.mark.timeout(180)
def test_missing_or_corrupt_archive_file_is_a_storage_error_not_a_crash(make_broker):
    b = make_broker(*TIER_FLAGS)
    topic = unique("tier-hole")
    create_topic(b.bootstrap, topic, partitions=1, config=dict(ARCHIVE_AND_DROP))
    expected = produce_records(b.bootstrap, topic, gen_records(1200, seed=8))[0]
    hi = len(expected)
    arch = FileArchive(b.archive_dir)
    m = wait_archived(arch, b.data_dir, topic)[0]
    files = m["files"]
    assert len(files) >= 5, f"only {len(files)} archive files"
    gone, bad = files[1], files[3]
    pre = part_prefix(topic, 0)
    arch.path(pre + gone["path"]).unlink()
    bad_path = arch.path(pre + bad["path"])
    bad_path.write_bytes(bad_path.read_bytes()[: bad["bytes"] // 2])  # no footer any more

    for f, what in ((gone, "missing"), (bad, "corrupt")):
        off = f["base_offset"] + (f["next_offset"] - f["base_offset"]) // 2
        with kafka_raw.KafkaConn.to(b.bootstrap) as c:
            r = c.fetch(topic, 0, off, max_wait_ms=100)
        assert r["error_code"] == kafka_raw.KAFKA_STORAGE_ERROR, \
            f"fetch at {off} ({what} file {f['path']}): error {r['error_code']}, " \
            f"{len(r['records'])} bytes of records"
        b.assert_alive()
        name = Path(f["path"]).name
        wait_for(lambda: any("archive" in line.lower() and name in line
                             for line in b.log_text().splitlines()),
                 10, f"a broker log line about the {what} archive file {name}")

    # a real client gets nothing from the hole, and nothing past it (that would hide the loss)
    c = consumer(b.bootstrap)
    got, errors = [], []
    try:
        c.assign([TopicPartition(topic, 0, gone["base_offset"])])
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            x = c.poll(0.2)
            if x is None:
                continue
            (errors if x.error() else got).append(x.error() or x.offset())
    finally:
        c.close()
    assert not got, f"records {got[:5]}... served from a missing archive file (errors: {errors})"

    # everything else is still served: the file before the hole, between the two, the hot tier
    ranges = [(0, gone["base_offset"]), (gone["next_offset"], bad["base_offset"]),
              (m["end_offset"], hi)]
    for lo, end in ranges:
        msgs = consume_partition(b.bootstrap, topic, 0, end - lo, start=lo, timeout=60)
        assert_consumed(msgs, expected, lo, end, f"offsets {lo}..{end - 1} next to the hole")
    b.assert_alive()


# --- 8. topic describe ---------------------------------------------------------------------

def _describe(b, topic: str) -> dict[int, dict[str, str]]:
    out = b.cli("topic", "describe", topic).stdout
    parts = {}
    for line in out.splitlines():
        if "Partition: " not in line:
            continue
        fields = dict(f.split(": ", 1) for f in line.strip().split("\t") if ": " in f)
        parts[int(fields["Partition"])] = fields
    return parts


RANGE_RE = re.compile(r"(\d+)-(\d+) \((\d+) bytes\)")


@pytest.mark.timeout(180)
def test_topic_describe_shows_archive_and_local_ranges(make_broker):
    b = make_broker(*TIER_FLAGS)
    topic = unique("tier-describe")
    hot = unique("tier-describe-off")
    create_topic(b.bootstrap, topic, partitions=2, config=dict(ARCHIVE_AND_DROP))
    create_topic(b.bootstrap, hot, partitions=1,
                 config={"segment.bytes": SEGMENT_BYTES, "remote.storage.enable": "false"})
    expected = produce_records(b.bootstrap, topic, gen_records(800, seed=9))[0]  # partition 0 only
    produce_records(b.bootstrap, hot, gen_records(100, seed=10))
    hi = len(expected)
    arch = FileArchive(b.archive_dir)
    m = wait_archived(arch, b.data_dir, topic)[0]

    d = _describe(b, topic)
    assert sorted(d) == [0, 1], d
    p0, p1 = d[0], d[1]
    where = f"describe {topic}: {p0}"
    assert p0.get("LogStartOffset") == "0", where
    assert list_offset(b.bootstrap, topic, 0, EARLIEST) == 0
    assert p0.get("HighWatermark") == str(hi), where
    a = RANGE_RE.fullmatch(p0.get("Archive", ""))
    assert a, f"{where}: Archive field"
    assert int(a[1]) == m["start_offset"] == 0, where
    assert int(a[2]) == m["end_offset"] - 1, where
    assert list_offset(b.bootstrap, topic, 0, LATEST_TIERED) == m["end_offset"] - 1
    assert int(a[3]) == sum(f["bytes"] for f in m["files"]), f"{where}: archive bytes"
    loc = RANGE_RE.fullmatch(p0.get("Local", ""))
    assert loc, f"{where}: Local field"
    local_start = local_segments(b.data_dir, topic, 0)[0]
    assert int(loc[1]) == local_start == list_offset(b.bootstrap, topic, 0, EARLIEST_LOCAL), where
    assert int(loc[2]) == hi - 1, where
    on_disk = sum(f.stat().st_size for f in partition_dir(b.data_dir, topic, 0).iterdir()
                  if f.is_file())
    assert 0 < int(loc[3]) <= on_disk, f"{where}: local bytes vs {on_disk} on disk"
    # an empty partition has neither
    assert (p1.get("Archive"), p1.get("Local")) == ("none", "none"), f"describe {topic}: {p1}"
    assert (p1.get("LogStartOffset"), p1.get("HighWatermark")) == ("0", "0"), p1
    assert list_offset(b.bootstrap, topic, 1, LATEST_TIERED) == -1

    h = _describe(b, hot)[0]
    assert h.get("Archive") == "none", f"describe {hot}: {h}"
    loc = RANGE_RE.fullmatch(h.get("Local", ""))
    assert loc and (int(loc[1]), int(loc[2])) == (0, 99), f"describe {hot}: {h}"
