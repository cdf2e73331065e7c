"""The Prometheus endpoint reports requests, bytes and per-partition offsets."""

from __future__ import annotations

import re
import socket
import urllib.request

from conftest import free_port
from helpers import consume_partition, create_topic, flush_all, producer, unique


def _scrape(addr: str) -> str:
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=10) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        return r.read().decode()


def _value(text: str, name: str, labels: str = "") -> float:
    m = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.M)
    assert m, f"{name}{labels} missing from:\n{text}"
    return float(m.group(1))


def test_metrics_endpoint_reports_produced_offsets_and_requests(make_broker):
    addr = f"127.0.0.1:{free_port()}"
    b = make_broker("--metrics-addr", addr)
    topic = unique("metrics")
    create_topic(b.bootstrap, topic, partitions=2)
    p = producer(b.bootstrap)
    for i in range(50):
        p.produce(topic, value=b"v%d" % i, partition=i % 2)
    flush_all(p)
    text = _scrape(addr)
    labels = f'{{topic="{topic}",partition="0"}}'
    assert _value(text, "sediment_partition_log_end_offset", labels) == 25
    assert _value(text, "sediment_partition_high_watermark", labels) == 25
    assert _value(text, "sediment_partition_log_start_offset", labels) == 0
    assert _value(text, "sediment_partition_size_bytes", labels) > 0
    assert _value(text, "sediment_requests_total", '{api="Produce"}') >= 1
    assert _value(text, "sediment_request_bytes_total") > 0
    assert _value(text, "sediment_partition_corrupt_segments_total", labels) == 0


def test_malformed_requests_are_counted(make_broker):
    addr = f"127.0.0.1:{free_port()}"
    b = make_broker("--metrics-addr", addr)
    host, port = b.bootstrap.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall((2**31 - 1).to_bytes(4, "big"))  # frame far beyond the limit
        assert s.recv(16) == b""  # the broker closes the connection
    assert _value(_scrape(addr), "sediment_malformed_requests_total") >= 1
    b.assert_alive()


def test_fsync_durations_are_exported_as_a_histogram(make_broker):
    addr = f"127.0.0.1:{free_port()}"
    b = make_broker("--metrics-addr", addr)
    topic = unique("fsyncs")
    create_topic(b.bootstrap, topic)
    p = producer(b.bootstrap, **{"linger.ms": 0})
    for i in range(20):
        p.produce(topic, value=b"x")
        p.flush(10)
    flush_all(p)
    text = _scrape(addr)
    count = _value(text, "sediment_fsync_duration_seconds_count")
    assert count >= 1
    assert _value(text, "sediment_fsync_duration_seconds_bucket", '{le="+Inf"}') == count
    assert _value(text, "sediment_fsync_duration_seconds_sum") > 0


def _histogram(text: str, name: str, labels: str = "") -> tuple[list[tuple[float, float]], float, float]:
    """(cumulative (bound, count) buckets, count, sum) of one histogram."""
    sel = f"{labels}," if labels else ""
    buckets = [(float("inf") if le == "+Inf" else float(le), float(n)) for le, n in re.findall(
        rf'^{re.escape(name)}_bucket\{{{re.escape(sel)}le="([^"]+)"\}} (\S+)$', text, re.M)]
    lab = f"{{{labels}}}" if labels else ""
    return buckets, _value(text, f"{name}_count", lab), _value(text, f"{name}_sum", lab)


def test_request_and_durability_latencies_are_exported_as_histograms(make_broker):
    addr = f"127.0.0.1:{free_port()}"
    b = make_broker("--metrics-addr", addr)
    topic = unique("latency")
    create_topic(b.bootstrap, topic, partitions=2)
    p = producer(b.bootstrap, **{"linger.ms": 0, "acks": "all"})
    for i in range(10):
        p.produce(topic, value=b"v%d" % i, partition=i % 2)
        p.flush(10)
    flush_all(p)
    got = consume_partition(b.bootstrap, topic, 0, 5)
    assert [m.value() for m in got] == [b"v%d" % i for i in range(0, 10, 2)]
    text = _scrape(addr)
    produces = _value(text, "sediment_requests_total", '{api="Produce"}')
    for name, labels, at_least in [
        ("sediment_request_duration_seconds", 'api="Produce"', produces),
        ("sediment_request_duration_seconds", 'api="Fetch"', 1),
        ("sediment_request_duration_seconds", 'api="Metadata"', 1),
        ("sediment_produce_durable_wait_seconds", "", produces),
        ("sediment_flush_queue_wait_seconds", "", 10),
    ]:
        buckets, count, total = _histogram(text, name, labels)
        assert count >= at_least, (name, labels, count, at_least)
        assert len(buckets) > 10 and buckets[-1] == (float("inf"), count), (name, buckets)
        assert all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:])), (name, "not cumulative", buckets)
        assert all(a[0] < b[0] for a, b in zip(buckets, buckets[1:])), (name, buckets)
        assert total > 0, (name, labels)
    # Every produce request (acks=all) waited for its fdatasync, and the
    # whole request cannot have been shorter than that wait.
    _, _, produce_total = _histogram(text, "sediment_request_duration_seconds", 'api="Produce"')
    _, _, wait_total = _histogram(text, "sediment_produce_durable_wait_seconds")
    assert produce_total >= wait_total
    # APIs never called have no samples.
    assert 'sediment_request_duration_seconds_count{api="DeleteTopics"}' not in text
