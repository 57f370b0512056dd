#!/usr/bin/env bash
# Real Node apps behind the edge, in one run (issue 14, deliverable 4):
#
#  1. Express through the edge vs direct. The demo app (conf/apps/hello, `GET /`, ~150 B of
#     text/plain) as a normal `source:` app, built and run by SpinForge (`spinforge up`), Host
#     hello.test (`tls: off`). `wrk -t1 -c64` against the edge's plain listener and against the
#     same spinlet's own port ("direct": the `port` of the app's spinlet in the admin API's
#     `GET /api/v1/spinlets`, which also gives its pid), rounds interleaved.
#  2. A Next.js page over HTTPS: the edge vs NGINX in front of the same `next start`. The app is
#     loadtest/next-app (Next 15 app router, no network at build time: no next/font/google, no
#     fetches): `/` a product-list page rendered on every request (`force-dynamic`, ~25 KB of
#     deterministic HTML), `/prerendered` the same page rendered once by `next build` (next start
#     serves the stored HTML: a cheap answer, where the proxy's own cost shows) and `/styles.css`
#     a static file from public/ (8 KB); `compress: false` in next.config.js, so the proxy does
#     the compressing. SpinForge builds and runs it (`source:`) with
#     `tls: {cert, key}` (ECDSA P-256 made here with openssl, SNI next.test). NGINX (2 workers,
#     http2, the same certificate, gzip level 5 on text/html and text/css, gzip_min_length 256,
#     upstream keepalive, the edge's forwarding and security headers, no access log) proxies to
#     the *same* spinlet's port. Scenarios (rounds interleaved, the peers' order rotating):
#       2a  `/`, HTTP/2,            Accept-Encoding: gzip                      h2load $PAGE_H2
#       2b  `/`, HTTP/2,            Accept-Encoding: gzip, deflate, br, zstd   h2load $PAGE_H2
#       2c  `/`, HTTP/1.1 over TLS, Accept-Encoding: gzip                      h2load --h1 $PAGE_H1
#       2d  `/prerendered`, HTTP/2, Accept-Encoding: gzip                      h2load $CHEAP_H2
#       2e  `/styles.css`, HTTP/2,  Accept-Encoding: gzip                      h2load $CHEAP_H2
#     The page rendered per request is the app's bottleneck (one Node thread; 50-60 renders/s on
#     the busy 2-core machine), so any load past a few requests in flight only queues inside Node. At
#     -c16 -m10 (160 in flight) or --h1 -c64 the queue holds every request, SpinForge's own
#     health probe (GET every 2 s, 2 s to answer, 3 misses in a row) among them, for over 2 s:
#     the supervisor then kills and replaces the spinlet mid-run (seen on the 2-core machine).
#     Hence PAGE_H2=-c16 -m2 and PAGE_H1=-c32 by default: still saturating, with a short queue.
#     The prerendered page too keeps Node's one thread busy (~1.5 ms of CPU an answer): at -c16
#     -m10 some connections waited 10 s for their first byte through NGINX, whose traffic the
#     edge cannot vouch for to the health check, and the spinlet was replaced mid-run; hence
#     CHEAP_H2=-c16 -m2 for 2d and 2e as well.
#     The script stops if the spinlet is replaced during the run (checked after every run).
#
# Every answer is checked before measuring (status 200; protocol; the body, decoded, byte for
# byte the page the spinlet itself serves, or the CSS file; Content-Encoding: gzip for gzip,
# br/zstd/gzip from the edge for a browser's list; 200 requests with the load's own tool and
# headers, all 2xx, with the same bytes per answer); the script stops if one is wrong.
#
# Per run: req/s, p50 and p99 (wrk's latency distribution; for h2load from its per-request log,
# --log-file, as prod.sh does), errors, bytes per answer (wrk: head and body; h2load: body as
# sent) and CPU-seconds per 100k requests from /proc/<pid>/stat (utime+stime), split:
#   proxy  the edge: the `spinforge up` process's own threads (edge and supervisor; its
#          children, the spinlets, are not counted); NGINX: master + workers
#   node   the app's spinlet: the pid from the admin API and its descendants
# Then medians over the rounds and the ratios (part 1: edge / direct; part 2: edge / NGINX), as
# markdown. The spinlet must stay the same process on the same port throughout (checked after
# every run). Load generators share the machine with what they measure: run it on a quiet machine.
#
# usage: loadtest/apps.sh   (needs a release build of spinforge, node and npm (the npm registry
#                            for the builds), wrk, h2load (nghttp2-client), nginx, curl,
#                            openssl, python3)
#   BIN=target/release/spinforge   the spinforge binary
#   SECS=10 ROUNDS=3 WARM=2        seconds per run, rounds, warm-up seconds per target and scenario
#   WARM_EACH=1                    seconds of the same load right before every measured run, not
#                                  measured (0: none). Without it the first run of a round came
#                                  after a minute of the other part's load and Node idle on this
#                                  app: p99 330 ms on whichever target went first (session 10)
#   PARTS=1,2                      which parts (1: Express, 2: Next.js)
#   PAGE_H2='-c16 -m2' PAGE_H1='-c32'  h2load's load for the page rendered per request (2a-2c)
#   CHEAP_H2='-c16 -m2'            h2load's load for the prerendered page and the asset (2d, 2e)
#   DATA_DIR=dir                   SpinForge's data_dir, kept between runs: an unchanged app
#                                  reuses its release (no rebuild); default: a fresh one in the
#                                  work folder (npm ci + next build: minutes)
#   BUILD_TIMEOUT=1500             seconds to wait for both apps to be built and running
#   EDGE_ENV='A=1'                 environment for spinforge (e.g. SPINFORGE_EDGE_FAST=0)
#   OUT=file.md                    also append the report (markdown) to this file
#   KEEP=1                         keep the work folder (configs, logs, every tool's output)
set -euo pipefail
cd "$(dirname "$0")/.."
. loadtest/lib.sh
REPO=$PWD
BIN=${BIN:-target/release/spinforge}
SECS=${SECS:-10}
ROUNDS=${ROUNDS:-3}
WARM=${WARM:-2}
WARM_EACH=${WARM_EACH:-1}
PARTS=${PARTS:-1,2}
OUT=${OUT:-}
BUILD_TIMEOUT=${BUILD_TIMEOUT:-1500}
EXPRESS_HOST=hello.test
NEXT_HOST=next.test
BROWSER_AE='gzip, deflate, br, zstd'
PAGE_H2=${PAGE_H2:--c16 -m2}
CHEAP_H2=${CHEAP_H2:--c16 -m2}
PAGE_H1=${PAGE_H1:--c32}

