"""Consumer groups (classic protocol) with librdkafka: sharing, rebalancing, durable commits."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from confluent_kafka import ConsumerGroupState, KafkaException, TopicPartition

from helpers import admin, consumer, create_topic, flush_all, producer, unique

GROUP_CONF = {
    "session.timeout.ms": 6000,
    "heartbeat.interval.ms": 300,
    "partition.assignment.strategy": "range",
    "topic.metadata.refresh.interval.ms": 1000,
}


def _assigned(c) -> set[int]:
    return {tp.partition for tp in c.assignment()}


def _poll_all(consumers, seconds: float, sink: dict) -> None:
    """Poll every consumer round-robin for `seconds`, collecting messages per consumer."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for name, c in consumers.items():
            m = c.poll(0.05)
            if m is None:
                continue
            if m.error():
                raise KafkaException(m.error())
            sink.setdefault(name, []).append(m)


def _poll_until(consumers, pred, timeout: float, sink: dict, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            state = {n: sorted(_assigned(c)) for n, c in consumers.items()}
            raise AssertionError(f"timed out waiting for {what}; assignments {state}")
        _poll_all(consumers, 0.2, sink)


def _produce(bootstrap, topic, partitions, per_partition, tag):
    p = producer(bootstrap)
    for part in range(partitions):
        for i in range(per_partition):
            p.produce(topic, value=f"{tag}-{part}-{i}".encode(), partition=part)
    flush_all(p)


@pytest.mark.parametrize("restart", ["sigterm", "kill9"])
def test_two_member_group_shares_rebalances_and_committed_offsets_survive_restart(
        group_broker, restart):
    b = group_broker
    topic = unique("grp")
    group = unique("group")
    create_topic(b.bootstrap, topic, partitions=4)

    c1 = consumer(b.bootstrap, group, **GROUP_CONF)
    c2 = consumer(b.bootstrap, group, **GROUP_CONF)
    members = {"c1": c1, "c2": c2}
    got: dict = {}
    try:
        c1.subscribe([topic])
        c2.subscribe([topic])

        # 1. the two members split the four partitions between them
        _poll_until(members, lambda: len(_assigned(c1)) == 2 and len(_assigned(c2)) == 2,
                    60, got, "both members to get two partitions")
        assert _assigned(c1) | _assigned(c2) == {0, 1, 2, 3}
        assert not _assigned(c1) & _assigned(c2)

        # records written once the group is stable: before that, the first member to
        # join briefly owned everything (as in Kafka), and uncommitted reads repeat
        _produce(b.bootstrap, topic, 4, 10, "a")  # 40 records, 10 per partition
        _poll_until(members, lambda: sum(len(v) for v in got.values()) >= 40, 30, got,
                    "all 40 records")
        _poll_all(members, 0.5, got)
        for name, msgs in got.items():
            parts = {m.partition() for m in msgs}
            assert parts <= _assigned(members[name]), f"{name} read a partition it does not own"
        values = sorted(m.value() for msgs in got.values() for m in msgs)
        assert values == sorted(f"a-{p}-{i}".encode() for p in range(4) for i in range(10)), \
            "each record must be delivered to exactly one member"

        # ListGroups / DescribeGroups see a stable group of two
        a = admin(b.bootstrap)
        listed = a.list_consumer_groups(request_timeout=10).result(timeout=15)
        assert group in {g.group_id for g in listed.valid}
        desc = a.describe_consumer_groups([group], request_timeout=10)[group].result(timeout=15)
        assert desc.state == ConsumerGroupState.STABLE
        assert len(desc.members) == 2
        described = {tp.partition for m in desc.members
                     for tp in m.assignment.topic_partitions}
        assert described == {0, 1, 2, 3}

        c1.commit(asynchronous=False)
        c2.commit(asynchronous=False)

        # 2. a member leaves; the other takes over every partition
        c2.close()
        del members["c2"]
        _poll_until(members, lambda: _assigned(c1) == {0, 1, 2, 3}, 30, got,
                    "the remaining member to own all four partitions")

        got.clear()
        _produce(b.bootstrap, topic, 4, 5, "b")  # 20 more
        _poll_until(members, lambda: len(got.get("c1", [])) >= 20, 30, got, "20 new records")
        _poll_all(members, 0.5, got)
        assert sorted(m.value() for m in got["c1"]) == \
            sorted(f"b-{p}-{i}".encode() for p in range(4) for i in range(5)), \
            "the remaining member must resume from the departed member's commits"
        c1.commit(asynchronous=False)
        committed = c1.committed([TopicPartition(topic, p) for p in range(4)], timeout=10)
        assert {tp.partition: tp.offset for tp in committed} == {p: 15 for p in range(4)}
    finally:
        for c in members.values():
            c.close()

    # 3. the commits are durable: restart the broker and resume the group
    if restart == "sigterm":
        b.restart(clean=True)
    else:
        b.restart(clean=False)
    _produce(b.bootstrap, topic, 4, 2, "c")  # 8 more after the restart

    c3 = consumer(b.bootstrap, group, **GROUP_CONF)
    got = {}
    try:
        committed = c3.committed([TopicPartition(topic, p) for p in range(4)], timeout=15)
        assert {tp.partition: tp.offset for tp in committed} == {p: 15 for p in range(4)}
        c3.subscribe([topic])
        _poll_until({"c3": c3}, lambda: len(got.get("c3", [])) >= 8, 60, got, "8 records")
        _poll_all({"c3": c3}, 1.0, got)
        assert sorted(m.value() for m in got["c3"]) == \
            sorted(f"c-{p}-{i}".encode() for p in range(4) for i in range(2)), \
            "a new member must start right after the committed offsets"
        assert all(m.offset() >= 15 for m in got["c3"])
    finally:
        c3.close()


def test_committed_offset_and_metadata_round_trip(group_broker):
    b = group_broker
    topic = unique("commit")
    group = unique("group")
    create_topic(b.bootstrap, topic, partitions=2)
    c = consumer(b.bootstrap, group)
    try:
        c.commit(offsets=[TopicPartition(topic, 0, 7), TopicPartition(topic, 1, 3)],
                 asynchronous=False)
        got = c.committed([TopicPartition(topic, 0), TopicPartition(topic, 1)], timeout=10)
        assert [(tp.partition, tp.offset) for tp in got] == [(0, 7), (1, 3)]
        # overwriting moves the offset (even backwards, as Kafka allows)
        c.commit(offsets=[TopicPartition(topic, 0, 2)], asynchronous=False)
        got = c.committed([TopicPartition(topic, 0)], timeout=10)
        assert got[0].offset == 2
    finally:
        c.close()
    other = consumer(b.bootstrap, unique("other"))
    try:
        got = other.committed([TopicPartition(topic, 0)], timeout=10)
        assert got[0].offset < 0, "an unrelated group has no committed offset"
    finally:
        other.close()


_MEMBER_SCRIPT = r"""
import sys, time
from confluent_kafka import Consumer
bootstrap, group, topic = sys.argv[1:4]
c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "session.timeout.ms": 6000,
              "heartbeat.interval.ms": 300, "partition.assignment.strategy": "range",
              "auto.offset.reset": "earliest", "enable.auto.commit": False})
c.subscribe([topic])
announced = False
while True:
    c.poll(0.1)
    if c.assignment() and not announced:
        print("assigned", ",".join(str(tp.partition) for tp in c.assignment()), flush=True)
        announced = True
"""


def test_member_killed_without_leaving_is_evicted_after_session_timeout(group_broker):
    b = group_broker
    topic = unique("evict")
    group = unique("group")
    create_topic(b.bootstrap, topic, partitions=2)
    c1 = consumer(b.bootstrap, group, **GROUP_CONF)
    other = subprocess.Popen([sys.executable, "-c", _MEMBER_SCRIPT, b.bootstrap, group, topic],
                             stdout=subprocess.PIPE, text=True)
    got: dict = {}
    try:
        c1.subscribe([topic])
        _poll_until({"c1": c1}, lambda: len(_assigned(c1)) == 1, 60, got,
                    "c1 to share the topic with the other process")
        # the other member dies without LeaveGroup: no more heartbeats
        other.kill()
        other.wait()
        t0 = time.monotonic()
        _poll_until({"c1": c1}, lambda: _assigned(c1) == {0, 1}, 40, got,
                    "c1 to own both partitions after the session timeout")
        assert time.monotonic() - t0 < 30
    finally:
        if other.poll() is None:
            other.kill()
            other.wait()
        c1.close()
