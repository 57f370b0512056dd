#!/usr/bin/env bash
# Production traffic through SpinForge's edge, NGINX and HAProxy side by side, in one run:
# HTTP/1.1 plain and over TLS, HTTP/2 over TLS (few and many streams per connection), compressed
# HTML and JSON, TLS handshakes/s (full and resumed) and memory per idle keep-alive connection.
#
#   upstream: NGINX, 1 worker: `/` a 29-byte `return 200`; `/page.html` a 24 KB product-list page
#             (text/html) and `/data.json` a 20 KB list of records (application/json), generated
#             here deterministically and sent uncompressed
#   peers, each in front of that upstream with the same ECDSA P-256 certificate (SNI bench.test):
#     edge     `spinforge up`, the upstream as an external app (`upstream:`), `tls: {cert, key}`,
#              compression on (its default: br/zstd/gzip by Accept-Encoding, gzip level 5);
#              plain HTTP goes to a second app `bench.local` (same upstream, `tls: off`), since
#              the edge redirects plain requests for a name with a certificate to HTTPS
#     nginx    2 workers, upstream keepalive, http2, gzip level 5 for text/html and
#              application/json, gzip_min_length 256, gzip_vary on
#     haproxy  2 threads, http-reuse always, h2 by ALPN, `compression algo gzip` (SLZ) for
#              text/html and application/json
#     edge2    optional: another spinforge binary (EDGE2_BIN, EDGE2_ENV), e.g. the build before
#   Every peer adds the same forwarding headers (X-Forwarded-For/-Proto/-Host, X-Request-Id) and
#   the edge's default response headers (X-Request-Id, X-Content-Type-Options, Referrer-Policy,
#   HSTS over TLS), and none has an access log.
#
# Scenarios (SCENARIOS=1,3,5 picks some; 10 is the memory one):
#   1 HTTP/1.1 plain, small answer                      wrk -t1 -c64
#   2 HTTP/1.1 over TLS, small answer                   h2load --h1 -c64
#   3 HTTP/2 over TLS, small answer                     h2load -c16 -m10
#   4 HTTP/2 over TLS, many streams per connection      h2load -c4 -m100
#   5 HTTP/2 over TLS, 24 KB HTML, AE: gzip             h2load -c16 -m10
#   6 HTTP/1.1 plain, 24 KB HTML, AE: gzip              wrk -t1 -c64
#   7 HTTP/2 over TLS, 24 KB HTML, AE: gzip, deflate, br, zstd (a browser's; the edge may answer
#     br or zstd, NGINX and HAProxy only gzip)        h2load -c16 -m10
#   8 HTTP/2 over TLS, 20 KB JSON, AE: gzip             h2load -c16 -m10
#   9 TLS handshakes/s: full TLS 1.3, full TLS 1.2, resumed TLS 1.2, resumed TLS 1.3
#     (loadtest/tls_handshakes.py, CLIENTS client processes, handshake only)
#  10 memory per idle keep-alive connection, plain / TLS / HTTP/2 / plain once others idle
#     (loadtest/idle_conns.py: IDLE_N connections of each kind, held together; PSS and RSS of
#     the peer's processes), measured
#     once, before the rounds
#
# Before measuring, every peer's answer in every scenario is checked (status 200, protocol,
# body size and bytes, Content-Encoding) with curl and a short h2load/wrk run; the script stops
# if one is wrong. Rounds are interleaved: each round runs every scenario on every peer, in an
# order that rotates. For each run: req/s, p50 and p99 (wrk's; for h2load, from its per-request
# log, --log-file), errors (non-2xx, failed, socket errors), CPU-seconds per 100k requests
# (utime+stime from /proc/<pid>/stat of the peer's processes: NGINX's master and workers, HAProxy's
# process, the whole `spinforge up` process), bytes per answer, and the load average at its
# start. Then per scenario the medians and each peer's ratio to NGINX, in markdown.
#
# usage: loadtest/prod.sh        (needs a release build, nginx, haproxy, h2load (nghttp2-client),
#                                 wrk, curl, openssl, python3)
#   BIN=target/release/spinforge   the edge's binary
#   SECS=10 ROUNDS=3 WARM=1        seconds per run, rounds, warm-up seconds per peer and scenario
#   SCENARIOS=1,2,3,4,5,6,7,8,9,10
#   CLIENTS=2                      client processes for the handshakes (scenario 9)
#   IDLE_N=1000 IDLE_SETTLE=1      idle connections per kind, seconds before reading memory (10)
#   EDGE_ENV='A=1'                 environment for the edge (e.g. SPINFORGE_EDGE_FAST=0)
#   EDGE2_BIN=path EDGE2_ENV='A=1' a second spinforge binary ("edge2") in the same rounds
#   EDGE_EXTRA='  h2c: true\n'     extra lines under `edge:`; APP_EXTRA='    compression: false\n'
#                                  extra lines under each app (both apps, both edges)
#   NO_HAPROXY=1                   leave HAProxy out
#   OUT=file.md                    also append the report (markdown) to this file
#   KEEP=1                         keep the work folder (configs, logs, every tool's output)
set -euo pipefail
cd "$(dirname "$0")/.."
. loadtest/lib.sh
BIN=${BIN:-target/release/spinforge}
SECS=${SECS:-10}
ROUNDS=${ROUNDS:-3}
WARM=${WARM:-1}
SCENARIOS=${SCENARIOS:-1,2,3,4,5,6,7,8,9,10}
CLIENTS=${CLIENTS:-2}
IDLE_N=${IDLE_N:-1000}
IDLE_SETTLE=${IDLE_SETTLE:-1}
OUT=${OUT:-}
HOST=bench.test
# Plain HTTP uses a second name: the edge answers plain requests for a name that has a certificate
# with a 308 to HTTPS, so bench.local is a second app on the same upstream with `tls: off`.
PLAIN_HOST=bench.local

