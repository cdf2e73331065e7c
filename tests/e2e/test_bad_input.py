"""Bad input over raw sockets and through the Admin API: Kafka errors or a closed
connection, never a crash, a hang or an unbounded allocation. After each case the
broker must still serve a real client."""

from __future__ import annotations

import os
import socket
import struct
import time

import pytest
from confluent_kafka.admin import NewTopic

import kafka_raw
from kafka_raw import KafkaConn, Record, encode_batch, i16, i32, string
from confluent_kafka import KafkaException

from helpers import (consume_partition, create_topic, create_topic_error, delete_topic,
                     error_code, flush_all, producer, topic_names, unique, watermarks)

REQUIRED_APIS = {
    kafka_raw.PRODUCE, kafka_raw.FETCH, kafka_raw.LIST_OFFSETS, kafka_raw.METADATA,
    kafka_raw.OFFSET_COMMIT, kafka_raw.OFFSET_FETCH, kafka_raw.FIND_COORDINATOR,
    kafka_raw.JOIN_GROUP, kafka_raw.HEARTBEAT, kafka_raw.LEAVE_GROUP, kafka_raw.SYNC_GROUP,
    kafka_raw.DESCRIBE_GROUPS, kafka_raw.LIST_GROUPS, kafka_raw.API_VERSIONS,
    kafka_raw.CREATE_TOPICS, kafka_raw.DELETE_TOPICS, kafka_raw.INIT_PRODUCER_ID,
    kafka_raw.DESCRIBE_CONFIGS,
}


def _still_serving(broker):
    """The broker is alive and a real client can still write and read."""
    broker.assert_alive()
    topic = unique("alive")
    create_topic(broker.bootstrap, topic, 1)
    p = producer(broker.bootstrap)
    p.produce(topic, value=b"still here", partition=0)
    flush_all(p)
    assert [m.value() for m in consume_partition(broker.bootstrap, topic, 0, 1)] == [b"still here"]


# --- ApiVersions ---------------------------------------------------------------

def test_api_versions_advertises_the_required_apis(broker):
    with KafkaConn.to(broker.bootstrap) as c:
        err, keys = c.api_versions(0)
        assert err == kafka_raw.NONE
        missing = REQUIRED_APIS - set(keys)
        assert not missing, f"not advertised: {sorted(missing)}"
        for k, (lo, hi) in keys.items():
            assert 0 <= lo <= hi, f"api {k}: bad range {lo}..{hi}"
        # the flexible version that current clients send gives the same list
        err3, keys3 = c.api_versions(3)
        assert err3 == kafka_raw.NONE and keys3 == keys


def test_unknown_api_versions_version_gets_unsupported_version_with_supported_list(broker):
    with KafkaConn.to(broker.bootstrap) as c:
        err, keys = c.api_versions(127)
        assert err == kafka_raw.UNSUPPORTED_VERSION
        assert kafka_raw.API_VERSIONS in keys, "the error response must list what is supported"
        lo, hi = keys[kafka_raw.API_VERSIONS]
        assert lo == 0 and hi >= 3
        # the connection is still usable for a supported version
        err, _ = c.api_versions(0)
        assert err == kafka_raw.NONE
    _still_serving(broker)


def test_unsupported_version_of_another_api_is_refused(broker):
    """Metadata at version 200: Kafka closes the connection (it cannot frame a reply)."""
    with KafkaConn.to(broker.bootstrap) as c:
        c.send_raw(i32(len(hdr := i16(kafka_raw.METADATA) + i16(200) + i32(1) + string("x")))
                   + hdr)
        closed_or_error = c.is_closed_by_peer(10)
        if not closed_or_error:
            # a broker may instead answer with an error; it must then be framed correctly
            frame = c.recv_frame()
            assert struct.unpack(">i", frame[:4])[0] == 1
    _still_serving(broker)


def test_unknown_api_key_closes_the_connection_or_errors(broker):
    with KafkaConn.to(broker.bootstrap) as c:
        c.send_raw(i32(len(hdr := i16(999) + i16(0) + i32(7) + string("x"))) + hdr)
        if not c.is_closed_by_peer(10):
            frame = c.recv_frame()
            assert struct.unpack(">i", frame[:4])[0] == 7
            assert len(frame) >= 6 and struct.unpack(">h", frame[4:6])[0] != 0
    _still_serving(broker)


# --- framing -----------------------------------------------------------------

@pytest.mark.parametrize("size", [0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 200 * 1024 * 1024],
                         ids=["2GiB", "negative-min", "minus-one", "200MiB"])
