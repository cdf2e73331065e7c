#!/usr/bin/env bash
# One produce-latency run against a fresh broker, for A/B comparisons of
# broker builds and flags (bench.py runs the whole curve; this runs one level).
#
#   benches/e2e/latency.sh BINARY PARTITIONS RATE [SECONDS] [serve flags...]
#
# Starts BINARY serve on 127.0.0.1:19092 with a fresh data dir (metrics on
# 127.0.0.1:19093), creates a PARTITIONS-partition topic, runs one
# `rdkperf latency` (100 B records, acks=all, idempotent, linger.ms=$LINGER,
# default 1; 2 s warm-up, SECONDS measured, default 8), prints produce->ack
# and produce->consume p50/p99/p999, the broker's CPU seconds over the run
# and its fsync-duration histogram, stops the broker and removes the data.
#
# RDKPERF: the rdkperf binary (default: built once into /tmp/rdkperf-latency from
# rdkperf.c, linked to the librdkafka bundled with the test venv's
# confluent-kafka, else to the system librdkafka).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
BIN=$1 P=$2 RATE=$3 SECS=${4:-8}
shift $(($# < 4 ? $# : 4))
LINGER=${LINGER:-1}
RDKPERF=${RDKPERF:-/tmp/rdkperf-latency}
if [ ! -x "$RDKPERF" ]; then
  lib=$(ls "$HERE"/../../.venv/lib/python3*/site-packages/confluent_kafka.libs/librdkafka*.so* 2>/dev/null | head -n 1 || true)
  if [ -n "$lib" ]; then
    gcc -O2 -o "$RDKPERF" "$HERE/rdkperf.c" "$lib" "-Wl,-rpath,$(dirname "$lib")" -lpthread
  else
    gcc -O2 -o "$RDKPERF" "$HERE/rdkperf.c" -lrdkafka -lpthread
  fi
fi
D=$(mktemp -d /tmp/sediment-latency.XXXX)
"$BIN" serve --data-dir "$D/data" --kafka-addr 127.0.0.1:19092 --pg-addr 127.0.0.1:15433 \
  --metrics-addr 127.0.0.1:19093 "$@" >"$D/broker.log" 2>&1 &
BP=$!
trap 'kill -TERM $BP 2>/dev/null || true; wait $BP 2>/dev/null || true; rm -rf "$D"' EXIT
for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/19092) 2>/dev/null && break; sleep 0.1; done
"$BIN" --bootstrap-server 127.0.0.1:19092 topic create lat --partitions "$P" >/dev/null
"$BIN" --bootstrap-server 127.0.0.1:19092 topic create lat-warm --partitions 1 >/dev/null
cpu() { awk -v hz="$(getconf CLK_TCK)" '{ print ($14 + $15) / hz }' "/proc/$BP/stat"; }
CPU0=$(cpu)
"$RDKPERF" latency -b 127.0.0.1:19092 -t lat -s 100 --rate "$RATE" --seconds "$SECS" --warmup 2 \
  --drain 3 --linger-ms "$LINGER" --from beginning --warmup-topic lat-warm --max-seconds 60 2>/dev/null |
  tail -n 1 | python3 -c "
import json, sys
d = json.loads(sys.stdin.read())
print('partitions %d, %.0f rec/s: ack p50/p99/p999 %.2f / %.2f / %.2f ms, produce->consume %.2f / %.2f / %.2f ms (%d samples)' % (
    d['partitions'], d['achieved_rate'], d['ack_p50_ms'], d['ack_p99_ms'], d['ack_p999_ms'],
    d['p50_ms'], d['p99_ms'], d['p999_ms'], d['ack_samples']))"
echo "broker CPU-s: $(python3 -c "print(round($(cpu) - $CPU0, 2))")"
curl -s 127.0.0.1:19093/metrics | python3 -c "
import sys
b = {}
for line in sys.stdin:
    if line.startswith('sediment_fsync_duration_seconds'):
        k, v = line.rsplit(None, 1)
        b[k] = float(v)
n = b.get('sediment_fsync_duration_seconds_count', 0)
under = [(le, b.get('sediment_fsync_duration_seconds_bucket{le=\"%s\"}' % le, 0)) for le in ('0.001', '0.002', '0.004', '0.008')]
print('fsyncs %d; ' % n + ', '.join('%.1f%% under %s s' % (c / n * 100, le) for le, c in under) if n else 'no fsyncs')"
