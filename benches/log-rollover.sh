#!/usr/bin/env bash
# Write latency across log segment roll-overs, `--durability always`, optionally against a
# baseline build of corekv-node, alternately.
#
#   benches/log-rollover.sh [--value BYTES] [--seconds N] [--rounds N] [--baseline BIN]
#
# Each run starts a fresh node (1 shard, --no-pin, --durability always, --rewrite-percentage 0,
# default 64 MiB segments) on an empty data dir under target/, loads it with
#   corekv-bench --ratio 0:1 --keys 1000 --connections 4 --value-size BYTES --duration Ns
# (blocking loop: each SET waits for its fdatasync), and prints the SET row (ops/s, p50 ... max)
# with the segments the run wrote. The data dir is on the disk the repository is on (the log is
# O_DIRECT: not tmpfs). With --baseline, the given binary runs alternately with this build's.
set -euo pipefail
cd "$(dirname "$0")/.."

value=1024; seconds=30; rounds=3; baseline=""
while [ $# -gt 0 ]; do
  case "$1" in
    --value) value="$2"; shift ;;
    --seconds) seconds="$2"; shift ;;
    --rounds) rounds="$2"; shift ;;
    --baseline) baseline="$2"; shift ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "usage: $0 [--value BYTES] [--seconds N] [--rounds N] [--baseline BIN]" >&2; exit 2 ;;
  esac
  shift
done
# shellcheck source=benches/script-common.sh
source benches/script-common.sh
data=${CARGO_TARGET_DIR:-target}/log-rollover.$$
trap 'cleanup; rm -rf "$data"' EXIT

# run NAME BIN: one measured run on a fresh data dir.
run() {
  local name=$1 node=$2 port dir pid segments
  port=$(free_port)
  dir=$data/$name
  rm -rf "$dir"; mkdir -p "$dir"
  "$node" --port "$port" --native-port 0 --rdma-port 0 --shards 1 --no-pin --durability always \
    --rewrite-percentage 0 --data-dir "$dir" >"$work/$name.log" 2>&1 &
  pid=$!
  pids+=("$pid")
  wait_ready "$work/$name.log"
  "$bin/corekv-bench" --target "resp://127.0.0.1:$port" --ratio 0:1 --keys 1000 --connections 4 \
    --value-size "$value" --duration "${seconds}s" --warmup 1s >"$work/$name.out" 2>&1
  segments=$(redis-cli -p "$port" info persistence | tr -d '\r' | sed -n 's/^log_segments://p')
  kill "$pid"; wait "$pid" 2>/dev/null || true
  printf '%-9s %s  segments %s\n' "$name" "$(grep '^SET' "$work/$name.out" | cut -c4-)" "$segments"
  rm -rf "$dir"
}

echo "SET ${value} B, 4 connections, ${seconds} s per run, --durability always; latency in µs"
echo "name         requests        ops/s   misses  errors       p50       p90       p99     p99.9    p99.99       max      mean"
for r in $(seq "$rounds"); do
  run "this" "$bin/corekv-node"
  [ -n "$baseline" ] && run "baseline" "$baseline"
  [ "$r" -lt "$rounds" ] || break
done