die() { echo "apps.sh: $*" >&2; exit 1; }
part() { [[ ",$PARTS," == *",$1,"* ]]; }
[ -x "$BIN" ] || die "no spinforge binary at $BIN (build it: cargo build --release, or set BIN)"
BIN=$(realpath "$BIN")
for tool in wrk:wrk h2load:nghttp2-client nginx:nginx curl:curl openssl:openssl python3:python3 node:nodejs npm:npm; do
  command -v "${tool%%:*}" >/dev/null || die "needs ${tool%%:*} (apt-get install ${tool#*:})"
done
part 1 || part 2 || die "PARTS=$PARTS names neither part 1 nor part 2"
[[ $OUT == "" || $OUT == /* ]] || OUT=$REPO/$OUT

W=$(mktemp -d /tmp/spinforge-apps.XXXXXX)
DATA=${DATA_DIR:-$W/data}
mkdir -p "$W/out" "$DATA"
DATA=$(realpath "$DATA")
pids=()        # processes this script started (spinforge, nginx), in start order
spinlet_pids=() # the spinlets' node processes (spinforge's children), stopped if they outlive it
cleanup() {
  local p i
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill -TERM "${pids[$i]}" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  # spinforge stops its spinlets on SIGTERM (within edge.grace); one left behind is ours to stop.
  for p in "${spinlet_pids[@]}"; do
    if kill -0 "$p" 2>/dev/null; then kill -TERM "$p" 2>/dev/null || true; sleep 1; kill -KILL "$p" 2>/dev/null || true; fi
  done
  if [ -n "${KEEP:-}" ]; then echo "work folder kept: $W" >&2; else rm -rf "$W"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

report=$W/report.md
load1() { cut -d' ' -f1 /proc/loadavg; }
hz=$(getconf CLK_TCK)
# utime+stime (clock ticks) of one process (all its threads, not its children).
ticks_self() { if [ -r "/proc/$1/stat" ]; then sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; else echo 0; fi; }
descendants() { local c; for c in $(pgrep -P "$1" || true); do echo "$c"; descendants "$c"; done; }
# ...of a process and all its descendants (NGINX's workers; a Node app's children if it has any).
ticks_tree() { local t=0 p; for p in "$1" $(descendants "$1"); do t=$((t + $(ticks_self "$p"))); done; echo "$t"; }
rss_mb() { local t=0 p; for p in "$@"; do t=$((t + $(awk '/VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0))); done; awk -v k=$t 'BEGIN { printf "%.1f", k / 1024 }'; }

# --- certificate -------------------------------------------------------------------------------
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj "/CN=$NEXT_HOST" -addext "subjectAltName=DNS:$NEXT_HOST" \
  -keyout "$W/key.pem" -out "$W/cert.pem" 2>/dev/null
chmod 755 "$W"; chmod 644 "$W"/*.pem # NGINX's workers run as nobody when started as root

# --- spinforge up with the apps ------------------------------------------------------------------
EDGE_HTTP=$(free_port); EDGE_HTTPS=$(free_port); ADMIN=$(free_port)
range=$((20000 + RANDOM % 20000))
{
  cat <<YAML
edge:
  listen_http: 127.0.0.1:$EDGE_HTTP
  listen_https: 127.0.0.1:$EDGE_HTTPS
  metrics: off
  grace: 2s
  max_connections_per_ip: 100000
supervisor:
  data_dir: $DATA
  port_range: $range-$((range + 19))
  admin_listen: 127.0.0.1:$ADMIN
  builds: { concurrency: 2 }
apps:
YAML
  part 1 && cat <<YAML
  hello:
    domains: [$EXPRESS_HOST]
    source: $REPO/conf/apps/hello
    tls: off
    idle_timeout: 0
    health_check: { path: /healthz }
YAML
  part 2 && cat <<YAML
  next:
    domains: [$NEXT_HOST]
    source: $REPO/loadtest/next-app
    tls: { cert: $W/cert.pem, key: $W/key.pem }
    idle_timeout: 0
    health_check: { path: /styles.css, timeout: 60s }
YAML
} >"$W/spinforge.yaml"
apps=()
part 1 && apps+=(hello)
part 2 && apps+=(next)
[ -e "$REPO/loadtest/next-app/node_modules" ] && note "note: loadtest/next-app/node_modules exists; SpinForge's copy of the source leaves it out"
"$BIN" check --config "$W/spinforge.yaml" >&2 || die "$BIN refuses $W/spinforge.yaml"
# shellcheck disable=SC2086
env -u SPINFORGE_TOKEN RUST_LOG="${RUST_LOG:-warn}" ${EDGE_ENV:-} "$BIN" up --config "$W/spinforge.yaml" >"$W/spinforge.log" 2>&1 &
SF=$!
pids+=("$SF")

api() { curl -sf --max-time 5 "http://127.0.0.1:$ADMIN/api/v1/$1"; }
# "port pid" of the app's running spinlet, from the admin API; nothing while there is none.
spinlet_of() {
  api spinlets 2>/dev/null | python3 -c '
import json, sys
app = sys.argv[1]
try:
    rows = [s for s in json.load(sys.stdin) if s["app"] == app and s["state"] == "running" and s.get("port") and s.get("pid")]
except Exception:
    rows = []
if len(rows) > 1:
    sys.exit("more than one running spinlet for " + app)
for s in rows:
    print(s["port"], s["pid"])' "$1"
}
note "building and starting ${apps[*]} with $BIN (data_dir $DATA; a fresh Next.js build takes minutes)"
declare -A port_of pid_of
t0=$(date +%s)
while :; do
  kill -0 "$SF" 2>/dev/null || { tail -30 "$W/spinforge.log" >&2; die "spinforge up exited (log above)"; }
  if grep -q "build failed" "$W/spinforge.log"; then
    grep "build failed" "$W/spinforge.log" >&2
    for f in "$DATA"/logs/builds/*.log; do [ -f "$f" ] && { echo "== $f" >&2; tail -25 "$f" >&2; }; done
    die "a build failed (above)"
  fi
  ready=1
  for a in "${apps[@]}"; do
    [ -n "${port_of[$a]:-}" ] && continue
    read -r port pid < <(spinlet_of "$a" || true) || true
    if [ -n "${port:-}" ]; then port_of[$a]=$port; pid_of[$a]=$pid; spinlet_pids+=("$pid"); note "$a: spinlet pid $pid on port $port (after $(($(date +%s) - t0)) s)"
    else ready=0; fi
    port=; pid=
  done
  [ $ready = 1 ] && break
  [ $(($(date +%s) - t0)) -lt "$BUILD_TIMEOUT" ] || die "the apps were not running after $BUILD_TIMEOUT s (see $W/spinforge.log and $DATA/logs/builds/)"
  sleep 1
done
for a in "${apps[@]}"; do
  # (Next.js renames its process to "next-server (vX)", so the executable is what says node.)
  [[ $(readlink "/proc/${pid_of[$a]}/exe" 2>/dev/null) == */node* ]] || die "$a's spinlet pid ${pid_of[$a]} is not a node process ($(readlink "/proc/${pid_of[$a]}/exe" 2>/dev/null))"
