#!/usr/bin/env bash
# The native protocol over RDMA against the same protocol over TCP, on one node, side by side.
#
#   benches/rdma-vs-tcp.sh [soft|verbs] [SECONDS] [ROUNDS] [-- extra corekv-node flags]
#
# Starts one corekv-node (--durability none, 1 shard, --rdma PROVIDER, default soft) and, for each
# case, runs
#   corekv-bench --target native://node --compare rdma://node --rounds ROUNDS ...
# (rounds alternate A B, B A, ...), 1000 prefilled keys, 100-byte values, GET:SET 1:1, and prints
# the comparison table (ratios are RDMA / TCP). JSON reports go to target/rdma-vs-tcp/*.json.
#
# With the soft provider this measures the software provider's overhead (it moves every message
# through TCP links and threads), not RDMA. On a machine with an RDMA NIC, build both binaries with
# verbs and pass the device flags after `--`:
#   cargo build --release -p corekv-node --features rdma-verbs
#   cargo build --release -p corekv-benches --features rdma-verbs
#   benches/rdma-vs-tcp.sh verbs 10 3 -- --rdma-device mlx5_0 --rdma-gid-index 3
# (the load generator then uses the same device: COREKV_BENCH_RDMA_FLAGS overrides its flags,
# e.g. "--rdma-device mlx5_0 --rdma-gid-index 3"). The locked-memory limit must cover the node's
# pool and the bench's sessions (`ulimit -l unlimited`).
set -euo pipefail
cd "$(dirname "$0")/.."

provider=${1:-soft}
seconds=${2:-5}
rounds=${3:-3}
shift $(($# < 3 ? $# : 3))
[ "${1:-}" = "--" ] && shift
extra=("$@")
case "$provider" in
  soft | verbs) ;;
  *) echo "provider must be soft or verbs, not '$provider'" >&2; exit 2 ;;
esac
out=${CARGO_TARGET_DIR:-target}/rdma-vs-tcp
mkdir -p "$out"
# shellcheck source=benches/script-common.sh
source benches/script-common.sh

port=$(free_port)
native_port=$(free_port)
rdma_port=$(free_port)
"$bin/corekv-node" --shards 1 --port "$port" --native-port "$native_port" --durability none \
  --rdma "$provider" --rdma-port "$rdma_port" --data-dir "$work/corekv" "${extra[@]}" >"$work/corekv.log" 2>&1 &
pids+=($!)
wait_ready "$work/corekv.log"
# The bench's own RDMA flags: the provider, plus whatever device flags the caller gives.
read -r -a bench_rdma <<<"--rdma-provider $provider ${COREKV_BENCH_RDMA_FLAGS:-}"

echo "corekv-node --shards 1 --rdma $provider ${extra[*]}: native://  (A) vs rdma:// (B)"
for case in "c1:--connections 1 --pipeline 1" "c4-p8:--connections 4 --pipeline 8"; do
  name=${case%%:*}
  # shellcheck disable=SC2086
  flags=(${case#*:})
  echo
  echo "== $name: ${flags[*]}"
  "$bin/corekv-bench" --target "native://127.0.0.1:$native_port" --target-name tcp \
    --compare "rdma://127.0.0.1:$rdma_port" --compare-name rdma "${bench_rdma[@]}" \
    "${flags[@]}" --ratio 1:1 --keys 1000 --prefill --value-size 100 \
    --duration "${seconds}s" --warmup 1s --rounds "$rounds" --no-progress \
    --json "$out/$name.json" 2>/dev/null |
    sed -n '/^throughput/,/^ratios/p'
done
