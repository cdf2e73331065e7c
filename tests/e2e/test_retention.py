"""Retention deletes whole old segments and advances the log start offset."""

from __future__ import annotations

import time

import pytest

from helpers import (consume_partition, consume_to_end, consumer, create_topic, flush_all,
                     producer, unique, wait_for, watermarks)
from confluent_kafka import OFFSET_BEGINNING, TopicPartition

RETENTION_FLAGS = ("--retention-check-interval-ms", "200")


@pytest.fixture
def retention_broker(make_broker):
    return make_broker(*RETENTION_FLAGS)


def _produce_batches(bootstrap, topic, values, timestamp=None):
    """One record per batch, so segment sizes are predictable."""
    p = producer(bootstrap, **{"linger.ms": 0, "compression.type": "none"})
    for v in values:
        kw = {"timestamp": timestamp} if timestamp is not None else {}
        p.produce(topic, value=v, partition=0, **kw)
        p.flush(10)
    flush_all(p)


def test_retention_bytes_deletes_oldest_segments_and_advances_log_start(retention_broker):
    b = retention_broker
    topic = unique("ret-bytes")
    create_topic(b.bootstrap, topic, partitions=1,
                 config={"segment.bytes": "2048", "retention.bytes": "8192"})
    values = [b"%04d:" % i + b"x" * 200 for i in range(200)]  # ~270 B per batch, ~7 per segment
    _produce_batches(b.bootstrap, topic, values)
    hi = 200

    lo = wait_for(lambda: watermarks(b.bootstrap, topic, 0)[0] or None, 15,
                  "the log start offset to advance")
    # let retention settle, then check its bound
    time.sleep(1.0)
    lo, hi2 = watermarks(b.bootstrap, topic, 0)
    assert hi2 == hi, "retention must not change the log end"
    retained = hi - lo
    # retention.bytes 8192 plus at most one segment of slack, ~270 B per record
    assert retained * 270 <= 8192 + 2048 + 2 * 270, f"{retained} records retained"
    assert retained >= 8192 // 270 - 8, f"too much deleted: {retained} records retained"

    # what remains is intact and starts exactly at the new log start
    msgs = consume_to_end(b.bootstrap, topic, 0)
    assert [m.offset() for m in msgs] == list(range(lo, hi))
    assert [m.value() for m in msgs] == values[lo:]

    # a consumer asking for the beginning gets the new log start
    msgs = consume_partition(b.bootstrap, topic, 0, hi - lo, start=OFFSET_BEGINNING)
    assert msgs[0].offset() == lo

    # asking for a deleted offset is out of range; auto.offset.reset=earliest goes to lo
    c = consumer(b.bootstrap)
    try:
        c.assign([TopicPartition(topic, 0, 0)])
        first = None
        deadline = time.monotonic() + 20
        while first is None and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is not None and not m.error():
                first = m
        assert first is not None and first.offset() == lo
    finally:
        c.close()


def test_retention_ms_deletes_segments_whose_records_are_all_old(retention_broker):
    b = retention_broker
    topic = unique("ret-ms")
    create_topic(b.bootstrap, topic, partitions=1,
                 config={"segment.bytes": "2048", "retention.ms": "60000"})
    old_ts = int(time.time() * 1000) - 3_600_000  # an hour ago
    old = [b"old-%03d" % i + b"o" * 200 for i in range(60)]
    new = [b"new-%03d" % i + b"n" * 200 for i in range(40)]
    _produce_batches(b.bootstrap, topic, old, timestamp=old_ts)
    _produce_batches(b.bootstrap, topic, new)

    wait_for(lambda: watermarks(b.bootstrap, topic, 0)[0] > 0, 15,
             "old segments to be deleted")
    time.sleep(1.0)
    lo, hi = watermarks(b.bootstrap, topic, 0)
    assert hi == 100
    assert 0 < lo <= 60, f"log start {lo}: a segment holding fresh records was deleted"
    assert lo >= 60 - 2048 // 200 - 1, f"log start {lo}: old segments were left behind"
    msgs = consume_to_end(b.bootstrap, topic, 0)
    assert [m.value() for m in msgs] == (old + new)[lo:]


def test_retention_leaves_topics_without_limits_alone(retention_broker):
    b = retention_broker
    topic = unique("ret-none")
    create_topic(b.bootstrap, topic, partitions=1, config={"segment.bytes": "2048"})
    _produce_batches(b.bootstrap, topic, [b"v" * 300] * 40)
    time.sleep(1.5)
    assert watermarks(b.bootstrap, topic, 0) == (0, 40)


def test_log_start_offset_survives_restart(retention_broker):
    b = retention_broker
    topic = unique("ret-restart")
    create_topic(b.bootstrap, topic, partitions=1,
                 config={"segment.bytes": "2048", "retention.bytes": "4096"})
    _produce_batches(b.bootstrap, topic, [b"%03d" % i + b"r" * 250 for i in range(80)])
    wait_for(lambda: watermarks(b.bootstrap, topic, 0)[0] > 0, 15, "retention")
    time.sleep(1.0)
    lo, hi = watermarks(b.bootstrap, topic, 0)
    b.restart(clean=False)
    lo2, hi2 = watermarks(b.bootstrap, topic, 0)
    assert hi2 == hi
    assert lo2 >= lo, "deleted records came back after a restart"
