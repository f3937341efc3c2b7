#!/usr/bin/env bash
# HTTP/3 against HTTP/2 on the same Portico listener, same work (issue 5).
#
# One origin with `http3 = true`: HTTP/2 over TLS/TCP and HTTP/3 over QUIC on
# the same port number, the same certificate, the same pipeline. oha (built
# with its `http3` feature, installed once into a cache) loads it with the
# same shape for both: CONNS connections x STREAMS requests in flight each.
# Rounds are interleaved (h2, h3, then h3, h2, ...); the table gives medians
# and the h3/h2 ratios (goal: throughput >= 0.7x). Cases:
#   * mock:  a mock integration (the protocol stacks and the pipeline only),
#   * proxy: http_proxy to the demo backend, 1 KiB responses,
#   * pop:   the same 1 KiB response entered at a PoP (listener with
#            `http3 = true`, cache and throttle off), every request a miss
#            over the QUIC backbone to the origin: h3 and h2 on the client
#            side only, the backbone is the same for both.
#
# Both sides get the same cores: the TCP listener one worker thread per core,
# the HTTP/3 listener one thread per core too (the endpoint on the first,
# connections round robin). oha runs on the same machine with the same
# connection and stream counts for both protocols; on a shared machine run it
# when nothing else is busy, and compare builds with PORTICO_BIN in the same
# session (throughput follows whatever CPU share the run got).
#
# Usage: scripts/bench-h3.sh [SECONDS_PER_RUN] [ROUNDS]
#   PORTICO_BENCH_CACHE: where oha is installed (default ~/.cache/portico-bench)
#   PORTICO_BIN: a portico binary to measure instead of building this tree's
#     release build (to compare two builds on the same machine state)
#   CONNS, STREAMS: load shape, the same for both protocols (default 8 x 8)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
PORTICO="${PORTICO_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/portico}"

SECS="${1:-10}"
ROUNDS="${2:-3}"
CONNS="${CONNS:-8}"
STREAMS="${STREAMS:-8}"
CACHE="${PORTICO_BENCH_CACHE:-$HOME/.cache/portico-bench}"
OHA="$CACHE/bin/oha"

# oha 1.16 from crates.io with HTTP/3; compiling it takes ~10 minutes on 2 cores, once.
ensure_oha() {
  if [ -x "$OHA" ] && "$OHA" --help | grep -q -- '--http-version'; then
    return 0
  fi
  echo "installing oha 1.16 (features http3) into $CACHE; about 10 minutes, once..." >&2
  cargo install oha --version '~1.16' --features http3 --locked --root "$CACHE" --quiet
}

# limits_for_conns: a node file's [limits]; oha opens all CONNS connections
# from one address, which may be more than a client's default cap (256).
limits_for_conns() {
  printf '[limits]\nmax_connections_per_client = %d\n' $(( CONNS > 256 ? CONNS : 256 ))
}

# start_origin PORT BACKEND_PORT: an origin with h1/h2/h3 on PORT; waits for `ready`.
start_origin() {
  cat >"$WORK/origin.toml" <<TOML
[node]
id = "bench-h3"
region = "local"

[[listeners]]
address = "127.0.0.1:$1"
default_api = "bench"
http3 = true

# The node's default throttle (10 000 req/s) would measure 429s.
[throttle]
enabled = false

$(limits_for_conns)

[[apis]]
name = "bench"
endpoint = "regional"
[[apis.routes]]
method = "GET"
path = "/mock"
integration = { type = "mock", status = 200, headers = { "content-type" = "application/json" }, body = '{"ok":true}' }
$(proxy_route_and_stage "$2")

# Entered at the PoP (the pop case); served here over the backbone.
[[apis]]
name = "edge"
endpoint = "edge"
$(proxy_route_and_stage "$2")

[cache]
enabled = false

[backbone]
listen = "127.0.0.1:0"
ca = "$WORK/certs/ca.pem"
cert = "$WORK/certs/origin-a.pem"
key = "$WORK/certs/origin-a.key"
TOML
  start_node origin origin
}

