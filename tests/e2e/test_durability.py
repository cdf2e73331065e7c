"""Durability: kill -9 under acks=all load loses nothing acknowledged; clean restarts are fast.

The crash test runs several rounds against one data directory. In each round
producer threads (each its own librdkafka client, acks=all) write as fast as
they can while the broker is killed with SIGKILL at a random moment. A record
counts as acknowledged only when its delivery report says so, with an offset.
After every restart each partition must read back as offsets 0..HW-1 with no
gap, and every acknowledged record must sit at the offset it was acked at.
"""

from __future__ import annotations

import os
import random
import threading
import time

from helpers import (Acks, admin, consume_partition, consume_to_end, create_topic, delete_topic,
                     flush_all, producer, topic_configs, topic_names, unique, watermarks)

CRASH_ROUNDS = int(os.environ.get("SEDIMENT_CRASH_ROUNDS", "8"))
PARTITIONS = 3
THREADS = 3


class LoadThread(threading.Thread):
    def __init__(self, bootstrap, topic, round_no, thread_no):
        super().__init__(daemon=True)
        self.stop_flag = threading.Event()
        self.acked: list = []  # (partition, offset, value)
        self.failed = 0
        self.sent = 0
        self.tag = f"r{round_no}-t{thread_no}"
        self.topic = topic
        self.p = producer(bootstrap, **{
            "acks": "all", "linger.ms": 2, "batch.num.messages": 200,
            "message.timeout.ms": 120000, "retries": 1000000,
            "retry.backoff.ms": 100, "reconnect.backoff.ms": 50,
            "reconnect.backoff.max.ms": 500,
        })

    def _report(self, err, msg):
        if err is None:
            self.acked.append((msg.partition(), msg.offset(), msg.value()))
        else:
            self.failed += 1

    def run(self):
        i = 0
        while not self.stop_flag.is_set():
            value = f"{self.tag}-{i}".encode()
            try:
                self.p.produce(self.topic, value=value, key=value, partition=i % PARTITIONS,
                               on_delivery=self._report)
                self.sent += 1
                i += 1
            except BufferError:
                self.p.poll(0.01)
                continue
            if i % 100 == 0:
                self.p.poll(0)
        self.p.poll(0)

    def finish(self):
        """After the crash: drop what is in flight and collect every report that arrived."""
        self.stop_flag.set()
        self.join(30)
        self.p.purge(in_queue=True, in_flight=True, blocking=False)
        self.p.flush(10)
        self.p = None  # destroy the client now, not whenever the GC gets to it


def _verify_log(bootstrap, topic, acked_by_partition):
    for part in range(PARTITIONS):
        lo, hi = watermarks(bootstrap, topic, part)
        assert lo == 0, f"partition {part}: log start moved to {lo}"
        msgs = consume_to_end(bootstrap, topic, part, timeout=120)
        offsets = [m.offset() for m in msgs]
        assert offsets == list(range(hi)), \
            f"partition {part}: offsets not contiguous 0..{hi - 1} (first gap near " \
            f"{next((i for i, o in enumerate(offsets) if o != i), None)})"
        log = [m.value() for m in msgs]
        for off, value in acked_by_partition[part].items():
            assert off < hi, f"partition {part}: acked offset {off} is past the end {hi}"
            assert log[off] == value, \
                f"partition {part}: acked {value!r} at {off} but log has {log[off]!r}"
        # records from one producer thread are in send order within a partition
        last = {}
        for v in log:
            tag, _, seq = v.decode().rpartition("-")
            assert int(seq) > last.get(tag, -1), f"partition {part}: {v!r} out of order"
            last[tag] = int(seq)


