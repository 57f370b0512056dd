#!/usr/bin/env bash
# The chaos soak (tests/soak.rs) for longer than CI's 30 s: real edge and supervisor processes
# over a real Redis, two apps under constant load, while a seeded random schedule deploys, edits
# env, rolls back, restarts, scales, kills and replaces the supervisor, upgrades the edge and
# restarts Redis. Prints the report (requests and streams by kind, failures by kind and whether
# the README allows them, the final state, leaks); exits non-zero if the soak failed.
#
# usage: loadtest/soak.sh
#   SOAK_SECS=600       chaos time in seconds
#   SOAK_SEED=0x…       replay a schedule (each run prints its seed)
#   SOAK_CLIENTS=4 SOAK_FRESH=2   keep-alive / new-connection load clients
#   SOAK_PAUSE_MS=1200  mean pause between operations
#   SOAK_REPORT=file    also write the report to this file
# Needs what ./scripts/test needs (./scripts/setup installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
export SOAK_SECS=${SOAK_SECS:-600}
./scripts/setup
exec cargo test --locked --test soak -- --nocapture