done
# release.json of the app's current release (from the admin API): framework, build time.
release_info() {
  local rel; rel=$(api "apps/$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["current_release"] or "")')
  python3 - "$DATA/apps/$1/releases/$rel" "$1" "$rel" <<'PY'
import json, os, sys
d, app, rel = sys.argv[1:]
try:
    r = json.load(open(os.path.join(d, "release.json")))
except Exception:
    print(f"{app}: release {rel}"); sys.exit()
extra = ""
try:
    extra = ", next " + json.load(open(os.path.join(d, "node_modules/next/package.json")))["version"]
except Exception:
    pass
ms = r.get("build_ms")
print(f"{app}: release {rel}, {r.get('framework', '?')}{extra}, built in {ms / 1000:.1f} s" if isinstance(ms, (int, float)) else f"{app}: release {rel}, {r.get('framework', '?')}{extra}")
PY
}

# --- NGINX in front of the Next spinlet ------------------------------------------------------------
if part 2; then
  NGINX_HTTPS=$(free_port)
  mkdir -p "$W/nginx"
  cat >"$W/nginx.conf" <<NGINX
worker_processes 2;
pid $W/nginx/nginx.pid;
error_log $W/nginx/error.log warn;
events { worker_connections 10000; }
http {
  access_log off;
  client_body_temp_path $W/nginx/body; proxy_temp_path $W/nginx/proxy; fastcgi_temp_path $W/nginx/fastcgi;
  uwsgi_temp_path $W/nginx/uwsgi; scgi_temp_path $W/nginx/scgi;
  keepalive_requests 1000000;  # else GOAWAY / close after 1000 requests (h2load does not reconnect)
  keepalive_timeout 75s;
  gzip on;
  gzip_comp_level 5;
  gzip_types text/css;  # text/html is always in gzip_types
  gzip_min_length 256;
  gzip_vary on;
  gzip_proxied any;
  ssl_protocols TLSv1.2 TLSv1.3;
  ssl_session_cache shared:SSL:10m;
  ssl_session_tickets on;
  http2_max_concurrent_streams 128;
  upstream next { server 127.0.0.1:${port_of[next]}; keepalive 256; }
  server {
    listen 127.0.0.1:$NGINX_HTTPS ssl http2 reuseport;
    server_name $NEXT_HOST;
    ssl_certificate $W/cert.pem;
    ssl_certificate_key $W/key.pem;
    location / {
      proxy_pass http://next;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$http_host;
      proxy_set_header X-Forwarded-For \$remote_addr;
      proxy_set_header X-Forwarded-Proto \$scheme;
      proxy_set_header X-Forwarded-Host \$http_host;
      proxy_set_header X-Request-Id \$request_id;
      add_header X-Request-Id \$request_id;
      add_header X-Content-Type-Options nosniff;
      add_header Referrer-Policy strict-origin-when-cross-origin;
      add_header Strict-Transport-Security "max-age=31536000";
    }
  }
}
NGINX
  nginx -t -q -c "$W/nginx.conf" -p "$W/nginx" 2>"$W/nginx/check.log" || { cat "$W/nginx/check.log" >&2; die "bad config $W/nginx.conf"; }
  nginx -c "$W/nginx.conf" -p "$W/nginx" -g 'daemon off;' 2>"$W/nginx/stderr.log" &
  NGINX=$!
  pids+=("$NGINX")
  for i in $(seq 1 100); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' --cacert "$W/cert.pem" --resolve "$NEXT_HOST:$NGINX_HTTPS:127.0.0.1" "https://$NEXT_HOST:$NGINX_HTTPS/styles.css")" = 200 ] && break
    kill -0 "$NGINX" 2>/dev/null && [ "$i" != 100 ] || { cat "$W/nginx/stderr.log" "$W/nginx/error.log" >&2 2>/dev/null; die "NGINX does not answer"; }
    sleep 0.1
  done
fi

# --- targets and scenarios ---------------------------------------------------------------------
# Part 1 targets: direct, edge. Part 2 peers: edge, nginx.
# Scenario id -> "tool|path|accept-encoding|load options|title"; tool: wrk, h2 or h1tls (h2load --h1).
declare -A S
S[1]="wrk|/||-c64|Express \`GET /\`, HTTP/1.1 plain: the edge vs direct to the spinlet"
S[2a]="h2|/|gzip|$PAGE_H2|Next.js page rendered per request, HTTP/2 over TLS, Accept-Encoding: gzip"
S[2b]="h2|/|$BROWSER_AE|$PAGE_H2|Next.js page rendered per request, HTTP/2 over TLS, a browser's Accept-Encoding: $BROWSER_AE"
S[2c]="h1tls|/|gzip|$PAGE_H1|Next.js page rendered per request, HTTP/1.1 over TLS, Accept-Encoding: gzip"
S[2d]="h2|/prerendered|gzip|$CHEAP_H2|Next.js page prerendered at build, HTTP/2 over TLS, Accept-Encoding: gzip"
S[2e]="h2|/styles.css|gzip|$CHEAP_H2|Next.js static asset (public/styles.css), HTTP/2 over TLS, Accept-Encoding: gzip"
targets_of() { [ "$1" = 1 ] && echo "direct edge" || echo "edge nginx"; }
scenarios=()
part 1 && scenarios+=(1)
part 2 && scenarios+=(2a 2b 2c 2d 2e)

url_of() { # target scenario
  local path; path=$(field "$2" 1)
  case $1:$2 in
    direct:1) echo "http://127.0.0.1:${port_of[hello]}$path" ;;
    edge:1) echo "http://127.0.0.1:$EDGE_HTTP$path" ;;
    edge:*) echo "https://$NEXT_HOST:$EDGE_HTTPS$path" ;;
    nginx:*) echo "https://$NEXT_HOST:$NGINX_HTTPS$path" ;;
  esac
}
tls_port_of() { [ "$1" = edge ] && echo "$EDGE_HTTPS" || echo "$NGINX_HTTPS"; }
# The tool's command line, one argument a line: SECS seconds of load (h2load's per-request log
# into LOG), or with CHECK set 2 connections for 1 s (wrk) or 200 requests (h2load).
cmd_of() { # target scenario secs [log] [check]
  local tool ae opts url amount; tool=$(field "$2" 0); ae=$(field "$2" 2); opts=$(field "$2" 3); url=$(url_of "$1" "$2")
  amount="-D $3"
  if [ -n "${5:-}" ]; then opts="-c2$([ "$tool" = h2 ] && echo ' -m2')"; amount="-n 200"; fi
  # shellcheck disable=SC2086
  case $tool in
    wrk) printf '%s\n' wrk -t1 $opts -d"${3}s" --latency -H "Host: $EXPRESS_HOST" ${ae:+-H "Accept-Encoding: $ae"} "$url" ;;
    h2 | h1tls)
      printf '%s\n' h2load -t1 $opts $amount $([ "$tool" = h1tls ] && echo --h1) \
        --connect-to="127.0.0.1:$(tls_port_of "$1")" ${4:+--log-file="$4"} ${ae:+-H "accept-encoding: $ae"} "$url" ;;
  esac
}

