#!/usr/bin/env bash
# Start-up recovery speed: how fast a node replays a large persisted log back into memory.
#
# usage: benches/recovery.sh [--gb N] [--shards "2 1"] [--restarts N] [--warm]
#   --gb N        log to load per case, in GB (1e9 bytes) of INFO log_bytes_written (default 1.1)
#   --shards L    shard counts to measure, each on its own data dir (default "2 1")
#   --restarts N  timed restarts per case (default 2)
#   --warm        do not drop the page cache before each timed restart (default: drop it when
#                 /proc/sys/vm/drop_caches is writable, so the log is read from disk)
#
# For each shard count S: builds corekv-node (release), starts it with
#   --shards S --no-pin --durability periodic --rewrite-percentage 0
# on a free port with a data dir under target/, fills the log with 1000-byte SETs through
# redis-benchmark until INFO log_bytes_written >= N GB, stops it with SIGTERM, prints the on-disk
# size of the shard dirs, then restarts it on the same dir and reports for each restart:
#   - wall time from exec to the readiness line on stdout,
#   - INFO recovery_ms (max over shards), recovery_bytes, recovery_records and the MB/s, records/s,
#   - per shard, from the "shard N: recovered R records from X MB" stderr line and its timestamp,
#   - process CPU time until readiness and the bytes the data device read meanwhile.
# It checks that DBSIZE and recovery_records match what was loaded. Processes and data dirs are
# removed on exit. Needs redis-benchmark and redis-cli.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

gb=1.1; shard_list="2 1"; restarts=2; warm=0
while [ $# -gt 0 ]; do
  case "$1" in
    --gb) gb="$2"; shift ;;
    --shards) shard_list="$2"; shift ;;
    --restarts) restarts="$2"; shift ;;
    --warm) warm=1 ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "usage: $0 [--gb N] [--shards \"2 1\"] [--restarts N] [--warm]" >&2; exit 2 ;;
  esac
  shift
done
target_bytes=$(awk -v g="$gb" 'BEGIN {printf "%d", g * 1e9}')

target_dir=${CARGO_TARGET_DIR:-$root/target}
cargo build --release -q -p corekv-node --locked
bin=$target_dir/release/corekv-node

