"""The console tools in the `sediment` binary, driven as a user would, checked with librdkafka."""

from __future__ import annotations

import pytest
from confluent_kafka import TopicPartition

from conftest import run_cli
from helpers import (admin, consume_partition, consumer, create_topic, flush_all, producer,
                     topic_configs, topic_names, unique)


@pytest.mark.parametrize("args", [
    [], ["serve"], ["topic"], ["topic", "create"], ["topic", "list"], ["topic", "describe"],
    ["topic", "delete"], ["produce"], ["consume"],
])
def test_every_command_has_help(args):
    p = run_cli(*args, "--help", timeout=20)
    assert p.returncode == 0
    assert "Usage" in p.stdout or "usage" in p.stdout


def test_topic_create_list_describe_delete(broker):
    topic = unique("cli-topic")
    broker.cli("topic", "create", topic, "--partitions", "3",
               "--config", "retention.ms=3600000", "--config", "segment.bytes=1048576")
    # visible to a real client with the partition count and configs asked for
    a = admin(broker.bootstrap)
    md = a.list_topics(topic=topic, timeout=10)
    assert len(md.topics[topic].partitions) == 3
    cfg = topic_configs(broker.bootstrap, topic)
    assert cfg["retention.ms"] == "3600000"
    assert cfg["segment.bytes"] == "1048576"

    listed = broker.cli("topic", "list").stdout.split()
    assert topic in listed

    described = broker.cli("topic", "describe", topic).stdout
    assert topic in described
    assert "retention.ms" in described and "3600000" in described
    assert "3" in described  # partition count

    again = broker.cli("topic", "create", topic, "--partitions", "1", check=False)
    assert again.returncode != 0, "creating an existing topic must fail"
    assert "exist" in (again.stderr + again.stdout).lower()

    broker.cli("topic", "delete", topic)
    assert topic not in broker.cli("topic", "list").stdout.split()
    assert topic not in topic_names(broker.bootstrap)

    missing = broker.cli("topic", "describe", topic, check=False)
    assert missing.returncode != 0
    gone = broker.cli("topic", "delete", topic, check=False)
    assert gone.returncode != 0


def test_topic_create_rejects_compact_cleanup_policy(broker):
    topic = unique("cli-compact")
    p = broker.cli("topic", "create", topic, "--partitions", "1",
                   "--config", "cleanup.policy=compact", check=False)
    assert p.returncode != 0
    assert "cleanup.policy" in (p.stderr + p.stdout)
    assert topic not in topic_names(broker.bootstrap)


def test_produce_reads_lines_and_splits_keys(broker):
    topic = unique("cli-produce")
    create_topic(broker.bootstrap, topic, partitions=1)
    lines = "".join(f"key{i}\tvalue {i}\n" for i in range(20))
    broker.cli("produce", topic, "--key-separator", "\t", input=lines)
    msgs = consume_partition(broker.bootstrap, topic, 0, 20)
    assert [(m.key(), m.value()) for m in msgs] == \
        [(f"key{i}".encode(), f"value {i}".encode()) for i in range(20)]

    # without a separator the whole line is the value and there is no key
    broker.cli("produce", topic, input="plain one\nplain two\n")
    msgs = consume_partition(broker.bootstrap, topic, 0, 2, start=20)
    assert [(m.key(), m.value()) for m in msgs] == [(None, b"plain one"), (None, b"plain two")]


def test_produce_to_a_chosen_partition_with_compression(broker):
    topic = unique("cli-part")
    create_topic(broker.bootstrap, topic, partitions=3)
    broker.cli("produce", topic, "--partition", "2", "--compression", "zstd",
               input="a\nb\nc\n")
    msgs = consume_partition(broker.bootstrap, topic, 2, 3)
    assert [m.value() for m in msgs] == [b"a", b"b", b"c"]


