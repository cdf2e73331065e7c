"""Produce and consume with librdkafka (confluent-kafka): what goes in comes out exactly."""

from __future__ import annotations

import os
import time

import pytest
from confluent_kafka import (TIMESTAMP_CREATE_TIME, TIMESTAMP_LOG_APPEND_TIME, KafkaError,
                             TopicPartition)

import kafka_raw
from helpers import (Acks, consume_partition, consume_to_end, create_topic, flush_all,
                     java_partition, producer, unique)

CODEC_IDS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}


def _records(n: int):
    """Values of many shapes: empty, null (tombstone), small, large and compressible, binary."""
    base_ts = 1_600_000_000_000
    out = []
    for i in range(n):
        if i == 3:
            value = b""
        elif i == 4:
            value = None
        elif i % 50 == 7:
            value = (b"sediment-" * 12000)[: 100_000]  # ~100 KB, compresses well
        elif i % 10 == 9:
            value = os.urandom(64) + bytes(range(256))
        else:
            value = f"value-{i:05d} ".encode() * (1 + i % 5)
        key = None if i % 11 == 5 else f"key-{i % 17}".encode()
        headers = [("trace", f"t{i}".encode()), ("dup", b"first"), ("dup", b"second")]
        if i % 3 == 0:
            headers.append(("empty", b""))
            headers.append(("null", None))
        ts = base_ts + i * 1000 + (i % 7)  # distinct, not all multiples of a second
        out.append((key, value, headers, ts))
    return out


@pytest.mark.parametrize("codec", list(CODEC_IDS))
def test_round_trip_preserves_values_keys_headers_timestamps_for_every_codec(broker, codec):
    topic = unique(f"rt-{codec}")
    create_topic(broker.bootstrap, topic, partitions=1)
    records = _records(200)
    acks = Acks()
    p = producer(broker.bootstrap, **{"compression.type": codec, "linger.ms": 50,
                                      "batch.num.messages": 64})
    for key, value, headers, ts in records:
        p.produce(topic, value=value, key=key, headers=headers, timestamp=ts, partition=0,
                  on_delivery=acks)
    flush_all(p)
    assert not acks.errors, acks.errors[:5]
    assert sorted(o for _, o, _, _ in acks.ok) == list(range(len(records)))

    msgs = consume_partition(broker.bootstrap, topic, 0, len(records))
    assert [m.offset() for m in msgs] == list(range(len(records))), "offsets not contiguous"
    for m, (key, value, headers, ts) in zip(msgs, records):
        assert m.key() == key
        assert m.value() == value
        assert m.headers() == headers, f"offset {m.offset()}: headers differ"
        assert m.timestamp() == (TIMESTAMP_CREATE_TIME, ts)
    # each delivery report names the offset the record really has
    by_offset = {m.offset(): m.value() for m in msgs}
    for _, off, _, value in acks.ok:
        assert by_offset[off] == value

    # the broker stores batches as the producer compressed them (no re-compression)
    with kafka_raw.KafkaConn.to(broker.bootstrap) as c:
        resp = c.fetch(topic, 0, 0, max_wait_ms=100, partition_max_bytes=64 * 1024 * 1024,
                       max_bytes=64 * 1024 * 1024)
    assert resp["error_code"] == kafka_raw.NONE
    batches, _ = kafka_raw.decode_batches(resp["records"])
    assert batches, "fetch returned no complete batch"
    codecs = {b.attributes & 0x07 for b in batches}
    assert codecs <= {0, CODEC_IDS[codec]}, f"stored codecs {codecs} for {codec}"
    assert CODEC_IDS[codec] in codecs, f"no batch stored with {codec}"
    assert all(b.crc_ok and b.magic == 2 for b in batches)
    next_offset = 0
    for b in batches:
        assert b.base_offset == next_offset, "batches not contiguous"
        next_offset = b.base_offset + b.last_offset_delta + 1


def test_keyed_records_land_in_the_java_murmur2_partition(broker):
    topic = unique("murmur")
    partitions = 6
    create_topic(broker.bootstrap, topic, partitions=partitions)
    keys = [f"user-{i}".encode() for i in range(300)] + [b"", b"a", b"\x00\xff\x10"]
    acks = Acks()
    p = producer(broker.bootstrap, partitioner="murmur2_random")
    for k in keys:
        p.produce(topic, key=k, value=b"v:" + k, on_delivery=acks)
    flush_all(p)
    assert not acks.errors
    for part, _, key, _ in acks.ok:
        assert part == java_partition(key, partitions), f"client put {key!r} in {part}"

    seen = {}
    for part in range(partitions):
        for m in consume_to_end(broker.bootstrap, topic, part):
            assert m.partition() == part
            seen[m.key()] = part
    assert set(seen) == set(keys)
    for k in keys:
        assert seen[k] == java_partition(k, partitions), f"{k!r} stored in {seen[k]}"
    assert len(set(seen.values())) == partitions, "keys did not spread over all partitions"


