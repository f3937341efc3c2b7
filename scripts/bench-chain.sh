#!/usr/bin/env bash
# The whole miss path (issue 3): wrk, HTTP/1.1 keep-alive over TLS, 64
# connections, 1 KB and 100 KB responses, every request a miss through two
# proxies to the demo backend, against
#   * the demo backend directly (the ceiling),
#   * portico: client -TLS-> PoP -QUIC backbone (mutual TLS)-> origin -HTTP-> backend,
#   * nginx:   client -TLS-> nginx -HTTPS (mutual TLS, keep-alive)-> nginx -HTTP-> backend,
# interleaved over ROUNDS rounds (the order reversed on even rounds); then
# a lone 1 KB request (wrk -c1) through both chains, ROUNDS times; prints
# medians and Portico/nginx ratios, both of the medians and of each round's
# pair.
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
# Each chain runs in two placements (with two CPUs or more), and in a
# third, svc, below:
#   * free: every process where the scheduler puts it;
#   * cpus: each hop on a CPU of its own, as two hosts would be — the PoP
#     on the first CPU and the origin on the second (`[node] cpus`), the
#     front nginx's workers on the first and the back's on the second
#     (`worker_cpu_affinity`); wrk and the backend stay free.
# Both placements of both servers are measured in every round, and the
# ratios are printed for each placement and for Portico confined against
# nginx free.
#
# Both chains once more in a third placement, services: every server (the
# PoP or front nginx, the origin or back nginx, a backend of their own) and
# wrk each started in a session of its own (`setsid`), as a systemd service
# or a daemon (nginx's default `daemon on` calls setsid) runs. Linux then
# shares the CPUs fairly between those sessions (autogroups; systemd's
# per-service cgroups do the same) rather than between their threads, so a
# server's share no longer grows with the number of threads or processes it
# runs, and a hop that needs less CPU per request is not starved by one
# that has more threads. Every process is otherwise free.
#
# Then Portico once more with its region scaled to two origin gateways
# (`portico-replicas`: one PoP with a link to each of two origins of its
# region, which sends each request to the one with fewer in flight; every
# process free), which gives the back tier as many processes as the back
# nginx has workers. One origin
# serves a PoP's link on one thread, so on a shared 2-CPU machine it is the
# hop the scheduler starves; the ratio against nginx is printed too.
#
# And Portico once more with the origin's link threads at real-time priority
# (`portico-rt`: `chrt -f 1` on its `portico-link-*` threads, every process
# free; only where this shell may set it, e.g. as root). The link's thread is
# the chain's one serial stage, and on a shared machine it otherwise waits
# for a CPU behind the backend and wrk threads its own writes woke there
# (docs/PERFORMANCE.md, session 18). An operator's `chrt`, not a Portico
# setting; the ratios against Portico's default and against nginx are
# printed.
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
"$PORTICO" certs --out "$CERTS" --origins origin-a,origin-b --pops pop-a --names edge >/dev/null

BACKEND=$(free_port); start_backend "$BACKEND"
read -r CPU_A CPU_B < <(two_cpus) || true

# URL: each target's base URL; SESSION_OF: `setsid` for the targets started
# in sessions of their own (wrk_run and the lone runs start wrk alike).
declare -A URL SESSION_OF
# origin_file NAME ID CPUS: an origin's file, $WORK/NAME.toml, with node id
# and certificate ID (CPUS: a `cpus = [..]` line or nothing).
origin_file() {
  cat >"$WORK/$1.toml" <<TOML
[node]
id = "$2"
region = "local"
state_dir = "state-$1"
$3

[throttle]
enabled = false

[cache]
enabled = false

[backbone]
listen = "127.0.0.1:0"
ca = "$CERTS/ca.pem"
cert = "$CERTS/$2.pem"
key = "$CERTS/$2.key"

[[apis]]
name = "bench"
endpoint = "edge"
$(proxy_route_and_stage "$BACKEND")
TOML
}

