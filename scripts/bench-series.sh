#!/usr/bin/env bash
# The series of docs/benchmarks.md: every scenario RUNS times, each against a freshly started
# server, one JSON line per run appended to $OUT (default /tmp/series/results.jsonl).
#
#   scripts/bench-series.sh BIN TAG [RUNS]     e.g. target/release/duet head 3
#   python3 scripts/bench-summary.py TAG       medians (and the runs) per scenario
#
# "pinned": server on core 1, generator on core 0; "-2c": both on both cores. Needs ~6 min
# per round; traffic goes to 127.0.0.1:7400 only; every run stops by itself.
set -u
BIN=$1; TAG=$2; RUNS=${3:-3}
KEY=bench-secret-0123456789abcdef
export DUET_SDKAPPID=1400000000 DUET_SECRET_KEY=$KEY
DIR=${SERIES_DIR:-/tmp/series}
OUT=${OUT:-$DIR/results.jsonl}
mkdir -p "$DIR"
ulimit -n 20000
start_server() { # DATA CPUS
  taskset -c $2 $BIN serve --data $1 --listen 127.0.0.1:7400 --sdkappid 1400000000 --secret-key "$KEY" > $DIR/server.log 2>&1 & SP=$!
  until curl -sf 127.0.0.1:7400/healthz >/dev/null; do sleep 0.1; done
}
stop_server() { kill $SP; wait $SP 2>/dev/null; sleep 1; }
run() { # LABEL SCPUS GCPUS KEEPDATA ARGS...
  local label=$1 scpus=$2 gcpus=$3 keep=$4; shift 4
  local data=$DIR/data-$label
  [ "$keep" = keep ] || rm -rf $data
  start_server $data $scpus
  local r; r=$(taskset -c $gcpus $BIN bench --server http://127.0.0.1:7400 --server-pid $SP --json "$@")
  echo "{\"tag\":\"$TAG\",\"label\":\"$label\",\"load1\":$(cut -d' ' -f1 /proc/loadavg),\"result\":$r}" >> $OUT
  stop_server
}
# accounts for the connection runs (not measured)
rm -rf $DIR/data-conn; start_server $DIR/data-conn 1
taskset -c 0 $BIN bench --server http://127.0.0.1:7400 --json connections --count 19000 --concurrency 100 --source-addrs 8 --hold 0 --settle 0 > /dev/null
stop_server
for i in $(seq $RUNS); do
  run conn 1 0 keep connections --count 19000 --concurrency 100 --source-addrs 8 --hold 5
  run w8 1 0 new online --users 1000 --rate max --window 8 --duration 10
  run w8-2c 0,1 0,1 new online --users 1000 --rate max --window 8 --duration 10
  run r25k 1 0 new online --users 1000 --rate 25000 --duration 10
  run r25k-2c 0,1 0,1 new online --users 1000 --rate 25000 --duration 10
  run r10k 1 0 new online --users 1000 --rate 10000 --duration 10
  run r5k 1 0 new online --users 1000 --rate 5000 --duration 10
  run off 1 0 new offline --messages 10000 --conversations 100
  run hist10k 1 0 new history --pages 2000 --page-rate 200 --rate 10000 --users 1000
  run hist10k-2c 0,1 0,1 new history --pages 2000 --page-rate 200 --rate 10000 --users 1000
done
