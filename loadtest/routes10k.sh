#!/usr/bin/env bash
# Resident memory of an edge with N routes (default 10,000: one app and one domain each, every app
# with one upstream), against the same edge with none. Routes are written straight into a
# throwaway redis-server and served by `spinforge edge`; then a wrk run spreads requests over all
# hosts (so every app's runtime counters and the pool are in use) and RSS is read again.
#
# Usage: loadtest/routes10k.sh   (ROUTES=10000 PROFILE=release SKIP_BUILD=1 KEEP=1)
# Needs redis-server, redis-cli, nginx, wrk.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUTES=${ROUTES:-10000}
PROFILE=${PROFILE:-release}
REDIS_PORT=${REDIS_PORT:-18921}
BACKEND_PORT=${BACKEND_PORT:-18922}
EDGE_PORT=${EDGE_PORT:-18923}
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
[ -n "${SKIP_BUILD:-}" ] || cargo build --profile "$PROFILE" --locked -q
BIN=target/$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")/spinforge

work=$(mktemp -d /tmp/spinforge-routes.XXXX)
pids=()
edge_pid=
cleanup() {
  for p in "${pids[@]}" $edge_pid; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}" $edge_pid; do wait "$p" 2>/dev/null || true; done
  [ -n "${KEEP:-}" ] && echo "work folder kept: $work" || rm -rf "$work"
}
trap cleanup EXIT

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" --logfile "$work/redis.log" &
pids+=($!)
mkdir -p "$work/backend-tmp"
sed -e "s#@WORK@#$work#g" -e "s#@BACKEND_PORT@#$BACKEND_PORT#g" loadtest/backend.conf >"$work/backend.conf"
"$NGINX" -c "$work/backend.conf" -p "$work" -g 'daemon off;' &
pids+=($!)
until redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; do sleep 0.05; done

cat >"$work/edge.yaml" <<YAML
state:
  redis: redis://127.0.0.1:$REDIS_PORT/0
edge:
  listen_http: 127.0.0.1:$EDGE_PORT
YAML

rss_mb() { awk '/VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }
start_edge() {
  RUST_LOG=warn "$BIN" edge --config "$work/edge.yaml" >>"$work/edge.log" 2>&1 &
  edge_pid=$!
  until curl -s -o /dev/null "http://127.0.0.1:$EDGE_PORT/"; do sleep 0.05; done
}
stop_edge() { kill -TERM "$edge_pid"; wait "$edge_pid" || true; edge_pid=; }

start_edge
sleep 1
empty=$(rss_mb "$edge_pid")
stop_edge

echo "== writing $ROUTES routes"
python3 -c '
import sys
n, port = int(sys.argv[1]), sys.argv[2]
def cmd(*args):
    out = [f"*{len(args)}\r\n"]
    for a in args:
        out.append(f"${len(a.encode())}\r\n{a}\r\n")
    return "".join(out)
w = sys.stdout.write
for i in range(1, n + 1):
    d = f"app{i}.bench.local"
    w(cmd("SET", f"spinforge:routes:{d}", f"{{\"domain\":\"{d}\",\"app\":\"app{i}\",\"external\":true}}"))
    w(cmd("SADD", f"spinforge:upstreams:app{i}", f"127.0.0.1:{port}"))
' "$ROUTES" "$BACKEND_PORT" | redis-cli -p "$REDIS_PORT" --pipe >/dev/null

start_edge
host="app$ROUTES.bench.local"
until [ "$(curl -s -o /dev/null -w '%{http_code}' -H "Host: $host" "http://127.0.0.1:$EDGE_PORT/")" = 200 ]; do sleep 0.1; done
sleep 1
loaded=$(rss_mb "$edge_pid")
cat >"$work/hosts.lua" <<LUA
request = function()
  return wrk.format(nil, nil, { Host = "app" .. math.random($ROUTES) .. ".bench.local" })
end
LUA
wrk -t1 -c64 -d10s -s "$work/hosts.lua" "http://127.0.0.1:$EDGE_PORT/" | grep -E 'Requests/sec|Non-2xx|Socket errors' || true
sleep 1
after=$(rss_mb "$edge_pid")
echo "edge RSS: no routes ${empty} MB; ${ROUTES} routes loaded ${loaded} MB; after 10 s of traffic over all hosts ${after} MB"
echo "machine: $(nproc) cores, $(uname -r), binary $BIN"
