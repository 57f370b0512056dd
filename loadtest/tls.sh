#!/usr/bin/env bash
# TLS handshakes per second, full and resumed, through SpinForge's edge and through NGINX serving
# the same certificate (ECDSA P-256, from `tls: {cert, key}` files), measured with
# loadtest/tls_handshakes.py (handshake only, no HTTP request; Python's OpenSSL client, with
# SNI): CLIENTS client processes for SECS seconds, rounds interleaved edge / nginx. Results go in loadtest/RESULTS.md, section "TLS".
#
# usage: loadtest/tls.sh            (needs: a release build, nginx, openssl, python3)
#   env: SECS=10 CLIENTS=2 ROUNDS=2 BIN=target/release/spinforge
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/spinforge}
SECS=${SECS:-10}
CLIENTS=${CLIENTS:-2}
ROUNDS=${ROUNDS:-2}
[ -x "$BIN" ] || { echo "build first: cargo build --release" >&2; exit 1; }
command -v nginx >/dev/null || { echo "nginx is needed (apt-get install nginx-light)" >&2; exit 1; }

W=$(mktemp -d /tmp/spinforge-tls-bench.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=bench.test -addext subjectAltName=DNS:bench.test \
  -keyout "$W/key.pem" -out "$W/cert.pem" 2>/dev/null

EDGE_HTTP=$(free_port); EDGE_HTTPS=$(free_port); NGINX_HTTPS=$(free_port)
cat > "$W/spinforge.yaml" <<YAML
edge:
  listen_http: 127.0.0.1:$EDGE_HTTP
  listen_https: 127.0.0.1:$EDGE_HTTPS
supervisor:
  data_dir: $W/data
  port_range: 39000-39099
apps:
  bench:
    domains: [bench.test]
    source: $PWD/tests/fixtures/echo
    tls: { cert: $W/cert.pem, key: $W/key.pem }
YAML
RUST_LOG=warn "$BIN" up --config "$W/spinforge.yaml" 2>"$W/spinforge.log" &
pids+=($!)

mkdir -p "$W/nginx"
cat > "$W/nginx.conf" <<NGINX
worker_processes 2;
pid $W/nginx/nginx.pid;
error_log $W/nginx/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $W/nginx; proxy_temp_path $W/nginx; fastcgi_temp_path $W/nginx;
  uwsgi_temp_path $W/nginx; scgi_temp_path $W/nginx;
  server {
    listen 127.0.0.1:$NGINX_HTTPS ssl http2;
    server_name bench.test;
    ssl_certificate $W/cert.pem;
    ssl_certificate_key $W/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:10m;
    ssl_session_tickets on;
    location / { return 200 "ok\n"; }
  }
}
NGINX
nginx -c "$W/nginx.conf" -g 'daemon off;' 2>"$W/nginx/stderr.log" &
pids+=($!)

for port in $EDGE_HTTPS $NGINX_HTTPS; do
  for _ in $(seq 1 100); do
    openssl s_client -connect 127.0.0.1:$port -servername bench.test </dev/null >/dev/null 2>&1 && break
    sleep 0.1
  done
done

# Handshakes/s with CLIENTS client processes; $1 port, $2 mode (see tls_handshakes.py).
rate() { python3 loadtest/tls_handshakes.py "$1" bench.test "$SECS" "$2" "$CLIENTS"; }

echo "| round | handshake | edge (handshakes/s) | nginx (handshakes/s) | edge / nginx |"
echo "| --- | --- | ---: | ---: | ---: |"
for r in $(seq 1 "$ROUNDS"); do
  for mode in full13 full12 resumed12; do
    e=$(rate "$EDGE_HTTPS" "$mode")
    n=$(rate "$NGINX_HTTPS" "$mode")
    ratio=$(python3 -c "print(f'{$e/$n:.2f}' if $n else 'n/a')")
    echo "| $r | $mode | $e | $n | $ratio |"
  done
done
