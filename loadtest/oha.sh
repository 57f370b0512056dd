#!/usr/bin/env bash
# Load scenarios against a running SpinForge edge with oha (cargo install oha).
#
# Usage: loadtest/oha.sh SCENARIO HOST [URL]
#   HOST   the app's domain (sent as Host)
#   URL    the edge, default http://127.0.0.1:80/
# Scenarios:
#   steady     warm traffic at a fixed rate: RATE req/s (default 500) for DURATION (60s) over
#              CONNS (50) keep-alive connections, latency corrected for coordinated omission
#   burst      N (default 5000) requests as fast as CONNS (500) connections can send them
#   coldstart  waits until the app has been idle for IDLE seconds (default: 0, do not wait: stop
#              it yourself or wait for its idle_timeout), then sends CONNS (100) requests at
#              once: all of them are held for one start; the slowest is the cold start
# (WebSockets: oha does not speak them; use k6/websocket.js.)
set -euo pipefail
scenario=${1:?usage: loadtest/oha.sh steady|burst|coldstart HOST [URL]}
host=${2:?the app domain (Host header)}
url=${3:-http://127.0.0.1:80/}
OHA=${OHA:-$(command -v oha || echo "$HOME/.cargo/bin/oha")}
[ -x "$OHA" ] || { echo "needs oha (cargo install oha)" >&2; exit 1; }
case $scenario in
  steady)
    exec "$OHA" --no-tui -z "${DURATION:-60}s" -c "${CONNS:-50}" -q "${RATE:-500}" --latency-correction \
      -H "Host: $host" "$url" ;;
  burst)
    exec "$OHA" --no-tui -n "${N:-5000}" -c "${CONNS:-500}" -H "Host: $host" "$url" ;;
  coldstart)
    if [ "${IDLE:-0}" -gt 0 ]; then echo "waiting ${IDLE}s for the app to idle out"; sleep "$IDLE"; fi
    n=${CONNS:-100}
    exec "$OHA" --no-tui -n "$n" -c "$n" -H "Host: $host" "$url" ;;
  *) echo "unknown scenario $scenario: steady, burst or coldstart" >&2; exit 1 ;;
esac
