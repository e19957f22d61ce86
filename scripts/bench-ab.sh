#!/usr/bin/env bash
# Interleaved A/B runs of `duet bench online`, both processes on both cores, a fresh server
# (and data dir) per run: the comparison docs/benchmarks.md uses between builds.
#
#   scripts/bench-ab.sh ROUNDS NAME=BIN [NAME=BIN ...]
#   e.g. scripts/bench-ab.sh 4 old=/tmp/duet-old new=target/release/duet
#
# Env: RATE (default 25000; "max" = closed loop, window 8), DUR (default 10 s),
# DIR (default /tmp/bench-ab), PRE (a shell snippet run once the server is up; $SP is its
# PID, $D its data dir). Prints one line per run and appends the JSON to $DIR/results.jsonl.
# Traffic goes to 127.0.0.1:7400 only; every run stops by itself.
set -u
ROUNDS=$1; shift
RATE=${RATE:-25000}; DUR=${DUR:-10}; DIR=${DIR:-/tmp/bench-ab}
KEY=bench-secret-0123456789abcdef
export DUET_SDKAPPID=1400000000 DUET_SECRET_KEY=$KEY
mkdir -p "$DIR"
ulimit -n 20000
if [ "$RATE" = max ]; then ARGS="--rate max --window 8"; else ARGS="--rate $RATE"; fi
for r in $(seq "$ROUNDS"); do
  for pair in "$@"; do
    L=${pair%%=*}; BIN=${pair#*=}; D=$DIR/data-$L; rm -rf "$D"
    taskset -c 0,1 "$BIN" serve --data "$D" --listen 127.0.0.1:7400 --sdkappid 1400000000 \
      --secret-key "$KEY" > "$DIR/server-$L.log" 2>&1 & SP=$!
    until curl -sf 127.0.0.1:7400/healthz >/dev/null; do sleep 0.1; done
    if [ -n "${PRE:-}" ]; then eval "$PRE"; fi
    # shellcheck disable=SC2086
    res=$(taskset -c 0,1 "$BIN" bench --server http://127.0.0.1:7400 --server-pid $SP --json \
      online --users 1000 $ARGS --duration "$DUR")
    wb=$(awk '/^write_bytes/{print $2}' /proc/$SP/io)
    kill $SP; wait $SP 2>/dev/null; sleep 1
    echo "{\"label\":\"$L\",\"round\":$r,\"rate\":\"$RATE\",\"write_bytes\":$wb,\"result\":$res}" >> "$DIR/results.jsonl"
    python3 - "$L" "$r" "$wb" "$res" <<'PY'
import json, sys
label, rnd, wb, res = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
lat = res.get('latency_ms', {})
print(f"{label:10} round {rnd}  delivered/s {res.get('delivered_per_sec', 0):8.0f}  "
      f"p50 {lat.get('p50', 0):7.2f}  p99 {lat.get('p99', 0):7.2f}  max {lat.get('max', 0):7.1f} ms  "
      f"server {res.get('server_cpu_pct', 0):4.0f} %  generator {res.get('client_cpu_pct', 0):4.0f} %  "
      f"writes {wb / 1e9:.2f} GB  lost {res.get('lost')}", flush=True)
PY
  done
done
