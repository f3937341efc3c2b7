#!/usr/bin/env bash
# Throttling overhead (issue 7): wrk, HTTP/1.1 keep-alive, through two PoPs of
# one origin that serve the same API over the backbone:
#   * pop-on:  throttling enabled at every level (node, client IP, stage,
#              route) with limits far above the load, so nothing trips;
#   * pop-off: `[throttle] enabled = false`.
# The route is a mock at the origin (no backend noise); both PoPs take the
# same path otherwise. Interleaved over ROUNDS rounds; prints medians and the
# overhead (goal: < 3 %).
#
# Usage: scripts/bench-limits.sh [SECONDS_PER_RUN] [ROUNDS]
set -euo pipefail
source "$(dirname "$0")/lib.sh"

SECS="${1:-10}"
ROUNDS="${2:-5}"
CONNS=64

ensure_pkg wrk wrk
build_release

"$PORTICO" certs --out "$WORK/certs" --origins origin-bench --pops pop-on,pop-off >/dev/null
BACKBONE=$(free_port)
ON=$(free_port)
OFF=$(free_port)
HIGH='{ rate = 1000000, burst = 1000000 }'

cat >"$WORK/origin.toml" <<TOML
[node]
id = "origin-bench"
region = "local"
state_dir = "$WORK/origin-state"

[backbone]
listen = "127.0.0.1:$BACKBONE"
ca = "$WORK/certs/ca.pem"
cert = "$WORK/certs/origin-bench.pem"
key = "$WORK/certs/origin-bench.key"

[[apis]]
name = "bench"
endpoint = "edge"
[[apis.routes]]
method = "GET"
path = "/{proxy+}"
throttle = $HIGH
integration = { type = "mock", status = 200, body = "ok" }
[[apis.stages]]
name = "prod"
throttle = $HIGH
TOML

pop_file() { # ID PORT THROTTLE_SECTION
  cat >"$WORK/$1.toml" <<TOML
[node]
id = "$1"
state_dir = "$WORK/$1-state"

$3

[[listeners]]
address = "127.0.0.1:$2"
tls = false
default_api = "bench"

[backbone]
ca = "$WORK/certs/ca.pem"
cert = "$WORK/certs/$1.pem"
key = "$WORK/certs/$1.key"

[[origins]]
region = "local"
address = "127.0.0.1:$BACKBONE"
server_name = "origin-bench"
TOML
}
pop_file pop-on "$ON" "[throttle]
enabled = true
rate = 1000000
burst = 1000000
per_client_ip = $HIGH"
pop_file pop-off "$OFF" "[throttle]
enabled = false"

# Access logs off (warn level): the runs measure the request path only.
RUST_LOG=warn "$PORTICO" origin --config "$WORK/origin.toml" >/dev/null 2>"$WORK/origin.log" &
PIDS+=($!)
for pop in pop-on pop-off; do
  RUST_LOG=warn "$PORTICO" pop --config "$WORK/$pop.toml" >/dev/null 2>"$WORK/$pop.log" &
  PIDS+=($!)
done
wait_port "$ON"; wait_port "$OFF"
# The PoPs serve once the origin's definitions arrived.
for port in "$ON" "$OFF"; do
  for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$port/prod/ready" >/dev/null && break
    sleep 0.1
  done
done

declare -A RPS P99
for round in $(seq "$ROUNDS"); do
  for target in $(in_order "$round" pop-off pop-on); do
    port=$OFF; [ "$target" = pop-on ] && port=$ON
    read -r rps p99 < <(wrk_run "http://127.0.0.1:$port/prod/x" "$CONNS" "$SECS")
    RPS[$target]+="$rps "; P99[$target]+="$p99 "
    echo "round $round $target: $rps req/s, p99 $p99 ms" >&2
  done
done

echo
echo "# bench-limits: wrk -t2 -c$CONNS -d${SECS}s through a PoP (mock route at the origin), $ROUNDS interleaved rounds, medians"
echo "# $(machine)"
printf '%-10s %12s %10s\n' target "req/s" "p99 ms"
for target in pop-off pop-on; do
  # shellcheck disable=SC2086
  printf '%-10s %12s %10s\n' "$target" "$(median ${RPS[$target]})" "$(median ${P99[$target]})"
done
# shellcheck disable=SC2086
on=$(median ${RPS[pop-on]}); off=$(median ${RPS[pop-off]})
printf 'throttling overhead: %.1f %% of throughput (goal < 3 %%)\n' "$(echo "(1 - $on / $off) * 100" | bc -l)"