# start_portico_chain NAME [POP_CPU ORIGIN_CPU]: an origin and a PoP (files
# origin-NAME.toml, pop-NAME.toml); sets URL[NAME] to the PoP's base URL.
# With REPLICAS=2 in the environment the region has a second origin
# (origin-NAME-2.toml, node origin-b) with the same definitions, and the PoP
# spreads requests over its two links. Cache and throttles are off on every
# node: every request is a miss that crosses the backbone, and none is
# answered 429.
start_portico_chain() {
  local name="$1" pop_cpus="" origin_cpus="" pop_port second=""
  [ -n "${2:-}" ] && pop_cpus="cpus = [$2]" && origin_cpus="cpus = [$3]"
  pop_port=$(free_port)
  origin_file "origin-$name" origin-a "$origin_cpus"
  start_node origin "origin-$name"
  if [ "${REPLICAS:-1}" = 2 ]; then
    origin_file "origin-$name-2" origin-b "$origin_cpus"
    start_node origin "origin-$name-2"
    second="[[origins]]
region = \"local\"
address = \"$(backbone_addr "origin-$name-2")\"
server_name = \"origin-b\""
  fi
  cat >"$WORK/pop-$name.toml" <<TOML
[node]
id = "pop-a"
$pop_cpus

[throttle]
enabled = false

[cache]
enabled = false

[[listeners]]
address = "127.0.0.1:$pop_port"
default_api = "bench"
certificates = [{ cert = "$CERTS/edge.pem", key = "$CERTS/edge.key" }]

[backbone]
ca = "$CERTS/ca.pem"
cert = "$CERTS/pop-a.pem"
key = "$CERTS/pop-a.key"

[[origins]]
region = "local"
address = "$(backbone_addr "origin-$name")"
server_name = "origin-a"

$second
TOML
  start_node pop "pop-$name"
  wait_port "$pop_port"
  URL[$name]="https://127.0.0.1:$pop_port/prod"
}

# start_nginx NAME [FRONT_CPU BACK_CPU]: the nginx chain (start_nginx_chain);
# sets URL[NAME].
start_nginx() {
  local front back
  front=$(free_port); back=$(free_port)
  start_nginx_chain "$WORK/$1" "$CERTS" auto "$front" "$back" "$back" "$BACKEND" edge pop-a origin-a "${2:-}" "${3:-}"
  wait_port "$front"; wait_port "$back"
  URL[$1]="https://127.0.0.1:$front/prod"
}

TARGETS=(backend portico nginx)
URL[backend]="http://127.0.0.1:$BACKEND"
start_portico_chain portico
start_nginx nginx
if [ -n "${CPU_B:-}" ]; then
  TARGETS+=(portico-cpus nginx-cpus)
  start_portico_chain portico-cpus "$CPU_A" "$CPU_B"
  start_nginx nginx-cpus "$CPU_A" "$CPU_B"
fi
# The services placement: every server and wrk in a session of its own,
# against a backend started the same way.
if command -v setsid >/dev/null; then
  TARGETS+=(portico-svc nginx-svc)
  SVC_BACKEND=$(free_port)
  SESSION=setsid start_backend "$SVC_BACKEND" backend-svc
  SESSION=setsid BACKEND=$SVC_BACKEND start_portico_chain portico-svc
  SESSION=setsid BACKEND=$SVC_BACKEND start_nginx nginx-svc
  SESSION_OF[portico-svc]=setsid; SESSION_OF[nginx-svc]=setsid
else
  echo "services placement left out: no setsid here" >&2
fi
# The region scaled to two origin gateways (replicas), every process free:
# as many back-tier processes as the back nginx has workers.
TARGETS+=(portico-replicas)
REPLICAS=2 start_portico_chain portico-replicas

