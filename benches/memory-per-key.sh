#!/usr/bin/env bash
# Memory per key, measured the same way for a corekv node and a Redis server in one run:
# growth of the server's resident memory after loading about 1,000,000 random keys of 16 bytes
# ("key:" + 12 digits) with 32-byte values through redis-benchmark, divided by DBSIZE.
#
# usage: benches/memory-per-key.sh [--keys N] [--shards N]
# Builds corekv-node in release mode if needed. Needs redis-server and redis-benchmark.
set -euo pipefail
cd "$(dirname "$0")/.."

keys=1000000; shards=2
while [ $# -gt 0 ]; do
  case "$1" in
    --keys) keys="$2"; shift ;;
    --shards) shards="$2"; shift ;;
    *) echo "usage: $0 [--keys N] [--shards N]" >&2; exit 2 ;;
  esac
  shift
done

cargo build --release -q -p corekv-node
work=$(mktemp -d)
node_pid=""; redis_port=""
cleanup() {
  [ -n "$node_pid" ] && kill "$node_pid" 2>/dev/null && wait "$node_pid" 2>/dev/null
  [ -n "$redis_port" ] && redis-cli -p "$redis_port" shutdown nosave >/dev/null 2>&1
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

node_port=$(free_port)
target/release/corekv-node --port "$node_port" --shards "$shards" --data-dir "$work/node" >"$work/node.log" 2>&1 &
node_pid=$!
redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" --daemonize yes --logfile "$work/redis.log"
redis_pid=""
for _ in $(seq 100); do
  redis-cli -p "$node_port" ping >/dev/null 2>&1 && redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break
  sleep 0.1
done
redis_pid=$(redis-cli -p "$redis_port" info server | awk -F: '/^process_id/ {print $2}' | tr -d '\r')

measure() { # name port pid
  local before after n
  before=$(rss_kb "$3")
  # -r 10^8 makes nearly every key unique; keys are "key:" + 12 zero-padded digits = 16 bytes.
  redis-benchmark -p "$2" -t set -n "$keys" -r 100000000 -d 32 -c 50 -P 32 -q >/dev/null
  after=$(rss_kb "$3")
  n=$(redis-cli -p "$2" dbsize)
  awk -v name="$1" -v b="$before" -v a="$after" -v n="$n" \
    'BEGIN {printf "%-8s keys=%d rss_before=%.1fMiB rss_after=%.1fMiB bytes_per_key=%.1f\n", name, n, b/1024, a/1024, (a-b)*1024/n}'
}
measure corekv "$node_port" "$node_pid"
measure redis "$redis_port" "$redis_pid"
