#!/usr/bin/env python3
"""Tiering benchmark: sealed segments -> Parquet -> archive, and what it costs.

One run, loopback only, on the release binary; everything it starts is
stopped. It reuses bench.py (Broker, rdkperf build and runner, ceilings,
machine info) and measures:

1. drain throughput: a broker with `--tiering-interval-ms 3600000` (the
   tierer's start-up pass finds nothing, then it sleeps) takes a backlog of
   records into a topic with 64 MiB segments and local.retention.bytes=0;
   the broker is stopped (SIGTERM) and restarted on the same data dir with
   `--tiering-interval-ms 100`; the archive metrics are polled until every
   segment sealed before the restart is uploaded, and the local tier is down
   to the active segment. Wall time and broker CPU (/proc) of the drain give
   MB/s and MB/s per core of broker CPU;
2. Parquet bytes / raw segment bytes per payload kind (rdkperf --payload
   same|random|text) and record size;
3. catch-up consume from offset 0 of the drained topic (all but the active
   segment only in the archive) vs the same data in a topic with
   remote.storage.enable=false ("hot"), same client, same broker;
4. produce throughput with tiering running concurrently (16 MiB segments,
   local.retention.bytes=0, `--tiering-interval-ms 100`) vs a topic with
   remote.storage.enable=false, with the broker's CPU during each; rounds
   alternate the order (off/on, on/off, ...), a tiered run is followed by
   its catch-up, and every run by --produce-cooldown-seconds of idle, so
   that no run starts on a disk still busy with the one before (on this VM
   the third 1 GB fsynced run in a row ran at half speed, tiering or not);
5. same-run ceilings (disk with fdatasync, loopback TCP) and machine info.

A markdown table goes to stdout, progress to stderr, everything to --out.
See benches/README.md ("Tiering") for how to read the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (benches/e2e/bench.py)

MB = bench.MB
MiB = 1 << 20
log = bench.log
WARMUP_TOPIC = bench.WARMUP_TOPIC
ANSI = re.compile(r"\x1b\[[0-9;]*m")
ARCHIVED_RE = re.compile(r"archived segment.*?segment_bytes=(\d+) parquet_bytes=(\d+) converted_ms=(\d+) "
                         r"total_ms=(\d+)")
PAYLOADS = {
    "same": "one buffer of S rand() bytes reused by every record (identical values: best case for Parquet)",
    "random": "each record its own slice of a 64 MiB pool of pseudo-random bytes (incompressible: worst case)",
    "text": "each record its own slice of a 64 MiB pool of space-separated words, 3-9 lowercase letters, "
            "from a 1,024-word vocabulary (log-like, compressible)",
}

# ----------------------------------------------------------------------------
# broker, topics, metrics
# ----------------------------------------------------------------------------


def start_broker(a, data: Path, name: str, tiering_ms: int, retention_ms: int,
                 pg_port: int | None = None) -> tuple[bench.Broker, int, float]:
    """Starts sediment on `data`; returns (broker, metrics port, monotonic time of the spawn)."""
    port, mport = bench.free_port(), bench.free_port()
    cmd = [a.sediment_bin, "serve", "--data-dir", str(data),
           "--kafka-addr", f"127.0.0.1:{port}", "--pg-addr", f"127.0.0.1:{pg_port or bench.free_port()}",
           "--metrics-addr", f"127.0.0.1:{mport}", "--flush-policy", a.flush_policy,
           "--group-initial-rebalance-delay-ms", "0",
           "--tiering-interval-ms", str(tiering_ms), "--retention-check-interval-ms", str(retention_ms)]
    b = bench.Broker(name, cmd, port, a.work / f"{name}.log")
    t0 = time.monotonic()
    b.start()
    return b, mport, t0


def stop_broker(b: bench.Broker, res: dict) -> None:
    rc = b.stop()
    text = read_log(b)
    res.setdefault("brokers", []).append({
        "name": b.name, "command": " ".join(b.cmd), "exit_code": rc,
        "stopped_cleanly": "sediment stopped cleanly" in text,
        "warnings": [ln for ln in text.splitlines() if " WARN " in ln or " ERROR " in ln][:20],
    })
    if rc != 0 or "sediment stopped cleanly" not in text:
        res.setdefault("problems", []).append(f"{b.name}: exit code {rc}, log tail: {b.tail(5)}")
    for ln in res["brokers"][-1]["warnings"][:5]:
        res.setdefault("problems", []).append(f"{b.name} log: {ln[:300]}")


def read_log(b: bench.Broker) -> str:
    try:
        return ANSI.sub("", b.log_path.read_text(errors="replace"))
    except OSError:
        return ""


def create_topic(bootstrap: str, name: str, partitions: int, config: dict[str, str]) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    fut = admin.create_topics([NewTopic(name, partitions, 1, config=config)], operation_timeout=30)[name]
    fut.result(timeout=60)
    deadline = time.monotonic() + 30
    while True:
        md = admin.list_topics(name, timeout=10).topics.get(name)
        if md is not None and md.error is None and len(md.partitions) == partitions:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"topic {name} not visible in metadata")
        time.sleep(0.1)


def scrape(mport: int) -> list[tuple[str, dict, float]]:
    """GET /metrics: [(name, labels, value)]."""
    with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)", line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        try:
            out.append((m.group(1), labels, float(m.group(3))))
        except ValueError:
            pass
    return out


def msum(samples, name: str, **labels) -> float:
    return sum(v for n, lb, v in samples if n == name and all(lb.get(k) == str(x) for k, x in labels.items()))


def mper(samples, name: str, topic: str) -> dict[int, float]:
    return {int(lb["partition"]): v for n, lb, v in samples if n == name and lb.get("topic") == topic}


ARCHIVE_COUNTERS = ("files", "bytes", "segment_bytes", "errors")


def archive_counters(samples) -> dict:
    return {
        "files": msum(samples, "sediment_archive_uploaded_files_total"),
        "bytes": msum(samples, "sediment_archive_uploaded_bytes_total"),
        "segment_bytes": msum(samples, "sediment_archive_uploaded_segment_bytes_total"),
        "errors": msum(samples, "sediment_archive_upload_errors_total"),
        "cache_hits": msum(samples, "sediment_archive_cache_hits_total"),
        "cache_misses": msum(samples, "sediment_archive_cache_misses_total"),
    }


def segment_files(data: Path, topic: str) -> dict[int, list[tuple[int, int]]]:
    """{partition: [(base offset, bytes)]} of the .log files, oldest first."""
    out = {}
    for pdir in sorted((data / "topics" / topic).iterdir()):
        if pdir.is_dir() and pdir.name.isdigit():
            segs = []
            for f in pdir.glob("*.log"):
                try:
                    segs.append((int(f.stem), f.stat().st_size))
                except ValueError:
                    pass
            out[int(pdir.name)] = sorted(segs)
    return out


# ----------------------------------------------------------------------------
# clients (rdkperf, through bench.run_rdkperf_group)
# ----------------------------------------------------------------------------


def produce(a, b: bench.Broker, topic: str, size: int, count: int, payload: str) -> dict:
    per = [count // a.producers + (1 if i < count % a.producers else 0) for i in range(a.producers)]
    cmds = [[a.rdk, "produce", "-b", b.bootstrap, "-t", topic, "-n", str(n), "-s", str(size),
             "--payload", payload, "--linger-ms", f"{a.linger_ms:g}", "--batch-size", str(a.batch_bytes),
             "--warmup-topic", WARMUP_TOPIC, "--wait-go", "--max-seconds", f"{a.max_run_seconds:g}"]
            for n in per if n > 0]
    cpu0, threads0 = b.cpu(), bench.proc_thread_cpu(b.proc.pid)
    res = bench.run_rdkperf_group(cmds, ready_timeout=60, run_timeout=a.max_run_seconds + 60, work=a.work)
    cpu1, threads1 = b.cpu(), bench.proc_thread_cpu(b.proc.pid)
    secs = bench.group_seconds(res)
    acked = sum(r["records"] for r in res)
    out = {"topic": topic, "record_bytes": size, "payload": payload, "requested": count, "acked": acked,
           "errors": sum(r["errors"] for r in res), "truncated": any(r["truncated"] for r in res),
           "seconds": secs, "records_per_s": acked / secs if secs > 0 else 0.0,
           "MBps": acked * size / secs / MB if secs > 0 else 0.0,
           "broker_cpu_s": cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else None,
           "client_cpu_s": sum(r.get("cpu_s", 0.0) for r in res)}
    if out["broker_cpu_s"] is not None and secs > 0:
        out["broker_cores"] = out["broker_cpu_s"] / secs
        out["broker_threads_cpu_s"] = bench.thread_cpu_delta(threads0, threads1, out["broker_cpu_s"])
    if out["errors"] or out["truncated"] or acked != count:
        out["warning"] = (f"acked {acked:,} of {count:,}, {out['errors']} errors"
                          f"{', truncated' if out['truncated'] else ''}"
                          f"{': ' + res[0]['first_error'] if res[0].get('first_error') else ''}")
    log(f"  produce {topic}: {out['records_per_s']:,.0f} rec/s, {out['MBps']:.1f} MB/s ({acked:,} in "
        f"{secs:.2f}s; CPU-s broker {out['broker_cpu_s'] or 0:.2f}, client {out['client_cpu_s']:.2f}; "
        f"broker threads {', '.join(f'{k} {v:.2f}' for k, v in out.get('broker_threads_cpu_s', {}).items())})"
        f"{' ⚠ ' + out['warning'] if 'warning' in out else ''}")
    return out


def consume(a, b: bench.Broker, topic: str, size: int, total: int, mport: int) -> dict:
    """One rdkperf consumer, every partition assigned from offset 0 (no group), until `total` records."""
    cmd = [a.rdk, "consume", "-b", b.bootstrap, "-t", topic, "-n", str(max(1, total)),
           "--idle-seconds", f"{a.idle_seconds:g}", "--wait-go", "--max-seconds", f"{a.max_run_seconds:g}"]
    m0, cpu0 = archive_counters(scrape(mport)), b.cpu()
    res = bench.run_rdkperf_group([cmd], ready_timeout=60, run_timeout=a.max_run_seconds + 60, work=a.work)[0]
    cpu1, m1 = b.cpu(), archive_counters(scrape(mport))
    secs = res["seconds"]
    out = {"topic": topic, "record_bytes": size, "expected": total, "consumed": res["records"],
           "errors": res["errors"], "truncated": res["truncated"], "seconds": secs,
           "records_per_s": res["records"] / secs if secs > 0 else 0.0,
           "MBps": res["bytes"] / secs / MB if secs > 0 else 0.0,
           "broker_cpu_s": cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else None,
           "client_cpu_s": res.get("cpu_s"),
           "archive_cache_hits": m1["cache_hits"] - m0["cache_hits"],
           "archive_cache_misses": m1["cache_misses"] - m0["cache_misses"]}
    if res["records"] != total or res["errors"] or res["truncated"]:
        out["warning"] = f"consumed {res['records']:,} of {total:,} ({res['errors']} errors)"
    log(f"  consume {topic}: {out['records_per_s']:,.0f} rec/s, {out['MBps']:.1f} MB/s ({res['records']:,} in "
        f"{secs:.2f}s; CPU-s broker {out['broker_cpu_s'] or 0:.2f}, client {out['client_cpu_s'] or 0:.2f}; "
        f"archive cache hits/misses {out['archive_cache_hits']:.0f}/{out['archive_cache_misses']:.0f})"
        f"{' ⚠ ' + out['warning'] if 'warning' in out else ''}")
    return out


# ----------------------------------------------------------------------------
# 1-3: drain a backlog, then catch up from the archive vs the hot tier
# ----------------------------------------------------------------------------


def drain_kind(a, size: int, payload: str) -> dict:
    name = f"{size}-{payload}"
    data = a.work / f"drain-{name}"
    res: dict = {"record_bytes": size, "payload": payload, "payload_desc": PAYLOADS[payload]}
    arch, hot = f"arch-{name}", f"hot-{name}"
    count = max(1, a.backlog_mb * MB // size)
    log(f"== drain {name}: {count:,} records of {size} B ({payload}) into {arch} and {hot}")
    # -- the backlog, with the tierer asleep
    b, mport, _ = start_broker(a, data, f"drain-{name}-load", 3_600_000, 3_600_000)
    try:
        create_topic(b.bootstrap, WARMUP_TOPIC, 1, {"remote.storage.enable": "false"})
        seg = str(a.segment_bytes)
        create_topic(b.bootstrap, arch, a.partitions,
                     {"segment.bytes": seg, "local.retention.bytes": "0", "remote.storage.enable": "true"})
        create_topic(b.bootstrap, hot, a.partitions, {"segment.bytes": seg, "remote.storage.enable": "false"})
        res["produce_archived_topic"] = produce(a, b, arch, size, count, payload)
        res["produce_hot_topic"] = produce(a, b, hot, size, count, payload)
        before = archive_counters(scrape(mport))
        if before["files"]:
            res.setdefault("problems", []).append(
                f"{before['files']:.0f} files uploaded while the tierer should have been asleep")
    finally:
        stop_broker(b, res)
    segs = segment_files(data, arch)
    sealed = {p: s[:-1] for p, s in segs.items()}
    res["local_before"] = {"segments_per_partition": {p: len(s) for p, s in segs.items()},
                           "sealed_files": sum(len(s) for s in sealed.values()),
                           "sealed_bytes": sum(n for s in sealed.values() for _, n in s),
                           "active_bytes": sum(s[-1][1] for s in segs.values() if s)}
    want_files, want_bytes = res["local_before"]["sealed_files"], res["local_before"]["sealed_bytes"]
    log(f"  backlog: {want_files} sealed segments, {want_bytes / MB:,.1f} MB "
        f"(+ {res['local_before']['active_bytes'] / MB:,.1f} MB in the active segments)")
    if want_files == 0:
        raise RuntimeError(f"no sealed segment in {arch}: raise --backlog-mb or lower --segment-bytes")
    # -- restart with the tierer awake: the drain
    b, mport, t_spawn = start_broker(a, data, f"drain-{name}-tier", 100, a.retention_check_ms)
    try:
        res["startup_s"] = time.monotonic() - t_spawn
        t_up = t_local = None
        cpu_up = None
        last_growth, last_seen = time.monotonic(), -1.0
        samples = []
        while True:
            s = scrape(mport)
            now, cpu = time.monotonic(), b.cpu()
            c = archive_counters(s)
            segs_now = mper(s, "sediment_partition_segments", arch)
            samples.append((now - t_spawn, cpu, c["segment_bytes"], c["files"]))
            if c["segment_bytes"] != last_seen:
                last_seen, last_growth = c["segment_bytes"], now
            if t_up is None and c["files"] >= want_files and c["segment_bytes"] >= want_bytes:
                t_up, cpu_up, at_up = now, cpu, c
                log(f"  uploaded {c['files']:.0f} files in {t_up - t_spawn:.2f}s")
            if t_up is not None and segs_now and all(v <= 1 for v in segs_now.values()):
                t_local = now
                break
            if not b.alive():
                raise RuntimeError(f"broker died during the drain; log:\n{b.tail(20)}")
            if now - last_growth > a.stall_seconds or now - t_spawn > a.drain_timeout:
                res.setdefault("problems", []).append(
                    f"drain stalled: {c['files']:.0f}/{want_files} files, {c['segment_bytes'] / MB:,.1f}/"
                    f"{want_bytes / MB:,.1f} MB after {now - t_spawn:.0f}s (local segments {segs_now}, "
                    f"upload errors {c['errors']:.0f}); log tail: {b.tail(10)}")
                log(f"  ⚠ {res['problems'][-1]}")
                break
            time.sleep(a.poll_seconds)
        end = archive_counters(scrape(mport))
        if t_up is not None:
            secs = t_up - t_spawn
            raw, pq = at_up["segment_bytes"], at_up["bytes"]
            res["drain"] = {
                "seconds": secs, "broker_cpu_s": cpu_up, "files": at_up["files"],
                "segment_bytes": raw, "parquet_bytes": pq, "upload_errors": at_up["errors"],
                "MBps": raw / secs / MB, "parquet_MBps": pq / secs / MB,
                "MBps_per_core": raw / cpu_up / MB if cpu_up else None,
                "broker_cores": cpu_up / secs, "parquet_over_raw": pq / raw if raw else None,
                "payload_MB": res["produce_archived_topic"]["acked"] * size / MB,
                # segment files (sealed + active) per payload byte: record and batch overhead
                "segment_over_payload": (want_bytes + res["local_before"]["active_bytes"]) /
                                        max(1, res["produce_archived_topic"]["acked"] * size),
                "local_down_to_active_s": (t_local - t_spawn) if t_local else None,
                "includes_startup_s": res["startup_s"],
            }
            if end["files"] != at_up["files"]:
                res.setdefault("problems", []).append(
                    f"{end['files'] - at_up['files']:.0f} more files uploaded after the drain's "
                    f"{at_up['files']:.0f} (segments sealed at restart?)")
            if end["errors"]:
                res.setdefault("problems", []).append(f"{end['errors']:.0f} upload errors during the drain")
            d = res["drain"]
            log(f"  drain: {d['MBps']:.1f} MB/s of segments ({raw / MB:,.1f} MB in {secs:.2f}s), broker "
                f"{cpu_up:.2f} CPU-s = {d['MBps_per_core']:.1f} MB/s per core, Parquet/raw "
                f"{d['parquet_over_raw']:.3f}; local down to the active segment after "
                f"{(t_local - t_spawn) if t_local else float('nan'):.2f}s")
        res["drain_samples"] = samples[:: max(1, len(samples) // 200)]
        res["peak_rss_mb_after_drain"] = b.peak_rss_mb()
        # -- catch-up: archived first, then hot
        for key, topic in (("consume_archived", arch), ("consume_hot", hot)):
            wm = bench.watermarks(b.bootstrap, topic, a.partitions)
            total = sum(hi - lo for lo, hi in wm)
            s = scrape(mport)
            local_start = mper(s, "sediment_partition_log_start_offset", topic)
            r = consume(a, b, topic, size, total, mport)
            r["watermarks"] = wm
            r["archived_records"] = sum(min(local_start.get(p, 0), hi) - lo for p, (lo, hi) in enumerate(wm))
            r["archived_fraction"] = r["archived_records"] / total if total else 0.0
            r["broker_peak_rss_mb_after"] = b.peak_rss_mb()
            res[key] = r
        ca, ch = res["consume_archived"], res["consume_hot"]
        res["archived_over_hot"] = ca["records_per_s"] / ch["records_per_s"] if ch["records_per_s"] else None
        res["peak_rss_mb"] = b.peak_rss_mb()
        log(f"  archived/hot consume: {res['archived_over_hot'] or 0:.2f} "
            f"({ca['archived_fraction'] * 100:.0f}% of {arch}'s records came from the archive)")
    finally:
        stop_broker(b, res)
    text = read_log(b)
    per = [tuple(map(int, m.groups())) for m in ARCHIVED_RE.finditer(text)]
    if per:
        res["segments_logged"] = {
            "count": len(per), "segment_bytes": sum(x[0] for x in per), "parquet_bytes": sum(x[1] for x in per),
            "converted_ms_sum": sum(x[2] for x in per), "total_ms_sum": sum(x[3] for x in per),
            "converted_ms_p50": statistics.median(x[2] for x in per),
            "total_ms_p50": statistics.median(x[3] for x in per),
        }
        sl = res["segments_logged"]
        sl["convert_share"] = sl["converted_ms_sum"] / sl["total_ms_sum"] if sl["total_ms_sum"] else None
        sl["convert_MBps_per_task"] = (sl["segment_bytes"] / MB / (sl["converted_ms_sum"] / 1000)
                                       if sl["converted_ms_sum"] else None)
    if not a.keep:
        shutil.rmtree(data, ignore_errors=True)
    return res


# ----------------------------------------------------------------------------
# 4: produce with tiering running vs without
# ----------------------------------------------------------------------------


def produce_vs_tiering(a) -> dict:
    data = a.work / "produce"
    out: dict = {"runs": []}
    log(f"== produce with vs without tiering ({a.produce_mb} MB per run, {a.produce_payload} payload, "
        f"{a.produce_segment_bytes} B segments)")
    b, mport, _ = start_broker(a, data, "produce", 100, a.retention_check_ms)
    try:
        create_topic(b.bootstrap, WARMUP_TOPIC, 1, {"remote.storage.enable": "false"})
        for size in a.produce_sizes:
            count = max(1, a.produce_mb * MB // size)
            for rep in range(a.produce_repeats):
                order = ("off", "on") if rep % 2 == 0 else ("on", "off")
                for mode in order:
                    topic = f"p{size}-{mode}-{rep}"
                    cfg = {"segment.bytes": str(a.produce_segment_bytes)}
                    cfg.update({"remote.storage.enable": "true", "local.retention.bytes": "0"} if mode == "on"
                               else {"remote.storage.enable": "false"})
                    create_topic(b.bootstrap, topic, a.partitions, cfg)
                    m0 = archive_counters(scrape(mport))
                    r = produce(a, b, topic, size, count, a.produce_payload)
                    m1 = archive_counters(scrape(mport))
                    r.update({"tiering": mode, "rep": rep,
                              "uploaded_during_produce": {k: m1[k] - m0[k] for k in ARCHIVE_COUNTERS}})
                    if mode == "on":
                        # how far tiering lagged: time (and CPU) until the local tier is down to the
                        # active segment after the last ack
                        t0, cpu0 = time.monotonic(), b.cpu()
                        caught = False
                        while time.monotonic() - t0 < a.drain_timeout:
                            s = scrape(mport)
                            segs = mper(s, "sediment_partition_segments", topic)
                            if segs and all(v <= 1 for v in segs.values()):
                                caught = True
                                break
                            time.sleep(a.poll_seconds)
                        m2 = archive_counters(scrape(mport))
                        r["catch_up_s"] = time.monotonic() - t0
                        r["catch_up_cpu_s"] = b.cpu() - cpu0
                        r["uploaded_total"] = {k: m2[k] - m0[k] for k in ARCHIVE_COUNTERS}
                        u = r["uploaded_during_produce"]
                        log(f"    during produce: {u['files']:.0f} files / {u['segment_bytes'] / MB:,.0f} MB of "
                            f"segments uploaded; local tier down to the active segment "
                            f"{r['catch_up_s']:.1f}s after the last ack (broker {r['catch_up_cpu_s']:.2f} CPU-s)")
                        if not caught:
                            out.setdefault("problems", []).append(f"{topic}: tiering did not catch up")
                        if m2["errors"] > m0["errors"]:
                            out.setdefault("problems", []).append(
                                f"{topic}: {m2['errors'] - m0['errors']:.0f} upload errors")
                    out["runs"].append(r)
                    if not b.alive():
                        raise RuntimeError(f"broker died; log:\n{b.tail(20)}")
                    time.sleep(a.produce_cooldown_seconds)
    finally:
        stop_broker(b, out)
    if not a.keep:
        shutil.rmtree(data, ignore_errors=True)
    out["summary"] = {}
    for size in a.produce_sizes:
        runs = [r for r in out["runs"] if r["record_bytes"] == size]
        row = {}
        for mode in ("off", "on"):
            rr = [r for r in runs if r["tiering"] == mode]
            if rr:
                row[mode] = {
                    "records_per_s": statistics.mean(r["records_per_s"] for r in rr),
                    "MBps": statistics.mean(r["MBps"] for r in rr),
                    "records_per_s_runs": [r["records_per_s"] for r in rr],
                    "broker_cores": statistics.mean(r.get("broker_cores") or 0 for r in rr),
                    "client_cores": statistics.mean(r["client_cpu_s"] / r["seconds"] for r in rr),
                }
        if "on" in row and "off" in row and row["off"]["records_per_s"]:
            row["drop"] = 1 - row["on"]["records_per_s"] / row["off"]["records_per_s"]
        out["summary"][str(size)] = row
    return out


# ----------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------


def size_label(size: int) -> str:
    return "1 KiB" if size == 1024 else f"{size} B"


def markdown(res: dict, a) -> str:
    m, c = res["machine"], res.get("ceilings", {})
    disk = c.get("disk", {}).get("write_fdatasync_MBps")
    net = c.get("loopback", {}).get("tcp_MBps")
    lines = [f"## Sediment tiering benchmark{' (QUICK smoke run: sizes too small to mean anything)' if a.quick else ''}",
             "",
             f"Machine: {m['nproc']} cores, {m['cpu']}, {m['mem_gib']} GiB RAM, Linux {m['kernel']}, "
             f"data dir on {m['data_dir_fs']}. Commit {res['versions'].get('sediment_commit', '?')}, "
             f"{res['versions'].get('sediment', '')}, rdkperf on librdkafka {res['rdkperf_librdkafka']}.",
             f"Same-run ceilings: {f'{disk:,.0f} MB/s' if disk else 'n/a'} sequential write with fdatasync "
             f"(dd), loopback TCP {f'{net:,.0f} MB/s' if net else 'n/a'} "
             f"({c.get('loopback', {}).get('tool', '?')}). Load average at start / end: "
             f"{res.get('loadavg_start', '?')} / {res.get('loadavg_end', '?')}.",
             "",
             f"Drain: {a.backlog_mb:,} MB of payload per kind into {a.partitions} partitions, "
             f"segment.bytes={a.segment_bytes}, local.retention.bytes=0, produced with the tierer asleep, "
             f"then a restart with --tiering-interval-ms 100 --retention-check-interval-ms "
             f"{a.retention_check_ms}; wall time from the restart's spawn to the last sealed segment's "
             f"upload (includes start-up); MB = segment file bytes. Catch-up: one rdkperf consumer from "
             f"offset 0 of the drained topic (archive) and of a remote.storage.enable=false copy (hot).",
             "",
             "| payload | segments drained | drain MB/s | broker CPU-s (cores) | MB/s per core | Parquet / raw "
             "| catch-up archived rec/s (MB/s) | hot rec/s (MB/s) | archived / hot |",
             "|---|---|---|---|---|---|---|---|---|"]
    for k in res["drain"]:
        d = k.get("drain")
        if "fatal" in k:
            lines.append(f"| {size_label(k['record_bytes'])} {k['payload']} | failed ⚠: {k['fatal'][:120]} "
                         "| | | | | | | |")
            continue
        ca, ch = k.get("consume_archived", {}), k.get("consume_hot", {})
        warn = " ⚠" if k.get("problems") else ""

        def cons(x):
            if not x:
                return "n/a"
            return (f"{x['records_per_s']:,.0f} ({x['MBps']:,.1f})" + (" ⚠" if x.get("warning") else ""))

        ratio = f"{k['archived_over_hot'] * 100:.0f}%" if k.get("archived_over_hot") is not None else "n/a"
        if d:
            lines.append(
                f"| {size_label(k['record_bytes'])} {k['payload']}{warn} | {d['files']:.0f} files, "
                f"{d['segment_bytes'] / MB:,.0f} MB | {d['MBps']:,.1f} "
                f"| {d['broker_cpu_s']:.1f} ({d['broker_cores']:.2f}) | {d['MBps_per_core']:,.1f} "
                f"| {d['parquet_over_raw']:.3f} | {cons(ca)} | {cons(ch)} | {ratio} |")
        else:
            lines.append(f"| {size_label(k['record_bytes'])} {k['payload']} ⚠ | drain incomplete | | | | | "
                         f"{cons(ca)} | {cons(ch)} | |")
    notes = []
    for k in res["drain"]:
        sl, d = k.get("segments_logged"), k.get("drain")
        if sl and d:
            notes.append(
                f"- {size_label(k['record_bytes'])} {k['payload']}: per segment (broker debug log, {sl['count']} "
                f"segments) p50 {sl['total_ms_p50']:.0f} ms, of which conversion {sl['convert_share'] * 100:.0f}% "
                f"({sl['convert_MBps_per_task']:,.0f} MB/s per conversion task), upload + manifest commit the "
                f"rest; segment bytes / payload bytes {d['segment_over_payload']:.3f}; catch-up broker CPU-s "
                f"archived {k.get('consume_archived', {}).get('broker_cpu_s') or 0:.2f} vs hot "
                f"{k.get('consume_hot', {}).get('broker_cpu_s') or 0:.2f}; broker peak RSS "
                f"{k.get('peak_rss_mb_after_drain') or 0:,.0f} MB after the drain, "
                f"{k.get('consume_archived', {}).get('broker_peak_rss_mb_after') or 0:,.0f} MB after the archived "
                f"read, {k.get('peak_rss_mb') or 0:,.0f} MB after the hot read")
    if notes:
        lines += ["", "Where the drain goes:", *notes]
    p = res.get("produce", {})
    if p.get("summary"):
        lines += ["",
                  f"Produce with tiering running: {a.produce_mb:,} MB of `{a.produce_payload}` payload per run, "
                  f"{a.producers} rdkperf producers, acks=all, idempotent, linger.ms={a.linger_ms:g}, "
                  f"{a.partitions} partitions, segment.bytes={a.produce_segment_bytes}; tiering on = "
                  f"remote.storage.enable=true + local.retention.bytes=0 with --tiering-interval-ms 100; "
                  f"{a.produce_repeats} run(s) each, alternating order, {a.produce_cooldown_seconds:g} s idle after each, mean shown; drop = 1 - on / off; "
                  f"broker cores = broker CPU-s / produce wall time; uploaded = segment bytes uploaded "
                  f"while the producers ran, of all the run's sealed segments.",
                  "",
                  "| record | tiering off rec/s (MB/s) | broker cores | tiering on rec/s (MB/s) | broker cores "
                  "| drop | every run in order, rec/s | segments uploaded during produce | tiering done after "
                  "last ack |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for size, row in p["summary"].items():
            on, off = row.get("on"), row.get("off")
            ons = [r for r in p["runs"] if r["record_bytes"] == int(size) and r["tiering"] == "on"]
            up = (f"{statistics.mean(r['uploaded_during_produce']['segment_bytes'] for r in ons) / MB:,.0f} of "
                  f"{statistics.mean(r['uploaded_total']['segment_bytes'] for r in ons) / MB:,.0f} MB"
                  if ons and all("uploaded_total" in r for r in ons) else "")
            seq = ", ".join(f"{r['tiering']} {r['records_per_s'] / 1000:,.0f}k" for r in p["runs"]
                            if r["record_bytes"] == int(size))
            cu = f"{statistics.mean(r.get('catch_up_s', 0) for r in ons):.1f} s" if ons else ""

            def cell(x):
                return f"{x['records_per_s']:,.0f} ({x['MBps']:,.1f})" if x else "n/a"

            lines.append(f"| {size_label(int(size))} | {cell(off)} | {off['broker_cores']:.2f} | {cell(on)} "
                         f"| {on['broker_cores']:.2f} | {row.get('drop', float('nan')) * 100:+.1f}% "
                         f"| {seq} | {up} | {cu} |" if on and off else
                         f"| {size} | {cell(off)} | | {cell(on)} | | | {seq} | | |")
    lines += ["", "Targets:"]
    for k in res["drain"]:
        if k.get("archived_over_hot") is not None:
            ok = k["archived_over_hot"] >= 0.5
            lines.append(f"- [{'x' if ok else ' '}] catch-up from the archive ≥ 50% of hot, "
                         f"{size_label(k['record_bytes'])} {k['payload']}: {k['archived_over_hot'] * 100:.0f}%")
    for size, row in p.get("summary", {}).items():
        if "drop" in row:
            ok = row["drop"] < 0.10
            lines.append(f"- [{'x' if ok else ' '}] produce drop with tiering running < 10%, "
                         f"{size_label(int(size))}: {row['drop'] * 100:+.1f}%")
    problems = [f"- {size_label(k['record_bytes'])} {k['payload']}: {x}" for k in res["drain"]
                for x in k.get("problems", [])]
    problems += [f"- drain {size_label(k['record_bytes'])} {k['payload']}: FATAL {k['fatal'][:300]}"
                 for k in res["drain"] if "fatal" in k]
    problems += [f"- produce: {x}" for x in p.get("problems", [])]
    if p.get("fatal"):
        problems.append(f"- produce: FATAL {p['fatal'][:300]}")
    for r in p.get("runs", []):
        if r.get("warning"):
            problems.append(f"- produce {r['topic']}: {r['warning']}")
    if problems:
        lines += ["", "Problems seen (⚠):", *problems]
    lines += ["", "Payloads: " + "; ".join(f"`{k}` = {v}" for k, v in PAYLOADS.items()
                                           if k in {x['payload'] for x in res['drain']} | {a.produce_payload}) + ".",
              "", f"Run took {res['elapsed_seconds']:.0f} s; JSON: {a.out}"]
    return "\n".join(lines)


# ----------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--sediment-bin", default=str(bench.REPO / "target" / "release" / "sediment"))
    ap.add_argument("--out", default="bench-tiering.json", help="JSON results file")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of under a minute")
    ap.add_argument("--work-dir", default=None, help="data dirs, logs, dd file (default: a fresh temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (data, archive, broker logs)")
    ap.add_argument("--client", default="rdkperf", choices=list(bench.RDKPERF_CLIENTS),
                    help="rdkperf build (system librdkafka, or confluent-kafka's bundled one)")
    ap.add_argument("--flush-policy", default="fsync", choices=["fsync", "interval"])
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--producers", type=int, default=2, help="rdkperf producer processes per produce run")
    ap.add_argument("--linger-ms", type=float, default=10)
    ap.add_argument("--batch-bytes", type=int, default=1_000_000, help="producer batch.size")
    ap.add_argument("--kinds", default="100:text,1024:text,100:random,1024:random,100:same,1024:same",
                    help="drain phases, comma list of RECORD_BYTES:PAYLOAD (payload same|random|text)")
    ap.add_argument("--backlog-mb", type=int, default=1000, help="payload MB (1e6) produced per drain phase")
    ap.add_argument("--segment-bytes", type=int, default=64 * MiB, help="segment.bytes of the drained topics")
    ap.add_argument("--retention-check-ms", type=int, default=500,
                    help="--retention-check-interval-ms while tiering runs (local deletes after upload)")
    ap.add_argument("--produce-sizes", default="100,1024", help="record sizes of the with/without-tiering runs")
    ap.add_argument("--produce-mb", type=int, default=1000, help="payload MB per with/without-tiering run")
    ap.add_argument("--produce-payload", default="text", choices=list(PAYLOADS))
    ap.add_argument("--produce-segment-bytes", type=int, default=16 * MiB)
    ap.add_argument("--produce-repeats", type=int, default=2, help="runs per (size, tiering on/off)")
    ap.add_argument("--produce-cooldown-seconds", type=float, default=10,
                    help="idle time after every with/without-tiering run (after a tiered run's catch-up)")
    ap.add_argument("--idle-seconds", type=float, default=5, help="a consumer gives up after this long without data")
    ap.add_argument("--max-run-seconds", type=float, default=180, help="cap on any one produce/consume run")
    ap.add_argument("--poll-seconds", type=float, default=0.2, help="metrics polling period")
    ap.add_argument("--stall-seconds", type=float, default=60, help="a drain without progress this long fails")
    ap.add_argument("--drain-timeout", type=float, default=600)
    ap.add_argument("--dd-mib", type=int, default=1024)
    ap.add_argument("--dsync-writes", type=int, default=1000)
    ap.add_argument("--iperf-seconds", type=float, default=3)
    ap.add_argument("--skip", default="", help="comma list of steps to skip: drain,produce,ceilings")
    a = ap.parse_args(argv)
    if a.quick:  # smaller defaults; options given explicitly still win
        for name, value in (("kinds", "100:random,1024:text"), ("backlog_mb", 24), ("segment_bytes", 2 * MiB),
                            ("produce_sizes", "1024"), ("produce_mb", 24), ("produce_segment_bytes", 1 * MiB),
                            ("produce_repeats", 1), ("dd_mib", 64), ("dsync_writes", 100), ("iperf_seconds", 1),
                            ("idle_seconds", 3), ("max_run_seconds", 30), ("stall_seconds", 20),
                            ("drain_timeout", 60)):
            if getattr(a, name) == ap.get_default(name):
                setattr(a, name, value)
    a.kinds = [(int(k.split(":")[0]), k.split(":")[1]) for k in a.kinds.split(",") if k.strip()]
    for size, payload in a.kinds:
        if payload not in PAYLOADS:
            ap.error(f"unknown payload {payload}")
    a.produce_sizes = [int(s) for s in a.produce_sizes.split(",") if s.strip()]
    a.skip = {s.strip() for s in a.skip.split(",") if s.strip()}
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    if bench.missing_binary(a.sediment_bin):
        return 2
    bench.stop_children_on_signal()
    # per-segment "archived segment" lines (converted_ms, total_ms) in the broker logs
    os.environ.setdefault("SEDIMENT_LOG", "info,sediment_tiering=debug")
    a.work = Path(a.work_dir) if a.work_dir else Path(tempfile.mkdtemp(prefix="sediment-tiering-"))
    a.work.mkdir(parents=True, exist_ok=True)
    t_begin = time.monotonic()
    loadavg = lambda: " ".join(Path("/proc/loadavg").read_text().split()[:3])  # noqa: E731
    res: dict = {"command": " ".join([sys.executable, *sys.argv]), "quick": a.quick,
                 "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                 "settings": {k: v for k, v in vars(a).items() if k != "work"}, "payloads": PAYLOADS,
                 "drain": [], "loadavg_start": loadavg()}
    try:
        res["machine"] = bench.machine_info(a.work)
        bench.prepare_run(a, res)
        log(f"machine: {res['machine']}")
        log(f"versions: {res['versions']}")
        if "drain" not in a.skip:
            for size, payload in a.kinds:
                try:
                    res["drain"].append(drain_kind(a, size, payload))
                except Exception as e:  # noqa: BLE001 - record it, go on with the next kind
                    log(f"  ERROR drain {size}:{payload}: {e}")
                    res["drain"].append({"record_bytes": size, "payload": payload, "fatal": str(e)})
                finally:
                    bench.stop_all_children()
        if "produce" not in a.skip:
            try:
                res["produce"] = produce_vs_tiering(a)
            except Exception as e:  # noqa: BLE001
                log(f"  ERROR produce with/without tiering: {e}")
                res["produce"] = {"fatal": str(e)}
    finally:
        bench.stop_all_children()
        if not a.keep and not a.work_dir:
            shutil.rmtree(a.work, ignore_errors=True)
    res["elapsed_seconds"] = time.monotonic() - t_begin
    res["loadavg_end"] = loadavg()
    text = markdown(res, a)
    res["markdown"] = text
    Path(a.out).write_text(json.dumps(res, indent=2, default=str) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
