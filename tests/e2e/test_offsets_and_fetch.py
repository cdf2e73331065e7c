"""ListOffsets (earliest, latest, by timestamp) and the Fetch knobs (long poll, byte limits)."""

from __future__ import annotations

import threading
import time

from confluent_kafka import TopicPartition

import kafka_raw
from helpers import consumer, create_topic, flush_all, producer, unique

T0 = 1_700_000_000_000


def _produce_timestamped(bootstrap, topic, n, per_batch):
    """Record i has timestamp T0 + 1000*i; flushed every `per_batch` so there are many batches."""
    p = producer(bootstrap, **{"linger.ms": 1000, "batch.num.messages": per_batch})
    for i in range(n):
        p.produce(topic, value=b"v%d" % i, timestamp=T0 + 1000 * i, partition=0)
        if i % per_batch == per_batch - 1:
            flush_all(p)
    flush_all(p)


def test_offsets_for_times_finds_the_first_record_at_or_after_a_timestamp(broker):
    topic = unique("times")
    # small segments so the time index spans several segment files
    create_topic(broker.bootstrap, topic, partitions=1, config={"segment.bytes": "4096"})
    n = 300
    _produce_timestamped(broker.bootstrap, topic, n, per_batch=7)
    c = consumer(broker.bootstrap)
    try:
        def lookup(ts):
            res = c.offsets_for_times([TopicPartition(topic, 0, ts)], timeout=10)
            assert res[0].error is None, res[0].error
            return res[0].offset

        assert lookup(0) == 0
        assert lookup(T0) == 0
        assert lookup(T0 + 1) == 1
        assert lookup(T0 + 2500) == 3
        for i in (6, 7, 8, 50, 123, 200, 298, 299):
            assert lookup(T0 + 1000 * i) == i, f"exact timestamp of record {i}"
            assert lookup(T0 + 1000 * i - 999) == i, f"just after record {i - 1}"
        assert lookup(T0 + 1000 * (n - 1) + 1) == -1, "after the last record: no offset"
        assert c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10,
                                       cached=False) == (0, n)
    finally:
        c.close()


def test_offsets_for_times_survive_restart(broker):
    """The time index is rebuilt or reloaded after a crash, not lost."""
    topic = unique("times-restart")
    create_topic(broker.bootstrap, topic, partitions=1, config={"segment.bytes": "4096"})
    _produce_timestamped(broker.bootstrap, topic, 100, per_batch=5)
    broker.restart(clean=False)
    c = consumer(broker.bootstrap)
    try:
        for i in (0, 17, 55, 99):
            res = c.offsets_for_times([TopicPartition(topic, 0, T0 + 1000 * i)], timeout=10)
            assert res[0].offset == i
    finally:
        c.close()


def test_fetch_long_polls_for_max_wait_when_no_data(broker):
    topic = unique("longpoll")
    create_topic(broker.bootstrap, topic, partitions=1)
    with kafka_raw.KafkaConn.to(broker.bootstrap) as c:
        t0 = time.monotonic()
        resp = c.fetch(topic, 0, 0, max_wait_ms=1500, min_bytes=1)
        elapsed = time.monotonic() - t0
    assert resp["error_code"] == kafka_raw.NONE
    assert resp["records"] == b""
    assert 1.2 <= elapsed < 5, f"empty fetch returned after {elapsed:.2f}s, max_wait 1.5s"


def test_fetch_long_poll_wakes_up_when_data_arrives(broker):
    topic = unique("wake")
    create_topic(broker.bootstrap, topic, partitions=1)

    def produce_later():
        time.sleep(0.5)
        p = producer(broker.bootstrap, **{"linger.ms": 0})
        p.produce(topic, value=b"hello", partition=0)
        p.flush(10)

    t = threading.Thread(target=produce_later)
    with kafka_raw.KafkaConn.to(broker.bootstrap, timeout=30) as c:
        c.pick(kafka_raw.FETCH, 4, 11)
        t.start()
        t0 = time.monotonic()
        resp = c.fetch(topic, 0, 0, max_wait_ms=10000, min_bytes=1)
        elapsed = time.monotonic() - t0
    t.join()
    batches, _ = kafka_raw.decode_batches(resp["records"])
    assert [r.value for b in batches for r in b.records] == [b"hello"]
    assert elapsed < 5, f"fetch waited {elapsed:.2f}s although data arrived after 0.5s"