# The data dir must be absolute (and not tmpfs: the log uses O_DIRECT).
work=$root/target/recovery-bench.$$
mkdir -p "$work"
node_pid=""
stop_node() {
  if [ -n "$node_pid" ] && kill -0 "$node_pid" 2>/dev/null; then
    kill -TERM "$node_pid"
    local rc=0
    wait "$node_pid" || rc=$?
    node_pid=""
    return "$rc"
  fi
  node_pid=""
}
cleanup() {
  if [ -n "$node_pid" ]; then kill -TERM "$node_pid" 2>/dev/null || true; wait "$node_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

die() { echo "recovery.sh: $*" >&2; exit 1; }
now_ns() { date +%s%N; }
info_field() { redis-cli -p "$1" info persistence | tr -d '\r' | awk -F: -v k="$2" '$1 == k {print $2}'; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
dev=$(basename "$(df --output=source "$work" | tail -n1)")
dev_read_sectors() { awk -v d="$dev" '$3 == d {print $6}' /proc/diskstats; }
can_drop=0
if [ "$warm" = 0 ] && [ -w /proc/sys/vm/drop_caches ]; then can_drop=1; fi

# start_node DIR SHARDS LOGPREFIX: starts the node and waits for its readiness line; sets
# node_pid, port and ready_ms (exec to readiness line, polled every 2 ms).
start_node() {
  local dir=$1 shards=$2 log=$3 t0
  : >"$log.out"; : >"$log.err"
  t0=$(now_ns)
  "$bin" --port 0 --data-dir "$dir" --shards "$shards" --no-pin --durability periodic \
    --rewrite-percentage 0 >"$log.out" 2>"$log.err" &
  node_pid=$!
  start_ns=$t0
  while ! grep -q ' ready: listening on ' "$log.out"; do
    if ! kill -0 "$node_pid" 2>/dev/null; then
      local rc=0; wait "$node_pid" || rc=$?; node_pid=""
      echo "--- node stdout:" >&2; cat "$log.out" >&2; echo "--- node stderr:" >&2; cat "$log.err" >&2
      die "node exited with status $rc before it was ready"
    fi
    sleep 0.002
  done
  ready_ms=$(( ($(now_ns) - t0) / 1000000 ))
  port=$(grep -o ' ready: listening on [^,]*' "$log.out" | sed 's/.*://')
}

for shards in $shard_list; do
  dir=$work/data-$shards
  echo "=== $shards shard(s): data dir $dir"
  start_node "$dir" "$shards" "$work/load-$shards"
  loaded=0; run=0
  while :; do
    written=$(info_field "$port" log_bytes_written)
    [ "$written" -ge "$target_bytes" ] && break
    # ~1,040 log bytes per 1000-byte SET; top up in smaller runs once close.
    n=$(( (target_bytes - written) / 1040 + 1000 ))
    [ "$n" -gt 1100000 ] && n=1100000
    n=$(( (n + 31) / 32 * 32 )) # with -P 32 redis-benchmark sends whole pipelines of 32
    redis-benchmark -p "$port" -t set -d 1000 -r 2000000 -n "$n" -P 32 -c 20 -q | tr '\r' '\n' | grep -v '^$' | tail -n1
    loaded=$(( loaded + n )); run=$(( run + 1 ))
  done
  keys=$(redis-cli -p "$port" dbsize)
  echo "loaded $loaded SETs in $run run(s): $keys keys, log_bytes_written=$written ($(awk -v w="$written" 'BEGIN {printf "%.1f", w / 1e6}') MB), log_segments=$(info_field "$port" log_segments)"
  stop_node || die "node exited with status $? on SIGTERM after loading"
  echo "on-disk log (du -sb; the newest segment of each shard is pre-allocated to --segment-size):"
  du -sb "$dir"/shard-* | awk '{printf "  %s  %.1f MB\n", $2, $1 / 1e6; t += $1} END {printf "  total %.1f MB\n", t / 1e6}'

  for r in $(seq "$restarts"); do
    log=$work/restart-$shards-$r
    cache="page cache as left"
    if [ "$can_drop" = 1 ]; then sync; echo 3 >/proc/sys/vm/drop_caches; cache="page cache dropped"; fi
    load=$(cut -d' ' -f1-3 /proc/loadavg)
    s0=$(dev_read_sectors)
    start_node "$dir" "$shards" "$log"
    s1=$(dev_read_sectors)
    cpu_s=$(awk -v t="$(cpu_ticks "$node_pid")" -v hz="$hz" 'BEGIN {printf "%.2f", t / hz}')
    threads=$(for t in /proc/"$node_pid"/task/*; do
      awk -v hz="$hz" '{sub(/^[0-9]+ \(/, ""); n = index($0, ") "); name = substr($0, 1, n - 1);
        split(substr($0, n + 2), f, " "); c = (f[12] + f[13]) / hz;
        if (c >= 0.05) printf "%s=%.2fs (user %.2f, sys %.2f) ", name, c, f[12] / hz, f[13] / hz}' "$t/stat"
    done)
    rec_ms=$(info_field "$port" recovery_ms)
    rec_bytes=$(info_field "$port" recovery_bytes)
    rec_records=$(info_field "$port" recovery_records)
    keys_after=$(redis-cli -p "$port" dbsize)
    echo "--- restart $r ($shards shard(s), $cache; loadavg before: $load)"
    echo "ready after ${ready_ms} ms (exec to readiness line); INFO recovery_ms=$rec_ms recovery_bytes=$rec_bytes recovery_records=$rec_records"
    awk -v b="$rec_bytes" -v l="$written" -v n="$rec_records" -v ms="$rec_ms" -v w="$ready_ms" 'BEGIN {
      printf "overall: %.0f MB/s scanned (%.0f MB/s of log records), %.0f records/s over recovery_ms\n", b / 1e3 / ms, l / 1e3 / ms, n * 1e3 / ms
      printf "         %.0f MB/s scanned (%.0f MB/s of log records), %.0f records/s over the wall time to ready\n", b / 1e3 / w, l / 1e3 / w, n * 1e3 / w }'
    # Per shard: its "recovered" line, timed by the line's own timestamp. The shards recover in
    # parallel and start together, so recovery began at (last shard's line - recovery_ms).
    grep -o '[0-9T:.-]*Z .*shard [0-9]*: recovered [0-9]* records from [0-9.]* MB' "$log.err" |
      while read -r ts rest; do
        echo "$(( ($(date -d "$ts" +%s%N) - start_ns) / 1000000 )) $rest"
      done | sed -E 's/^([0-9]+) .*shard ([0-9]+): recovered ([0-9]+) records from ([0-9.]+) MB/\1 \2 \3 \4/' |
      awk -v rms="$rec_ms" '{ at[NR] = $1; id[NR] = $2; n[NR] = $3; mb[NR] = $4; if ($1 > last) last = $1 }
        END { begin = last - rms; for (i = 1; i <= NR; i++) { d = at[i] - begin; if (d < 1) d = 1;
          printf "  shard %s: %d records, %.1f MB scanned, recovered in ~%d ms (done %d ms after exec): %.0f MB/s, %.0f records/s\n",
            id[i], n[i], mb[i], d, at[i], mb[i] * 1e3 / d, n[i] * 1e3 / d } }'
    awk -v c="$cpu_s" -v w="$ready_ms" -v s=$(( s1 - s0 )) -v d="$dev" 'BEGIN {
      printf "process CPU until ready: %.2f s (%.0f%% of one core over the wall time); %s read %.1f MB meanwhile\n",
        c, c * 1e5 / w, d, s * 512 / 1e6 }'
    echo "threads with CPU >= 0.05 s: $threads"
    grep 'recovering:' "$log.err" | tail -n 2 | sed 's/^/  progress: /' || true
    [ "$keys_after" = "$keys" ] || die "DBSIZE after restart is $keys_after, before stop it was $keys"
    [ "$rec_records" = "$loaded" ] || die "recovery_records=$rec_records but $loaded SETs were loaded"
    stop_node || die "node exited with status $? on SIGTERM after restart $r"
  done
done
