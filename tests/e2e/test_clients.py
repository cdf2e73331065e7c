"""Other real clients: kafka-python, kafkajs (node) and Debian's kcat (librdkafka 2.0)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from confluent_kafka import TIMESTAMP_CREATE_TIME

from helpers import (consume_partition, consume_to_end, create_topic, flush_all, java_partition,
                     producer, topic_names, unique)

JS_DIR = Path(__file__).resolve().parents[1] / "js"


# --- kafka-python -------------------------------------------------------------

def test_kafka_python_creates_produces_consumes_and_commits(broker):
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.admin import NewTopic

    topic = unique("kpy")
    group = unique("kpy-group")
    adm = KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=10000)
    try:
        adm.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
    finally:
        adm.close()
    assert topic in topic_names(broker.bootstrap)

    prod = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=5,
                         compression_type="gzip")
    metas = []
    try:
        for i in range(60):
            fut = prod.send(topic, key=b"k%d" % i, value=b"v%d" % i,
                            headers=[("h", b"%d" % i), ("h", b"again")],
                            timestamp_ms=1_650_000_000_000 + i)
            metas.append(fut)
        prod.flush(30)
        metas = [f.get(timeout=30) for f in metas]
    finally:
        prod.close(timeout=10)
    # kafka-python's default partitioner is the Java one
    for i, md in enumerate(metas):
        assert md.partition == java_partition(b"k%d" % i, 2)
    for part in range(2):
        offs = sorted(md.offset for md in metas if md.partition == part)
        assert offs == list(range(len(offs)))

    cons = KafkaConsumer(topic, bootstrap_servers=broker.bootstrap, group_id=group,
                         auto_offset_reset="earliest", enable_auto_commit=False,
                         consumer_timeout_ms=20000, session_timeout_ms=10000,
                         heartbeat_interval_ms=1000)
    got = []
    try:
        for rec in cons:
            got.append(rec)
            if len(got) == 60:
                break
        cons.commit()
        committed = {p: cons.committed(TopicPartition(topic, p)) for p in range(2)}
    finally:
        cons.close()
    assert len(got) == 60
    by_key = {r.key: r for r in got}
    for i in range(60):
        r = by_key[b"k%d" % i]
        assert r.value == b"v%d" % i
        assert list(r.headers) == [("h", b"%d" % i), ("h", b"again")]
        assert r.timestamp == 1_650_000_000_000 + i and r.timestamp_type == 0
    expected = {p: sum(1 for md in metas if md.partition == p) for p in range(2)}
    assert committed == expected


# --- kafkajs --------------------------------------------------------------------

def test_kafkajs_creates_produces_and_consumes_in_a_group(broker):
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    if not (JS_DIR / "node_modules" / "kafkajs").exists():
        pytest.fail("tests/js/node_modules is missing: run `npm ci` in tests/js "
                    "(scripts/test-all.sh does)")
    topic = unique("kjs")
    group = unique("kjs-group")
    n = 40
    p = subprocess.run([node, str(JS_DIR / "roundtrip.js"), broker.bootstrap, topic, str(n), group],
                       capture_output=True, text=True, timeout=120, cwd=JS_DIR)
    assert p.returncode == 0, f"kafkajs failed:\nstdout:{p.stdout}\nstderr:{p.stderr[-5000:]}"
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["created"] is True
    assert topic in out["listed"]
    assert all(o["offset"] == "0" for o in out["offsetsBefore"])

    consumed = out["consumed"]
    assert len(consumed) == n
    assert sorted(c["value"] for c in consumed) == sorted(f"value-{i}" for i in range(n))
    for c in consumed:
        i = int(c["key"].split("-")[1])
        assert c["value"] == f"value-{i}"
        assert c["headers"] == {"seq": str(i), "origin": "kafkajs"}
        assert c["timestamp"] == str(1600000000000 + i)
        assert c["partition"] == java_partition(c["key"].encode(), 3), "kafkajs uses murmur2"
    for part in range(3):
        offs = sorted(int(c["offset"]) for c in consumed if c["partition"] == part)
        assert offs == list(range(len(offs)))
    ends = {o["partition"]: int(o["offset"]) for o in out["offsetsAfter"]}
    counts = {part: sum(1 for c in consumed if c["partition"] == part) for part in range(3)}
    assert ends == counts
    committed = {int(pp["partition"]): int(pp["offset"])
                 for t in out["committed"] for pp in t["partitions"]}
    assert committed == counts

    # and what kafkajs wrote, librdkafka reads the same
    for part in range(3):
        msgs = consume_to_end(broker.bootstrap, topic, part)
        assert len(msgs) == counts[part]
        for m in msgs:
            assert dict(m.headers())["origin"] == b"kafkajs"


# --- kcat (Debian's, librdkafka 2.0) ------------------------------------------

def _kcat(*args, input=None, timeout=60):
    kcat = shutil.which("kcat") or shutil.which("kafkacat")
    if kcat is None:
        pytest.fail("kcat is not installed (apt-get install kcat; scripts/test-all.sh does)")
    p = subprocess.run([kcat, *args], input=input, capture_output=True, text=True,
                       timeout=timeout)
    assert p.returncode == 0, f"kcat {' '.join(args)} exited {p.returncode}\n{p.stderr[-3000:]}"
    return p


def test_kcat_reads_cluster_metadata(broker):
    topic = unique("kcat-md")
    create_topic(broker.bootstrap, topic, partitions=3)
    out = json.loads(_kcat("-b", broker.bootstrap, "-L", "-J").stdout)
    assert [(b["id"], b["name"]) for b in out["brokers"]] == [(0, broker.bootstrap)]
    topics = {t["topic"]: t for t in out["topics"]}
    assert topic in topics
    t = topics[topic]
    assert "error" not in t or not t["error"]
    assert sorted(p["partition"] for p in t["partitions"]) == [0, 1, 2]
    assert all(p["leader"] == 0 for p in t["partitions"])
    # one-topic metadata too
    one = json.loads(_kcat("-b", broker.bootstrap, "-L", "-J", "-t", topic).stdout)
    assert [x["topic"] for x in one["topics"]] == [topic]


def test_kcat_consumes_what_librdkafka_2x_produced(broker):
    topic = unique("kcat-c")
    create_topic(broker.bootstrap, topic, partitions=1)
    p = producer(broker.bootstrap, **{"compression.type": "zstd"})
    for i in range(25):
        p.produce(topic, key=b"k%d" % i, value=b"value %d" % i, partition=0,
                  timestamp=1_600_000_000_000 + i, headers=[("n", b"%d" % i)])
    flush_all(p)
    out = _kcat("-b", broker.bootstrap, "-C", "-t", topic, "-p", "0", "-o", "beginning", "-e",
                "-f", "%o|%k|%s|%T|%h\n").stdout
    lines = out.splitlines()
    assert lines == [f"{i}|k{i}|value {i}|{1_600_000_000_000 + i}|n={i}" for i in range(25)]

    # from an offset, a bounded count
    out = _kcat("-b", broker.bootstrap, "-C", "-t", topic, "-p", "0", "-o", "20", "-c", "3",
                "-f", "%o %s\n").stdout
    assert out.splitlines() == ["20 value 20", "21 value 21", "22 value 22"]


def test_kcat_produces_with_keys_and_compression(broker):
    topic = unique("kcat-p")
    create_topic(broker.bootstrap, topic, partitions=1)
    lines = "".join(f"key{i}:line {i}\n" for i in range(30))
    _kcat("-b", broker.bootstrap, "-P", "-t", topic, "-p", "0", "-K", ":", "-z", "lz4",
          input=lines)
    msgs = consume_partition(broker.bootstrap, topic, 0, 30)
    assert [(m.key(), m.value()) for m in msgs] == \
        [(f"key{i}".encode(), f"line {i}".encode()) for i in range(30)]
    assert all(m.timestamp()[0] == TIMESTAMP_CREATE_TIME for m in msgs)


def test_kcat_balanced_consumer_group(broker):
    topic = unique("kcat-g")
    create_topic(broker.bootstrap, topic, partitions=2)
    p = producer(broker.bootstrap)
    for i in range(20):
        p.produce(topic, value=b"g%d" % i, partition=i % 2)
    flush_all(p)
    t0 = time.monotonic()
    out = _kcat("-b", broker.bootstrap, "-G", unique("kcat-group"), "-X",
                "auto.offset.reset=earliest", "-c", "20", "-f", "%s\n", topic,
                timeout=90).stdout
    assert sorted(out.split()) == sorted(f"g{i}" for i in range(20))
    assert time.monotonic() - t0 < 60


def test_kcat_queries_offsets_by_timestamp(broker):
    topic = unique("kcat-q")
    create_topic(broker.bootstrap, topic, partitions=1)
    p = producer(broker.bootstrap)
    for i in range(10):
        p.produce(topic, value=b"%d" % i, partition=0, timestamp=1_600_000_000_000 + 1000 * i)
    flush_all(p)
    out = _kcat("-b", broker.bootstrap, "-Q", "-t", f"{topic}:0:{1_600_000_000_000 + 4500}").stdout
    assert f"{topic} [0] offset 5" in out, out