def test_kill9_under_acks_all_load_never_loses_acknowledged_records(broker):
    topic = unique("crash")
    # small segments, so crashes also land during segment rolls
    create_topic(broker.bootstrap, topic, partitions=PARTITIONS,
                 config={"segment.bytes": str(256 * 1024)})
    rng = random.Random(int(os.environ.get("SEDIMENT_CRASH_SEED", "20240611")))
    acked_by_partition = {p: {} for p in range(PARTITIONS)}
    total_acked = 0
    for round_no in range(CRASH_ROUNDS):
        threads = [LoadThread(broker.bootstrap, topic, round_no, t) for t in range(THREADS)]
        for t in threads:
            t.start()
        # let some acknowledgements arrive, then crash at a random moment
        deadline = time.monotonic() + 30
        while sum(len(t.acked) for t in threads) < 500:
            assert time.monotonic() < deadline, "no acknowledgements within 30 s"
            for t in threads:
                t.p.poll(0)
            time.sleep(0.02)
        time.sleep(rng.uniform(0.2, 1.5))
        broker.kill9()
        for t in threads:
            t.finish()
        round_acked = 0
        for t in threads:
            for part, off, value in t.acked:
                assert off >= 0
                prev = acked_by_partition[part].get(off)
                assert prev is None or prev == value, \
                    f"offset {part}/{off} acknowledged twice: {prev!r} and {value!r}"
                acked_by_partition[part][off] = value
                round_acked += 1
        total_acked += round_acked
        assert round_acked > 0
        print(f"round {round_no}: {round_acked} acknowledged, "
              f"{sum(t.failed for t in threads)} not")

        broker.start()
        _verify_log(broker.bootstrap, topic, acked_by_partition)
    assert total_acked > 0


def test_idempotent_producer_rides_through_kill9_without_duplicates_or_loss(broker):
    """librdkafka retries in-flight batches after the broker comes back; the broker must
    recognise the ones it had already written (producer state rebuilt from the log)."""
    topic = unique("idem-crash")
    create_topic(broker.bootstrap, topic, partitions=2)
    acks = Acks()
    p = producer(broker.bootstrap, **{
        "enable.idempotence": True, "linger.ms": 2, "batch.num.messages": 100,
        "message.timeout.ms": 120000, "retry.backoff.ms": 100,
        "reconnect.backoff.ms": 50, "reconnect.backoff.max.ms": 500,
    })
    stop = threading.Event()
    sent = [0]

    def run():
        i = 0
        while not stop.is_set():
            try:
                p.produce(topic, value=b"%d" % i, partition=i % 2, on_delivery=acks)
                i += 1
            except BufferError:
                p.poll(0.01)
                continue
            if i % 100 == 0:
                p.poll(0)
        sent[0] = i

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        rng = random.Random(7)
        for _ in range(3):
            time.sleep(rng.uniform(0.5, 1.5))
            broker.kill9()
            time.sleep(0.3)
            broker.start()
        time.sleep(0.5)
    finally:
        stop.set()
        t.join(30)
    remaining = p.flush(120)
    assert remaining == 0, f"{remaining} records never delivered"
    fatal = p.poll(0)  # serve any last callbacks
    del fatal
    assert not acks.errors, f"{len(acks.errors)} failed, first: {acks.errors[0][0]}"
    assert len(acks.ok) == sent[0]
    for part in range(2):
        values = [int(m.value()) for m in consume_to_end(broker.bootstrap, topic, part)]
        expected = list(range(part, sent[0], 2))
        dups = len(values) - len(set(values))
        assert dups == 0, f"partition {part}: {dups} duplicates after retries across crashes"
        assert values == expected, f"partition {part}: lost or reordered records"


def test_interval_flush_policy_survives_sigterm_with_every_record(make_broker):
    """With fsync on an interval, a *graceful* stop still flushes everything acknowledged."""
    b = make_broker("--flush-policy", "interval")
    topic = unique("interval")
    create_topic(b.bootstrap, topic, partitions=1)
    p = producer(b.bootstrap, acks="1")
    for i in range(2000):
        p.produce(topic, value=b"%d" % i, partition=0)
    flush_all(p)
    b.restart(clean=True)
    msgs = consume_partition(b.bootstrap, topic, 0, 2000)
    assert [m.value() for m in msgs] == [b"%d" % i for i in range(2000)]