# --- header ------------------------------------------------------------------------------------
say "# apps.sh — $(date -u '+%Y-%m-%d %H:%M UTC')"
say ""
say "Machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GB", $2/1048576}' /proc/meminfo), $(uname -r); load average at start $(cut -d' ' -f1-3 /proc/loadavg)."
say "SpinForge: \`$BIN\` ($(stat -c '%y' "$BIN" | cut -d. -f1))${EDGE_ENV:+ with $EDGE_ENV}; Node $(node -v); $(part 2 && echo "$(nginx -v 2>&1 | sed 's/.*version: //') (2 workers); ")$(h2load --version | head -1 | awk '{print $2}'), $(wrk -v 2>&1 | head -1 | awk '{print "wrk " $2}'). SECS=$SECS ROUNDS=$ROUNDS WARM=$WARM WARM_EACH=$WARM_EACH$(part 2 && echo " PAGE_H2=\"$PAGE_H2\" PAGE_H1=\"$PAGE_H1\" CHEAP_H2=\"$CHEAP_H2\"")."
for a in "${apps[@]}"; do say "App $(release_info "$a"); spinlet pid ${pid_of[$a]}, port ${port_of[$a]} (admin API \`GET /api/v1/spinlets\`)."; done
say ""

# --- checks: the right answer from every target, before measuring --------------------------------
checks=$W/checks.tsv; : >"$checks"
failures=()
REF=$W/ref
mkdir -p "$REF"
if part 1; then
  # The direct answer (no request id, no forwarded host) differs from the edge's in those lines only.
  curl -sS --max-time 10 -H "Host: $EXPRESS_HOST" -o "$REF/express" "http://127.0.0.1:${port_of[hello]}/" || die "the Express spinlet does not answer directly"
  grep -q "^Hello from SpinForge!" "$REF/express" || die "the Express spinlet's answer is not the demo app's: $(head -c 200 "$REF/express")"
