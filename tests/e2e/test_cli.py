"""The console tools in the `sediment` binary, driven as a user would, checked with librdkafka."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import KafkaException, TopicPartition

from conftest import run_cli
from helpers import (admin, consume_partition, consumer, create_topic, flush_all, producer,
                     topic_configs, topic_names, unique, wait_for)


@pytest.mark.parametrize("args", [
    [], ["serve"], ["topic"], ["topic", "create"], ["topic", "list"], ["topic", "describe"],
    ["topic", "delete"], ["produce"], ["consume"], ["group"], ["group", "list"],
    ["group", "describe"], ["group", "reset"],
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


# --- sediment group ------------------------------------------------------------------

def _table(lines: list[str]) -> list[dict]:
    """Rows of a space-aligned table (header first) as {column: cell}."""
    header = lines[0].split()
    rows = []
    for line in lines[1:]:
        cells = line.split()
        assert len(cells) == len(header), f"row {line!r} does not match header {header}"
        rows.append(dict(zip(header, cells)))
    return rows


def _describe(broker, group) -> tuple[str, dict]:
    """`group describe`: (state, {(topic, partition): row})."""
    p = broker.cli("group", "describe", group)
    lines = p.stdout.splitlines()
    blank = lines.index("")
    # state table: GROUP  COORDINATOR (ID)  ASSIGNMENT-STRATEGY  STATE  #MEMBERS
    assert lines[0].split()[0] == "GROUP" and "STATE" in lines[0], p.stdout
    state = lines[1].split()[-2]
    rows = _table(lines[blank + 1:])
    return state, {(r["TOPIC"], int(r["PARTITION"])): r for r in rows}


def _plan(stdout: str) -> dict:
    """`group reset` output: {(topic, partition): (current, new)}."""
    rows = _table(stdout.splitlines())
    return {(r["TOPIC"], int(r["PARTITION"])): (r["CURRENT-OFFSET"], int(r["NEW-OFFSET"]))
            for r in rows}


def _committed(bootstrap, group, topic, partitions) -> dict:
    """Committed offsets as librdkafka's committed() sees them (-1001: none)."""
    c = consumer(bootstrap, group)
    try:
        tps = c.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
        return {tp.partition: tp.offset for tp in tps}
    finally:
        c.close()