def test_clean_restart_is_fast_and_keeps_data_topics_and_configs(broker):
    topics = {unique("keep-a"): 1, unique("keep-b"): 4}
    configs = {"retention.ms": "86400000", "segment.bytes": "65536",
               "max.message.bytes": "2000000", "message.timestamp.type": "CreateTime"}
    for name, parts in topics.items():
        create_topic(broker.bootstrap, name, partitions=parts, config=configs)
    # a few MB over many segments, so a slow recovery scan would show
    payload = os.urandom(900)
    p = producer(broker.bootstrap, **{"linger.ms": 20})
    per_partition = 1500
    acks = Acks()
    for name, parts in topics.items():
        for part in range(parts):
            for i in range(per_partition):
                p.produce(name, key=b"%d" % i, value=payload + b"%d" % i, partition=part,
                          on_delivery=acks)
    flush_all(p, 120)
    assert not acks.errors, acks.errors[:3]
    for name, parts in topics.items():
        for part in range(parts):
            assert watermarks(broker.bootstrap, name, part) == (0, per_partition)

    def described():
        out = {}
        for name in topics:
            cfg = topic_configs(broker.bootstrap, name)
            out[name] = {k: cfg[k] for k in configs}
        return out

    before = described()
    assert all(v == configs for v in before.values()), before

    code = broker.stop()
    assert code == 0, f"SIGTERM should exit 0, got {code}"
    took = broker.start()
    assert took < 2.0, f"restart after a clean stop took {took:.2f}s"

    assert set(topics) <= topic_names(broker.bootstrap)
    a = admin(broker.bootstrap)
    md = a.list_topics(timeout=10)
    for name, parts in topics.items():
        assert len(md.topics[name].partitions) == parts
    assert described() == before
    for name, parts in topics.items():
        for part in range(parts):
            assert watermarks(broker.bootstrap, name, part) == (0, per_partition)
        msgs = consume_to_end(broker.bootstrap, name, parts - 1)
        assert [m.value() for m in msgs] == [payload + b"%d" % i for i in range(per_partition)]

    # and it keeps accepting writes at the next offset
    acks = []
    p = producer(broker.bootstrap)
    name = next(iter(topics))
    p.produce(name, value=b"after", partition=0,
              on_delivery=lambda e, m: acks.append((e, m.offset())))
    flush_all(p)
    assert acks == [(None, per_partition)]


def test_sigterm_while_producing_loses_nothing_acknowledged(broker):
    topic = unique("term")
    create_topic(broker.bootstrap, topic, partitions=PARTITIONS)
    threads = [LoadThread(broker.bootstrap, topic, 0, t) for t in range(2)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    code = broker.stop()
    for t in threads:
        t.finish()
    assert code == 0
    broker.start()
    acked = {p: {} for p in range(PARTITIONS)}
    for t in threads:
        for part, off, value in t.acked:
            acked[part][off] = value
    assert sum(len(v) for v in acked.values()) > 0
    _verify_log(broker.bootstrap, topic, acked)


def test_deleted_topic_stays_deleted_after_restart(broker):
    keep, drop = unique("keep"), unique("drop")
    create_topic(broker.bootstrap, keep, 1)
    create_topic(broker.bootstrap, drop, 2)
    p = producer(broker.bootstrap)
    p.produce(drop, value=b"x", partition=1)
    flush_all(p)
    delete_topic(broker.bootstrap, drop)
    broker.restart(clean=False)
    names = topic_names(broker.bootstrap)
    assert keep in names and drop not in names
    # the name can be reused and starts empty
    create_topic(broker.bootstrap, drop, 1)
    assert watermarks(broker.bootstrap, drop, 0) == (0, 0)
