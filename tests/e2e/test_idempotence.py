"""Idempotent producers: a retried batch (same producer id, epoch, sequence) is appended once.

Real clients retry only when something goes wrong, so the deterministic tests
play the client's part over a raw socket: InitProducerId, then the very same
Produce request twice.
"""

from __future__ import annotations

import pytest

import kafka_raw
from kafka_raw import KafkaConn, Record, encode_batch
from helpers import (Acks, consume_partition, consume_to_end, create_topic, flush_all, producer,
                     unique, watermarks)


def _batch(pid, epoch, seq, values):
    return encode_batch([Record(v, key=b"k") for v in values], producer_id=pid,
                        producer_epoch=epoch, base_sequence=seq)


def _init(c: KafkaConn):
    err, pid, epoch = c.init_producer_id()
    assert err == kafka_raw.NONE, f"InitProducerId error {err}"
    assert pid >= 0 and epoch >= 0
    return pid, epoch


def test_retried_idempotent_batch_returns_original_offset_and_is_stored_once(broker):
    topic = unique("idem")
    create_topic(broker.bootstrap, topic, partitions=1)
    with KafkaConn.to(broker.bootstrap) as c:
        pid, epoch = _init(c)
        first = _batch(pid, epoch, 0, [b"a0", b"a1", b"a2"])
        r1 = c.produce(topic, 0, first)
        assert r1["error_code"] == kafka_raw.NONE and r1["base_offset"] == 0

        # the retry: byte-for-byte the same batch
        r2 = c.produce(topic, 0, first)
        assert r2["error_code"] == kafka_raw.NONE, f"duplicate answered with {r2['error_code']}"
        assert r2["base_offset"] == 0, "a duplicate must be answered with the original offset"

        second = _batch(pid, epoch, 3, [b"b0", b"b1"])
        r3 = c.produce(topic, 0, second)
        assert r3["error_code"] == kafka_raw.NONE and r3["base_offset"] == 3

        # an older batch (not just the last one) is still recognised as a duplicate
        r4 = c.produce(topic, 0, first)
        assert r4["error_code"] == kafka_raw.NONE and r4["base_offset"] == 0
        r5 = c.produce(topic, 0, second)
        assert r5["error_code"] == kafka_raw.NONE and r5["base_offset"] == 3

    assert watermarks(broker.bootstrap, topic, 0) == (0, 5)
    msgs = consume_partition(broker.bootstrap, topic, 0, 5)
    assert [m.value() for m in msgs] == [b"a0", b"a1", b"a2", b"b0", b"b1"]


def test_sequence_gap_is_rejected_as_out_of_order(broker):
    topic = unique("idem-gap")
    create_topic(broker.bootstrap, topic, partitions=1)
    with KafkaConn.to(broker.bootstrap) as c:
        pid, epoch = _init(c)
        assert c.produce(topic, 0, _batch(pid, epoch, 0, [b"x"]))["error_code"] == kafka_raw.NONE
        gap = c.produce(topic, 0, _batch(pid, epoch, 5, [b"y"]))
        assert gap["error_code"] == kafka_raw.OUT_OF_ORDER_SEQUENCE_NUMBER
        ok = c.produce(topic, 0, _batch(pid, epoch, 1, [b"z"]))
        assert ok["error_code"] == kafka_raw.NONE and ok["base_offset"] == 1
    msgs = consume_partition(broker.bootstrap, topic, 0, 2)
    assert [m.value() for m in msgs] == [b"x", b"z"]


def test_each_init_producer_id_gets_a_distinct_producer_id(broker):
    with KafkaConn.to(broker.bootstrap) as c:
        ids = {_init(c)[0] for _ in range(5)}
    assert len(ids) == 5


def test_two_producers_sequences_are_independent(broker):
    topic = unique("idem-two")
    create_topic(broker.bootstrap, topic, partitions=1)
    with KafkaConn.to(broker.bootstrap) as c:
        p1, e1 = _init(c)
        p2, e2 = _init(c)
        b1 = _batch(p1, e1, 0, [b"p1"])
        b2 = _batch(p2, e2, 0, [b"p2"])
        assert c.produce(topic, 0, b1)["base_offset"] == 0
        assert c.produce(topic, 0, b2)["base_offset"] == 1, "same sequence, other producer: new"
        assert c.produce(topic, 0, b1)["base_offset"] == 0
        assert c.produce(topic, 0, b2)["base_offset"] == 1
    assert watermarks(broker.bootstrap, topic, 0) == (0, 2)


@pytest.mark.parametrize("clean", [True, False], ids=["sigterm", "kill9"])
def test_duplicate_is_detected_after_broker_restart(broker, clean):
    """A client retrying across a broker restart must not create a duplicate."""
    topic = unique("idem-restart")
    create_topic(broker.bootstrap, topic, partitions=1)
    with KafkaConn.to(broker.bootstrap) as c:
        pid, epoch = _init(c)
        first = _batch(pid, epoch, 0, [b"a0", b"a1"])
        assert c.produce(topic, 0, first)["base_offset"] == 0
    broker.restart(clean=clean)
    with KafkaConn.to(broker.bootstrap) as c:
        r = c.produce(topic, 0, first)
        assert r["error_code"] == kafka_raw.NONE and r["base_offset"] == 0
        nxt = c.produce(topic, 0, _batch(pid, epoch, 2, [b"b0"]))
        assert nxt["error_code"] == kafka_raw.NONE and nxt["base_offset"] == 2
    assert watermarks(broker.bootstrap, topic, 0) == (0, 3)


def test_librdkafka_idempotent_producer_writes_each_record_once_in_order(broker):
    topic = unique("idem-rdk")
    create_topic(broker.bootstrap, topic, partitions=3)
    acks = Acks()
    p = producer(broker.bootstrap, **{"enable.idempotence": True, "linger.ms": 2,
                                      "batch.num.messages": 50,
                                      "max.in.flight.requests.per.connection": 5})
    n = 3000
    for i in range(n):
        p.produce(topic, key=b"k%d" % (i % 3), value=b"%d" % i, partition=i % 3,
                  on_delivery=acks)
        if i % 500 == 0:
            p.poll(0)
    flush_all(p)
    assert not acks.errors and len(acks.ok) == n
    for part in range(3):
        values = [int(m.value()) for m in consume_to_end(broker.bootstrap, topic, part)]
        assert values == list(range(part, n, 3)), f"partition {part}: duplicates or reordering"
