#!/usr/bin/env bash
# The walking skeleton's numbers, on this machine, in one run:
#  1. cold start of the demo app through the edge vs `node server.js` alone (median of 5);
#  2. requests/s and latency through the edge vs direct to the spinlet (wrk, same run, interleaved).
# Usage: loadtest/skeleton.sh   (needs wrk: apt-get install wrk)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)" >&2; exit 1; }
cargo build --release --locked -q
work=$(mktemp -d /tmp/spinforge-bench.XXXX)
trap 'pkill -f "$work/spinforge.yaml" 2>/dev/null || true; [ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT
edge_port=18080
cat >"$work/spinforge.yaml" <<YAML
edge:
  listen_http: 127.0.0.1:$edge_port
supervisor:
  data_dir: $work/data
  port_range: 18100-18199
apps:
  hello:
    domains: [hello.localhost]
    source: $PWD/conf/apps/hello
    health_check: { path: /healthz }
YAML

start_sf() {
  ./target/release/spinforge up --config "$work/spinforge.yaml" >>"$work/sf.log" 2>&1 &
  sf=$!
  until curl -s -o /dev/null "http://127.0.0.1:$edge_port/"; do sleep 0.05; done
}
stop_sf() { kill -TERM "$sf"; wait "$sf" || true; }

echo "== build the release once (npm ci)"
start_sf
until grep -q "release built\|reusing release" "$work/sf.log"; do sleep 0.2; done
stop_sf

echo "== cold start, 5 runs each"
for i in 1 2 3 4 5; do
  start_sf
  sleep 0.5 # let the supervisor settle; the app is not running yet
  python3 loadtest/coldstart.py edge hello.localhost "127.0.0.1:$edge_port" | tee -a "$work/edge-cold"
  stop_sf
  python3 loadtest/coldstart.py node "$work/data/apps/hello/releases/1" 18200 | tee -a "$work/node-cold"
done
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
edge_med=$(cut -d' ' -f1 "$work/edge-cold" | median)
node_med=$(median <"$work/node-cold")
echo "cold start median: edge ${edge_med} ms, node alone ${node_med} ms, ratio $(awk "BEGIN{printf \"%.2f\", $edge_med/$node_med}")"

echo "== throughput: wrk -t1 -c64 -d10s, interleaved, 2 rounds"
start_sf
curl -s -H 'Host: hello.localhost' "http://127.0.0.1:$edge_port/" >/dev/null
spinlet_port=$(grep -o 'spinlet healthy.*port=[0-9]*' "$work/sf.log" | tail -1 | grep -o '[0-9]*$')
for round in 1 2; do
  for target in direct edge; do
    if [ $target = direct ]; then url="http://127.0.0.1:$spinlet_port/"; else url="http://127.0.0.1:$edge_port/"; fi
    out=$(wrk -t1 -c64 -d10s --latency -H 'Host: hello.localhost' "$url")
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    p50=$(awk '$1=="50%" {print $2}' <<<"$out")
    p99=$(awk '$1=="99%" {print $2}' <<<"$out")
    errors=$(grep -c "Non-2xx\|Socket errors" <<<"$out" || true)
    echo "round $round $target: ${rps} req/s, p50 $p50, p99 $p99, error lines: $errors"
  done
done
stop_sf
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GB", $2/1048576}' /proc/meminfo), $(uname -r)"
