#!/usr/bin/env bash
# Runs every load target of docs/BENCHMARKS.md in one session: the server
# and the baselines alternate, round after round, against the local
# PostgreSQL and RabbitMQ. Each run's JSON report goes to OUT_DIR and one
# line a run to OUT_DIR/runs.tsv, with the CPU seconds that the whole
# machine, RabbitMQ and the server used during it.
#
# Usage: cmd/loadtest/targets.sh [OUT_DIR]
#
#   ROUNDS    rounds of the alternating runs (default 3)
#   DURATION  length of each rate-limited run (default 20s)
#   ONLY      space-separated subset of: flat rate noisy backlog many resize
#             (default all)
#
# It needs psql, curl, jq and rabbitmqctl, creates the databases
# lt_targets_server and lt_targets_base through the postgres role on
# 127.0.0.1:5432 and drops them at the end. Run it on an otherwise idle
# machine: a second process on the same cores moves every figure.
set -euo pipefail
cd "$(dirname "$0")/../.."

OUT=${1:-$(mktemp -d /tmp/targets.XXXXXX)}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-20s}
ONLY=${ONLY:-flat rate noisy backlog many resize}
mkdir -p "$OUT"

PG_ADMIN="postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
SERVER_DB="postgres://postgres@127.0.0.1:5432/lt_targets_server?sslmode=disable"
BASE_DB="postgres://postgres@127.0.0.1:5432/lt_targets_base?sslmode=disable"
SECRET="targets-$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
URL="http://127.0.0.1:$PORT"
BIN="$OUT/bin"

log() { printf '==> %s\n' "$*" >&2; }

wanted() { [[ " $ONLY " == *" $1 "* ]]; }

cleanup() {
  stop_server || true
  for db in lt_targets_server lt_targets_base; do
    psql -q "$PG_ADMIN" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  done
}
trap cleanup EXIT

start_server() {
  JWT_SECRET="$SECRET" DATABASE_URL="$SERVER_DB" HTTP_ADDR="127.0.0.1:$PORT" LOG_FORMAT=text \
    "$BIN/server" >>"$OUT/server.log" 2>&1 &
  server_pid=$!
  local started
  started=$(date +%s%N)
  for _ in $(seq 600); do
    if curl -sf "$URL/ready" >/dev/null; then
      ready_ms=$((($(date +%s%N) - started) / 1000000))
      return 0
    fi
    sleep 0.05
  done
  echo "error: the server did not become ready within 30 s; see $OUT/server.log" >&2
  return 1
}

stop_server() {
  if [[ -n "${server_pid:-}" ]]; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" || true
    server_pid=
  fi
}

# cpu_ticks PID... prints the user plus system clock ticks of the processes.
cpu_ticks() {
  local total=0 pid
  for pid in "$@"; do
    if [[ -r /proc/$pid/stat ]]; then
      total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
    fi
  done
  echo "$total"
}

# busy_ticks prints the clock ticks that all cores spent on anything but
# idle and I/O wait.
busy_ticks() { awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat; }

rabbit_pids() { pgrep -u rabbitmq -f 'beam.smp.*rabbit boot' || true; }

vacuum() {
  psql -q "$SERVER_DB" -c VACUUM >/dev/null
  psql -q "$BASE_DB" -c VACUUM >/dev/null
}

# run LABEL ARGS... runs the harness once and records the report.
run() {
  local label=$1
  shift
  vacuum
  local hz busy0 rabbit0 srv0 busy1 rabbit1 srv1
  hz=$(getconf CLK_TCK)
  busy0=$(busy_ticks)
  rabbit0=$(cpu_ticks $(rabbit_pids))
  srv0=$(cpu_ticks ${server_pid:-})
  local status=0
  "$BIN/loadtest" -json "$@" >"$OUT/$label.json" 2>>"$OUT/loadtest.log" || status=$?
  busy1=$(busy_ticks)
  rabbit1=$(cpu_ticks $(rabbit_pids))
  srv1=$(cpu_ticks ${server_pid:-})
  if [[ $status -ne 0 ]]; then
    echo "error: run $label failed with status $status; see $OUT/$label.json" >&2
    return 1
  fi
  jq -r --arg run "$label" \
    --arg cpu "$(awk -v hz="$hz" -v b=$((busy1 - busy0)) -v r=$((rabbit1 - rabbit0)) -v s=$((srv1 - srv0)) \
      'BEGIN { printf "%.1f %.1f %.1f", b / hz, r / hz, s / hz }')" \
    '[$run, (.published_per_second | floor), (.stored_per_second | floor),
      .latency_ms.p50, .latency_ms.p95, .latency_ms.p99, .latency_ms.max,
      (if (.tenants | length) > 1 then [.tenants[1:][].latency_ms.p99] | max else "" end),
      .missing, .duplicates, $cpu] | @tsv' "$OUT/$label.json" | tee -a "$OUT/runs.tsv"
}

server_lt() { run "$1" -server "$URL" -jwt-secret "$SECRET" "${@:2}"; }
base_lt() { run "$1" -database-url "$BASE_DB" "${@:2}"; }

log "building into $BIN"
mkdir -p "$BIN"
go build -o "$BIN/server" ./cmd/server
go build -o "$BIN/loadtest" ./cmd/loadtest