die() { echo "prod.sh: $*" >&2; exit 1; }
[ -x "$BIN" ] || die "no edge binary at $BIN (build it: cargo build --release, or set BIN)"
[ -z "${EDGE2_BIN:-}" ] || [ -x "$EDGE2_BIN" ] || die "EDGE2_BIN=$EDGE2_BIN is not an executable"
for tool in nginx:nginx h2load:nghttp2-client wrk:wrk curl:curl openssl:openssl python3:python3; do
  command -v "${tool%%:*}" >/dev/null || die "needs ${tool%%:*} (apt-get install ${tool#*:})"
done
[ -n "${NO_HAPROXY:-}" ] || command -v haproxy >/dev/null || die "needs haproxy (apt-get install haproxy), or NO_HAPROXY=1"
want() { [[ ",$SCENARIOS," == *",$1,"* ]]; }

W=$(mktemp -d /tmp/spinforge-prod.XXXXXX)
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ -n "${KEEP:-}" ]; then echo "work folder kept: $W" >&2; else rm -rf "$W"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
mkdir -p "$W/out" "$W/www"

# The report: stdout, and appended to $OUT when set. Progress goes to stderr.
report=$W/report.md
load1() { cut -d' ' -f1 /proc/loadavg; }


# --- certificate and content ---------------------------------------------------------------
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj "/CN=$HOST" -addext "subjectAltName=DNS:$HOST" \
  -keyout "$W/key.pem" -out "$W/cert.pem" 2>/dev/null
cat "$W/cert.pem" "$W/key.pem" >"$W/haproxy.pem"

# A product-list page of ~24 KB and a JSON list of records of ~20 KB: repeated but varied markup
# and values, from a fixed-seed generator (the same bytes on every run and machine).
python3 - "$W/www" <<'PY'
import json, sys
out = sys.argv[1]
state = 14
def rnd(n):
    global state
    state = (state * 6364136223846793005 + 1442695040888963407) % 2**64
    return (state >> 33) % n
words = ("light trail tent pack stove bottle merino jacket shell insulated down synthetic camp "
         "alpine hiking ridge river canyon summit forest coastal expedition compact durable "
         "waterproof breathable packable recycled classic pro ultra stretch thermal windproof "
         "insulation layer zip pocket hood strap frame foam sleeping mat lantern headlamp "
         "poles gaiters gloves beanie socks boots shoes sandals trekking approach").split()
cats = ["tents", "packs", "sleeping", "cooking", "clothing", "footwear", "lighting", "water"]
def phrase(n): return " ".join(words[rnd(len(words))] for _ in range(n))
head = ('<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<title>Outdoor gear - all products | Example Store</title>\n'
        '<link rel="stylesheet" href="/assets/app.3f9c2a71.css">\n'
        '<script defer src="/assets/app.8b1e4d0c.js"></script>\n</head>\n<body>\n'
        '<header class="site-header"><a class="logo" href="/">Example Store</a>\n<nav><ul>'
        + "".join(f'<li><a href="/c/{c}">{c.title()}</a></li>' for c in cats)
        + '</ul></nav>\n<form class="search" action="/search"><input type="search" name="q" '
        'placeholder="Search products" aria-label="Search"></form></header>\n'
        '<main class="catalogue">\n<h1>All products</h1>\n<ul class="product-grid">\n')
foot = ('</ul>\n<nav class="pagination"><a href="?page=1" aria-current="page">1</a> '
        '<a href="?page=2">2</a> <a href="?page=3">3</a> <a href="?page=2" rel="next">Next</a>'
        '</nav>\n</main>\n<footer class="site-footer"><p>&copy; 2026 Example Store. Prices '
        'include VAT.</p></footer>\n</body>\n</html>\n')
items, i = [], 0
while True:
    i += 1
    sku = 10000 + rnd(90000)
    name = phrase(3).title()
    slug = name.lower().replace(" ", "-")
    cat = cats[rnd(len(cats))]
    price = f"{9 + rnd(400)}.{rnd(100):02d}"
    rating = f"{1 + rnd(4)}.{rnd(10)}"
    stock = ("in-stock", "In stock") if rnd(5) else ("out-of-stock", "Sold out")
    item = (f'<li class="product-card" data-sku="SKU-{sku}" data-category="{cat}">\n'
            f'  <a class="product-link" href="/products/{slug}-{sku}">\n'
            f'    <img src="/img/p/{sku}-480w.webp" srcset="/img/p/{sku}-480w.webp 480w, '
            f'/img/p/{sku}-960w.webp 960w" sizes="(max-width: 600px) 50vw, 240px" alt="{name}" '
            f'loading="lazy" width="240" height="240">\n'
            f'    <h2 class="product-title">{name}</h2></a>\n'
            f'  <p class="product-desc">{phrase(8 + rnd(10)).capitalize()}.</p>\n'
            f'  <div class="price-row"><span class="price">${price}</span> <span class="rating" '
            f'aria-label="{rating} out of 5">{rating}</span> <span class="stock {stock[0]}">'
            f'{stock[1]}</span></div>\n'
            f'  <button class="add-to-cart" type="button" data-sku="SKU-{sku}">Add to cart</button>\n'
            '</li>\n')
    if len(head) + sum(map(len, items)) + len(item) + len(foot) > 24 * 1024:
        break
    items.append(item)
