#!/usr/bin/env bash
# HTTP/2 through SpinForge's edge and through NGINX, in front of the same fast upstream, measured
# with h2load in interleaved rounds: h2 over TLS (same ECDSA P-256 certificate, SNI bench.test)
# and h2c (prior knowledge, plain TCP: `edge.h2c: true`; NGINX `listen … http2` without ssl).
#
#   fast upstream: NGINX, 1 worker, `return 200` of a short body
#   baseline:      NGINX, 2 workers, upstream keepalive 256 (more than CONNS × STREAMS in flight)
#   edge:          `spinforge up`, the upstream as an external app (`upstream:`), `tls: {cert,key}`
#
# Prints req/s, mean time per request and failures per run, and edge/NGINX ratios.
#
# usage: loadtest/h2.sh           (needs: a release build, nginx, h2load (nghttp2-client), openssl)
#   env: SECS=8 CONNS=16 STREAMS=10 ROUNDS=2 BIN=target/release/spinforge
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/spinforge}
SECS=${SECS:-8}
CONNS=${CONNS:-16}
STREAMS=${STREAMS:-10}
ROUNDS=${ROUNDS:-2}
[ -x "$BIN" ] || { echo "build first: cargo build --release" >&2; exit 1; }
command -v nginx >/dev/null || { echo "nginx is needed (apt-get install nginx-light)" >&2; exit 1; }
command -v h2load >/dev/null || { echo "h2load is needed (apt-get install nghttp2-client)" >&2; exit 1; }

W=$(mktemp -d /tmp/spinforge-h2-bench.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=bench.test -addext subjectAltName=DNS:bench.test \
  -keyout "$W/key.pem" -out "$W/cert.pem" 2>/dev/null

BACKEND=$(free_port); EDGE_HTTP=$(free_port); EDGE_HTTPS=$(free_port)
NGINX_H2C=$(free_port); NGINX_HTTPS=$(free_port)

nginx_conf() { # $1 name, $2 workers, $3 servers
  mkdir -p "$W/$1"
  cat > "$W/$1.conf" <<NGINX
worker_processes $2;
pid $W/$1/nginx.pid;
error_log $W/$1/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $W/$1; proxy_temp_path $W/$1; fastcgi_temp_path $W/$1;
  uwsgi_temp_path $W/$1; scgi_temp_path $W/$1;
  $3
}
NGINX
  nginx -c "$W/$1.conf" -g 'daemon off;' 2>"$W/$1/stderr.log" &
  pids+=($!)
}

nginx_conf backend 1 "server { listen 127.0.0.1:$BACKEND; keepalive_requests 100000; location / { return 200 \"hello from the backend\\n\"; } }"
nginx_conf proxy 2 "
  upstream backend { server 127.0.0.1:$BACKEND; keepalive 256; }
  server {
    listen 127.0.0.1:$NGINX_HTTPS ssl http2;
    listen 127.0.0.1:$NGINX_H2C http2;
    server_name bench.test;
    ssl_certificate $W/cert.pem;
    ssl_certificate_key $W/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    http2_max_concurrent_streams 128;
    keepalive_requests 1000000;  # else NGINX sends GOAWAY after 1000 and h2load does not reconnect
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$remote_addr;
      proxy_set_header X-Forwarded-Proto \$scheme;
    }
  }"

cat > "$W/spinforge.yaml" <<YAML
edge:
  listen_http: 127.0.0.1:$EDGE_HTTP
  listen_https: 127.0.0.1:$EDGE_HTTPS
  h2c: true
  metrics: off
supervisor:
  data_dir: $W/data
  port_range: 39100-39199
apps:
  bench:
    domains: [bench.test]
    upstream: 127.0.0.1:$BACKEND
    compression: false
    tls: { cert: $W/cert.pem, key: $W/key.pem }
YAML
RUST_LOG=warn "$BIN" up --config "$W/spinforge.yaml" 2>"$W/spinforge.log" &
pids+=($!)

# Ready when each answers 200 over h2.
for target in "https://bench.test:$EDGE_HTTPS/" "https://bench.test:$NGINX_HTTPS/" \
  "http://bench.test:$EDGE_HTTP/" "http://bench.test:$NGINX_H2C/"; do
  port=${target##*:}; port=${port%/}
  for i in $(seq 1 150); do
    h2load -n 1 -c 1 --connect-to="127.0.0.1:$port" "$target" 2>/dev/null | grep -q "1 succeeded" && break
    [ "$i" = 150 ] && { echo "$target never answered 200 over h2" >&2; cat "$W/spinforge.log" >&2; exit 1; }
    sleep 0.2
  done
done

# h2load for SECS seconds; prints "req/s mean_ms failed".
run() { # $1 url, $2 connect port
  h2load -D "$SECS" -c "$CONNS" -m "$STREAMS" -t 1 --connect-to="127.0.0.1:$2" "$1" 2>/dev/null | awk '
    /^finished in/ { for (i = 1; i <= NF; i++) if ($(i) == "req/s,") rps = $(i-1) }
    /^requests:/ { for (i = 1; i <= NF; i++) if ($(i) == "failed,") failed = $(i-1) }
    /^time for request:/ { mean = $6 }
    END { printf "%s %s %s\n", rps, mean, failed }'
}

echo "load: $(cut -d' ' -f1-3 /proc/loadavg) at start; h2load -c $CONNS -m $STREAMS -D $SECS"
echo "| round | protocol | edge req/s | nginx req/s | edge / nginx | edge mean | nginx mean | failed (edge/nginx) |"
echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
for r in $(seq 1 "$ROUNDS"); do
  for proto in h2-tls h2c; do
    if [ "$proto" = h2-tls ]; then
      e=$(run "https://bench.test:$EDGE_HTTPS/" "$EDGE_HTTPS"); n=$(run "https://bench.test:$NGINX_HTTPS/" "$NGINX_HTTPS")
    else
      e=$(run "http://bench.test:$EDGE_HTTP/" "$EDGE_HTTP"); n=$(run "http://bench.test:$NGINX_H2C/" "$NGINX_H2C")
    fi
    read -r er em ef <<<"$e"; read -r nr nm nf <<<"$n"
    ratio=$(python3 -c "print(f'{float(\"$er\")/float(\"$nr\"):.2f}' if float(\"$nr\") else 'n/a')")
    echo "| $r | $proto | $er | $nr | $ratio | $em | $nm | $ef/$nf |"
  done
done
echo "load: $(cut -d' ' -f1-3 /proc/loadavg) at end"