def test_oversized_or_negative_frame_length_is_refused_without_allocating(broker, size):
    rss_before = broker.rss_bytes()
    with KafkaConn.to(broker.bootstrap) as c:
        c.send_raw(struct.pack(">I", size) + b"\x00\x12\x00\x00\x00\x00\x00\x01")
        t0 = time.monotonic()
        assert c.is_closed_by_peer(10), "the broker must close a connection with an absurd frame"
        assert time.monotonic() - t0 < 10
    _still_serving(broker)
    rss_after = broker.rss_bytes()
    assert rss_after - rss_before < 100 * 1024 * 1024, \
        f"RSS grew by {(rss_after - rss_before) >> 20} MiB after a bogus frame length"


def test_many_connections_claiming_huge_frames_do_not_exhaust_memory(broker):
    rss_before = broker.rss_bytes()
    conns = []
    try:
        for _ in range(20):
            c = KafkaConn.to(broker.bootstrap)
            # claim 90 MiB, send a little, then stall
            c.send_raw(struct.pack(">i", 90 * 1024 * 1024) + os.urandom(1024))
            conns.append(c)
        time.sleep(1.0)
        rss_mid = broker.rss_bytes()
        assert rss_mid - rss_before < 500 * 1024 * 1024, \
            f"RSS grew by {(rss_mid - rss_before) >> 20} MiB for 20 stalled frames"
    finally:
        for c in conns:
            c.close()
    _still_serving(broker)


@pytest.mark.parametrize("payload", [
    b"",                                     # empty frame
    b"\x00",                                 # shorter than a header
    b"\x00\x03\x00",                         # truncated header
    i16(3) + i16(1) + i32(5) + i16(200) + b"ab",  # client id longer than the frame
    i16(0) + i16(7) + i32(5) + string("c") + b"\xff" * 12,  # Produce body of garbage
    i16(3) + i16(4) + i32(5) + string("c") + i32(1_000_000_000),  # 1e9-element topic array
    i16(19) + i16(4) + i32(5) + string("c") + i32(-5),  # negative array length
    os.urandom(64),
], ids=["empty", "one-byte", "short-header", "long-client-id", "produce-garbage",
        "huge-array", "negative-array", "random"])
def test_malformed_request_gets_error_or_closed_connection(broker, payload):
    with KafkaConn.to(broker.bootstrap) as c:
        c.send_raw(i32(len(payload)) + payload)
        if not c.is_closed_by_peer(10):
            # some brokers answer; the answer must at least be a well-formed frame
            c.sock.settimeout(10)
            frame = c.recv_frame()
            assert len(frame) >= 4
    _still_serving(broker)


def test_connection_dropped_mid_request_is_harmless(broker):
    for cut in (2, 6, 20):
        s = socket.create_connection((broker.host, broker.port))
        req = i16(18) + i16(0) + i32(1) + string("abc")
        s.sendall((i32(len(req)) + req)[:cut])
        s.close()
    _still_serving(broker)


# --- record batches -------------------------------------------------------------

def test_batch_with_bad_crc_is_rejected_as_corrupt_message(broker):
    topic = unique("badcrc")
    create_topic(broker.bootstrap, topic, 1)
    with KafkaConn.to(broker.bootstrap) as c:
        bad = encode_batch([Record(b"v%d" % i) for i in range(3)], corrupt_crc=True)
        r = c.produce(topic, 0, bad)
        assert r["error_code"] == kafka_raw.CORRUPT_MESSAGE
        # a flipped payload byte (CRC now wrong) as well
        good = bytearray(encode_batch([Record(b"hello world")]))
        good[-3] ^= 0x01
        r = c.produce(topic, 0, bytes(good))
        assert r["error_code"] == kafka_raw.CORRUPT_MESSAGE
        # the connection is still fine and a good batch lands at offset 0
        r = c.produce(topic, 0, encode_batch([Record(b"ok")]))
        assert r["error_code"] == kafka_raw.NONE and r["base_offset"] == 0
    assert watermarks(broker.bootstrap, topic, 0) == (0, 1)
    _still_serving(broker)


@pytest.mark.parametrize("case", ["count-mismatch", "last-offset-delta", "magic-1", "truncated",
                                  "length-too-long"])
def test_structurally_invalid_batch_is_rejected(broker, case):
    topic = unique("badbatch")
    create_topic(broker.bootstrap, topic, 1)
    recs = [Record(b"a"), Record(b"b"), Record(b"c")]
    if case == "count-mismatch":
        blob = encode_batch(recs, record_count=7)
    elif case == "last-offset-delta":
        blob = encode_batch(recs, last_offset_delta=9)
    elif case == "magic-1":
        blob = encode_batch(recs, magic=1)
    elif case == "truncated":
        blob = encode_batch(recs)[:-5]
    else:
        good = bytearray(encode_batch(recs))
        good[8:12] = struct.pack(">i", 1_000_000)  # batch length beyond the blob
        blob = bytes(good)
    with KafkaConn.to(broker.bootstrap) as c:
        try:
            r = c.produce(topic, 0, blob)
        except kafka_raw.ConnectionClosed:
            r = None  # closing the connection is an acceptable answer
        if r is not None:
            # 43 UNSUPPORTED_FOR_MESSAGE_FORMAT, 87 INVALID_RECORD
            assert r["error_code"] in (kafka_raw.CORRUPT_MESSAGE, kafka_raw.INVALID_REQUEST,
                                       43, 87), f"{case}: error {r['error_code']}"
    assert watermarks(broker.bootstrap, topic, 0) == (0, 0), f"{case}: something was appended"
    _still_serving(broker)