# rt_links NAME: SCHED_FIFO priority 1 for the link threads of chain NAME's
# origin; fails where chrt may not set it.
rt_links() {
  local pid comm n=0
  pid=$(pgrep -f "$WORK/origin-$1.toml" | head -1)
  for comm in /proc/"$pid"/task/*/comm; do
    grep -q '^portico-link' "$comm" || continue
    chrt -f -p 1 "$(basename "$(dirname "$comm")")" 2>/dev/null || return 1
    n=$((n + 1))
  done
  [ "$n" -gt 0 ]
}
start_portico_chain portico-rt
if rt_links portico-rt; then
  TARGETS+=(portico-rt)
else
  echo "portico-rt left out: chrt may not set real-time priority here" >&2
fi

# Every chain must answer 200 before anything is measured.
for target in "${TARGETS[@]}"; do wait_ok "${URL[$target]}/bytes/16"; done

declare -A RPS P99
for size in "${SIZES[@]}"; do
  for round in $(seq "$ROUNDS"); do
    for target in $(in_order "$round" "${TARGETS[@]}"); do
      read -r rps p99 < <(SESSION="${SESSION_OF[$target]:-}" wrk_run "${URL[$target]}/bytes/$size" "$CONNS" "$SECS")
      RPS[$target.$size]+="$rps "; P99[$target.$size]+="$p99 "
      echo "round $round size $size $target: $rps req/s, p99 $p99 ms" >&2
    done
  done
done

# A lone request (wrk -c1, 1 KB): the latency of the path itself, with
# nothing to batch and every hop woken from idle.
declare -A P50_1 P99_1
for round in $(seq "$ROUNDS"); do
  for target in $(in_order "$round" "${TARGETS[@]}"); do
    [ "$target" = backend ] && continue
    session="${SESSION_OF[$target]:-}"
    out=$(${session:+$session -w} wrk -t1 -c1 -d"${SECS}"s --latency "${URL[$target]}/bytes/1024" 2>&1)
    p50=$(to_ms "$(awk '$1 == "50%" {print $2}' <<<"$out")")
    p99=$(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")
    P50_1[$target]+="$p50 "; P99_1[$target]+="$p99 "
    echo "round $round lone 1 KB $target: p50 $p50 ms, p99 $p99 ms" >&2
  done
done

# compare SIZE A B: A/B of the medians and of each round's pair.
compare() {
  local size="$1" a="$2" b="$3" pr nr pp np tr lr
  # shellcheck disable=SC2086 # word splitting wanted: one value per round
  {
    pr=$(median ${RPS[$a.$size]}); nr=$(median ${RPS[$b.$size]})
    pp=$(median ${P99[$a.$size]}); np=$(median ${P99[$b.$size]})
  }
  printf '%-8s %s/%s throughput %.2fx, p99 %.2fx\n' "$size" "$a" "$b" "$(echo "$pr / $nr" | bc -l)" "$(echo "$pp / $np" | bc -l)"
  tr=$(ratios "${RPS[$a.$size]}" "${RPS[$b.$size]}"); lr=$(ratios "${P99[$a.$size]}" "${P99[$b.$size]}")
  # shellcheck disable=SC2086
  printf '%-8s   per round: throughput %s(median %sx), p99 %s(median %sx)\n' "$size" "$tr" "$(median $tr)" "$lr" "$(median $lr)"
}

echo
echo "# bench-chain: wrk -t2 -c$CONNS -d${SECS}s over TLS, two proxies deep, $ROUNDS interleaved rounds, medians"
echo "# *-cpus: the PoP (front nginx) on CPU ${CPU_A:-}, the origin (back nginx) on CPU ${CPU_B:-}"
echo "# *-svc: every server and wrk in a session of its own (setsid), free"
echo "# portico-replicas: one PoP, two origins of its region (replicas), free"
echo "# portico-rt: the origin's link threads at real-time priority (chrt -f 1), free"
echo "# $(machine)"
printf '%-8s %-16s %12s %10s\n' body target "req/s" "p99 ms"
for size in "${SIZES[@]}"; do
  for target in "${TARGETS[@]}"; do
    # shellcheck disable=SC2086
    printf '%-8s %-16s %12s %10s\n' "$size" "$target" "$(median ${RPS[$target.$size]})" "$(median ${P99[$target.$size]})"
  done
  compare "$size" portico nginx
  if [ -n "${CPU_B:-}" ]; then
    compare "$size" portico-cpus nginx-cpus
    compare "$size" portico-cpus nginx
  fi
  if [ -n "${RPS[portico-svc.$size]:-}" ]; then
    compare "$size" portico-svc nginx-svc
  fi
  compare "$size" portico-replicas nginx
  if [ -n "${RPS[portico-rt.$size]:-}" ]; then
    compare "$size" portico-rt nginx
    compare "$size" portico-rt portico
  fi
done
for target in "${TARGETS[@]:1}"; do
  # shellcheck disable=SC2086
  printf 'lone 1 KB (wrk -c1) %-16s p50 %s ms, p99 %s ms\n' "$target" "$(median ${P50_1[$target]})" "$(median ${P99_1[$target]})"
done
# shellcheck disable=SC2086
printf 'lone 1 KB p50 portico/nginx %.2fx\n' "$(echo "$(median ${P50_1[portico]}) / $(median ${P50_1[nginx]})" | bc -l)"
