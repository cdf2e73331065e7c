"""The Prometheus endpoint reports requests, bytes and per-partition offsets."""

from __future__ import annotations

import re
import socket
import urllib.request

from conftest import free_port
from helpers import create_topic, flush_all, producer, unique


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