cleanup
psql -q "$PG_ADMIN" -c "CREATE DATABASE lt_targets_server" >/dev/null
psql -q "$PG_ADMIN" -c "CREATE DATABASE lt_targets_base" >/dev/null
printf 'run\tpublished/s\tstored/s\tp50\tp95\tp99\tmax\tp99 of the other tenants, max\tmissing\tduplicates\tcpu_s all rabbitmq server\n' \
  >"$OUT/runs.tsv"
{
  echo "date: $(date -u +%FT%TZ)"
  echo "commit: $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (modified)')"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-), $(nproc) cores"
  echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$OUT/machine.txt"

start_server
log "server ready on $URL in ${ready_ms} ms"

for round in $(seq "$ROUNDS"); do
  if wanted flat; then
    log "round $round: flat out"
    server_lt "flat-server-$round" -tenants 10 -messages 100000
    stop_server
    base_lt "flat-batch-$round" -baseline batch -tenants 10 -messages 100000
    base_lt "flat-naive-$round" -baseline naive -tenants 10 -messages 20000
    start_server
  fi
  if wanted rate; then
    log "round $round: 5,000 msg/s"
    server_lt "rate5000-server-$round" -tenants 10 -rate 5000 -duration "$DURATION"
    stop_server
    base_lt "rate5000-broker-$round" -baseline broker -tenants 10 -rate 5000 -duration "$DURATION"
    base_lt "rate5000-batch-$round" -baseline batch -tenants 10 -rate 5000 -duration "$DURATION"
    start_server
  fi
  if wanted noisy; then
    log "round $round: noisy neighbour"
    server_lt "alone-server-$round" -tenants 1 -rate 100 -duration "$DURATION"
    server_lt "skew-server-$round" -tenants 10 -skew 0.9 -rate 9000 -duration "$DURATION"
    stop_server
    base_lt "alone-broker-$round" -baseline broker -tenants 1 -rate 100 -duration "$DURATION"
    base_lt "skew-broker-$round" -baseline broker -tenants 10 -skew 0.9 -rate 9000 -duration "$DURATION"
    base_lt "skew-batch-$round" -baseline batch -tenants 10 -skew 0.9 -rate 9000 -duration "$DURATION"
    start_server
  fi
done

if wanted backlog; then
  for round in 1 2; do
    log "backlog drain $round"
    prefix="lt-backlog-$round"
    server_lt "backlog-setup-$round" -tenants 10 -phase setup -tenant-prefix "$prefix"
    stop_server
    server_lt "backlog-publish-$round" -tenants 10 -phase publish -tenant-prefix "$prefix" -messages 200000
    start_server
    echo "backlog-ready-$round: ${ready_ms} ms" >>"$OUT/figures.txt"
    server_lt "backlog-server-$round" -tenants 10 -phase verify -tenant-prefix "$prefix" \
      -messages 200000 -database-url "$SERVER_DB"
    stop_server
    base_lt "backlog-broker-$round" -baseline broker -backlog -tenants 10 -messages 200000
    base_lt "backlog-batch-$round" -baseline batch -backlog -tenants 10 -messages 200000
    start_server
  done
fi

if wanted many; then
  log "1,000 tenants with one worker each"
  server_lt many-setup -tenants 1000 -workers 1 -phase setup -tenant-prefix lt-many
  stop_server
  start_server
  echo "many-ready: ${ready_ms} ms after start with 1,000 tenants" >>"$OUT/figures.txt"
  sleep 5
  ticks0=$(cpu_ticks "$server_pid")
  sleep 30
  ticks1=$(cpu_ticks "$server_pid")
  echo "many-idle: $((ticks1 - ticks0)) ticks of $(getconf CLK_TCK)/s in 30 s," \
    "RSS $(ps -o rss= -p "$server_pid") KiB, $(ls "/proc/$server_pid/task" | wc -l) threads" >>"$OUT/figures.txt"
  server_lt many-publish -tenants 1000 -workers 1 -phase publish -tenant-prefix lt-many -messages 10000
  server_lt many-verify -tenants 1000 -workers 1 -phase verify -tenant-prefix lt-many -messages 10000 \
    -database-url "$SERVER_DB"
fi

if wanted resize; then
  log "resize with a backlog"
  server_lt resize-setup -tenants 1 -workers 3 -phase setup -tenant-prefix lt-resize
  stop_server
  server_lt resize-publish -tenants 1 -phase publish -tenant-prefix lt-resize -messages 100000
  start_server
  token=$(JWT_SECRET="$SECRET" "$BIN/server" token --role admin)
  for n in 10 1 3; do
    depth=$(rabbitmqctl list_queues -q --no-table-headers name messages 2>/dev/null |
      awk '$1 == "tenant.lt-resize-0" {print $2}')
    took=$(curl -sf -o /dev/null -w '%{time_total}' -X PUT -H "Authorization: Bearer $token" \
      -H 'Content-Type: application/json' -d "{\"worker_count\": $n}" \
      "$URL/api/v1/tenants/lt-resize-0/config/concurrency")
    echo "resize to $n workers: ${took}s with $depth messages queued" >>"$OUT/figures.txt"
    sleep 1
  done
  server_lt resize-verify -tenants 1 -phase verify -tenant-prefix lt-resize -messages 100000 \
    -database-url "$SERVER_DB"
fi

log "results in $OUT (runs.tsv, figures.txt, one JSON report a run)"
cat "$OUT/figures.txt" 2>/dev/null || true
