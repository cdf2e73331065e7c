"""Fixtures that run the real `sediment` binary for end-to-end tests.

Every test gets a broker of its own on a free loopback port with a fresh data
directory, so tests never see each other's topics or offsets. Whatever a test
starts is stopped when it ends, even when it fails; on failure the broker's
log is printed so the reason is in the test output.

The binary is `target/debug/sediment` unless SEDIMENT_BIN names another.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import kafka_raw  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
BINARY = Path(os.environ.get("SEDIMENT_BIN", REPO / "target" / "debug" / "sediment"))
READY_TIMEOUT = float(os.environ.get("SEDIMENT_READY_TIMEOUT", "30"))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def binary() -> Path:
    if not BINARY.exists():
        pytest.fail(f"{BINARY} does not exist: build it first (cargo build)")
    return BINARY


class Broker:
    """A `sediment serve` process, restartable on the same port and data dir."""

    def __init__(self, data_dir: Path, log_dir: Path, extra_args: list[str], name: str,
                 env: Optional[dict] = None):
        self.data_dir = data_dir
        self.port = free_port()
        self.pg_port = free_port()  # so brokers never contend for the default 5433
        self.host = "127.0.0.1"
        self.extra_args = list(extra_args)
        self.env = dict(env or {})  # added to the environment it starts with
        self.log_path = log_dir / f"{name}.log"
        self.proc: Optional[subprocess.Popen] = None
        self.starts = 0
        self.last_ready_seconds: Optional[float] = None
        self.stopping = False  # True while an exit is expected (stop(), kill9())

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def archive_dir(self) -> Path:
        """Where the default (file://) object store keeps the archive."""
        return self.data_dir / "archive"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def command(self) -> list[str]:
        return [str(binary()), "serve", "--data-dir", str(self.data_dir),
                "--kafka-addr", self.bootstrap, "--pg-addr", f"{self.host}:{self.pg_port}",
                *self.extra_args]

    def start(self, timeout: float = READY_TIMEOUT) -> float:
        """Start and wait until the Kafka port answers ApiVersions and the Postgres port
        accepts; returns seconds taken."""
        assert not self.running(), "broker already running"
        self.starts += 1
        self.stopping = False
        log = open(self.log_path, "ab")
        log.write(f"\n===== start #{self.starts}: {' '.join(self.command())}\n".encode())
        log.flush()
        # the broker reads SEDIMENT_* settings (and AWS_* for an s3:// store) from the
        # environment: start from none, so a developer's shell cannot change what a
        # test runs against; a test that wants some passes them in `env`
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("SEDIMENT_", "AWS_"))}
        env.setdefault("RUST_BACKTRACE", "1")
        env.update(self.env)
        t0 = time.monotonic()
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env)
        log.close()
        deadline = t0 + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"broker exited with {self.proc.returncode} during startup\n{self.log_tail()}")
            if (self._port_open() and kafka_raw.broker_alive(self.bootstrap, timeout=2)
                    and self._port_open(self.pg_port)):
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"broker not ready after {timeout}s\n{self.log_tail()}")
            time.sleep(0.02)
        self.last_ready_seconds = time.monotonic() - t0
        return self.last_ready_seconds

    @property
    def pg_dsn(self) -> str:
        """libpq connection string for the Postgres listener (no password)."""
        return f"host={self.host} port={self.pg_port} user=sediment dbname=sediment"

    def _port_open(self, port: Optional[int] = None) -> bool:
        try:
            with socket.create_connection((self.host, port or self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit code. Fails if it does not exit in time."""
        if not self.running():
            return self.proc.returncode if self.proc else 0
        self.stopping = True
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"broker ignored SIGTERM for {timeout}s\n{self.log_tail()}")

    def kill9(self) -> None:
        """SIGKILL: no flush, no clean-stop marker, like a power cut for the process."""
        self.stopping = True
        if self.running():
            self.proc.kill()
            self.proc.wait()

    def exited_unexpectedly(self) -> Optional[int]:
        """The exit code if the broker exited without being told to, else None."""
        if self.proc is not None and not self.stopping and self.proc.poll() is not None:
            return self.proc.returncode
        return None

    def restart(self, clean: bool = True) -> float:
        if clean:
            code = self.stop()
            assert code == 0, f"graceful stop exited with {code}\n{self.log_tail()}"
        else:
            self.kill9()
        return self.start()

    def assert_alive(self) -> None:
        assert self.running(), f"broker died (exit {self.proc.returncode})\n{self.log_tail()}"
        assert kafka_raw.broker_alive(self.bootstrap), f"broker stopped answering\n{self.log_tail()}"

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def log_tail(self, lines: int = 80) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return "(no broker log)"
        return "----- broker log (tail) -----\n" + "\n".join(text[-lines:])

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # console tools -------------------------------------------------------
    def cli(self, *args: str, input: Optional[str] = None, timeout: float = 60,
            check: bool = True) -> subprocess.CompletedProcess:
        return run_cli("--bootstrap-server", self.bootstrap, *args, input=input,
                       timeout=timeout, check=check)


def run_cli(*args: str, input: Optional[str] = None, timeout: float = 60,
            check: bool = True) -> subprocess.CompletedProcess:
    cmd = [str(binary()), *args]
    p = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout,
                       stdin=None if input is not None else subprocess.DEVNULL)
    if check and p.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}")
    return p


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


@pytest.fixture
def make_broker(tmp_path, request):
    """Factory: make_broker(*extra_args, start=True, env=None) -> Broker.

    `env` adds environment variables (e.g. the AWS_* settings of an s3:// store).
    All brokers are stopped at teardown."""
    started: list[Broker] = []

    def factory(*extra_args: str, start: bool = True, env: Optional[dict] = None) -> Broker:
        n = len(started)
        data_dir = tmp_path / f"data{n}"
        data_dir.mkdir()
        b = Broker(data_dir, tmp_path, list(extra_args), f"broker{n}", env=env)
        started.append(b)
        if start:
            b.start()
        return b

    yield factory

    failed = any(getattr(request.node, f"rep_{w}", None) is not None
                 and getattr(request.node, f"rep_{w}").failed for w in ("setup", "call"))
    problems = []
    for b in started:
        code = b.exited_unexpectedly()
        if code is not None:
            problems.append(f"broker exited on its own with code {code} during the test "
                            f"(a crash, or a signal from outside the test)\n{b.log_tail(150)}")
        b.kill9()
        if failed and code is None:
            sys.stderr.write(f"\n{b.log_tail(150)}\n")
    problems += [f"the broker panicked (never acceptable):\n{b.log_tail(150)}"
                 for b in started if "panicked at" in b.log_text()]
    if not failed and not problems:
        shutil.rmtree(tmp_path, ignore_errors=True)
    if problems:
        pytest.fail("\n".join(problems))


@pytest.fixture
def broker(make_broker) -> Broker:
    """A fresh single broker with default settings (no auto-create, fsync flush)."""
    return make_broker()


@pytest.fixture
def group_broker(make_broker) -> Broker:
    """A broker that starts rebalances at once, so group tests do not wait 3 s per join."""
    return make_broker("--group-initial-rebalance-delay-ms", "0")


# --- S3: moto's server, in memory, on loopback ---------------------------------------

S3_REGION = "us-east-1"
S3_KEY_ID = "testing"  # moto accepts any credentials
S3_SECRET = "testing"


class S3Server:
    """A `moto_server` process (pip `moto[server]`): an in-memory S3 on a loopback port.

    Its state lives only in the process: stopping it loses every bucket."""

    def __init__(self, log_path: Path):
        self.host = "127.0.0.1"
        self.port = free_port()
        self.log_path = log_path
        self.proc: Optional[subprocess.Popen] = None
        self._client = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 60) -> None:
        exe = Path(sys.executable).with_name("moto_server")
        cmd = [str(exe) if exe.exists() else (shutil.which("moto_server") or "moto_server"),
               "-H", self.host, "-p", str(self.port)]
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            pytest.fail("moto_server not found: pip install 'moto[server]' "
                        "(tests/requirements.txt; scripts/test-all.sh does)")
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        import urllib.request
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"moto_server exited with {self.proc.returncode}\n"
                                     f"{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.endpoint + "/", timeout=2) as r:
                    r.read()
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"moto_server not answering after {timeout}s\n"
                                     f"{self.log_tail()}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def client(self):
        """A boto3 S3 client talking to this server directly."""
        if self._client is None:
            import boto3
            from botocore.config import Config
            self._client = boto3.client(
                "s3", endpoint_url=self.endpoint, region_name=S3_REGION,
                aws_access_key_id=S3_KEY_ID, aws_secret_access_key=S3_SECRET,
                config=Config(retries={"max_attempts": 2}, connect_timeout=5, read_timeout=30,
                              proxies={}))
        return self._client

    def make_bucket(self, prefix: str = "sediment") -> str:
        import uuid
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def broker_env(self, endpoint: Optional[str] = None) -> dict:
        """What a broker needs in its environment to use this server for s3:// URLs."""
        return {"AWS_ENDPOINT": endpoint or self.endpoint, "AWS_ALLOW_HTTP": "true",
                "AWS_REGION": S3_REGION, "AWS_ACCESS_KEY_ID": S3_KEY_ID,
                "AWS_SECRET_ACCESS_KEY": S3_SECRET,
                # never through a developer's HTTP proxy: the server is on loopback
                "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return "(no moto_server log)"
        return "----- moto_server log (tail) -----\n" + "\n".join(text[-lines:])


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> S3Server:
    """One moto S3 server for the whole session (about a second to start); tests keep
    apart by using a bucket each (S3Server.make_bucket)."""
    server = S3Server(tmp_path_factory.mktemp("moto") / "moto_server.log")
    try:
        server.start()
        yield server
    finally:
        server.stop()


class CuttableProxy:
    """A TCP proxy on a loopback port in front of another, whose link can be cut.

    While cut, open connections are closed and every new one is reset at once (and
    counted in `refused`), as if the server behind had gone away; `restore()` lets
    connections through again. The server behind keeps running, so an in-memory
    store such as moto keeps its buckets across the outage."""

    def __init__(self, upstream_host: str, upstream_port: int):
        self.upstream = (upstream_host, upstream_port)
        self.host = "127.0.0.1"
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((self.host, 0))
        self._listener.listen(128)
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._cut = threading.Event()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._open: set = set()
        self.refused = 0
        self.accepted = 0
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def cut(self) -> None:
        self._cut.set()
        with self._lock:
            conns = list(self._open)
        for s in conns:
            self._shut(s)

    def restore(self) -> None:
        self._cut.clear()

    def close(self) -> None:
        self._closed.set()
        self.cut()
        self._thread.join(5)
        self._listener.close()

    @staticmethod
    def _shut(s: socket.socket) -> None:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _accept_loop(self) -> None:
        import struct
        while not self._closed.is_set():
            try:
                c, _ = self._listener.accept()
            except (socket.timeout, OSError):
                continue
            if self._cut.is_set():
                with self._lock:
                    self.refused += 1
                # linger 0: close sends a reset, like a port nobody listens on
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                c.close()
                continue
            try:
                u = socket.create_connection(self.upstream, timeout=5)
                u.settimeout(None)
            except OSError:
                c.close()
                continue
            c.settimeout(None)
            with self._lock:
                self.accepted += 1
                self._open.update((c, u))
            pumps_left = [2]
            for src, dst in ((c, u), (u, c)):
                threading.Thread(target=self._pump, args=(src, dst, c, u, pumps_left),
                                 daemon=True).start()

    def _pump(self, src, dst, c, u, pumps_left) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            # one direction ending ends the connection (this wakes the other pump);
            # the last pump out closes both sockets
            self._shut(c)
            self._shut(u)
            with self._lock:
                pumps_left[0] -= 1
                last = pumps_left[0] == 0
                if last:
                    self._open.discard(c)
                    self._open.discard(u)
            if last:
                c.close()
                u.close()


@pytest.fixture
def s3_proxy(s3_server):
    """A CuttableProxy in front of the session's moto server, closed at teardown."""
    proxy = CuttableProxy(s3_server.host, s3_server.port)
    try:
        yield proxy
    finally:
        proxy.close()
