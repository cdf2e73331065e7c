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
# and the broker's latency histograms (request durations of Produce and
# Fetch, produce durable wait, flush queue wait, fsync) as p50/p99 bucket
# bounds, stops the broker and removes the data.
#
# LOAD=N adds N records/s of 100 B from two paced rdkperf producers
# (linger.ms=10, the throughput runs' settings) on a 4-partition topic
# `load` for the whole run: bench.py's half-load level by hand.
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
LOAD=${LOAD:-0}
LOADERS=()
if [ "$LOAD" != 0 ]; then
  "$BIN" --bootstrap-server 127.0.0.1:19092 topic create load --partitions 4 >/dev/null
  for _ in 1 2; do
    "$RDKPERF" produce -b 127.0.0.1:19092 -t load -n 10000000000 -s 100 --rate $((LOAD / 2)) \
      --seconds $((SECS + 6)) --linger-ms 10 --batch-size 1000000 --max-seconds $((SECS + 60)) \
      >"$D/load.$_.json" 2>/dev/null &
    LOADERS+=($!)
  done
  sleep 1
fi
"$RDKPERF" latency -b 127.0.0.1:19092 -t lat -s 100 --rate "$RATE" --seconds "$SECS" --warmup 2 \
  --drain 3 --linger-ms "$LINGER" --from beginning --warmup-topic lat-warm --max-seconds 60 2>/dev/null |
  tail -n 1 | python3 -c "
import json, sys
d = json.loads(sys.stdin.read())
print('partitions %d, %.0f rec/s: ack p50/p99/p999 %.2f / %.2f / %.2f ms, produce->consume %.2f / %.2f / %.2f ms (%d samples)' % (
    d['partitions'], d['achieved_rate'], d['ack_p50_ms'], d['ack_p99_ms'], d['ack_p999_ms'],
    d['p50_ms'], d['p99_ms'], d['p999_ms'], d['ack_samples']))"
echo "broker CPU-s: $(python3 -c "print(round($(cpu) - $CPU0, 2))")"
for p in "${LOADERS[@]}"; do wait "$p" || true; done
if [ "$LOAD" != 0 ]; then
  cat "$D"/load.*.json | PYTHONPATH="$HERE" python3 -c "
import json, sys, bench
rs = [json.loads(l) for l in sys.stdin if l.startswith('{')]
print('load: %.0f rec/s asked, %.0f achieved' % ($LOAD, sum(r['records'] for r in rs) / bench.group_seconds(rs)))"
fi
curl -s 127.0.0.1:19093/metrics | PYTHONPATH="$HERE" python3 -c "
import sys, bench
h = bench.parse_histograms(sys.stdin.read())
for name in ['sediment_request_duration_seconds{api=\"Produce\"}', 'sediment_request_duration_seconds{api=\"Fetch\"}',
             'sediment_produce_durable_wait_seconds', 'sediment_flush_queue_wait_seconds',
             'sediment_fsync_duration_seconds']:
    q = bench.histogram_quantiles({}, h, name)
    if q:
        print('%-55s n %8d  p50 <= %g ms  p99 <= %g ms  p99.9 <= %g ms' % (
            name[9:], q['samples'], q['p50_le_ms'], q['p99_le_ms'], q['p999_le_ms']))"
