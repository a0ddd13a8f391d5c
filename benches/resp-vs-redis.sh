#!/usr/bin/env bash
# RESP GET/SET, corekv against Redis, with corekv-bench --compare (alternating rounds, one run).
#
#   benches/resp-vs-redis.sh [SHARDS] [SECONDS] [ROUNDS] [-- extra corekv-node flags]
#
# Starts redis-server (no persistence) and corekv-node (--durability none, SHARDS shards,
# default 1) on free loopback ports, then for each case runs
#   corekv-bench --target resp://redis --compare resp://corekv --rounds ROUNDS ...
# (rounds alternate A B, B A, ...), 100,000 prefilled keys, 100-byte values, GET:SET 1:1, and
# prints the comparison table (ratios are corekv / redis). JSON reports go to
# target/resp-vs-redis/*.json, percentile plots next to them (.svg).
#
# On a 2-core machine, 1 shard gives corekv the same one core Redis's main thread uses and leaves
# the other to the load generator. Needs redis-server and release builds:
#   cargo build --release -p corekv-node -p corekv-benches
set -euo pipefail
cd "$(dirname "$0")/.."

shards=${1:-1}
seconds=${2:-5}
rounds=${3:-3}
shift $(($# < 3 ? $# : 3))
[ "${1:-}" = "--" ] && shift
extra=("$@")
out=${CARGO_TARGET_DIR:-target}/resp-vs-redis
mkdir -p "$out"
command -v redis-server >/dev/null || { echo "needs redis-server (apt-get install redis-server)" >&2; exit 2; }
# shellcheck source=benches/script-common.sh
source benches/script-common.sh

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" >"$work/redis.log" 2>&1 &
pids+=($!)
corekv_port=$(free_port)
"$bin/corekv-node" --shards "$shards" --port "$corekv_port" --native-port 0 --durability none \
  --data-dir "$work/corekv" "${extra[@]}" >"$work/corekv.log" 2>&1 &
pids+=($!)
wait_ready "$work/corekv.log"
for _ in $(seq 100); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done

echo "corekv-node --shards $shards ${extra[*]} vs redis-server $(redis-server --version | awk '{print $3}')"
for case in "c1:--connections 1 --pipeline 1" "c50:--connections 50 --pipeline 1" "c50-p16:--connections 50 --pipeline 16"; do
  name=${case%%:*}
  # shellcheck disable=SC2086
  flags=(${case#*:})
  echo
  echo "== $name: ${flags[*]}"
  "$bin/corekv-bench" --target "resp://127.0.0.1:$redis_port" --target-name redis \
    --compare "resp://127.0.0.1:$corekv_port" --compare-name corekv \
    "${flags[@]}" --ratio 1:1 --keys 100000 --prefill --value-size 100 \
    --duration "${seconds}s" --warmup 1s --rounds "$rounds" --no-progress \
    --json "$out/$name.json" --plot "$out/$name.svg" 2>/dev/null |
    sed -n '/^throughput/,/^ratios/p'
done
