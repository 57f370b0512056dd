#!/usr/bin/env bash
# The edge against NGINX, in front of the same fast upstream, on this machine, in one run.
#
#   fast upstream: NGINX, 1 worker, `return 200` of a 29-byte body        (backend.conf)
#   baseline:      NGINX, 2 workers, upstream keepalive, same forwarding headers (nginx.conf)
#   edge:          `spinforge up`, the upstream configured as an external app (`upstream:`)
#
# The same load (wrk by default, or oha) runs against both in interleaved rounds. For each run it
# prints req/s, p50, p99, errors and CPU-seconds per 100k requests (utime+stime deltas from
# /proc/<pid>/stat of the proxy's processes: NGINX's master and workers; the spinforge process),
# then medians and edge/NGINX ratios.
#
# Usage: loadtest/bench.sh
#   ROUNDS=3 DURATION=10 CONNS=64 THREADS=1   load shape (wrk -t THREADS -c CONNS -d DURATION)
#   TOOL=wrk|oha                              load generator
#   PROFILE=release                           cargo profile to build and run (bench-fast to iterate)
#   SKIP_BUILD=1                              use target/$PROFILE/spinforge as it is
#   EDGE_EXTRA='  access_log: json\n'          extra lines under `edge:` in the edge's config
#   COMPARE_SHARED=1                          also run an edge with SPINFORGE_EDGE_RUNTIME=shared
#   EDGE2_BIN=path EDGE2_ENV='A=1'            also run another spinforge binary ("edge2"; EDGE3_*, EDGE4_* too)
#   KEEP=1                                    keep the work folder (configs, logs)
# Needs nginx and wrk (apt-get install nginx wrk) or oha (cargo install oha). Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
CONNS=${CONNS:-64}
THREADS=${THREADS:-1}
TOOL=${TOOL:-wrk}
PROFILE=${PROFILE:-release}
BACKEND_PORT=${BACKEND_PORT:-18901}
NGINX_PORT=${NGINX_PORT:-18902}
EDGE_PORT=${EDGE_PORT:-18903}
HOST_HEADER=bench.local
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
OHA=${OHA:-$(command -v oha || echo "$HOME/.cargo/bin/oha")}

[ -x "$NGINX" ] || { echo "needs nginx (apt-get install nginx)" >&2; exit 1; }
case $TOOL in
  wrk) command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)" >&2; exit 1; } ;;
  oha) [ -x "$OHA" ] || { echo "needs oha (cargo install oha)" >&2; exit 1; } ;;
  *) echo "TOOL is wrk or oha" >&2; exit 1 ;;
esac
if [ -z "${SKIP_BUILD:-}" ]; then
  cargo build --profile "$PROFILE" --locked -q
fi
BIN=target/$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")/spinforge
[ -x "$BIN" ] || { echo "no $BIN: build it or unset SKIP_BUILD" >&2; exit 1; }

work=$(mktemp -d /tmp/spinforge-bench.XXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  [ -n "${KEEP:-}" ] && echo "work folder kept: $work" || rm -rf "$work"
}
trap cleanup EXIT

fill() { sed -e "s#@WORK@#$work#g" -e "s#@PROXY_PORT@#$NGINX_PORT#g" -e "s#@BACKEND_PORT@#$BACKEND_PORT#g" "$1" >"$2"; }
mkdir -p "$work"/{proxy-tmp,backend-tmp}
fill loadtest/backend.conf "$work/backend.conf"
fill loadtest/nginx.conf "$work/nginx.conf"

wait_http() { # url host
  for _ in $(seq 1 300); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' -H "Host: $2" "$1")" = 200 ] && return 0
    sleep 0.05
  done
  echo "no 200 from $1 (Host: $2) after 15 s" >&2; return 1
}

"$NGINX" -c "$work/backend.conf" -p "$work" -g 'daemon off;' &
pids+=($!)
"$NGINX" -c "$work/nginx.conf" -p "$work" -g 'daemon off;' &
nginx_pid=$!
pids+=($nginx_pid)
# Edges to measure: "name|binary|environment". The second and third are optional comparisons.
edges=("edge|$BIN|")
[ -n "${COMPARE_SHARED:-}" ] && edges+=("shared|$BIN|SPINFORGE_EDGE_RUNTIME=shared")
[ -n "${EDGE2_BIN:-}" ] && edges+=("edge2|$EDGE2_BIN|${EDGE2_ENV:-}")
[ -n "${EDGE3_BIN:-}" ] && edges+=("edge3|$EDGE3_BIN|${EDGE3_ENV:-}")
[ -n "${EDGE4_BIN:-}" ] && edges+=("edge4|$EDGE4_BIN|${EDGE4_ENV:-}")
declare -A port_of pid_of
port_of[nginx]=$NGINX_PORT
pid_of[nginx]=$nginx_pid
targets=(nginx)
i=0
for spec in "${edges[@]}"; do
  IFS='|' read -r name bin envs <<<"$spec"
  port=$((EDGE_PORT + 10 * i))
  cat >"$work/$name.yaml" <<YAML
edge:
  listen_http: 127.0.0.1:$port
  metrics: off
$(printf '%b' "${EDGE_EXTRA:-}")
supervisor:
  data_dir: $work/data-$name
  port_range: $((18910 + 20 * i))-$((18929 + 20 * i))
  admin_listen: 127.0.0.1:$((18990 + i))
apps:
  bench:
    domains: [$HOST_HEADER]
    upstream: 127.0.0.1:$BACKEND_PORT
