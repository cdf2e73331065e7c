#!/usr/bin/env bash
# Runs every test Sediment has, from a fresh Debian (bookworm) machine or a
# developer's checkout alike:
#
#   1. installs what the tests need, idempotently: kcat (Debian's, librdkafka
#      2.0), psql, a JDK and Debian's Postgres JDBC driver; Python clients
#      (Kafka, psycopg), moto's S3 server, pyarrow and duckdb into ./.venv
#      (tests/requirements.txt); kafkajs into tests/js/node_modules;
#   2. cargo fmt --check, clippy with -D warnings, a debug build;
#   3. the Rust unit, property and doc tests (cargo test --workspace);
#   4. the end-to-end suite in tests/e2e: the real binary and real clients.
#
# It stops at the first failure. Extra arguments go to pytest, e.g.
#   scripts/test-all.sh -k crash
# SEDIMENT_E2E_ONLY=1 skips steps 2-3 (uses an already built target/debug/sediment).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
START=$SECONDS
export DEBIAN_FRONTEND=noninteractive
export PIP_DISABLE_PIP_VERSION_CHECK=1

section() {
  printf '\n==== %s  [+%ds] ====\n' "$*" "$((SECONDS - START))"
}

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

# --- 1. dependencies -----------------------------------------------------------
section "system packages (apt)"
apt_needed=()
command -v kcat >/dev/null 2>&1 || apt_needed+=(kcat)
command -v python3 >/dev/null 2>&1 || apt_needed+=(python3)
# Debian's python3 can only make a venv with python3-venv (it carries ensurepip)
python3 -c 'import ensurepip' >/dev/null 2>&1 || apt_needed+=(python3-venv)
command -v node >/dev/null 2>&1 || apt_needed+=(nodejs)
command -v npm >/dev/null 2>&1 || apt_needed+=(npm)
# SQL tests: psql, and Debian's JDBC driver run by a JDK (java runs the
# single-file test program from source, which needs the compiler module)
command -v psql >/dev/null 2>&1 || apt_needed+=(postgresql-client)
command -v javac >/dev/null 2>&1 || apt_needed+=(default-jdk-headless)
[ -f /usr/share/java/postgresql.jar ] || apt_needed+=(libpostgresql-jdbc-java)
if [ "${#apt_needed[@]}" -gt 0 ]; then
  echo "installing: ${apt_needed[*]}"
  as_root apt-get update -qq
  as_root apt-get install -y -qq --no-install-recommends "${apt_needed[@]}" >/dev/null
else
  echo "kcat, python3, node, npm, psql, a JDK and the JDBC driver already present"
fi
kcat -V 2>&1 | head -n 1 || true

section "python packages (.venv)"
if [ ! -x .venv/bin/python ]; then
  rm -rf .venv
  python3 -m venv .venv
fi
PY="$ROOT/.venv/bin/python"
"$PY" -m pip install --quiet -r tests/requirements.txt
"$PY" -c 'import confluent_kafka as c, kafka; print("confluent-kafka", c.__version__, "librdkafka", c.libversion()[0], "kafka-python", kafka.__version__)'
# the tiering tests: moto's S3 server (moto_server), boto3, pyarrow and duckdb
"$PY" -c 'import moto, boto3, pyarrow, duckdb; print("moto", moto.__version__, "boto3", boto3.__version__, "pyarrow", pyarrow.__version__, "duckdb", duckdb.__version__)'
"$PY" -c 'import psycopg; print("psycopg", psycopg.__version__)'
psql --version
test -x .venv/bin/moto_server || { echo "moto_server missing from .venv (moto[server])" >&2; exit 1; }

section "node packages (kafkajs)"
if [ ! -f tests/js/node_modules/kafkajs/package.json ] \
   || [ tests/js/package-lock.json -nt tests/js/node_modules/.package-lock.json ]; then
  (cd tests/js && npm ci --no-audit --no-fund --loglevel=error)
fi
node -e 'console.log("node", process.version, "kafkajs", require("./tests/js/node_modules/kafkajs/package.json").version)'

if [ "${SEDIMENT_E2E_ONLY:-0}" != 1 ]; then
  # --- 2. format, lints, build ---------------------------------------------------
  section "cargo fmt --check"
  cargo fmt --all -- --check

  section "cargo clippy (-D warnings)"
  cargo clippy --workspace --all-targets -- -D warnings

  section "cargo build (debug)"
  cargo build --workspace

  # --- 3. Rust tests -------------------------------------------------------------
  # cargo test rather than nextest: it also runs doctests in the same pass, and
  # on two cores nextest's per-test processes buy nothing.
  section "cargo test (unit, property and doc tests)"
  cargo test --workspace
fi

# --- 4. end to end -------------------------------------------------------------------
section "end-to-end tests (pytest, real binary, real clients)"
export SEDIMENT_BIN="$ROOT/target/debug/sediment"
"$SEDIMENT_BIN" --help >/dev/null
"$PY" -m pytest tests/e2e -v -p no:cacheprovider --timeout=300 -rfE "$@"

section "all tests passed in $((SECONDS - START))s"
