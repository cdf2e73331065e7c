"""A tiny, dependency-light Kafka wire-protocol client for tests.

Real clients hide the bytes; these tests sometimes need to send exactly the
bytes we choose: a batch with a broken CRC, the same idempotent batch twice,
a frame that claims to be 2 GiB, an ApiVersions request at version 127.

Only what the tests use is here:
  * framing and request headers (v1, and v2 for flexible versions);
  * a RecordBatch v2 (magic 2) encoder with CRC32C, and a decoder;
  * request encoders / response decoders for ApiVersions, Metadata, Produce,
    InitProducerId and Fetch, each in both a non-flexible and (where a
    broker might insist on it) a flexible version.

Nothing here is clever: every field is written out in the order of the
Apache Kafka message JSON schemas so that a reader can check it against them.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Iterable, Optional

try:  # the C implementation, from PyPI `crc32c`
    from crc32c import crc32c as _crc32c_c
except ImportError:  # pragma: no cover - fallback keeps the helper usable anywhere
    _crc32c_c = None


# --- CRC32C (Castagnoli) ----------------------------------------------------

def _make_crc32c_table() -> list[int]:
    poly = 0x82F63B78
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ poly if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C_TABLE = _make_crc32c_table()


def crc32c(data: bytes) -> int:
    if _crc32c_c is not None:
        return _crc32c_c(data) & 0xFFFFFFFF
    crc = 0xFFFFFFFF
    for b in data:
        crc = _CRC32C_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


# --- API keys and error codes used by the tests -----------------------------

PRODUCE = 0
FETCH = 1
LIST_OFFSETS = 2
METADATA = 3
OFFSET_COMMIT = 8
OFFSET_FETCH = 9
FIND_COORDINATOR = 10
JOIN_GROUP = 11
HEARTBEAT = 12
LEAVE_GROUP = 13
SYNC_GROUP = 14
DESCRIBE_GROUPS = 15
LIST_GROUPS = 16
API_VERSIONS = 18
CREATE_TOPICS = 19
DELETE_TOPICS = 20
INIT_PRODUCER_ID = 22
DESCRIBE_CONFIGS = 32

NONE = 0
OFFSET_OUT_OF_RANGE = 1
CORRUPT_MESSAGE = 2
UNKNOWN_TOPIC_OR_PARTITION = 3
MESSAGE_TOO_LARGE = 10
UNSUPPORTED_VERSION = 35
TOPIC_ALREADY_EXISTS = 36
INVALID_PARTITIONS = 37
INVALID_REQUEST = 42
INVALID_CONFIG = 40
OUT_OF_ORDER_SEQUENCE_NUMBER = 45
DUPLICATE_SEQUENCE_NUMBER = 46
INVALID_PRODUCER_EPOCH = 47
KAFKA_STORAGE_ERROR = 56
UNKNOWN_PRODUCER_ID = 59


# --- primitive encoders ------------------------------------------------------

def i8(v: int) -> bytes:
    return struct.pack(">b", v)


def i16(v: int) -> bytes:
    return struct.pack(">h", v)


def i32(v: int) -> bytes:
    return struct.pack(">i", v)


def u32(v: int) -> bytes:
    return struct.pack(">I", v)


def i64(v: int) -> bytes:
    return struct.pack(">q", v)


def uvarint(v: int) -> bytes:
    assert v >= 0
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def varint(v: int) -> bytes:
    """Zig-zag signed varint (used for both varint and varlong)."""
    return uvarint((v << 1) ^ (v >> 63))


def string(s: Optional[str], flexible: bool = False) -> bytes:
    if s is None:
        return uvarint(0) if flexible else i16(-1)
    b = s.encode()
    return (uvarint(len(b) + 1) if flexible else i16(len(b))) + b


def nbytes(b: Optional[bytes], flexible: bool = False) -> bytes:
    if b is None:
        return uvarint(0) if flexible else i32(-1)
    return (uvarint(len(b) + 1) if flexible else i32(len(b))) + b


def array(items: Optional[Iterable[bytes]], flexible: bool = False) -> bytes:
    if items is None:
        return uvarint(0) if flexible else i32(-1)
    items = list(items)
    return (uvarint(len(items) + 1) if flexible else i32(len(items))) + b"".join(items)


def tags(flexible: bool) -> bytes:
    return uvarint(0) if flexible else b""


# --- primitive decoder -------------------------------------------------------

class Reader:
    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ValueError(f"short read: want {n} at {self.pos} of {len(self.data)}")
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b

    def _unpack(self, fmt: str, n: int) -> int:
        return struct.unpack(fmt, self.take(n))[0]

    def i8(self) -> int:
        return self._unpack(">b", 1)

    def i16(self) -> int:
        return self._unpack(">h", 2)

    def i32(self) -> int:
        return self._unpack(">i", 4)

    def u32(self) -> int:
        return self._unpack(">I", 4)

    def i64(self) -> int:
        return self._unpack(">q", 8)

    def bool(self) -> bool:
        return self.i8() != 0

    def uvarint(self) -> int:
        shift = 0
        out = 0
        while True:
            b = self.take(1)[0]
            out |= (b & 0x7F) << shift
            if not b & 0x80:
                return out
            shift += 7
            if shift > 63:
                raise ValueError("varint too long")

    def varint(self) -> int:
        v = self.uvarint()
        return (v >> 1) ^ -(v & 1)

    def string(self, flexible: bool = False) -> Optional[str]:
        n = self.uvarint() - 1 if flexible else self.i16()
        if n < 0:
            return None
        return self.take(n).decode()

    def nbytes(self, flexible: bool = False) -> Optional[bytes]:
        n = self.uvarint() - 1 if flexible else self.i32()
        if n < 0:
            return None
        return self.take(n)

    def array(self, item, flexible: bool = False) -> Optional[list]:
        n = self.uvarint() - 1 if flexible else self.i32()
        if n < 0:
            return None
        return [item() for _ in range(n)]

    def tags(self, flexible: bool) -> None:
        if not flexible:
            return
        for _ in range(self.uvarint()):
            self.uvarint()  # tag
            self.take(self.uvarint())


# --- record batches ----------------------------------------------------------

@dataclass
class Record:
    value: Optional[bytes]
    key: Optional[bytes] = None
    headers: list = field(default_factory=list)  # [(str, Optional[bytes])]
    timestamp_delta: int = 0
    offset_delta: Optional[int] = None


def encode_record(r: Record, offset_delta: int) -> bytes:
    body = bytearray()
    body += i8(0)  # attributes
    body += varint(r.timestamp_delta)
    body += varint(offset_delta)
    body += varint(-1) if r.key is None else varint(len(r.key)) + r.key
    body += varint(-1) if r.value is None else varint(len(r.value)) + r.value
    body += varint(len(r.headers))
    for hk, hv in r.headers:
        kb = hk.encode()
        body += varint(len(kb)) + kb
        body += varint(-1) if hv is None else varint(len(hv)) + hv
    return varint(len(body)) + bytes(body)


def encode_batch(
    records: list[Record],
    *,
    base_offset: int = 0,
    base_timestamp: Optional[int] = None,
    producer_id: int = -1,
    producer_epoch: int = -1,
    base_sequence: int = -1,
    partition_leader_epoch: int = -1,
    attributes: int = 0,
    corrupt_crc: bool = False,
    last_offset_delta: Optional[int] = None,
    record_count: Optional[int] = None,
    magic: int = 2,
) -> bytes:
    """Encode an uncompressed RecordBatch v2. The knobs let a test lie."""
    if base_timestamp is None:
        base_timestamp = int(time.time() * 1000)
    encoded = b"".join(
        encode_record(r, r.offset_delta if r.offset_delta is not None else i)
        for i, r in enumerate(records)
    )
    if last_offset_delta is None:
        last_offset_delta = len(records) - 1
    if record_count is None:
        record_count = len(records)
    max_ts = base_timestamp + max((r.timestamp_delta for r in records), default=0)
    after_crc = (
        i16(attributes)
        + i32(last_offset_delta)
        + i64(base_timestamp)
        + i64(max_ts)
        + i64(producer_id)
        + i16(producer_epoch)
        + i32(base_sequence)
        + i32(record_count)
        + encoded
    )
    crc = crc32c(after_crc)
    if corrupt_crc:
        crc ^= 0xDEADBEEF
    after_len = i32(partition_leader_epoch) + i8(magic) + u32(crc) + after_crc
    return i64(base_offset) + i32(len(after_len)) + after_len


@dataclass
class DecodedBatch:
    base_offset: int
    length: int  # whole batch size in bytes, including the 12-byte prefix
    partition_leader_epoch: int
    magic: int
    crc: int
    crc_ok: bool
    attributes: int
    last_offset_delta: int
    base_timestamp: int
    max_timestamp: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    records: list  # list[Record] (only when uncompressed)
    record_count: int


def decode_batches(data: bytes) -> tuple[list[DecodedBatch], int]:
    """Decode the complete batches in `data`; returns (batches, trailing_bytes).

    A Fetch may legally end in a partial batch; its size is returned as the
    second value rather than treated as an error.
    """
    out = []
    pos = 0
    while len(data) - pos >= 12:
        base_offset, length = struct.unpack(">qi", data[pos:pos + 12])
        if len(data) - pos - 12 < length:
            break
        r = Reader(data[pos + 12:pos + 12 + length])
        ple = r.i32()
        magic = r.i8()
        crc = r.u32()
        crc_ok = crc32c(r.data[r.pos:]) == crc
        attributes = r.i16()
        last_offset_delta = r.i32()
        base_ts = r.i64()
        max_ts = r.i64()
        pid = r.i64()
        epoch = r.i16()
        seq = r.i32()
        count = r.i32()
        records = []
        if attributes & 0x07 == 0:
            for _ in range(count):
                rlen = r.varint()
                rr = Reader(r.take(rlen))
                rr.i8()
                ts_delta = rr.varint()
                off_delta = rr.varint()
                kl = rr.varint()
                key = None if kl < 0 else rr.take(kl)
                vl = rr.varint()
                value = None if vl < 0 else rr.take(vl)
                headers = []
                for _ in range(rr.varint()):
                    hk = rr.take(rr.varint()).decode()
                    hl = rr.varint()
                    headers.append((hk, None if hl < 0 else rr.take(hl)))
                records.append(Record(value, key, headers, ts_delta, off_delta))
        out.append(DecodedBatch(base_offset, 12 + length, ple, magic, crc, crc_ok, attributes,
                                last_offset_delta, base_ts, max_ts, pid, epoch, seq, records,
                                count))
        pos += 12 + length
    return out, len(data) - pos


# --- connection --------------------------------------------------------------

class ConnectionClosed(Exception):
    pass


class KafkaConn:
    """One TCP connection speaking Kafka framing. Not thread-safe."""

    def __init__(self, host: str, port: int, timeout: float = 10.0, client_id: str = "e2e-raw"):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.settimeout(timeout)
        self.client_id = client_id
        self.corr = 0
        self.versions: Optional[dict[int, tuple[int, int]]] = None

    @classmethod
    def to(cls, bootstrap: str, **kw) -> "KafkaConn":
        host, port = bootstrap.rsplit(":", 1)
        return cls(host, int(port), **kw)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # raw I/O
    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            try:
                chunk = self.sock.recv(n - len(buf))
            except ConnectionResetError as e:
                raise ConnectionClosed(str(e)) from e
            if not chunk:
                raise ConnectionClosed(f"closed after {len(buf)} of {n} bytes")
            buf += chunk
        return bytes(buf)

    def recv_frame(self) -> bytes:
        (n,) = struct.unpack(">i", self.recv_exact(4))
        assert 0 <= n < 256 * 1024 * 1024, f"absurd response size {n}"
        return self.recv_exact(n)

    def is_closed_by_peer(self, wait: float = 5.0) -> bool:
        """True if the peer closes (EOF/RST) within `wait` seconds without sending data."""
        self.sock.settimeout(wait)
        try:
            data = self.sock.recv(1)
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False
        return data == b""

    # requests
    def header(self, api_key: int, version: int, flexible: bool) -> bytes:
        self.corr += 1
        h = i16(api_key) + i16(version) + i32(self.corr) + string(self.client_id)
        if flexible:
            h += tags(True)
        return h

    def request(self, api_key: int, version: int, body: bytes, *, flexible: bool,
                response_header_flexible: Optional[bool] = None) -> Reader:
        frame = self.header(api_key, version, flexible) + body
        self.send_raw(i32(len(frame)) + frame)
        resp = Reader(self.recv_frame())
        corr = resp.i32()
        assert corr == self.corr, f"correlation id {corr} != {self.corr}"
        if response_header_flexible is None:
            response_header_flexible = flexible
        resp.tags(response_header_flexible)
        return resp

    def send_no_response(self, api_key: int, version: int, body: bytes, *, flexible: bool) -> None:
        frame = self.header(api_key, version, flexible) + body
        self.send_raw(i32(len(frame)) + frame)

    # ApiVersions --------------------------------------------------------
    def api_versions(self, version: int = 0) -> tuple[int, dict[int, tuple[int, int]]]:
        """Returns (error_code, {api_key: (min, max)}).

        The response header is always v0 for ApiVersions. An unsupported
        request version is answered in the v0 body format (KIP-511).
        """
        flexible = version >= 3
        body = b""
        if flexible:
            body = string("sediment-e2e", True) + string("0.0.1", True) + tags(True)
        r = self.request(API_VERSIONS, version, body, flexible=flexible,
                         response_header_flexible=False)
        err = r.i16()
        use_flexible = flexible and err != UNSUPPORTED_VERSION

        def item():
            k, lo, hi = r.i16(), r.i16(), r.i16()
            r.tags(use_flexible)
            return (k, (lo, hi))

        keys = dict(r.array(item, use_flexible) or [])
        if err == NONE:
            self.versions = keys
        return err, keys

    def pick(self, api_key: int, lo: int, hi: int) -> int:
        """Highest version in [lo, hi] that the broker advertises."""
        if self.versions is None:
            err, _ = self.api_versions(0)
            assert err == NONE
        assert api_key in self.versions, f"broker does not advertise api {api_key}"
        bmin, bmax = self.versions[api_key]
        v = min(hi, bmax)
        assert v >= max(lo, bmin), (
            f"no common version for api {api_key}: ours {lo}..{hi}, broker {bmin}..{bmax}")
        return v

    # Metadata -------------------------------------------------------------
    def metadata(self, topics: Optional[list[str]], allow_auto_create: bool = False,
                 version: Optional[int] = None) -> dict:
        v = version if version is not None else self.pick(METADATA, 4, 12)
        fx = v >= 9
        body = bytearray()
        if v >= 10:
            topic_items = None if topics is None else [
                b"\x00" * 16 + string(t, fx) + tags(fx) for t in topics]
        else:
            topic_items = None if topics is None else [string(t, fx) + tags(fx) for t in topics]
        body += array(topic_items, fx)
        if v >= 4:
            body += i8(1 if allow_auto_create else 0)
        if 8 <= v <= 10:
            body += i8(0) + i8(0)
        elif v >= 11:
            body += i8(0)
        body += tags(fx)
        r = self.request(METADATA, v, bytes(body), flexible=fx)
        if v >= 3:
            r.i32()

        def broker():
            b = {"node_id": r.i32(), "host": r.string(fx), "port": r.i32(), "rack": r.string(fx)}
            r.tags(fx)
            return b

        brokers = r.array(broker, fx)
        r.string(fx)  # cluster id
        r.i32()  # controller

        def partition():
            p = {"error_code": r.i16(), "partition": r.i32(), "leader": r.i32()}
            if v >= 7:
                r.i32()
            p["replicas"] = r.array(r.i32, fx)
            p["isr"] = r.array(r.i32, fx)
            if v >= 5:
                r.array(r.i32, fx)
            r.tags(fx)
            return p

        def topic():
            t = {"error_code": r.i16(), "name": r.string(fx)}
            if v >= 10:
                r.take(16)
            t["is_internal"] = r.bool()
            t["partitions"] = r.array(partition, fx)
            if v >= 8:
                r.i32()
            r.tags(fx)
            return t

        return {"brokers": brokers, "topics": r.array(topic, fx)}

    # InitProducerId ---------------------------------------------------------
    def init_producer_id(self) -> tuple[int, int, int]:
        """Returns (error_code, producer_id, producer_epoch) for a non-transactional producer."""
        v = self.pick(INIT_PRODUCER_ID, 0, 4)
        fx = v >= 2
        body = string(None, fx) + i32(60000)
        if v >= 3:
            body += i64(-1) + i16(-1)
        body += tags(fx)
        r = self.request(INIT_PRODUCER_ID, v, body, flexible=fx)
        r.i32()
        err = r.i16()
        pid = r.i64()
        epoch = r.i16()
        return err, pid, epoch

    # Produce ----------------------------------------------------------------
    def produce(self, topic: str, partition: int, records: bytes, acks: int = -1,
                timeout_ms: int = 10000, version: Optional[int] = None) -> dict:
        """Produce one batch blob to one partition; returns the partition response."""
        v = version if version is not None else self.pick(PRODUCE, 3, 9)
        fx = v >= 9
        part = i32(partition) + nbytes(records, fx) + tags(fx)
        tdata = string(topic, fx) + array([part], fx) + tags(fx)
        body = string(None, fx) + i16(acks) + i32(timeout_ms) + array([tdata], fx) + tags(fx)
        if acks == 0:
            self.send_no_response(PRODUCE, v, body, flexible=fx)
            return {}
        r = self.request(PRODUCE, v, body, flexible=fx)

        def presp():
            p = {"partition": r.i32(), "error_code": r.i16(), "base_offset": r.i64()}
            p["log_append_time"] = r.i64() if v >= 2 else -1
            p["log_start_offset"] = r.i64() if v >= 5 else -1
            if v >= 8:
                def rec_err():
                    e = (r.i32(), r.string(fx))
                    r.tags(fx)
                    return e
                p["record_errors"] = r.array(rec_err, fx)
                p["error_message"] = r.string(fx)
            r.tags(fx)
            return p

        def tresp():
            name = r.string(fx)
            parts = r.array(presp, fx)
            r.tags(fx)
            return name, parts

        responses = r.array(tresp, fx)
        assert len(responses) == 1 and responses[0][0] == topic, responses
        assert len(responses[0][1]) == 1, responses
        return responses[0][1][0]

    # ListOffsets --------------------------------------------------------------
    def list_offsets(self, topic: str, partition: int, timestamp: int,
                     version: Optional[int] = None) -> dict:
        """Single-partition ListOffsets. `timestamp` is a time in ms or a special value:
        -1 latest, -2 earliest, -3 max timestamp, -4 earliest local (KIP-1005, v8+ in
        Kafka), -5 latest tiered (v9+). Returns the partition response as a dict."""
        v = version if version is not None else self.pick(LIST_OFFSETS, 1, 9)
        fx = v >= 6
        body = i32(-1)  # replica id: a consumer
        if v >= 2:
            body += i8(0)  # isolation level: read uncommitted
        part = i32(partition)
        if v >= 4:
            part += i32(-1)  # current leader epoch: unknown
        part += i64(timestamp) + tags(fx)
        body += array([string(topic, fx) + array([part], fx) + tags(fx)], fx)
        body += tags(fx)
        r = self.request(LIST_OFFSETS, v, body, flexible=fx)
        if v >= 2:
            r.i32()  # throttle

        def presp():
            p = {"partition": r.i32(), "error_code": r.i16(), "timestamp": r.i64(),
                 "offset": r.i64()}
            p["leader_epoch"] = r.i32() if v >= 4 else -1
            r.tags(fx)
            return p

        def tresp():
            name = r.string(fx)
            parts = r.array(presp, fx)
            r.tags(fx)
            return name, parts

        responses = r.array(tresp, fx)
        r.tags(fx)
        assert len(responses) == 1 and responses[0][0] == topic, responses
        assert len(responses[0][1]) == 1, responses
        return responses[0][1][0]

    # Fetch ------------------------------------------------------------------
    def fetch(self, topic: str, partition: int, offset: int, *, max_wait_ms: int = 500,
              min_bytes: int = 1, max_bytes: int = 50 * 1024 * 1024,
              partition_max_bytes: int = 1024 * 1024, version: Optional[int] = None) -> dict:
        """Single-partition Fetch (no sessions). Returns the partition response with raw records."""
        resp = self.fetch_many([(topic, partition, offset)], max_wait_ms=max_wait_ms, min_bytes=min_bytes,
                               max_bytes=max_bytes, partition_max_bytes=partition_max_bytes, version=version)
        assert len(resp) == 1, resp
        return resp[0]

    def fetch_many(self, wanted: list, *, max_wait_ms: int = 500, min_bytes: int = 1,
                   max_bytes: int = 50 * 1024 * 1024, partition_max_bytes: int = 1024 * 1024,
                   version: Optional[int] = None) -> list:
        """Fetch (no sessions) of every (topic, partition, offset) in `wanted`, in one request.
        Returns the partition responses, each with its "topic" and raw records, in response order."""
        v = version if version is not None else self.pick(FETCH, 4, 11)
        assert v <= 11, "flexible Fetch is not implemented by this helper"
        body = i32(-1) + i32(max_wait_ms) + i32(min_bytes) + i32(max_bytes) + i8(0)
        if v >= 7:
            body += i32(0) + i32(-1)  # session id, session epoch (-1: full fetch, no session)
        topics: dict = {}
        for topic, partition, offset in wanted:
            part = i32(partition)
            if v >= 9:
                part += i32(-1)  # current leader epoch
            part += i64(offset)
            if v >= 5:
                part += i64(-1)
            part += i32(partition_max_bytes)
            topics.setdefault(topic, []).append(part)
        body += array([string(t) + array(parts) for t, parts in topics.items()])
        if v >= 7:
            body += array([])
        if v >= 11:
            body += string("")
        r = self.request(FETCH, v, body, flexible=False)
        r.i32()  # throttle
        top_error = NONE
        if v >= 7:
            top_error = r.i16()
            r.i32()

        def aborted():
            return (r.i64(), r.i64())

        def presp():
            p = {"partition": r.i32(), "error_code": r.i16(), "high_watermark": r.i64(),
                 "last_stable_offset": r.i64()}
            p["log_start_offset"] = r.i64() if v >= 5 else -1
            r.array(aborted)
            if v >= 11:
                r.i32()
            p["records"] = r.nbytes() or b""
            return p

        def tresp():
            return r.string(), r.array(presp)

        responses = r.array(tresp)
        assert top_error == NONE, f"fetch top-level error {top_error}"
        return [dict(p, topic=t) for t, parts in responses for p in parts]


def broker_alive(bootstrap: str, timeout: float = 10.0) -> bool:
    """The broker accepts a new connection and answers ApiVersions v0."""
    try:
        with KafkaConn.to(bootstrap, timeout=timeout) as c:
            err, keys = c.api_versions(0)
            return err == NONE and API_VERSIONS in keys
    except (OSError, ConnectionClosed, AssertionError, ValueError):
        return False