def test_fetch_long_poll_over_several_partitions_wakes_for_any_of_them(broker):
    """A long poll wakes for data on any partition it asked for, whichever
    topic it is in, and only for those: writes elsewhere do not end it."""
    quiet, busy, other = unique("wake-a"), unique("wake-b"), unique("wake-other")
    create_topic(broker.bootstrap, quiet, partitions=2)
    create_topic(broker.bootstrap, busy, partitions=1)
    create_topic(broker.bootstrap, other, partitions=1)
    p = producer(broker.bootstrap, **{"linger.ms": 0})
    wanted = [(quiet, 0, 0), (quiet, 1, 0), (busy, 0, 0)]
    with kafka_raw.KafkaConn.to(broker.bootstrap, timeout=30) as c:
        c.pick(kafka_raw.FETCH, 4, 11)
        # Records keep landing in a topic the fetch did not ask for: it
        # still waits out max_wait and answers with nothing.
        stop = threading.Event()

        def elsewhere():
            while not stop.is_set():
                p.produce(other, value=b"noise", partition=0)
                p.flush(10)
                time.sleep(0.01)

        t = threading.Thread(target=elsewhere)
        t.start()
        try:
            t0 = time.monotonic()
            resp = c.fetch_many(wanted, max_wait_ms=1000, min_bytes=1)
            elapsed = time.monotonic() - t0
        finally:
            stop.set()
            t.join()
        assert sorted((r["topic"], r["partition"]) for r in resp) == sorted((w[0], w[1]) for w in wanted)
        assert all(r["records"] == b"" and r["error_code"] == kafka_raw.NONE for r in resp), resp
        assert 0.8 <= elapsed < 5, f"answered after {elapsed:.2f}s, max_wait 1s"

        # Data on the last partition asked for ends the wait early.
        def produce_later():
            time.sleep(0.5)
            p.produce(busy, value=b"hello", partition=0)
            p.flush(10)

        t = threading.Thread(target=produce_later)
        t.start()
        t0 = time.monotonic()
        resp = c.fetch_many(wanted, max_wait_ms=10000, min_bytes=1)
        elapsed = time.monotonic() - t0
        t.join()
    got = {(r["topic"], r["partition"]): r for r in resp}
    batches, _ = kafka_raw.decode_batches(got[(busy, 0)]["records"])
    assert [rec.value for b in batches for rec in b.records] == [b"hello"]
    assert got[(quiet, 0)]["records"] == b"" and got[(quiet, 1)]["records"] == b""
    assert elapsed < 5, f"fetch waited {elapsed:.2f}s although data arrived after 0.5s"


def test_fetch_honours_min_bytes_and_returns_immediately_when_satisfied(broker):
    topic = unique("minbytes")
    create_topic(broker.bootstrap, topic, partitions=1)
    p = producer(broker.bootstrap)
    p.produce(topic, value=b"x" * 100, partition=0)
    flush_all(p)
    with kafka_raw.KafkaConn.to(broker.bootstrap) as c:
        t0 = time.monotonic()
        resp = c.fetch(topic, 0, 0, max_wait_ms=5000, min_bytes=1)
        assert time.monotonic() - t0 < 2, "min_bytes already satisfied: no waiting"
        assert kafka_raw.decode_batches(resp["records"])[0]
        # min_bytes far beyond what exists: the broker waits max_wait then answers with what it has
        t0 = time.monotonic()
        resp = c.fetch(topic, 0, 0, max_wait_ms=1000, min_bytes=10_000_000)
        elapsed = time.monotonic() - t0
        assert 0.8 <= elapsed < 5, f"min_bytes not honoured: answered after {elapsed:.2f}s"
        assert kafka_raw.decode_batches(resp["records"])[0]


def test_fetch_honours_partition_max_bytes_but_always_returns_a_whole_first_batch(broker):
    topic = unique("maxbytes")
    create_topic(broker.bootstrap, topic, partitions=1)
    p = producer(broker.bootstrap, **{"linger.ms": 0, "compression.type": "none"})
    for i in range(20):
        p.produce(topic, value=bytes([i]) * 1000, partition=0)
        p.flush(10)  # one ~1 KB batch per record
    flush_all(p)
    with kafka_raw.KafkaConn.to(broker.bootstrap) as c:
        whole = c.fetch(topic, 0, 0, max_wait_ms=100)
        batches, _ = kafka_raw.decode_batches(whole["records"])
        assert len(batches) == 20
        first_size = batches[0].length

        # a limit smaller than one batch still returns the whole first batch (KIP-74)
        tiny = c.fetch(topic, 0, 0, max_wait_ms=100, partition_max_bytes=10)
        tb, _ = kafka_raw.decode_batches(tiny["records"])
        assert len(tb) >= 1 and tb[0].base_offset == 0 and tb[0].records[0].value == b"\x00" * 1000
        assert len(tiny["records"]) <= max(first_size, 10) + 0, "more than the first batch"

        limit = 3 * first_size + first_size // 2
        part = c.fetch(topic, 0, 0, max_wait_ms=100, partition_max_bytes=limit)
        assert len(part["records"]) <= limit
        pb, _ = kafka_raw.decode_batches(part["records"])
        assert len(pb) == 3

        # response-level max_bytes bounds it too
        resp = c.fetch(topic, 0, 5, max_wait_ms=100, max_bytes=2 * first_size + 10)
        rb, _ = kafka_raw.decode_batches(resp["records"])
        assert len(resp["records"]) <= 2 * first_size + 10
        assert rb and rb[0].base_offset == 5


def test_fetch_beyond_the_log_end_is_offset_out_of_range(broker):
    topic = unique("oor")
    create_topic(broker.bootstrap, topic, partitions=1)
    p = producer(broker.bootstrap)
    for i in range(3):
        p.produce(topic, value=b"x", partition=0)
    flush_all(p)
    with kafka_raw.KafkaConn.to(broker.bootstrap) as c:
        resp = c.fetch(topic, 0, 100, max_wait_ms=100)
        assert resp["error_code"] == kafka_raw.OFFSET_OUT_OF_RANGE
        assert resp["high_watermark"] in (3, -1)
        at_end = c.fetch(topic, 0, 3, max_wait_ms=100)
        assert at_end["error_code"] == kafka_raw.NONE and at_end["high_watermark"] == 3
