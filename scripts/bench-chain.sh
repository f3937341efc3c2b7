#!/usr/bin/env bash
# The whole miss path (issue 3): wrk, HTTP/1.1 keep-alive over TLS, 64
# connections, 1 KB and 100 KB responses, every request a miss through two
# proxies to the demo backend, against
#   * the demo backend directly (the ceiling),
#   * portico: client -TLS-> PoP -QUIC backbone (mutual TLS)-> origin -HTTP-> backend,
#   * nginx:   client -TLS-> nginx -HTTPS (mutual TLS, keep-alive)-> nginx -HTTP-> backend,
# interleaved over ROUNDS rounds; then a lone 1 KB request (wrk -c1) through
# both chains, ROUNDS times; prints medians and Portico/nginx ratios, both
# of the medians and of each round's pair.
#
# What is compared: the same hops doing the same work. Both client-facing
# proxies terminate TLS 1.3 with the same certificate and cipher suite
# (AES-128-GCM); both middle hops are encrypted and mutually authenticated
# with the same private CA and node certificates (made by `portico certs`),
# over long-lived connections
# (nginx: upstream keep-alive with no request cap; Portico: one QUIC link);
# both last hops are plain HTTP/1.1 keep-alive to the same backend. No cache,
# no throttle, no access log on either side. nginx runs two master/worker
# sets (`worker_processes auto` each); Portico runs two processes with their
# default runtimes.
#
# Usage: scripts/bench-chain.sh [SECONDS_PER_RUN] [ROUNDS]
set -euo pipefail
source "$(dirname "$0")/lib.sh"

SECS="${1:-10}"
ROUNDS="${2:-3}"
CONNS=64
SIZES=(1024 102400)

ensure_pkg wrk wrk
ensure_pkg nginx nginx
ensure_pkg curl curl
build_release

CERTS="$WORK/certs"
"$PORTICO" certs --out "$CERTS" --nodes origin-a,pop-a,edge >/dev/null

BACKEND=$(free_port); start_backend "$BACKEND"
POP_PORT=$(free_port)
FRONT_PORT=$(free_port)
BACK_PORT=$(free_port)

# Cache and throttles are off on both nodes: every request is a miss that
# crosses the backbone, and none is answered 429.
cat >"$WORK/origin.toml" <<TOML
[node]
id = "origin-a"
region = "local"

[throttle]
enabled = false

[cache]
enabled = false

[backbone]
listen = "127.0.0.1:0"
ca = "$CERTS/ca.pem"
cert = "$CERTS/origin-a.pem"
key = "$CERTS/origin-a.key"

[[apis]]
name = "bench"
endpoint = "edge"
$(proxy_route_and_stage "$BACKEND")
TOML
start_node origin origin
BACKBONE=$(backbone_addr origin)

cat >"$WORK/pop.toml" <<TOML
[node]
id = "pop-a"

[throttle]
enabled = false

[cache]
enabled = false

[[listeners]]
address = "127.0.0.1:$POP_PORT"
default_api = "bench"
certificates = [{ cert = "$CERTS/edge.pem", key = "$CERTS/edge.key" }]

[backbone]
ca = "$CERTS/ca.pem"
cert = "$CERTS/pop-a.pem"
key = "$CERTS/pop-a.key"

[[origins]]
region = "local"
address = "$BACKBONE"
server_name = "origin-a"
TOML
start_node pop pop

start_nginx_chain "$WORK/nginx" "$CERTS" auto "$FRONT_PORT" "$BACK_PORT" "$BACK_PORT" "$BACKEND" edge pop-a origin-a
wait_port "$POP_PORT"; wait_port "$FRONT_PORT"; wait_port "$BACK_PORT"

# Both chains must answer 200 before anything is measured.
wait_ok "https://127.0.0.1:$POP_PORT/prod/bytes/16"
wait_ok "https://127.0.0.1:$FRONT_PORT/prod/bytes/16"

declare -A RPS P99
for size in "${SIZES[@]}"; do
  for round in $(seq "$ROUNDS"); do
    for target in backend portico nginx; do
      case $target in
        backend) url="http://127.0.0.1:$BACKEND/bytes/$size" ;;
        portico) url="https://127.0.0.1:$POP_PORT/prod/bytes/$size" ;;
        nginx) url="https://127.0.0.1:$FRONT_PORT/prod/bytes/$size" ;;
      esac
      read -r rps p99 < <(wrk_run "$url" "$CONNS" "$SECS")
      RPS[$target.$size]+="$rps "; P99[$target.$size]+="$p99 "
      echo "round $round size $size $target: $rps req/s, p99 $p99 ms" >&2
    done
  done
done

# A lone request (wrk -c1, 1 KB): the latency of the path itself, with
# nothing to batch and every hop woken from idle.
declare -A P50_1 P99_1
for round in $(seq "$ROUNDS"); do
  for target in portico nginx; do
    case $target in
      portico) url="https://127.0.0.1:$POP_PORT/prod/bytes/1024" ;;
      nginx) url="https://127.0.0.1:$FRONT_PORT/prod/bytes/1024" ;;
    esac
    out=$(wrk -t1 -c1 -d"${SECS}"s --latency "$url" 2>&1)
    p50=$(to_ms "$(awk '$1 == "50%" {print $2}' <<<"$out")")
    p99=$(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")
    P50_1[$target]+="$p50 "; P99_1[$target]+="$p99 "
    echo "round $round lone 1 KB $target: p50 $p50 ms, p99 $p99 ms" >&2
  done
done

echo
echo "# bench-chain: wrk -t2 -c$CONNS -d${SECS}s over TLS, two proxies deep, $ROUNDS interleaved rounds, medians"
echo "# $(machine)"
printf '%-8s %-8s %12s %10s\n' body target "req/s" "p99 ms"
for size in "${SIZES[@]}"; do
  for target in backend portico nginx; do
    # shellcheck disable=SC2086
    printf '%-8s %-8s %12s %10s\n' "$size" "$target" "$(median ${RPS[$target.$size]})" "$(median ${P99[$target.$size]})"
  done
  # shellcheck disable=SC2086
  pr=$(median ${RPS[portico.$size]}); nr=$(median ${RPS[nginx.$size]})
  # shellcheck disable=SC2086
  pp=$(median ${P99[portico.$size]}); np=$(median ${P99[nginx.$size]})
  printf '%-8s portico/nginx throughput %.2fx, p99 %.2fx\n' "$size" "$(echo "$pr / $nr" | bc -l)" "$(echo "$pp / $np" | bc -l)"
  tr=$(ratios "${RPS[portico.$size]}" "${RPS[nginx.$size]}"); lr=$(ratios "${P99[portico.$size]}" "${P99[nginx.$size]}")
  # shellcheck disable=SC2086
  printf '%-8s   per round: throughput %s(median %sx), p99 %s(median %sx)\n' "$size" "$tr" "$(median $tr)" "$lr" "$(median $lr)"
done
# shellcheck disable=SC2086
lp=$(median ${P50_1[portico]}); ln=$(median ${P50_1[nginx]}); lp99=$(median ${P99_1[portico]}); ln99=$(median ${P99_1[nginx]})
printf 'lone 1 KB (wrk -c1): portico p50 %s ms, p99 %s ms; nginx p50 %s ms, p99 %s ms; portico/nginx p50 %.2fx\n' \
  "$lp" "$lp99" "$ln" "$ln99" "$(echo "$lp / $ln" | bc -l)"