YAML
  # shellcheck disable=SC2086
  env RUST_LOG="${RUST_LOG:-warn}" $envs "$bin" up --config "$work/$name.yaml" >"$work/$name.log" 2>&1 &
  pid_of[$name]=$!
  port_of[$name]=$port
  pids+=($!)
  targets+=("$name")
  i=$((i + 1))
done
wait_http "http://127.0.0.1:$BACKEND_PORT/" x
for t in "${targets[@]}"; do wait_http "http://127.0.0.1:${port_of[$t]}/" $HOST_HEADER; done

# utime+stime (clock ticks) of a process and its children (NGINX workers).
ticks() {
  local total=0 p
  for p in "$1" $(pgrep -P "$1" || true); do
    [ -r "/proc/$p/stat" ] || continue
    total=$((total + $(sed 's/.*) //' "/proc/$p/stat" | awk '{print $12 + $13}')))
  done
  echo $total
}
hz=$(getconf CLK_TCK)
to_ms() { awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n += 0; else if (v ~ /s$/) n *= 1000; printf "%.2f", n }'; }

# One load run; prints "rps p50_ms p99_ms requests errors".
load() { # url
  if [ "$TOOL" = wrk ]; then
    local out
    out=$(wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency -H "Host: $HOST_HEADER" "$1")
    local rps p50 p99 reqs errs
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    p50=$(to_ms "$(awk '$1=="50%" {print $2}' <<<"$out")")
    p99=$(to_ms "$(awk '$1=="99%" {print $2}' <<<"$out")")
    reqs=$(awk '/requests in/ {print $1}' <<<"$out")
    errs=$(awk '/Non-2xx/ {n += $NF} /Socket errors/ {gsub(",", ""); n += $4 + $6 + $8 + $10} END {print n + 0}' <<<"$out")
    echo "$rps $p50 $p99 $reqs $errs"
  else
    "$OHA" -z "${DURATION}s" -c "$CONNS" --no-tui --output-format json -H "Host: $HOST_HEADER" "$1" |
      python3 -c '
import json, sys
d = json.load(sys.stdin)
s = d["summary"]; p = d["latencyPercentiles"]
codes = d.get("statusCodeDistribution", {})
ok = sum(v for k, v in codes.items() if k.startswith("2"))
errs = sum(codes.values()) - ok + sum(d.get("errorDistribution", {}).values())
print(f"{s[\"requestsPerSec\"]:.0f} {p[\"p50\"]*1000:.2f} {p[\"p99\"]*1000:.2f} {sum(codes.values())} {errs}")'
  fi
}

results=$work/results
: >"$results"
echo "== $TOOL, $CONNS connections, ${DURATION}s per run, $ROUNDS interleaved rounds ($(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg))"
# Warm every proxy (connection pools, page cache) before measuring.
for t in "${targets[@]}"; do DURATION=2 load "http://127.0.0.1:${port_of[$t]}/" >/dev/null; done
printf '%-6s %-7s %10s %9s %9s %8s %14s\n' round proxy req/s p50_ms p99_ms errors cpu_s/100k
n=${#targets[@]}
for round in $(seq 1 "$ROUNDS"); do
  # Rotate which goes first, so none always runs on a machine another just heated.
  for k in $(seq 0 $((n - 1))); do
    target=${targets[$(((k + round - 1) % n))]}
    pid=${pid_of[$target]}
    before=$(ticks "$pid")
    read -r rps p50 p99 reqs errs < <(load "http://127.0.0.1:${port_of[$target]}/")
    after=$(ticks "$pid")
    cpu=$(awk -v d=$((after - before)) -v hz="$hz" -v n="$reqs" 'BEGIN { printf "%.2f", (n > 0 ? d / hz / n * 100000 : 0) }')
    printf '%-6s %-7s %10.0f %9s %9s %8s %14s\n' "$round" "$target" "$rps" "$p50" "$p99" "$errs" "$cpu"
    echo "$target $rps $p50 $p99 $errs $cpu" >>"$results"
  done
done
nginx_rss_kb=0
for p in $nginx_pid $(pgrep -P $nginx_pid); do nginx_rss_kb=$((nginx_rss_kb + $(awk '/VmRSS/ {print $2}' /proc/$p/status))); done

python3 - "$results" "${targets[@]}" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
targets = sys.argv[2:]
def med(proxy, col):
    return statistics.median(float(r[col]) for r in rows if r[0] == proxy)
names = ["req/s", "p50 ms", "p99 ms", "errors", "cpu_s/100k"]
edges = targets[1:]
print("\n== medians")
print(f"{'':12}" + "".join(f"{t:>10}" for t in targets) + "".join(f"{e + '/nginx':>14}" for e in edges))
for i, n in enumerate(names, start=1):
    vals = [med(t, i) for t in targets]
    ratios = "".join(f"{(v / vals[0]):14.2f}" if vals[0] else f"{'-':>14}" for v in vals[1:])
    print(f"{n:12}" + "".join(f"{v:10.2f}" for v in vals) + ratios)
PY
for t in "${targets[@]}"; do
  [ "$t" = nginx ] && continue
  echo "resident memory after the runs: $t $(awk '/VmRSS/ {printf "%.1f", $2 / 1024}' /proc/${pid_of[$t]}/status) MB (one process: edge + supervisor)"
done
echo "resident memory after the runs: nginx $((nginx_rss_kb / 1024)) MB (master + 2 workers)"
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GB", $2/1048576}' /proc/meminfo), $(uname -r), binary $BIN, load now $(cut -d' ' -f1-3 /proc/loadavg)"