@pytest.mark.parametrize("acks_setting", ["0", "1", "all"])
def test_every_acks_setting_stores_the_records(broker, acks_setting):
    topic = unique(f"acks{acks_setting}")
    create_topic(broker.bootstrap, topic, partitions=1)
    p = producer(broker.bootstrap, acks=acks_setting)
    for i in range(100):
        p.produce(topic, value=f"m{i}".encode(), partition=0)
    flush_all(p)
    msgs = consume_partition(broker.bootstrap, topic, 0, 100)
    assert [m.value() for m in msgs] == [f"m{i}".encode() for i in range(100)]
    assert [m.offset() for m in msgs] == list(range(100))


def test_log_append_time_topic_stamps_records_with_broker_time(broker):
    topic = unique("lat")
    create_topic(broker.bootstrap, topic, partitions=1,
                 config={"message.timestamp.type": "LogAppendTime"})
    before = int(time.time() * 1000)
    p = producer(broker.bootstrap)
    for i in range(5):
        p.produce(topic, value=b"x%d" % i, timestamp=1000 + i, partition=0)
    flush_all(p)
    after = int(time.time() * 1000)
    for m in consume_partition(broker.bootstrap, topic, 0, 5):
        kind, ts = m.timestamp()
        assert kind == TIMESTAMP_LOG_APPEND_TIME
        assert before - 1000 <= ts <= after + 1000, (before, ts, after)


def test_record_larger_than_max_message_bytes_is_rejected_without_using_an_offset(broker):
    topic = unique("maxbytes")
    create_topic(broker.bootstrap, topic, partitions=1, config={"max.message.bytes": "2048"})
    acks = Acks()
    p = producer(broker.bootstrap, **{"compression.type": "none", "retries": 0})
    p.produce(topic, value=os.urandom(8000), partition=0, on_delivery=acks)
    flush_all(p)
    assert not acks.ok
    assert len(acks.errors) == 1
    assert acks.errors[0][0].code() == KafkaError.MSG_SIZE_TOO_LARGE, acks.errors[0][0]

    p.produce(topic, value=b"small", partition=0, on_delivery=acks)
    flush_all(p)
    assert acks.ok == [(0, 0, None, b"small")]


def test_consumer_can_start_at_an_offset_in_the_middle(broker):
    topic = unique("mid")
    create_topic(broker.bootstrap, topic, partitions=1)
    p = producer(broker.bootstrap, **{"linger.ms": 0})
    for i in range(50):
        p.produce(topic, value=b"%d" % i, partition=0)
        if i % 5 == 4:
            p.flush(10)  # several batches, so offset 23 is inside a batch
    flush_all(p)
    msgs = consume_partition(broker.bootstrap, topic, 0, 27, start=23)
    assert [m.offset() for m in msgs] == list(range(23, 50))
    assert [m.value() for m in msgs] == [b"%d" % i for i in range(23, 50)]


def test_partitions_are_independent_logs(broker):
    topic = unique("parts")
    create_topic(broker.bootstrap, topic, partitions=3)
    p = producer(broker.bootstrap)
    for part in range(3):
        for i in range(10 * (part + 1)):
            p.produce(topic, value=f"{part}:{i}".encode(), partition=part)
    flush_all(p)
    from helpers import watermarks
    for part in range(3):
        assert watermarks(broker.bootstrap, topic, part) == (0, 10 * (part + 1))
        msgs = consume_partition(broker.bootstrap, topic, part, 10 * (part + 1))
        assert [m.value() for m in msgs] == [f"{part}:{i}".encode() for i in range(10 * (part + 1))]


def test_unused_topic_partition_reports_empty_watermarks(broker):
    topic = unique("empty")
    create_topic(broker.bootstrap, topic, partitions=2)
    from helpers import consumer
    c = consumer(broker.bootstrap)
    try:
        for part in range(2):
            assert c.get_watermark_offsets(TopicPartition(topic, part), timeout=10,
                                           cached=False) == (0, 0)
    finally:
        c.close()