open(f"{out}/page.html", "w").write(head + "".join(items) + foot)
records, total = [], 0
while True:
    sku = 10000 + rnd(90000)
    r = {"id": len(records) + 1, "sku": f"SKU-{sku}", "name": phrase(3).title(),
         "category": cats[rnd(len(cats))], "price": {"amount": 900 + rnd(40000), "currency": "EUR"},
         "in_stock": bool(rnd(5)), "rating": round(1 + rnd(40) / 10, 1), "reviews": rnd(2000),
         "tags": [words[rnd(len(words))] for _ in range(1 + rnd(4))],
         "updated_at": f"2026-{1 + rnd(12):02d}-{1 + rnd(28):02d}T{rnd(24):02d}:{rnd(60):02d}:00Z"}
    doc = json.dumps({"page": 1, "per_page": len(records) + 1, "items": records + [r]},
                     separators=(",", ":"))
    if len(doc) > 20 * 1024:
        break
    records.append(r)
open(f"{out}/data.json", "w").write(
    json.dumps({"page": 1, "per_page": len(records), "items": records}, separators=(",", ":")))
PY
SMALL_BODY='hello from the fast upstream\n'
printf "$SMALL_BODY" >"$W/www/small.txt"
chmod 755 "$W" "$W/www"; chmod 644 "$W"/www/*  # NGINX's workers run as nobody when started as root
size_of() { stat -c %s "$1"; }

# --- upstream and peers ---------------------------------------------------------------------
UP=$(free_port)
nginx_start() { # name conf-body
  mkdir -p "$W/$1"
  cat >"$W/$1.conf"
  nginx -t -q -c "$W/$1.conf" -p "$W/$1" 2>"$W/$1/check.log" || { cat "$W/$1/check.log" >&2; die "bad config $W/$1.conf"; }
  nginx -c "$W/$1.conf" -p "$W/$1" -g 'daemon off;' 2>"$W/$1/stderr.log" &
  pids+=($!)
}
temp_paths() { echo "client_body_temp_path $W/$1/body; proxy_temp_path $W/$1/proxy; fastcgi_temp_path $W/$1/fastcgi; uwsgi_temp_path $W/$1/uwsgi; scgi_temp_path $W/$1/scgi;"; }

nginx_start upstream <<NGINX
worker_processes 1;
pid $W/upstream/nginx.pid;
error_log $W/upstream/error.log warn;
events { worker_connections 10000; }
http {
  access_log off;
  $(temp_paths upstream)
  keepalive_requests 1000000;
  keepalive_timeout 75s;
  sendfile on;
  open_file_cache max=16;
  types { text/html html; application/json json; }
  default_type text/plain;
  server {
    listen 127.0.0.1:$UP;
    root $W/www;
    location = / { return 200 "$SMALL_BODY"; }
    location / { }
  }
}
NGINX

declare -A pid_of http_of https_of
peers=(nginx)

NGINX_HTTP=$(free_port); NGINX_HTTPS=$(free_port)
http_of[nginx]=$NGINX_HTTP; https_of[nginx]=$NGINX_HTTPS
nginx_start nginx <<NGINX
worker_processes 2;
pid $W/nginx/nginx.pid;
error_log $W/nginx/error.log warn;
events { worker_connections 10000; }
http {
  access_log off;
  $(temp_paths nginx)
  keepalive_requests 1000000;  # else GOAWAY / close after 1000 requests (h2load does not reconnect)
  keepalive_timeout 75s;
  gzip on;
  gzip_comp_level 5;
  gzip_types application/json;  # text/html is always in gzip_types
  gzip_min_length 256;
  gzip_vary on;
  gzip_proxied any;
  ssl_protocols TLSv1.2 TLSv1.3;
  ssl_session_cache shared:SSL:10m;
  ssl_session_tickets on;
  http2_max_concurrent_streams 128;
  map \$scheme \$hsts { https "max-age=31536000"; default ""; }
  upstream app { server 127.0.0.1:$UP; keepalive 256; }
  server {
    listen 127.0.0.1:$NGINX_HTTP reuseport;
    listen 127.0.0.1:$NGINX_HTTPS ssl http2 reuseport;
    server_name $HOST $PLAIN_HOST;
    ssl_certificate $W/cert.pem;
    ssl_certificate_key $W/key.pem;
    location / {
      proxy_pass http://app;
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
      add_header Strict-Transport-Security \$hsts;
    }
  }
}
NGINX
pid_of[nginx]=${pids[-1]}

# Edges: "name|binary|environment".
edges=("edge|$BIN|${EDGE_ENV:-}")
[ -n "${EDGE2_BIN:-}" ] && edges+=("edge2|$EDGE2_BIN|${EDGE2_ENV:-}")
for spec in "${edges[@]}"; do
  IFS='|' read -r name bin envs <<<"$spec"
  http_of[$name]=$(free_port); https_of[$name]=$(free_port)
  range=$((20000 + RANDOM % 20000))
  cat >"$W/$name.yaml" <<YAML
edge:
  listen_http: 127.0.0.1:${http_of[$name]}
  listen_https: 127.0.0.1:${https_of[$name]}
  metrics: off
  grace: 2s
  max_connections_per_ip: 100000
$(printf '%b' "${EDGE_EXTRA:-}")
supervisor:
  data_dir: $W/data-$name
  port_range: $range-$((range + 19))
  admin_listen: 127.0.0.1:$(free_port)
apps:
  bench:
    domains: [$HOST]
    upstream: 127.0.0.1:$UP
    tls: { cert: $W/cert.pem, key: $W/key.pem }
$(printf '%b' "${APP_EXTRA:-}")
  plain:
    domains: [$PLAIN_HOST]
    upstream: 127.0.0.1:$UP
    tls: off
$(printf '%b' "${APP_EXTRA:-}")
YAML
  "$bin" check --config "$W/$name.yaml" >&2 || die "$bin refuses $W/$name.yaml"
  # shellcheck disable=SC2086
  env RUST_LOG="${RUST_LOG:-warn}" $envs "$bin" up --config "$W/$name.yaml" >"$W/$name.log" 2>&1 &
  pids+=($!)
  pid_of[$name]=$!
  peers+=("$name")
done

if [ -z "${NO_HAPROXY:-}" ]; then
  HA_HTTP=$(free_port); HA_HTTPS=$(free_port)
  http_of[haproxy]=$HA_HTTP; https_of[haproxy]=$HA_HTTPS
  mkdir -p "$W/haproxy"
  cat >"$W/haproxy.cfg" <<HAPROXY
global
  nbthread 2
  maxconn 8000
  pidfile $W/haproxy/haproxy.pid
  ssl-default-bind-options ssl-min-ver TLSv1.2
defaults
  mode http
  maxconn 8000
  timeout connect 5s
  timeout client 75s
  timeout server 75s
  timeout http-request 10s
  timeout http-keep-alive 75s
  option http-keep-alive
  option forwardfor
  http-reuse always
frontend fe
  bind 127.0.0.1:$HA_HTTP
  bind 127.0.0.1:$HA_HTTPS ssl crt $W/haproxy.pem alpn h2,http/1.1
  unique-id-format %[uuid()]
  http-request set-header X-Forwarded-Proto https if { ssl_fc }
  http-request set-header X-Forwarded-Proto http if !{ ssl_fc }
  http-request set-header X-Forwarded-Host %[req.hdr(host)]
  http-request set-header X-Request-Id %[unique-id]
  http-response set-header X-Request-Id %[unique-id]
  http-response set-header X-Content-Type-Options nosniff
  http-response set-header Referrer-Policy strict-origin-when-cross-origin
  http-response set-header Strict-Transport-Security "max-age=31536000" if { ssl_fc }
  compression algo gzip
  compression type text/html application/json
  default_backend app
backend app
  server upstream 127.0.0.1:$UP
HAPROXY
  haproxy -c -q -f "$W/haproxy.cfg" >&2 || die "bad config $W/haproxy.cfg"
  haproxy -db -f "$W/haproxy.cfg" >"$W/haproxy/stderr.log" 2>&1 &
  pids+=($!)
  pid_of[haproxy]=$!
  peers+=(haproxy)
fi

wait_ready() { # peer
  local p=$1 i
  for i in $(seq 1 300); do
    if [ "$(curl -s -o /dev/null -w '%{http_code}' -H "Host: $PLAIN_HOST" "http://127.0.0.1:${http_of[$p]}/")" = 200 ] &&
      [ "$(curl -s -o /dev/null -w '%{http_code}' --cacert "$W/cert.pem" --resolve "$HOST:${https_of[$p]}:127.0.0.1" "https://$HOST:${https_of[$p]}/")" = 200 ]; then
      return 0
    fi
    kill -0 "${pid_of[$p]}" 2>/dev/null || break
    sleep 0.1
  done
  for f in "$W/$p.log" "$W/$p/stderr.log" "$W/$p/error.log"; do [ -f "$f" ] && tail -20 "$f" >&2; done
  die "$p does not answer 200 on http://127.0.0.1:${http_of[$p]}/ and https://$HOST:${https_of[$p]}/"
}
for i in $(seq 1 100); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$UP/")" = 200 ] && break
  [ "$i" = 100 ] && die "the upstream does not answer"; sleep 0.1
done
for p in "${peers[@]}"; do wait_ready "$p"; done

# --- scenarios ------------------------------------------------------------------------------
# id -> "tool|scheme|path|accept-encoding|load options|title"; tool: wrk, h2 or h1tls (h2load --h1)
BROWSER_AE='gzip, deflate, br, zstd'
declare -A S
S[1]="wrk|http|/||-c64|HTTP/1.1 plain, small answer"
S[2]="h1tls|https|/||-c64|HTTP/1.1 over TLS, small answer"
S[3]="h2|https|/||-c16 -m10|HTTP/2 over TLS, small answer"
S[4]="h2|https|/||-c4 -m100|HTTP/2 over TLS, many streams per connection"
S[5]="h2|https|/page.html|gzip|-c16 -m10|HTTP/2 over TLS, 24 KB HTML, Accept-Encoding: gzip"
S[6]="wrk|http|/page.html|gzip|-c64|HTTP/1.1 plain, 24 KB HTML, Accept-Encoding: gzip"
S[7]="h2|https|/page.html|$BROWSER_AE|-c16 -m10|HTTP/2 over TLS, 24 KB HTML, a browser's Accept-Encoding: $BROWSER_AE"
S[8]="h2|https|/data.json|gzip|-c16 -m10|HTTP/2 over TLS, 20 KB JSON, Accept-Encoding: gzip"
load_ids=()
for s in 1 2 3 4 5 6 7 8; do want "$s" && load_ids+=("$s"); done
file_for() { case $1 in /) echo "$W/www/small.txt" ;; *) echo "$W/www${1}" ;; esac; }

url_of() { # peer scenario
  local scheme path; scheme=$(field "$2" 1); path=$(field "$2" 2)
  if [ "$scheme" = http ]; then echo "http://127.0.0.1:${http_of[$1]}$path"; else echo "https://$HOST:${https_of[$1]}$path"; fi
}

# The tool's command line for a scenario on a peer, one argument a line: SECS seconds of load
# (h2load's per-request log into LOG), or with CHECK set 2 connections for 1 s (wrk) or 200
# requests (h2load), for the checks.
cmd_of() { # peer scenario secs [log] [check]
  local tool ae opts url amount; tool=$(field "$2" 0); ae=$(field "$2" 3); opts=$(field "$2" 4); url=$(url_of "$1" "$2")
  amount="-D $3"
  if [ -n "${5:-}" ]; then opts="-c2$([ "$tool" = h2 ] && echo ' -m2')"; amount="-n 200"; fi
  # shellcheck disable=SC2086
  case $tool in
    wrk) printf '%s\n' wrk -t1 $opts -d"${3}s" --latency -H "Host: $PLAIN_HOST" ${ae:+-H "Accept-Encoding: $ae"} "$url" ;;
    h2 | h1tls)
      printf '%s\n' h2load -t1 $opts $amount $([ "$tool" = h1tls ] && echo --h1) \
        --connect-to="127.0.0.1:${https_of[$1]}" ${4:+--log-file="$4"} ${ae:+-H "accept-encoding: $ae"} "$url" ;;
  esac
}

# utime+stime (clock ticks) of a process and its children (NGINX's workers).
ticks() {
  local total=0 p
  for p in "$1" $(pgrep -P "$1" || true); do
    [ -r "/proc/$p/stat" ] || continue
    total=$((total + $(sed 's/.*) //' "/proc/$p/stat" | awk '{print $12 + $13}')))
  done
  echo "$total"
}
hz=$(getconf CLK_TCK)
rss_mb() { local t=0 p; for p in "$1" $(pgrep -P "$1" || true); do t=$((t + $(awk '/VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0))); done; awk -v k=$t 'BEGIN { printf "%.1f", k / 1024 }'; }

# --- checks: the right answer from every peer, before measuring ----------------------------
say "# prod.sh — $(date -u '+%Y-%m-%d %H:%M UTC')"
say ""
say "Machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GB", $2/1048576}' /proc/meminfo), $(uname -r); load average at start $(cut -d' ' -f1-3 /proc/loadavg)."
say "Edge: \`$BIN\` ($(stat -c '%y' "$BIN" | cut -d. -f1))${EDGE_ENV:+ with $EDGE_ENV}${EDGE2_BIN:+; edge2: \`$EDGE2_BIN\` ($(stat -c '%y' "$EDGE2_BIN" | cut -d. -f1))${EDGE2_ENV:+ with $EDGE2_ENV}}."
say "Peers: $(nginx -v 2>&1 | sed 's/.*version: //') (2 workers)$([ -z "${NO_HAPROXY:-}" ] && echo ", $(haproxy -v | head -1 | awk '{print "HAProxy " $3}') (2 threads)"); upstream nginx (1 worker). Tools: $(h2load --version | head -1 | awk '{print $2}'), $(wrk -v 2>&1 | head -1 | awk '{print "wrk " $2}'). SECS=$SECS ROUNDS=$ROUNDS."
say "Bodies: small $(size_of "$W/www/small.txt") B (text/plain), page.html $(size_of "$W/www/page.html") B (text/html), data.json $(size_of "$W/www/data.json") B (application/json), sent uncompressed by the upstream."
say ""
checks=$W/checks.tsv; : >"$checks"
failures=()
check() { # peer scenario
  local p=$1 s=$2 tool scheme path ae url file expect_size ver want_ver enc dl code ok=1 why=""
  tool=$(field "$s" 0); scheme=$(field "$s" 1); path=$(field "$s" 2); ae=$(field "$s" 3)
  url=$(url_of "$p" "$s"); file=$(file_for "$path"); expect_size=$(size_of "$file")
  want_ver=$([ "$tool" = h2 ] && echo 2 || echo 1.1)
  local -a c=(curl -sS --max-time 10 -D "$W/out/check-$s-$p.head" -o "$W/out/check-$s-$p.body"
    -w '%{http_code} %{http_version} %{size_download}\n')
  if [ "$scheme" = http ]; then c+=(-H "Host: $PLAIN_HOST"); else c+=(--cacert "$W/cert.pem" --resolve "$HOST:${https_of[$p]}:127.0.0.1"); fi
  [ "$tool" = h2 ] && c+=(--http2) || c+=(--http1.1)
  [ -n "$ae" ] && c+=(--compressed -H "Accept-Encoding: $ae")
  read -r code ver dl < <("${c[@]}" "$url" 2>"$W/out/check-$s-$p.err" || echo "000 - 0")
  enc=$(awk 'tolower($1) == "content-encoding:" {print $2}' "$W/out/check-$s-$p.head" 2>/dev/null | tr -d '\r')
  [ "$code" = 200 ] || { ok=0; why+="status $code; "; }
  [ "$ver" = "$want_ver" ] || { ok=0; why+="HTTP/$ver, not HTTP/$want_ver; "; }
  cmp -s "$file" "$W/out/check-$s-$p.body" || { ok=0; why+="body differs from the upstream's ($(size_of "$W/out/check-$s-$p.body" 2>/dev/null || echo 0) B decoded, want $expect_size B); "; }
  if [ -z "$ae" ]; then
    [ -z "$enc" ] || { ok=0; why+="Content-Encoding $enc without Accept-Encoding; "; }
  elif [ "$ae" = gzip ] || [[ $p != edge* ]]; then
    [ "$enc" = gzip ] || { ok=0; why+="Content-Encoding '${enc}', want gzip; "; }
  else
    [[ $enc =~ ^(gzip|br|zstd)$ ]] || { ok=0; why+="Content-Encoding '${enc}', want br, zstd or gzip; "; }
  fi
  # The same requests the load will send, 200 of them: all must succeed with a 2xx.
  local tn=$W/out/check-$s-$p.tool
  if [ "$tool" = wrk ]; then
    cmd_of "$p" "$s" 1 "" check | run_cmd >"$tn" 2>&1 || true
    if ! grep -q "requests in" "$tn" || grep -q -E "Non-2xx|Socket errors" "$tn"; then ok=0; why+="wrk: errors ($(grep -E 'Non-2xx|Socket errors' "$tn" | tr -s ' ' | tr '\n' ' ')); "; fi
  else
    cmd_of "$p" "$s" 1 "" check | run_cmd >"$tn" 2>&1 || true
    grep -q "200 succeeded, 0 failed, 0 errored" "$tn" && grep -q "status codes: 200 2xx" "$tn" ||
      { ok=0; why+="h2load: not 200 of 200 answered 2xx ($(grep -E '^requests:|^status codes:' "$tn" | tr '\n' ' ')); "; }
    local proto per; proto=$(awk '/^Application protocol:/ {print $3}' "$tn")
    [ "$proto" = "$([ "$tool" = h2 ] && echo h2 || echo http/1.1)" ] || { ok=0; why+="h2load negotiated '$proto'; "; }
    # h2load's body bytes per answer must match curl's (its Accept-Encoding was sent, and used).
    per=$(sed -n 's/.*(\([0-9]*\)) data$/\1/p' "$tn"); per=$(( ${per:-0} / 200 ))
    awk -v a="$per" -v b="$dl" 'BEGIN { exit !(a >= b * 0.98 && a <= b * 1.02) }' ||
      { ok=0; why+="h2load got $per body bytes per answer, curl $dl; "; }
  fi
  why=${why%; }
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$s" "$p" "$ver" "${enc:--}" "$dl" "$([ $ok = 1 ] && echo ok || echo "FAILED: $why")" >>"$checks"
  [ $ok = 1 ] || failures+=("scenario $s, $p: $why")
}
for s in "${load_ids[@]}"; do for p in "${peers[@]}"; do check "$p" "$s"; done; done
if [ ${#load_ids[@]} -gt 0 ]; then
  say "## Answers checked before measuring"
  say ""
  say "curl (decoded body compared byte for byte with the upstream's file) and 200 requests with the load's own tool and headers. Encoded bytes: the body as sent."
  say ""
  say "| scenario | peer | HTTP | Content-Encoding | encoded bytes | check |"
  say "| --- | --- | --- | --- | ---: | --- |"
  while IFS=$'\t' read -r s p ver enc dl res; do say "| $s | $p | $ver | $enc | $dl | $res |"; done <"$checks"
  say ""
fi
if [ ${#failures[@]} -gt 0 ]; then
  printf 'prod.sh: WRONG ANSWERS, nothing measured:\n' >&2
  printf '  %s\n' "${failures[@]}" >&2
  [ -n "$OUT" ] && cat "$report" >>"$OUT"
  exit 1
fi

# --- 10: memory per idle keep-alive connection (first: fresh processes) ----------------------
if want 10; then
  for p in "${peers[@]}"; do
    note "memory: $p ($IDLE_N idle connections of each kind)"
    if ! python3 loadtest/idle_conns.py "${http_of[$p]}" "${https_of[$p]}" "$PLAIN_HOST" "$HOST" "$IDLE_N" "$IDLE_SETTLE" \
      "${pid_of[$p]}" >"$W/out/idle-$p.txt" 2>&1; then
      cat "$W/out/idle-$p.txt" >&2
      die "idle connections to $p failed (see above)"
    fi
  done
  python3 - "$W/out" "$IDLE_N" "$IDLE_SETTLE" "${peers[@]}" >"$W/mem.md" <<'PY'
import sys
out, n, settle, peers = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
data = {}
for p in peers:
    d = {}
    for line in open(f"{out}/idle-{p}.txt"):
        f = line.split()
        if f[0] in ("plain", "tls", "h2", "plain+"):
            d[f[0]] = [float(x) for x in f[1:7]]  # rss before, after, per conn; pss the same
        elif f[0] == "alive":
            d["alive"] = (int(f[1]), int(f[3]))
    data[p] = d
def ratio(x, y):
    return f"{x / y:.2f}" if y >= 256 else "-"
print(f"""## 10. Memory per idle keep-alive connection

{n} connections of each kind opened one after the other and held together (plain HTTP/1.1, then HTTP/1.1 over TLS, then HTTP/2 over TLS, then {n} more plain ones once all those idle; one `GET /` answered on each, then idle), by `loadtest/idle_conns.py`. Memory of the peer's processes {settle} s after each batch, minus before it, divided by {n}: PSS (each page shared by k of the peer's processes counts 1/k; unlike RSS it sees a forked NGINX worker copying a page it shared with its master), RSS in brackets. Measured once per peer, before any load (fresh processes apart from the checks). NGINX allocates and touches its connection structures for all `worker_connections` (10000 per worker, ~4 MB each) at start, so an idle plain connection costs it little more; ratios to a figure under 256 B are left out (-). *Plain, more*: the last {n} plain connections, opened once the others idle — the edge parks an idle plain connection after 250 ms (its task and buffers go back to the allocator, the socket stays), so its first plain figure is the peak of {n} being answered at once and this one what holding idle ones costs.

| peer | plain B/conn | TLS B/conn | HTTP/2 B/conn | plain, more B/conn | × nginx (plain / TLS / h2 / plain, more; PSS) | PSS before → with all {4 * n} | still open at the end |
| --- | ---: | ---: | ---: | ---: | --- | --- | --- |""")
kinds = ("plain", "tls", "h2", "plain+")
for p in peers:
    d, base = data[p], data["nginx"]
    cells = [f"{d[k][5]:,.0f} ({d[k][2]:,.0f})" for k in kinds]
    ratios = " / ".join(ratio(d[k][5], base[k][5]) for k in kinds)
    alive, total = d["alive"]
    alive_note = f"{alive} of {total}" if alive == total else f"**{alive} of {total}: the peer closed some; its figures are low**"
    print(f"| {p} | {' | '.join(cells)} | {ratios} | {d['plain'][3] / 1024:.1f} → {d['plain+'][4] / 1024:.1f} MB | {alive_note} |")
print()
PY
  cat "$W/mem.md" >>"$report"; cat "$W/mem.md"
fi

# --- rounds ---------------------------------------------------------------------------------
results=$W/results.tsv; : >"$results"   # scenario round peer load rps p50 p99 reqs errors bytes cpu
run_load() { # peer scenario round
  local p=$1 s=$2 r=$3 tool base before after l
  tool=$(field "$s" 0); base=$W/out/s$s-r$r-$p
  l=$(load1)
  before=$(ticks "${pid_of[$p]}")
  cmd_of "$p" "$s" "$SECS" "$base.log" | run_cmd >"$base.txt" 2>&1 || true
  after=$(ticks "${pid_of[$p]}")
  local line; line=$(parse "$([ "$tool" = wrk ] && echo wrk || echo h2load)" "$base.txt" "$base.log" 2>/dev/null) ||
    { cat "$base.txt" >&2; die "cannot read the output of scenario $s on $p (above)"; }
  rm -f "$base.log"
  read -r rps p50 p99 reqs errs bytes <<<"$line"
  local cpu; cpu=$(awk -v d=$((after - before)) -v hz="$hz" -v n="$reqs" 'BEGIN { printf "%.2f", (n > 0 ? d / hz / n * 100000 : 0) }')
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$s" "$r" "$p" "$l" "$rps" "$p50" "$p99" "$reqs" "$errs" "$bytes" "$cpu" >>"$results"
  note "$(printf 'round %s  scenario %s  %-8s load %-5s %8s req/s  p99 %7s ms  errors %s  cpu %s s/100k' "$r" "$s" "$p" "$l" "$rps" "$p99" "$errs" "$cpu")"
  [ "$errs" = 0 ] || note "WARNING: $errs errors in scenario $s on $p (round $r): see $base.txt (KEEP=1)"
}
HS_MODES=(full13 full12 resumed12 resumed13)
run_handshakes() { # peer mode round
  local p=$1 m=$2 r=$3 before after l rate cpu
  l=$(load1)
  before=$(ticks "${pid_of[$p]}")
  if rate=$(python3 loadtest/tls_handshakes.py "${https_of[$p]}" "$HOST" "$SECS" "$m" "$CLIENTS" 2>"$W/out/hs-$m-r$r-$p.err"); then :; else
    note "WARNING: $m on $p: $(cat "$W/out/hs-$m-r$r-$p.err")"; rate=0
  fi
  after=$(ticks "${pid_of[$p]}")
  cpu=$(awk -v d=$((after - before)) -v hz="$hz" -v n="$((rate * SECS))" 'BEGIN { printf "%.2f", (n > 0 ? d / hz / n * 100000 : 0) }')
  printf 'hs-%s\t%s\t%s\t%s\t%s\t-\t-\t%s\t-\t-\t%s\n' "$m" "$r" "$p" "$l" "$rate" "$((rate * SECS))" "$cpu" >>"$results"
  note "$(printf 'round %s  handshakes %-9s %-8s load %-5s %6s /s  cpu %s s/100k' "$r" "$m" "$p" "$l" "$rate" "$cpu")"
}

if [ ${#load_ids[@]} -gt 0 ] && [ "$WARM" != 0 ]; then
  note "warming up every peer in every scenario (${WARM}s each)"
  for s in "${load_ids[@]}"; do for p in "${peers[@]}"; do cmd_of "$p" "$s" "$WARM" | run_cmd >/dev/null 2>&1 || true; done; done
fi
n=${#peers[@]}
round_load=()
rounds=$ROUNDS
[ ${#load_ids[@]} -gt 0 ] || want 9 || rounds=0
for r in $(seq 1 "$rounds"); do
  round_load+=("$(cut -d' ' -f1-3 /proc/loadavg)")
  note "== round $r of $ROUNDS, load average ${round_load[-1]}"
  k=0
  for s in "${load_ids[@]}"; do
    # Rotate which peer goes first, per round and scenario.
    for j in $(seq 0 $((n - 1))); do run_load "${peers[$(((j + r + k) % n))]}" "$s" "$r"; done
    k=$((k + 1))
  done
  if want 9; then
    for m in "${HS_MODES[@]}"; do
      for j in $(seq 0 $((n - 1))); do run_handshakes "${peers[$(((j + r + k) % n))]}" "$m" "$r"; done
      k=$((k + 1))
    done
  fi
done

# --- report ---------------------------------------------------------------------------------
titles=$W/titles.tsv; : >"$titles"
for s in "${load_ids[@]}"; do
  tool=$(field "$s" 0)
  case $tool in
    wrk) how="wrk -t1 $(field "$s" 4)${SECS:+ -d${SECS}s}" ;;
    h1tls) how="h2load --h1 -t1 $(field "$s" 4) -D $SECS" ;;
    h2) how="h2load -t1 $(field "$s" 4) -D $SECS" ;;
  esac
  printf '%s\t%s\t%s\t%s\n' "$s" "$(field "$s" 5)" "$how" "$tool" >>"$titles"
done
python3 - "$results" "$titles" "$checks" "${peers[@]}" >>"$report.tmp" <<'PY'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
titles = [l.rstrip("\n").split("\t") for l in open(sys.argv[2])]
checks = {(c[0], c[1]): c for c in (l.rstrip("\n").split("\t") for l in open(sys.argv[3]))}
peers = sys.argv[4:]
def med(scen, peer, col):
    v = [float(r[col]) for r in rows if r[0] == scen and r[2] == peer and r[col] not in ("-", "nan")]
    return statistics.median(v) if v else float("nan")
def ratio(x, y):
    return f"{x / y:.2f}" if y == y and y > 0 and x == x else "-"
def num(v, fmt):
    return "-" if v != v else format(v, fmt)
def rounds_table(scen, what):
    out = ["", f"Rounds ({what}; load average at the start of each run):", "",
           "| round | " + " | ".join(peers) + " |", "| --- |" + " ---: |" * len(peers)]
    for rnd in sorted({r[1] for r in rows if r[0] == scen}, key=int):
        cells = []
        for p in peers:
            r = [x for x in rows if x[0] == scen and x[1] == rnd and x[2] == p]
            if not r:
                cells.append("-"); continue
            r = r[0]
            if scen.startswith("hs-"):
                cells.append(f"{r[4]} /s, {r[10]} CPU-s (load {r[3]})")
            else:
                cells.append(f"{r[4]} req/s, p99 {r[6]} ms, {r[10]} CPU-s{', **' + r[8] + ' errors**' if r[8] not in ('0', '-') else ''} (load {r[3]})")
        out.append(f"| {rnd} | " + " | ".join(cells) + " |")
    return out
out = []
for s, title, how, tool in titles:
    out += [f"## {s}. {title}", "", f"`{how}`, " + ("Host bench.local (plain HTTP)" if tool == "wrk" else "SNI and authority bench.test") + "; p50/p99: "
            + ("wrk's latency distribution" if tool == "wrk" else "from h2load's per-request log (`--log-file`; h2load itself prints only min/max/mean/sd)")
            + "; bytes/answer: " + ("everything wrk read (head and body)" if tool == "wrk" else "body bytes (h2load's `data`)")
            + ". Medians of the rounds.", ""]
    if s == "7":
        out += ["NGINX and HAProxy only answer gzip; the edge answers what it prefers among br, zstd and gzip (column `encoding`), so the bytes and the CPU differ by design.", ""]
    out += ["| peer | req/s | × nginx | p50 ms | p99 ms | p99 × nginx | CPU-s/100k | CPU × nginx | bytes/answer | encoding | errors |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |"]
    n = {c: med(s, "nginx", c) for c in (4, 5, 6, 9, 10, 8)}
    for p in peers:
        v = {c: med(s, p, c) for c in (4, 5, 6, 9, 10, 8)}
        enc = checks.get((s, p), ["", "", "", "?"])[3]
        out.append(f"| {p} | {num(v[4], '.0f')} | {ratio(v[4], n[4]) if p != 'nginx' else ''} | {num(v[5], '.2f')} | {num(v[6], '.2f')} | "
                   f"{ratio(v[6], n[6]) if p != 'nginx' else ''} | {num(v[10], '.2f')} | {ratio(v[10], n[10]) if p != 'nginx' else ''} | "
                   f"{num(v[9], '.0f')} | {enc} | {num(v[8], '.0f')} |")
    out += rounds_table(s, "req/s, p99, CPU-s per 100k requests")
    out.append("")
hs = sorted({r[0] for r in rows if r[0].startswith("hs-")}, key=lambda m: ["hs-full13", "hs-full12", "hs-resumed12", "hs-resumed13"].index(m))
if hs:
    names = {"hs-full13": "full, TLS 1.3", "hs-full12": "full, TLS 1.2", "hs-resumed12": "resumed, TLS 1.2 (session id or ticket)",
             "hs-resumed13": "resumed, TLS 1.3 (PSK from the first connection's ticket)"}
    out += ["## 9. TLS handshakes per second", "",
            "`loadtest/tls_handshakes.py`: Python OpenSSL clients with SNI bench.test, handshake only (no HTTP request), ECDSA P-256. "
            "CPU-s per 100k handshakes from /proc. 0 /s: the peer failed the mode (e.g. fewer than 90 % resumed; see the warnings). Medians of the rounds.", "",
            "| handshake | " + " | ".join(f"{p} /s" for p in peers) + " | " + " | ".join(f"{p} × nginx" for p in peers if p != "nginx")
            + " | " + " | ".join(f"{p} CPU-s/100k" for p in peers) + " |",
            "| --- |" + " ---: |" * (3 * len(peers) - 1)]
    for m in hs:
        rates = [med(m, p, 4) for p in peers]
        cpus = [med(m, p, 10) for p in peers]
        nr = med(m, "nginx", 4)
        out.append(f"| {names[m]} | " + " | ".join(num(x, ".0f") for x in rates) + " | "
                   + " | ".join(ratio(med(m, p, 4), nr) for p in peers if p != "nginx") + " | "
                   + " | ".join(num(x, ".2f") for x in cpus) + " |")
    for m in hs:
        out += rounds_table(m, f"handshakes/s {names[m]}, CPU-s per 100k")
    out.append("")
print("\n".join(out))
PY
cat "$report.tmp" >>"$report"; cat "$report.tmp"
rss_line="Resident memory (RSS) at the end:"
for p in "${peers[@]}"; do rss_line+=" $p $(rss_mb "${pid_of[$p]}") MB,"; done
say "${rss_line%,} (NGINX: master + 2 workers; edge: edge + supervisor in one process)."
[ "$rounds" = 0 ] || say "Load average at the start of each round: $(printf '%s; ' "${round_load[@]}")at the end: $(cut -d' ' -f1-3 /proc/loadavg)."
say ""
[ -n "$OUT" ] && cat "$report" >>"$OUT" && note "report appended to $OUT"
exit 0