fi
if part 2; then
  for i in 1 2; do
    curl -sS --max-time 30 -D "$REF/page$i.head" -o "$REF/page$i" -H 'Accept-Encoding: gzip' "http://127.0.0.1:${port_of[next]}/" || die "the Next spinlet does not answer directly"
  done
  grep -qi '^content-encoding:' "$REF/page1.head" && die "next start compressed its own answer (compress: false in loadtest/next-app/next.config.js?)"
  grep -q 'data-bench-end="1"' "$REF/page1" && grep -q '<h1>All products</h1>' "$REF/page1" ||
    die "the Next spinlet's / is not the bench page: $(head -c 300 "$REF/page1")"
  cmp -s "$REF/page1" "$REF/page2" || die "the Next page differs between two renders; it must be deterministic to be checked"
  cp "$REF/page1" "$REF/page"
  curl -sS --max-time 10 -D "$REF/prerendered.head" -o "$REF/prerendered" "http://127.0.0.1:${port_of[next]}/prerendered"
  grep -q 'data-bench-end="1"' "$REF/prerendered" || die "the Next spinlet's /prerendered is not the bench page: $(head -c 300 "$REF/prerendered")"
  curl -sS --max-time 10 -o "$REF/styles.css" "http://127.0.0.1:${port_of[next]}/styles.css"
  cmp -s "$REF/styles.css" "$REPO/loadtest/next-app/public/styles.css" ||
    die "the Next spinlet's /styles.css is not loadtest/next-app/public/styles.css"
fi
ref_for() { case $1:$(field "$1" 1) in 1:*) echo "$REF/express" ;; *:/) echo "$REF/page" ;; *:/prerendered) echo "$REF/prerendered" ;; *) echo "$REF/styles.css" ;; esac; }
size_of() { stat -c %s "$1"; }