def test_produce_to_a_missing_topic_fails_clearly(broker):
    p = broker.cli("produce", unique("cli-nope"), input="x\n", check=False, timeout=60)
    assert p.returncode != 0
    assert p.stderr.strip(), "a failure must say why on stderr"


def _fill(broker, topic, n, ts0=None):
    p = producer(broker.bootstrap, **{"linger.ms": 0})
    for i in range(n):
        kw = {"timestamp": ts0 + 1000 * i} if ts0 is not None else {}
        p.produce(topic, key=b"k%d" % i, value=b"m%d" % i, partition=0, **kw)
        if i % 4 == 3:
            p.flush(10)
    flush_all(p)


def test_consume_from_beginning_offset_and_max(broker):
    topic = unique("cli-consume")
    create_topic(broker.bootstrap, topic, partitions=1)
    _fill(broker, topic, 12)
    out = broker.cli("consume", topic, "--from-beginning", "--max", "12",
                     "--timeout-ms", "10000").stdout
    assert out.splitlines() == [f"m{i}" for i in range(12)]

    out = broker.cli("consume", topic, "--from-beginning", "--max", "3",
                     "--timeout-ms", "10000").stdout
    assert out.splitlines() == ["m0", "m1", "m2"]

    out = broker.cli("consume", topic, "--partition", "0", "--offset", "9", "--max", "2",
                     "--timeout-ms", "10000").stdout
    assert out.splitlines() == ["m9", "m10"]

    out = broker.cli("consume", topic, "--from-beginning", "--max", "2", "--print-key",
                     "--timeout-ms", "10000").stdout.splitlines()
    assert len(out) == 2
    assert "k0" in out[0] and "m0" in out[0]
    assert "k1" in out[1] and "m1" in out[1]


def test_consume_without_max_stops_at_timeout_with_what_exists(broker):
    topic = unique("cli-timeout")
    create_topic(broker.bootstrap, topic, partitions=1)
    _fill(broker, topic, 5)
    p = broker.cli("consume", topic, "--from-beginning", "--timeout-ms", "2000", check=False,
                   timeout=60)
    assert p.stdout.splitlines() == [f"m{i}" for i in range(5)]


def test_consume_from_time(broker):
    topic = unique("cli-time")
    create_topic(broker.bootstrap, topic, partitions=1)
    ts0 = 1_700_000_000_000
    _fill(broker, topic, 10, ts0=ts0)
    out = broker.cli("consume", topic, "--from-time", str(ts0 + 6000), "--max", "3",
                     "--timeout-ms", "10000").stdout
    assert out.splitlines() == ["m6", "m7", "m8"]
    # between two records: starts at the next one
    out = broker.cli("consume", topic, "--from-time", str(ts0 + 2500), "--max", "1",
                     "--timeout-ms", "10000").stdout
    assert out.splitlines() == ["m3"]


def test_consume_with_group_commits_and_resumes(broker):
    topic = unique("cli-group")
    group = unique("cli-g")
    create_topic(broker.bootstrap, topic, partitions=1)
    _fill(broker, topic, 10)
    out = broker.cli("consume", topic, "--group", group, "--from-beginning", "--max", "4",
                     "--timeout-ms", "20000", timeout=90).stdout
    assert out.splitlines() == ["m0", "m1", "m2", "m3"]
    c = consumer(broker.bootstrap, group)
    try:
        committed = c.committed([TopicPartition(topic, 0)], timeout=10)
        assert committed[0].offset == 4, "the console consumer must commit what it printed"
    finally:
        c.close()
    out = broker.cli("consume", topic, "--group", group, "--max", "4",
                     "--timeout-ms", "20000", timeout=90).stdout
    assert out.splitlines() == ["m4", "m5", "m6", "m7"]


def test_cli_reports_an_unreachable_broker():
    from conftest import free_port
    p = run_cli("--bootstrap-server", f"127.0.0.1:{free_port()}", "topic", "list",
                check=False, timeout=120)
    assert p.returncode != 0
    assert p.stderr.strip()
