#!/usr/bin/env bash
# Native GET latency at one connection against the bare loopback TCP round trip, side by side.
#
#   benches/native-latency.sh [ROUNDS] [SECONDS]
#
# Starts `sockperf server` and two one-shard corekv nodes (without and with --busy-poll 30us),
# then, ROUNDS times (default 3), alternately runs:
#   - sockperf ping-pong --full-rtt (TCP, 64-byte messages: the whole round trip of a
#     non-blocking recv/send echo loop, nothing else);
#   - corekv-bench against each node's native port: 1 connection, pipeline 1, GET only, 1000
#     prefilled keys, 100-byte values, with --io-loop $IO_LOOP (default auto, which at one
#     connection and pipeline 1 is the blocking loop: one write and one read per request on the
#     timing thread; IO_LOOP=tokio measures the tokio loop instead).
# and prints p50/p99 of each, and corekv / TCP ratios (medians over the rounds).
#
# One shard, because sockperf's server is one thread too and a 2-core machine has no core left
# for the load generator otherwise. Needs sockperf (Debian package `sockperf`) and release builds:
#   cargo build --release -p corekv-node -p corekv-benches
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=${1:-3}
seconds=${2:-5}
io_loop=${IO_LOOP:-auto}
command -v sockperf >/dev/null || { echo "needs sockperf (apt-get install sockperf)" >&2; exit 2; }
# shellcheck source=benches/script-common.sh
source benches/script-common.sh

sp_port=$(free_port)
sockperf server --tcp -i 127.0.0.1 -p "$sp_port" >"$work/sockperf-server.log" 2>&1 &
pids+=($!)

declare -A native
for mode in plain busy; do
  extra=()
  [ "$mode" = busy ] && extra=(--busy-poll 30us)
  port=$(free_port)
  nport=$(free_port)
  "$bin/corekv-node" --shards 1 --port "$port" --native-port "$nport" --durability none \
    --data-dir "$work/$mode" "${extra[@]}" >"$work/$mode.log" 2>&1 &
  pids+=($!)
  native[$mode]=$nport
done
for mode in plain busy; do wait_ready "$work/$mode.log"; done
for _ in $(seq 100); do sockperf ping-pong --tcp -i 127.0.0.1 -p "$sp_port" -t 1 >/dev/null 2>&1 && break; sleep 0.1; done

bench() {
  "$bin/corekv-bench" --target "native://127.0.0.1:$1" --connections 1 --pipeline 1 --ratio 1:0 \
    --keys 1000 --prefill --value-size 100 --duration "${seconds}s" --warmup 1s --io-loop "$io_loop" \
    --no-progress --json - 2>/dev/null |
    python3 -c 'import json,sys; r=json.load(sys.stdin)["results"][0]["latency_us"]; print(r["p50"], r["p99"])'
}
sockperf_rtt() {
  sockperf ping-pong --tcp -i 127.0.0.1 -p "$sp_port" -t "$seconds" -m 64 --full-rtt 2>&1 |
    awk '/percentile 50.000/ {p50=$NF} /percentile 99.000/ {p99=$NF} END {print p50, p99}'
}

echo "corekv-bench --io-loop $io_loop"
printf '%-6s %-28s %10s %10s\n' round case p50_us p99_us
results="$work/results"
for round in $(seq "$rounds"); do
  read -r a b < <(sockperf_rtt)
  printf '%-6s %-28s %10.1f %10.1f\n' "$round" "tcp round trip (sockperf)" "$a" "$b"
  echo "tcp $a $b" >>"$results"
  for mode in plain busy; do
    read -r a b < <(bench "${native[$mode]}")
    label="native GET"; [ "$mode" = busy ] && label="native GET --busy-poll 30us"
    printf '%-6s %-28s %10.1f %10.1f\n' "$round" "$label" "$a" "$b"
    echo "$mode $a $b" >>"$results"
  done
done
python3 - "$results" <<'EOF'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    case, p50, p99 = line.split()
    rows.setdefault(case, []).append((float(p50), float(p99)))
med = {c: (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v)) for c, v in rows.items()}
print()
print("medians over the rounds (µs) and ratios to the TCP round trip:")
for case, label in [("tcp", "tcp round trip"), ("plain", "native GET"), ("busy", "native GET --busy-poll 30us")]:
    p50, p99 = med[case]
    print(f"  {label:28s} p50 {p50:7.1f} (x{p50 / med['tcp'][0]:.2f})   p99 {p99:7.1f} (x{p99 / med['tcp'][1]:.2f})")
EOF