check() { # target scenario
  local t=$1 s=$2 tool path ae url ref ver want_ver enc dl code ok=1 why="" base
  tool=$(field "$s" 0); path=$(field "$s" 1); ae=$(field "$s" 2); url=$(url_of "$t" "$s"); ref=$(ref_for "$s")
  base=$W/out/check-$s-$t
  want_ver=$([ "$tool" = h2 ] && echo 2 || echo 1.1)
  local -a c=(curl -sS --max-time 30 -D "$base.head" -o "$base.body" -w '%{http_code} %{http_version} %{size_download}\n')
  if [ "$tool" = wrk ]; then c+=(-H "Host: $EXPRESS_HOST" --http1.1); else c+=(--cacert "$W/cert.pem" --resolve "$NEXT_HOST:$(tls_port_of "$t"):127.0.0.1"); fi
  [ "$tool" = h2 ] && c+=(--http2)
  [ "$tool" = h1tls ] && c+=(--http1.1)
  [ -n "$ae" ] && c+=(--compressed -H "Accept-Encoding: $ae")
  read -r code ver dl < <("${c[@]}" "$url" 2>"$base.err" || echo "000 - 0")
  enc=$(awk 'tolower($1) == "content-encoding:" {print $2}' "$base.head" 2>/dev/null | tr -d '\r')
  [ "$code" = 200 ] || { ok=0; why+="status $code; "; }
  [ "$ver" = "$want_ver" ] || { ok=0; why+="HTTP/$ver, not HTTP/$want_ver; "; }
  if [ "$s" = 1 ]; then
    # The edge adds a request id (and the forwarded host): compare everything else.
    diff -q <(grep -v -e '^request id:' -e '^pid:' "$ref") <(grep -v -e '^request id:' -e '^pid:' "$base.body") >/dev/null ||
      { ok=0; why+="body is not the demo app's answer ($(head -c 100 "$base.body" | tr '\n' ' ')); "; }
  else
    cmp -s "$ref" "$base.body" || { ok=0; why+="decoded body differs from the spinlet's own ($(size_of "$base.body" 2>/dev/null || echo 0) B, want $(size_of "$ref") B); "; }
  fi
  if [ -z "$ae" ]; then
    [ -z "$enc" ] || { ok=0; why+="Content-Encoding $enc without Accept-Encoding; "; }
  elif [ "$ae" = gzip ] || [ "$t" != edge ]; then
    [ "$enc" = gzip ] || { ok=0; why+="Content-Encoding '${enc}', want gzip; "; }
  else
    [[ $enc =~ ^(gzip|br|zstd)$ ]] || { ok=0; why+="Content-Encoding '${enc}', want br, zstd or gzip; "; }
  fi
  # The same requests the load will send, with its own tool: all must succeed with a 2xx.
  cmd_of "$t" "$s" 1 "" check | run_cmd >"$base.tool" 2>&1 || true
  if [ "$tool" = wrk ]; then
    if ! grep -q "requests in" "$base.tool" || grep -q -E "Non-2xx|Socket errors" "$base.tool"; then ok=0; why+="wrk: errors ($(grep -E 'Non-2xx|Socket errors' "$base.tool" | tr -s ' ' | tr '\n' ' ')); "; fi
  else
    grep -q "200 succeeded, 0 failed, 0 errored" "$base.tool" && grep -q "status codes: 200 2xx" "$base.tool" ||
      { ok=0; why+="h2load: not 200 of 200 answered 2xx ($(grep -E '^requests:|^status codes:' "$base.tool" | tr '\n' ' ')); "; }
    local proto per; proto=$(awk '/^Application protocol:/ {print $3}' "$base.tool")
    [ "$proto" = "$([ "$tool" = h2 ] && echo h2 || echo http/1.1)" ] || { ok=0; why+="h2load negotiated '$proto'; "; }
    # h2load's body bytes per answer must match curl's (its Accept-Encoding was sent, and used).
    per=$(sed -n 's/.*(\([0-9]*\)) data$/\1/p' "$base.tool"); per=$(( ${per:-0} / 200 ))
    awk -v a="$per" -v b="$dl" 'BEGIN { exit !(a >= b * 0.98 && a <= b * 1.02) }' ||
      { ok=0; why+="h2load got $per body bytes per answer, curl $dl; "; }
  fi
  why=${why%; }
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$s" "$t" "$ver" "${enc:--}" "$dl" "$([ $ok = 1 ] && echo ok || echo "FAILED: $why")" >>"$checks"
  [ $ok = 1 ] || failures+=("scenario $s, $t: $why")
}
for s in "${scenarios[@]}"; do for t in $(targets_of "$s"); do check "$t" "$s"; done; done
say "## Answers checked before measuring"
say ""
say "curl (body decoded and compared with what the spinlet itself serves; for Express all but its request-id and pid lines) and 200 requests with the load's own tool and headers. Encoded bytes: the body as sent."
say ""
say "| scenario | target | HTTP | Content-Encoding | encoded bytes | check |"
say "| --- | --- | --- | --- | ---: | --- |"
while IFS=$'\t' read -r s t ver enc dl res; do say "| $s | $t | $ver | $enc | $dl | $res |"; done <"$checks"
say ""
if [ ${#failures[@]} -gt 0 ]; then
  printf 'apps.sh: WRONG ANSWERS, nothing measured:\n' >&2
  printf '  %s\n' "${failures[@]}" >&2
  [ -n "$OUT" ] && cat "$report" >>"$OUT"
  exit 1
fi

# --- rounds ------------------------------------------------------------------------------------
proxy_ticks() { case $1 in edge) ticks_self "$SF" ;; nginx) ticks_tree "$NGINX" ;; direct) ticks_self "$SF" ;; esac; }
node_of() { [ "$1" = 1 ] && echo "${pid_of[hello]}" || echo "${pid_of[next]}"; }
results=$W/results.tsv; : >"$results" # scenario round target load rps p50 p99 reqs errors bytes proxy_cpu node_cpu
# The spinlet must be the process measured from the start (no restart, no new port): the supervisor
# replaces one that misses 3 health probes in a row (2 s each), and NGINX would then proxy to a
# dead port while the edge follows the new one.
same_spinlet() { # app
  local a=$1 port pid
  read -r port pid < <(spinlet_of "$a" || true) || true
  [ "${port:-}" = "${port_of[$a]}" ] && [ "${pid:-}" = "${pid_of[$a]}" ] && return 0
  grep "replacing an unhealthy spinlet\|spinlet.*exited\|crash" "$W/spinforge.log" | tail -3 >&2 || true
  die "$a's spinlet changed during the run (pid ${pid_of[$a]} port ${port_of[$a]} -> pid ${pid:-none} port ${port:-none}): figures from here on would mix processes, so nothing more is measured. If the supervisor replaced it for missed health probes (above), the load queued requests inside Node for over 2 s: lower it (PAGE_H2, PAGE_H1) or use a quieter machine."
}
run_load() { # target scenario round
  local t=$1 s=$2 r=$3 tool base l pb pa nb na node line
  tool=$(field "$s" 0); base=$W/out/$s-r$r-$t; node=$(node_of "$s")
  [ "$WARM_EACH" = 0 ] || cmd_of "$t" "$s" "$WARM_EACH" | run_cmd >/dev/null 2>&1 || true
  l=$(load1)
  pb=$(proxy_ticks "$t"); nb=$(ticks_tree "$node")
  cmd_of "$t" "$s" "$SECS" "$base.log" | run_cmd >"$base.txt" 2>&1 || true
  pa=$(proxy_ticks "$t"); na=$(ticks_tree "$node")
  line=$(parse "$([ "$tool" = wrk ] && echo wrk || echo h2load)" "$base.txt" "$base.log" 2>/dev/null) ||
    { cat "$base.txt" >&2; die "cannot read the output of scenario $s on $t (above)"; }
  rm -f "$base.log"
  read -r rps p50 p99 reqs errs bytes <<<"$line"
  local cpu ncpu
  cpu=$(awk -v d=$((pa - pb)) -v hz="$hz" -v n="$reqs" 'BEGIN { printf "%.2f", (n > 0 ? d / hz / n * 100000 : 0) }')
  ncpu=$(awk -v d=$((na - nb)) -v hz="$hz" -v n="$reqs" 'BEGIN { printf "%.2f", (n > 0 ? d / hz / n * 100000 : 0) }')
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$s" "$r" "$t" "$l" "$rps" "$p50" "$p99" "$reqs" "$errs" "$bytes" "$cpu" "$ncpu" >>"$results"
  note "$(printf 'round %s  %s  %-6s load %-5s %8s req/s  p50 %7s ms  p99 %7s ms  errors %s  CPU-s/100k: %s %s, node %s' "$r" "$s" "$t" "$l" "$rps" "$p50" "$p99" "$errs" "$([ "$t" = nginx ] && echo nginx || echo edge)" "$cpu" "$ncpu")"
  [ "$errs" = 0 ] || note "WARNING: $errs errors in scenario $s on $t (round $r): see $base.txt (KEEP=1)"
  same_spinlet "$([ "$s" = 1 ] && echo hello || echo next)"
}
if [ "$WARM" != 0 ]; then
  note "warming up every target in every scenario (${WARM}s each)"
  for s in "${scenarios[@]}"; do for t in $(targets_of "$s"); do cmd_of "$t" "$s" "$WARM" | run_cmd >/dev/null 2>&1 || true; done; done
  for a in "${apps[@]}"; do same_spinlet "$a"; done