def _rfc3339(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


def _fill_timed(bootstrap, topic, partitions, n, ts0):
    """n records per partition; record i has timestamp ts0 + 1000 * i."""
    p = producer(bootstrap, **{"linger.ms": 0})
    for part in range(partitions):
        for i in range(n):
            p.produce(topic, value=b"p%d-m%d" % (part, i), partition=part, timestamp=ts0 + 1000 * i)
    flush_all(p)


def _join(bootstrap, group, topic, partitions):
    """A subscribed consumer, returned once it owns all `partitions` (the group is active)."""
    c = consumer(bootstrap, group, **{"session.timeout.ms": 6000,
                                      "heartbeat.interval.ms": 300})
    c.subscribe([topic])
    msgs = []

    def assigned():
        for m in c.consume(num_messages=100, timeout=0.2):
            if m.error():
                raise KafkaException(m.error())
            msgs.append(m)
        return len(c.assignment()) == partitions
    wait_for(assigned, 30, f"{group} to be assigned {topic}")
    return c, msgs


def test_group_reset_to_time_dry_run_then_execute(group_broker):
    b = group_broker
    topic, group = unique("cli-reset"), unique("cli-reset-g")
    create_topic(b.bootstrap, topic, partitions=2)
    ts0 = int(time.time() * 1000) - 3_600_000  # an hour ago: well within retention
    _fill_timed(b.bootstrap, topic, 2, 10, ts0)

    # a real consumer group reads everything, commits 8 and 9, and leaves
    c, _ = _join(b.bootstrap, group, topic, 2)
    c.commit(offsets=[TopicPartition(topic, 0, 8), TopicPartition(topic, 1, 9)],
             asynchronous=False)
    c.close()
    assert group in b.cli("group", "list").stdout.splitlines()
    state, rows = _describe(b, group)
    assert state == "Empty"
    assert {k: (r["CURRENT-OFFSET"], r["LOG-END-OFFSET"], r["LAG"]) for k, r in rows.items()} == {
        (topic, 0): ("8", "10", "2"), (topic, 1): ("9", "10", "1")}

    # between records 4 and 5: the first record at or after it is offset 5
    when = _rfc3339(ts0 + 4500)
    dry = b.cli("group", "reset", group, "--topic", topic, "--to-time", when)
    assert _plan(dry.stdout) == {(topic, 0): ("8", 5), (topic, 1): ("9", 5)}
    assert "--execute" in dry.stderr, "a dry run says how to apply it"
    assert _committed(b.bootstrap, group, topic, [0, 1]) == {0: 8, 1: 9}, \
        "a dry run must not commit"
    assert {k: r["CURRENT-OFFSET"] for k, r in _describe(b, group)[1].items()} == {
        (topic, 0): "8", (topic, 1): "9"}

    done = b.cli("group", "reset", group, "--topic", topic, "--to-time", when, "--execute")
    assert _plan(done.stdout) == {(topic, 0): ("8", 5), (topic, 1): ("9", 5)}
    assert _committed(b.bootstrap, group, topic, [0, 1]) == {0: 5, 1: 5}
    state, rows = _describe(b, group)
    assert state == "Empty"
    assert {k: (r["CURRENT-OFFSET"], r["LAG"]) for k, r in rows.items()} == {
        (topic, 0): ("5", "5"), (topic, 1): ("5", "5")}

    # epoch milliseconds, one partition only, exactly on a record's timestamp
    b.cli("group", "reset", group, "--topic", f"{topic}:1", "--to-time", str(ts0 + 2000),
          "--execute")
    assert _committed(b.bootstrap, group, topic, [0, 1]) == {0: 5, 1: 2}
    # later than every record: the log end offset, as Kafka does
    b.cli("group", "reset", group, "--all-topics", "--to-time", str(ts0 + 60_000), "--execute")
    assert _committed(b.bootstrap, group, topic, [0, 1]) == {0: 10, 1: 10}

    # the group's consumers resume from the reset offsets
    b.cli("group", "reset", group, "--topic", topic, "--to-time", when, "--execute")
    c, msgs = _join(b.bootstrap, group, topic, 2)
    try:
        wait_for(lambda: msgs.extend(m for m in c.consume(num_messages=100, timeout=0.2)
                                     if not m.error()) or len(msgs) >= 10, 30, "10 messages")
        assert sorted((m.partition(), m.offset()) for m in msgs) == \
            [(p, o) for p in (0, 1) for o in range(5, 10)]
    finally:
        c.close()


def test_group_reset_is_refused_while_the_group_has_members(group_broker):
    b = group_broker
    topic, group = unique("cli-active"), unique("cli-active-g")
    create_topic(b.bootstrap, topic, partitions=1)
    _fill_timed(b.bootstrap, topic, 1, 6, int(time.time() * 1000) - 60_000)
    c, _ = _join(b.bootstrap, group, topic, 1)
    try:
        c.commit(offsets=[TopicPartition(topic, 0, 4)], asynchronous=False)
        state, rows = _describe(b, group)
        assert state == "Stable"
        assert rows[(topic, 0)]["CONSUMER-ID"] != "-", "describe shows who owns the partition"
        for extra in ([], ["--execute"]):
            p = b.cli("group", "reset", group, "--topic", topic, "--to-earliest", *extra,
                      check=False)
            assert p.returncode != 0
            assert p.stdout == "", "a refused reset prints no plan"
            assert "stop its consumers" in p.stderr and "Stable" in p.stderr, p.stderr
        assert _committed(b.bootstrap, group, topic, [0]) == {0: 4}
    finally:
        c.close()
    # once the consumer has left, the same reset goes through
    wait_for(lambda: _describe(b, group)[0] == "Empty", 30, "the group to be empty")
    b.cli("group", "reset", group, "--topic", topic, "--to-earliest", "--execute")
    assert _committed(b.bootstrap, group, topic, [0]) == {0: 0}


def test_group_reset_earliest_latest_offset_and_shift_by(group_broker):
    b = group_broker
    topic, other, group = unique("cli-shift"), unique("cli-shift2"), unique("cli-shift-g")
    create_topic(b.bootstrap, topic, partitions=1)
    create_topic(b.bootstrap, other, partitions=1)
    _fill_timed(b.bootstrap, topic, 1, 10, int(time.time() * 1000) - 60_000)
    _fill_timed(b.bootstrap, other, 1, 3, int(time.time() * 1000) - 60_000)
    # offsets committed by a consumer that never joins the group (simple commit)
    c = consumer(b.bootstrap, group)
    c.commit(offsets=[TopicPartition(topic, 0, 4), TopicPartition(other, 0, 1)],
             asynchronous=False)
    c.close()
    state, rows = _describe(b, group)
    assert state == "Empty"
    assert (rows[(topic, 0)]["LOG-END-OFFSET"], rows[(topic, 0)]["LAG"]) == ("10", "6")
    assert (rows[(other, 0)]["LOG-END-OFFSET"], rows[(other, 0)]["LAG"]) == ("3", "2")

    def reset(*args):
        return _plan(b.cli("group", "reset", group, *args, "--execute").stdout)

    assert reset("--topic", topic, "--shift-by", "-3") == {(topic, 0): ("4", 1)}
    assert reset("--topic", topic, "--shift-by=2") == {(topic, 0): ("1", 3)}
    # past either end: clamped to the log
    assert reset("--topic", topic, "--shift-by", "100") == {(topic, 0): ("3", 10)}
    assert reset("--topic", topic, "--shift-by", "-100") == {(topic, 0): ("10", 0)}
    assert reset("--topic", topic, "--to-offset", "7") == {(topic, 0): ("0", 7)}
    assert reset("--topic", topic, "--to-offset", "70") == {(topic, 0): ("7", 10)}
    assert reset("--topic", topic, "--to-earliest") == {(topic, 0): ("10", 0)}
    assert _committed(b.bootstrap, group, topic, [0]) == {0: 0}
    # --all-topics: every partition with a committed offset
    assert reset("--all-topics", "--to-latest") == {(topic, 0): ("0", 10), (other, 0): ("1", 3)}
    assert _committed(b.bootstrap, group, topic, [0]) == {0: 10}
    assert _committed(b.bootstrap, group, other, [0]) == {0: 3}
    state, rows = _describe(b, group)
    assert {k: r["LAG"] for k, r in rows.items()} == {(topic, 0): "0", (other, 0): "0"}


def test_group_commands_fail_clearly(group_broker):
    b = group_broker
    topic, group = unique("cli-gerr"), unique("cli-gerr-g")
    create_topic(b.bootstrap, topic, partitions=2)
    missing = b.cli("group", "describe", group, check=False)
    assert missing.returncode != 0 and missing.stdout == ""
    assert "does not exist" in missing.stderr
    cases = [
        # no target / two targets / no scope
        ["--topic", topic],
        ["--topic", topic, "--to-earliest", "--to-latest"],
        ["--to-earliest"],
        # a partition the topic does not have, an unknown topic
        ["--topic", f"{topic}:5", "--to-earliest"],
        ["--topic", unique("nope"), "--to-earliest"],
        # shifting a partition with no committed offset
        ["--topic", topic, "--shift-by", "1"],
        # --all-topics for a group without offsets
        ["--all-topics", "--to-earliest"],
    ]
    for args in cases:
        p = b.cli("group", "reset", group, *args, "--execute", check=False)
        assert p.returncode != 0, args
        assert p.stdout == "" and p.stderr.strip(), args
    assert _committed(b.bootstrap, group, topic, [0, 1]) == {0: -1001, 1: -1001}
