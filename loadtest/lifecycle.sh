#!/usr/bin/env bash
# Spinlet lifecycle numbers, on this machine, in one run (release build):
#  1. 10 zero-downtime deploys (2 instances) while wrk loads the app: wrk's totals and errors;
#  2. cold-start overhead: a request that wakes an idled app through the edge vs the same app's
#     own boot (`node server.js` to its first answer), median of 10 each;
#  3. memory per idle app: SpinForge's RSS with 0 and with $IDLE_APPS idle apps (no spinlet runs).
# Usage: loadtest/lifecycle.sh   (needs wrk: apt-get install wrk; IDLE_APPS=200 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)" >&2; exit 1; }
IDLE_APPS=${IDLE_APPS:-200}
# SPINFORGE_BIN: a release binary built already (else this builds one).
if [ -z "${SPINFORGE_BIN:-}" ]; then cargo build --release --locked -q; fi
bin=${SPINFORGE_BIN:-$(realpath "${CARGO_TARGET_DIR:-target}")/release/spinforge}
work=$(mktemp -d /tmp/spinforge-lifecycle.XXXX)
trap 'pkill -f "$work/" 2>/dev/null || true; [ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT
port=18480

app() { # app DIR VERSION: a dependency-free app answering its version
  mkdir -p "$1"
  echo '{"name":"v","private":true,"scripts":{"start":"node server.js"}}' >"$1/package.json"
  cat >"$1/server.js" <<JS
require("http").createServer((q, s) => s.end("version $2\n")).listen(Number(process.env.PORT), process.env.HOST);
JS
}
config() { # config APPS_YAML
  cat >"$work/spinforge.yaml" <<YAML
edge:
  listen_http: 127.0.0.1:$port
  grace: 2s
  metrics: off
supervisor:
  data_dir: $work/data
  port_range: 18500-18999
apps:
$1
YAML
}
start_sf() {
  "$bin" up --config "$work/spinforge.yaml" >>"$work/sf.log" 2>&1 &
  sf=$!
  until curl -s -o /dev/null "http://127.0.0.1:$port/"; do sleep 0.05; done
}
stop_sf() { kill -TERM "$sf"; wait "$sf" || true; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
serves() { curl -s -H "Host: $1" "http://127.0.0.1:$port/" | grep -q "version $2"; }

echo "== 1. ten deploys under load (wrk -t1 -c16 for the whole run)"
for v in $(seq 0 10); do app "$work/v$v" "$v"; done
block() { printf '  busy:\n    domains: [busy.localhost]\n    source: %s\n    instances: 2\n    idle_timeout: 0\n' "$work/v$1"; }
config "$(block 0)"
start_sf
until serves busy.localhost 0; do sleep 0.1; done
wrk -t1 -c16 -d600s -H 'Host: busy.localhost' "http://127.0.0.1:$port/" >"$work/wrk.out" 2>&1 &
wrk_pid=$!
sleep 1
t0=$(date +%s.%N)
for v in $(seq 1 10); do
  config "$(block "$v")"
  until serves busy.localhost "$v"; do sleep 0.05; done
done
t1=$(date +%s.%N)
sleep 1
kill -INT "$wrk_pid"; wait "$wrk_pid" || true
echo "10 deploys took $(awk "BEGIN{printf \"%.1f\", $t1-$t0}") s"
grep -E "requests in|Requests/sec|Non-2xx|Socket errors|Latency" "$work/wrk.out" || true
grep -q "Non-2xx\|Socket errors" "$work/wrk.out" && echo "FAILED REQUESTS (see above)" || echo "failed requests: 0"
stop_sf

echo "== 2. cold start of an idled app through the edge vs its own boot, 10 each"
rm -rf "$work/data"
config "$(printf '  sleepy:\n    domains: [sleepy.localhost]\n    source: %s\n    idle_timeout: 1s\n' "$PWD/conf/apps/hello")"
start_sf
# The first request builds (npm ci) and starts it; it may time out while npm runs.
until curl -s -H 'Host: sleepy.localhost' "http://127.0.0.1:$port/healthz" | grep -q ok; do sleep 0.5; done
release=$(ls -d "$work"/data/apps/sleepy/releases/[0-9]* | sort -V | tail -1)
: >"$work/edge-cold"; : >"$work/node-cold"
for i in $(seq 1 10); do
  stops=$(grep -c "stopping idle spinlets" "$work/sf.log" || true)
  until [ "$(grep -c "stopping idle spinlets" "$work/sf.log" || true)" -gt "$stops" ]; do sleep 0.1; done
  sleep 0.3 # the process has exited and its upstream is gone
  python3 loadtest/coldstart.py edge sleepy.localhost "127.0.0.1:$port" | cut -d' ' -f1 >>"$work/edge-cold"
  python3 loadtest/coldstart.py node "$release" 18450 >>"$work/node-cold"
done
stop_sf
edge_med=$(median <"$work/edge-cold"); node_med=$(median <"$work/node-cold")
echo "edge (wake) runs: $(tr '\n' ' ' <"$work/edge-cold")"
echo "node alone runs:  $(tr '\n' ' ' <"$work/node-cold")"
echo "cold start median: through the edge ${edge_med} ms, the app's own boot ${node_med} ms, overhead $(awk "BEGIN{printf \"%.1f\", $edge_med-$node_med}") ms"

echo "== 3. memory: SpinForge with 0 vs $IDLE_APPS idle apps"
rm -rf "$work/data"
config ""
start_sf; sleep 2
rss0=$(awk '/VmRSS/ {print $2}' "/proc/$sf/status"); stop_sf
blocks=""
for i in $(seq 1 "$IDLE_APPS"); do
  blocks+=$(printf '  idle%s:\n    domains: [idle%s.localhost]\n    source: %s\n' "$i" "$i" "$work/v1")$'\n'
done
config "$blocks"
start_sf
until [ "$(ls -d "$work"/data/apps/idle*/releases/1 2>/dev/null | wc -l)" -ge "$IDLE_APPS" ]; do sleep 0.5; done
sleep 2
rssn=$(awk '/VmRSS/ {print $2}' "/proc/$sf/status")
spinlets=$(pgrep -f "$work/data/apps" | wc -l || true)
stop_sf
echo "RSS with 0 apps: $((rss0 / 1024)) MiB; with $IDLE_APPS idle apps: $((rssn / 1024)) MiB; per idle app: $(( (rssn - rss0) / IDLE_APPS )) KiB; spinlet processes: $spinlets"
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GB", $2/1048576}' /proc/meminfo), $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