# start_pop PORT BACKBONE: a PoP with h1/h2/h3 on PORT serving the `edge`
# API, cache and throttle off (every request a miss over the backbone).
start_pop() {
  cat >"$WORK/pop.toml" <<TOML
[node]
id = "pop-a"

[[listeners]]
address = "127.0.0.1:$1"
default_api = "edge"
http3 = true

[throttle]
enabled = false

$(limits_for_conns)

[cache]
enabled = false

[backbone]
ca = "$WORK/certs/ca.pem"
cert = "$WORK/certs/pop-a.pem"
key = "$WORK/certs/pop-a.key"

[[origins]]
region = "local"
address = "$2"
server_name = "origin-a"
TOML
  start_node pop pop
}

# oha_run PROTO URL: prints "RPS P99_MS" (PROTO: h2 or h3).
oha_run() {
  local version
  case "$1" in
    h2) version=(--http2) ;;
    h3) version=(--http-version 3) ;;
  esac
  "$OHA" --no-tui --insecure -z "${SECS}s" -c "$CONNS" -p "$STREAMS" "${version[@]}" \
    --output-format json "$2" >"$WORK/oha.json" 2>"$WORK/oha.err" || {
    cat "$WORK/oha.err" >&2
    return 1
  }
  python3 - "$WORK/oha.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
codes = r.get("statusCodeDistribution", {})
bad = sum(n for code, n in codes.items() if code != "200")
if bad or not codes:
    print(f"non-200 answers: {codes}", file=sys.stderr)
    sys.exit(1)
p99 = (r["latencyPercentiles"].get("p99") or float("nan")) * 1000
print(f'{r["summary"]["requestsPerSec"]:.0f} {p99:.3f}')
PY
}

ensure_oha
[ -n "${PORTICO_BIN:-}" ] || build_release
cd "$WORK"   # node state (e.g. the quota store) goes to the scratch directory
ensure_pkg curl curl
"$PORTICO" certs --out "$WORK/certs" --origins origin-a --pops pop-a >/dev/null
BACKEND=$(free_port)
start_backend "$BACKEND"
PORT=$(free_port)
start_origin "$PORT" "$BACKEND"
BACKBONE=$(backbone_addr origin)
POP_PORT=$(free_port)
start_pop "$POP_PORT" "$BACKBONE"
wait_ok "https://127.0.0.1:$POP_PORT/prod/bytes/16"

declare -A RPS P99
CASES=(mock proxy pop)
declare -A URLS=(
  [mock]="https://127.0.0.1:$PORT/prod/mock"
  [proxy]="https://127.0.0.1:$PORT/prod/bytes/1024"
  [pop]="https://127.0.0.1:$POP_PORT/prod/bytes/1024"
)
for case in "${CASES[@]}"; do
  url="${URLS[$case]}"
  for round in $(seq "$ROUNDS"); do
    order=(h2 h3)
    (( round % 2 == 0 )) && order=(h3 h2)
    for proto in "${order[@]}"; do
      read -r rps p99 < <(oha_run "$proto" "$url")
      echo "round $round $case $proto: $rps req/s, p99 $p99 ms" >&2
      RPS[$case,$proto]+="$rps "
      P99[$case,$proto]+="$p99 "
    done
  done
done

echo
echo "# scripts/bench-h3.sh: oha -c $CONNS -p $STREAMS, medians of $ROUNDS interleaved round(s) of ${SECS}s"
echo "# $(machine)"
printf '%-6s %-6s %12s %10s\n' case proto "req/s" "p99 ms"
for case in "${CASES[@]}"; do
  for proto in h2 h3; do
    # shellcheck disable=SC2086
    printf '%-6s %-6s %12s %10s\n' "$case" "$proto" \
      "$(median ${RPS[$case,$proto]})" "$(median ${P99[$case,$proto]})"
  done
done
echo
printf '%-6s %-12s %12s %10s\n' case ratio throughput p99
for case in "${CASES[@]}"; do
  # shellcheck disable=SC2086
  awk -v c="$case" -v r3="$(median ${RPS[$case,h3]})" -v r2="$(median ${RPS[$case,h2]})" \
      -v p3="$(median ${P99[$case,h3]})" -v p2="$(median ${P99[$case,h2]})" \
      'BEGIN { printf "%-6s %-12s %11.2fx %9.2fx\n", c, "h3/h2", r3 / r2, p3 / p2 }'
done
