"""Client-side helpers shared by the end-to-end tests (confluent-kafka based)."""

from __future__ import annotations

import time
import uuid
from typing import Callable, Optional

from confluent_kafka import (OFFSET_BEGINNING, Consumer, KafkaError, KafkaException,
                             Producer, TopicPartition)
from confluent_kafka.admin import AdminClient, NewTopic


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def admin(bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap})


def create_topic(bootstrap: str, name: str, partitions: int = 1,
                 config: Optional[dict] = None, timeout: float = 30) -> None:
    """Create a topic with the Admin API and wait until metadata shows all its partitions."""
    a = admin(bootstrap)  # keep the client alive until the future resolves
    fs = a.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1, config=config or {})],
        operation_timeout=timeout, request_timeout=timeout)
    fs[name].result(timeout=timeout)
    wait_for_partitions(bootstrap, name, partitions, timeout)


def create_topic_error(bootstrap: str, topic: NewTopic, timeout: float = 30) -> int:
    """Create a topic that must fail; returns the Kafka error code."""
    a = admin(bootstrap)
    fs = a.create_topics([topic], operation_timeout=10, request_timeout=timeout)
    try:
        fs[topic.topic].result(timeout=timeout)
    except KafkaException as e:
        return error_code(e)
    raise AssertionError(f"creating {topic.topic} with {topic.config} succeeded")


def delete_topic(bootstrap: str, name: str, timeout: float = 30) -> None:
    a = admin(bootstrap)
    a.delete_topics([name], operation_timeout=10, request_timeout=timeout)[name].result(
        timeout=timeout)


def topic_configs(bootstrap: str, name: str, timeout: float = 30) -> dict:
    """DescribeConfigs for a topic: {config name: value}."""
    from confluent_kafka.admin import ConfigResource, ResourceType
    a = admin(bootstrap)
    res = ConfigResource(ResourceType.TOPIC, name)
    cfg = a.describe_configs([res], request_timeout=timeout)[res].result(timeout=timeout)
    return {k: v.value for k, v in cfg.items()}


def wait_for_partitions(bootstrap: str, name: str, partitions: int, timeout: float = 30) -> None:
    a = admin(bootstrap)
    deadline = time.monotonic() + timeout
    while True:
        md = a.list_topics(topic=name, timeout=10)
        t = md.topics.get(name)
        if t is not None and t.error is None and len(t.partitions) == partitions:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"topic {name} not visible with {partitions} partitions: {t}")
        time.sleep(0.1)


def topic_names(bootstrap: str) -> set[str]:
    a = admin(bootstrap)
    return {n for n in a.list_topics(timeout=10).topics if not n.startswith("__")}


class Acks:
    """Collects delivery reports: (partition, offset, key, value) for each success."""

    def __init__(self):
        self.ok: list = []
        self.errors: list = []

    def __call__(self, err, msg):
        if err is not None:
            self.errors.append((err, msg.key(), msg.value()))
        else:
            self.ok.append((msg.partition(), msg.offset(), msg.key(), msg.value()))


def producer(bootstrap: str, **conf) -> Producer:
    base = {"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5,
            "message.timeout.ms": 30000}
    base.update(conf)
    return Producer(base)


def flush_all(p: Producer, timeout: float = 30) -> None:
    remaining = p.flush(timeout)
    assert remaining == 0, f"{remaining} messages still undelivered after {timeout}s"


def consumer(bootstrap: str, group: Optional[str] = None, **conf) -> Consumer:
    base = {"bootstrap.servers": bootstrap, "group.id": group or unique("g"),
            "auto.offset.reset": "earliest", "enable.auto.commit": False,
            "enable.partition.eof": False}
    base.update(conf)
    return Consumer(base)


def consume_partition(bootstrap: str, topic: str, partition: int, count: int,
                      start=OFFSET_BEGINNING, timeout: float = 30, **conf) -> list:
    """Read exactly `count` messages from one partition by assignment (no group protocol)."""
    c = consumer(bootstrap, **conf)
    try:
        c.assign([TopicPartition(topic, partition, start)])
        out: list = []
        deadline = time.monotonic() + timeout
        while len(out) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"got {len(out)} of {count} messages from {topic}/{partition}")
            for m in c.consume(num_messages=min(1000, count - len(out)), timeout=0.5):
                if m.error():
                    raise KafkaException(m.error())
                out.append(m)
        # nothing beyond what we expected shows up
        extra = c.consume(num_messages=10, timeout=0.5)
        assert not [m for m in extra if not m.error()], "more messages than expected"
        return out
    finally:
        c.close()