fi
round_load=()
for r in $(seq 1 "$ROUNDS"); do
  round_load+=("$(cut -d' ' -f1-3 /proc/loadavg)")
  note "== round $r of $ROUNDS, load average ${round_load[-1]}"
  k=0
  for s in "${scenarios[@]}"; do
    read -r -a ts <<<"$(targets_of "$s")"
    # Rotate which target goes first, per round and scenario.
    for j in 0 1; do run_load "${ts[$(((j + r + k) % 2))]}" "$s" "$r"; done
    k=$((k + 1))
  done
done

same=1 # (the loop above stops the script when a spinlet was replaced)

# --- report ------------------------------------------------------------------------------------
titles=$W/titles.tsv; : >"$titles"
for s in "${scenarios[@]}"; do
  tool=$(field "$s" 0)
  case $tool in
    wrk) how="wrk -t1 $(field "$s" 3) -d${SECS}s" ;;
    h1tls) how="h2load --h1 -t1 $(field "$s" 3) -D $SECS" ;;
    h2) how="h2load -t1 $(field "$s" 3) -D $SECS" ;;
  esac
  printf '%s\t%s\t%s\t%s\n' "$s" "$(field "$s" 4)" "$how" "$tool" >>"$titles"
done
python3 - "$results" "$titles" "$checks" >"$report.tmp" <<'PY'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
titles = [l.rstrip("\n").split("\t") for l in open(sys.argv[2])]
checks = {(c[0], c[1]): c for c in (l.rstrip("\n").split("\t") for l in open(sys.argv[3]))}
# columns: 0 scenario 1 round 2 target 3 load 4 rps 5 p50 6 p99 7 reqs 8 errors 9 bytes 10 proxy cpu 11 node cpu
def med(s, t, col):
    v = [float(r[col]) for r in rows if r[0] == s and r[2] == t and r[col] not in ("-", "nan")]
    return statistics.median(v) if v else float("nan")
