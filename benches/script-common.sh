# Sourced by the benchmark scripts: release binaries, free ports, a scratch directory and the
# background processes started in it, all cleaned up on exit.

bin=${CARGO_TARGET_DIR:-target}/release
[ -x "$bin/corekv-node" ] && [ -x "$bin/corekv-bench" ] || {
  echo "needs release builds: cargo build --release -p corekv-node -p corekv-benches" >&2
  exit 2
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# wait_ready LOG: until a corekv-node's readiness line is in LOG (10 s at most).
wait_ready() {
  for _ in $(seq 100); do grep -q ready "$1" 2>/dev/null && return 0; sleep 0.1; done
  cat "$1" >&2
  exit 1
}