def consume_to_end(bootstrap: str, topic: str, partition: int, timeout: float = 60) -> list:
    """All messages from the log start offset up to the high watermark at call time."""
    c = consumer(bootstrap)
    try:
        lo, hi = c.get_watermark_offsets(TopicPartition(topic, partition), timeout=10, cached=False)
        if hi <= lo:
            return []
        c.assign([TopicPartition(topic, partition, lo)])
        out: list = []
        deadline = time.monotonic() + timeout
        while not out or out[-1].offset() < hi - 1:
            if time.monotonic() > deadline:
                last = out[-1].offset() if out else None
                raise AssertionError(f"{topic}/{partition}: stuck at {last}, high watermark {hi}")
            for m in c.consume(num_messages=5000, timeout=0.5):
                if m.error():
                    raise KafkaException(m.error())
                out.append(m)
        return out
    finally:
        c.close()


def watermarks(bootstrap: str, topic: str, partition: int) -> tuple[int, int]:
    c = consumer(bootstrap)
    try:
        return c.get_watermark_offsets(TopicPartition(topic, partition), timeout=10, cached=False)
    finally:
        c.close()


def wait_for(pred: Callable, timeout: float, what: str,
             status: Callable[[], str] = lambda: "", interval: float = 0.1):
    """Poll `pred` until it returns something true; on timeout say what was last seen."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; {status()}")
        time.sleep(interval)


def error_code(exc: BaseException) -> int:
    """The Kafka error code inside a KafkaException from a future."""
    assert isinstance(exc, KafkaException), exc
    err: KafkaError = exc.args[0]
    return err.code()


# --- the Java client's default partitioner ----------------------------------

def murmur2(data: bytes) -> int:
    """org.apache.kafka.common.utils.Utils.murmur2, returning a signed 32-bit int."""
    length = len(data)
    seed = 0x9747B28C
    m = 0x5BD1E995
    r = 24
    h = (seed ^ length) & 0xFFFFFFFF
    length4 = length // 4
    for i in range(length4):
        i4 = i * 4
        k = (data[i4] & 0xFF) + ((data[i4 + 1] & 0xFF) << 8) + ((data[i4 + 2] & 0xFF) << 16) \
            + ((data[i4 + 3] & 0xFF) << 24)
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    extra = length % 4
    idx = length & ~3
    if extra == 3:
        h ^= (data[idx + 2] & 0xFF) << 16
    if extra >= 2:
        h ^= (data[idx + 1] & 0xFF) << 8
    if extra >= 1:
        h ^= data[idx] & 0xFF
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def java_partition(key: bytes, partitions: int) -> int:
    """Utils.toPositive(Utils.murmur2(key)) % numPartitions, as the Java producer does."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


# --- the broker's files ---------------------------------------------------------

def partition_dir(data_dir, topic: str, partition: int):
    """<data-dir>/topics/<topic>/<partition>: where a partition's segments live.

    Also accepts a topic directory named <topic>-<id>, should the layout gain the
    topic id; exactly one directory must match."""
    import re
    from pathlib import Path
    topics = Path(data_dir) / "topics"
    dirs = [d for d in topics.iterdir() if d.is_dir() and (
        d.name == topic
        or re.fullmatch(re.escape(topic) + r"-[0-9a-fA-F-]{16,}", d.name))]
    assert len(dirs) == 1, \
        f"expected one directory for topic {topic} under {topics}, found {[d.name for d in dirs]}"
    return dirs[0] / str(partition)


def local_segments(data_dir, topic: str, partition: int) -> list[int]:
    """Base offsets of the partition's local segments (<20-digit base>.log), ascending."""
    d = partition_dir(data_dir, topic, partition)
    return sorted(int(f.stem) for f in d.glob("*.log") if f.stem.isdigit())