def test_produce_to_unknown_topic_or_partition(broker):
    topic = unique("known")
    create_topic(broker.bootstrap, topic, 2)
    with KafkaConn.to(broker.bootstrap) as c:
        r = c.produce(unique("unknown"), 0, encode_batch([Record(b"x")]))
        assert r["error_code"] == kafka_raw.UNKNOWN_TOPIC_OR_PARTITION
        r = c.produce(topic, 5, encode_batch([Record(b"x")]))
        assert r["error_code"] == kafka_raw.UNKNOWN_TOPIC_OR_PARTITION
    assert unique("unknown") not in topic_names(broker.bootstrap)


# --- topic administration errors ---------------------------------------------------

def _create_error(broker, topic: NewTopic) -> int:
    return create_topic_error(broker.bootstrap, topic)


def test_compact_cleanup_policy_is_rejected_as_invalid_config(broker):
    name = unique("compact")
    code = _create_error(broker, NewTopic(name, 1, 1, config={"cleanup.policy": "compact"}))
    assert code == kafka_raw.INVALID_CONFIG
    assert name not in topic_names(broker.bootstrap)


@pytest.mark.parametrize("config", [
    {"retention.ms": "not-a-number"},
    {"segment.bytes": "-1"},
    {"no.such.config": "1"},
    {"message.timestamp.type": "Sometimes"},
    {"cleanup.policy": "delete,compact"},
])
def test_invalid_topic_config_is_rejected(broker, config):
    name = unique("badcfg")
    assert _create_error(broker, NewTopic(name, 1, 1, config=config)) == kafka_raw.INVALID_CONFIG
    assert name not in topic_names(broker.bootstrap)


def test_create_topic_errors_use_kafka_codes(broker):
    name = unique("dup")
    create_topic(broker.bootstrap, name, 1)
    assert _create_error(broker, NewTopic(name, 1, 1)) == kafka_raw.TOPIC_ALREADY_EXISTS
    # one broker: replication factor 3 cannot be met (INVALID_REPLICATION_FACTOR = 38)
    assert _create_error(broker, NewTopic(unique("rf3"), 1, 3)) == 38
    assert _create_error(broker, NewTopic("bad/name", 1, 1)) == 17  # INVALID_TOPIC_EXCEPTION
    assert _create_error(broker, NewTopic("x" * 300, 1, 1)) == 17


def test_delete_unknown_topic_is_unknown_topic_or_partition(broker):
    name = unique("ghost")
    with pytest.raises(KafkaException) as exc:
        delete_topic(broker.bootstrap, name)
    assert error_code(exc.value) == kafka_raw.UNKNOWN_TOPIC_OR_PARTITION


# --- auto creation -------------------------------------------------------------------

def test_metadata_for_unknown_topic_is_an_error_and_does_not_create_it(broker):
    name = unique("nocreate")
    with KafkaConn.to(broker.bootstrap) as c:
        md = c.metadata([name], allow_auto_create=True)
    assert [(t["name"], t["error_code"]) for t in md["topics"]] == \
        [(name, kafka_raw.UNKNOWN_TOPIC_OR_PARTITION)]
    assert md["brokers"][0]["node_id"] == 0 and md["brokers"][0]["port"] == broker.port
    assert name not in topic_names(broker.bootstrap)


def test_auto_create_flag_lets_a_producer_create_its_topic(make_broker):
    b = make_broker("--auto-create-topics")
    name = unique("autocreated")
    acks = []
    p = producer(b.bootstrap, **{"allow.auto.create.topics": True})
    p.produce(name, value=b"hello", on_delivery=lambda e, m: acks.append((e, m.offset())))
    flush_all(p)
    assert acks == [(None, 0)]
    assert name in topic_names(b.bootstrap)
    # a consumer's metadata request (allow_auto_create=false) does not create topics
    other = unique("not-by-consumer")
    with KafkaConn.to(b.bootstrap) as c:
        md = c.metadata([other], allow_auto_create=False)
    assert md["topics"][0]["error_code"] == kafka_raw.UNKNOWN_TOPIC_OR_PARTITION
    assert other not in topic_names(b.bootstrap)