def ratio(x, y):
    return f"{x / y:.2f}" if y == y and y > 0 and x == x else "-"
def num(v, fmt):
    return "-" if v != v else format(v, fmt)
out = []
for s, title, how, tool in titles:
    express = s == "1"
    targets = ["direct", "edge"] if express else ["nginx", "edge"]
    base = targets[0]
    out += [f"## {s}. {title}", ""]
    if express:
        out += [f"`{how}`, Host hello.test. **direct**: wrk to the spinlet's own port (from the admin API); **edge**: wrk to the edge's plain "
                "listener, which forwards to that port. p50/p99: wrk's latency distribution; bytes/answer: everything wrk read (head and body). "
                "CPU-s per 100k requests: **edge** = the `spinforge up` process's own threads (edge and supervisor; it idles during the direct runs), "
                "**node** = the spinlet's process. Medians of the rounds.", ""]
    else:
        out += [f"`{how}`, SNI and authority next.test; both peers forward to the same spinlet. p50/p99 from h2load's per-request log (`--log-file`); "
                "bytes/answer: body bytes as sent (h2load's `data`). CPU-s per 100k requests: **proxy** = the `spinforge up` process's own threads, or "
                "NGINX's master and workers; **node** = the spinlet (`next start`) and its children. Medians of the rounds.", ""]
        if "br" in title:
            out += ["NGINX answers gzip (level 5); the edge answers what it prefers among zstd, gzip and br (column `encoding`), so bytes and CPU differ by design.", ""]
    rx = "× direct" if express else "× nginx"
    out += [f"| target | req/s | {rx} | p50 ms | p99 ms | p99 {rx} | {'edge' if express else 'proxy'} CPU-s/100k | {'' if express else 'proxy CPU ' + rx + ' | '}node CPU-s/100k | bytes/answer | encoding | errors |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | " + ("" if express else "---: | ") + "---: | ---: | --- | ---: |"]
    b = {c: med(s, base, c) for c in range(4, 12)}
    for t in targets:
        v = {c: med(s, t, c) for c in range(4, 12)}
        enc = checks.get((s, t), ["", "", "", "?"])[3]
        first = t == base
        out.append(f"| {t} | {num(v[4], '.0f')} | {'' if first else ratio(v[4], b[4])} | {num(v[5], '.2f')} | {num(v[6], '.2f')} | "
                   f"{'' if first else ratio(v[6], b[6])} | {num(v[10], '.2f')} | "
                   + ("" if express else f"{'' if first else ratio(v[10], b[10])} | ")
                   + f"{num(v[11], '.2f')} | {num(v[9], '.0f')} | {enc} | {num(v[8], '.0f')} |")
    out += ["", "Rounds (req/s, p99, CPU-s per 100k requests of the proxy / of node; load average at the start of each run):", "",
            "| round | " + " | ".join(targets) + " | edge / " + base + " req/s |", "| --- |" + " ---: |" * (len(targets) + 1)]
    for rnd in sorted({r[1] for r in rows if r[0] == s}, key=int):
        cells, rps = [], {}
        for t in targets:
            r = [x for x in rows if x[0] == s and x[1] == rnd and x[2] == t]
            if not r:
                cells.append("-"); continue
            r = r[0]
            rps[t] = float(r[4])
            cells.append(f"{r[4]} req/s, p99 {r[6]} ms, {r[10]} / {r[11]} CPU-s{', **' + r[8] + ' errors**' if r[8] not in ('0', '-') else ''} (load {r[3]})")
        out.append(f"| {rnd} | " + " | ".join(cells) + f" | {ratio(rps.get('edge', float('nan')), rps.get(base, float('nan')))} |")
    out.append("")
print("\n".join(out))
PY
cat "$report.tmp" >>"$report"; cat "$report.tmp"
rss="Resident memory at the end: spinforge (edge + supervisor) $(rss_mb "$SF") MB"
for a in "${apps[@]}"; do rss+=", $a's spinlet $(rss_mb "${pid_of[$a]}" $(descendants "${pid_of[$a]}")) MB"; done
part 2 && rss+=", NGINX $(rss_mb "$NGINX" $(descendants "$NGINX")) MB (master + 2 workers)"
say "$rss."
say "Spinlets $([ $same = 1 ] && echo "unchanged throughout (same pid and port)" || echo "**changed during the run** (see the warnings): the figures mix processes")."
say "Load average at the start of each round: $(printf '%s; ' "${round_load[@]}")at the end: $(cut -d' ' -f1-3 /proc/loadavg)."
say ""
[ -n "$OUT" ] && cat "$report" >>"$OUT" && note "report appended to $OUT"
exit 0
