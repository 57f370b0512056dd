#!/usr/bin/env bash
# Time from a domain appearing in the config to a valid HTTPS answer: starts `spinforge up` with
# a new `tls: auto` domain against a local Pebble CA (HTTP-01, real validation, no VA sleep) and
# polls with curl, trusting only Pebble's issuing root, until the answer verifies. SpinForge
# reads its config at start, so "appearing" means a (re)start with the domain added. RUNS times.
#
# usage: loadtest/tls-issue.sh   (needs: a release build, pebble, openssl, curl)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/spinforge}
RUNS=${RUNS:-5}
[ -x "$BIN" ] || { echo "build first: cargo build --release" >&2; exit 1; }
BIN=$(realpath "$BIN"); REPO=$PWD
W=$(mktemp -d /tmp/spinforge-tls-issue.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now_ms() { date +%s%3N; }

cd "$W"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -keyout ca.key -out ca.pem -subj /CN=pebble-ca 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout key.pem -subj /CN=localhost -out req.csr 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' > ext.cnf
openssl x509 -req -in req.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -out cert.pem -extfile ext.cnf 2>/dev/null
HTTP=$(free_port); HTTPS=$(free_port); API=$(free_port); MGMT=$(free_port); DNS=$(free_port); DNSM=$(free_port)
cat > pebble.json <<JSON
{"pebble": {"listenAddress": "127.0.0.1:$API", "managementListenAddress": "127.0.0.1:$MGMT",
 "certificate": "$W/cert.pem", "privateKey": "$W/key.pem", "httpPort": $HTTP, "tlsPort": $HTTPS,
 "ocspResponderURL": "", "externalAccountBindingRequired": false}}
JSON
pebble-challtestsrv -defaultIPv4 127.0.0.1 -defaultIPv6 "" -http01 "" -https01 "" -tlsalpn01 "" \
  -dns01 127.0.0.1:$DNS -management 127.0.0.1:$DNSM >dns.log 2>&1 &
pids+=($!)
PEBBLE_VA_NOSLEEP=1 PEBBLE_WFE_NONCEREJECT=0 pebble -config pebble.json -dnsserver 127.0.0.1:$DNS >pebble.log 2>&1 &
pids+=($!)
until curl -sf --cacert ca.pem https://127.0.0.1:$API/dir >/dev/null; do sleep 0.1; done
curl -sf --cacert ca.pem https://127.0.0.1:$MGMT/roots/0 -o root.pem

echo "| run | start → valid HTTPS | of which the order (log) |"
echo "| --- | ---: | ---: |"
for run in $(seq 1 "$RUNS"); do
  domain="new$run.test"
  cat > spinforge.yaml <<YAML
edge:
  listen_http: 127.0.0.1:$HTTP
  listen_https: 127.0.0.1:$HTTPS
  grace: 1s
tls:
  acme:
    directory: https://127.0.0.1:$API/dir
    ca_bundle: $W/ca.pem
supervisor:
  data_dir: $W/data$run
  port_range: 39100-39199
apps:
  app:
    domains: [$domain]
    source: $REPO/tests/fixtures/echo
YAML
  t0=$(now_ms)
  RUST_LOG=info "$BIN" up --config spinforge.yaml 2>"sf$run.log" &
  sf=$!
  until curl -s -o /dev/null --cacert root.pem --resolve "$domain:$HTTPS:127.0.0.1" "https://$domain:$HTTPS/"; do sleep 0.01; done
  t1=$(now_ms)
  took=$(grep -oE 'took_ms=[0-9]+' "sf$run.log" | head -1 | cut -d= -f2)
  echo "| $run | $((t1 - t0)) ms | ${took:-?} ms |"
  kill "$sf"; wait "$sf" 2>/dev/null || true
done
