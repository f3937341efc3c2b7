#!/usr/bin/env bash
# Portico's side-by-side benchmarks, one entry point, one table.
#
# Every benchmark measures Portico and its peers (nginx, HAProxy, Varnish from
# the system packages) in the same run, interleaved, on this machine; the table
# gives medians and Portico/peer ratios. Compare ratios, not absolute numbers.
#
# Usage: scripts/bench.sh [SECONDS_PER_RUN] [ROUNDS] [BENCH...]
#   BENCH: any of the names in BENCHES below (default: all of them).
#   PGO=1: measure the profile-guided build (scripts/build-pgo.sh).
#
# Adding a benchmark: write a function `bench_NAME` that runs it and appends
# rows to "$RESULTS" with `row BENCH CASE TARGET RPS P99_MS`, then add NAME to
# BENCHES. Targets named `portico*` are compared with every other target of the
# same (bench, case) except `backend` (the ceiling, not a peer).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

SECS="${1:-10}"
ROUNDS="${2:-3}"
shift $(( $# > 2 ? 2 : $# ))
BENCHES=(proxy chain cache h3 limits)
SELECTED=("${@:-${BENCHES[@]}}")
RESULTS="$WORK/results.tsv"
: >"$RESULTS"

# The load generators and peers every benchmark may use, installed once.
ensure_tools() {
  ensure_pkg wrk wrk
  ensure_pkg h2load nghttp2-client
  ensure_pkg nginx nginx
  ensure_pkg haproxy haproxy
  ensure_pkg varnishd varnish
}

# row BENCH CASE TARGET RPS P99_MS
row() {
  printf '%s\t%s\t%s\t%s\t%s\n' "$@" >>"$RESULTS"
}

# Issue 2: wrk through portico origin vs nginx proxy_pass and HAProxy
# (scripts/bench-proxy.sh).
bench_proxy() {
  local out="$WORK/bench-proxy.out"
  "$ROOT/scripts/bench-proxy.sh" "$SECS" "$ROUNDS" | tee "$out"
  # Its table: "BODY TARGET RPS P99" lines.
  awk '$1 ~ /^[0-9]+$/ && NF == 4 && $2 ~ /^(backend|portico|nginx|haproxy)$/ {
         printf "proxy\t%s B h1 c64\t%s\t%s\t%s\n", $1, $2, $3, $4 }' "$out" >>"$RESULTS"
}

# Issue 6: cache hits at portico origin vs nginx proxy_cache and Varnish
# (scripts/bench-cache.sh).
bench_cache() {
  local out="$WORK/bench-cache.out"
  "$ROOT/scripts/bench-cache.sh" "$SECS" "$ROUNDS" | tee "$out"
  awk '$1 ~ /^[0-9]+$/ && NF == 4 && $2 ~ /^(portico|nginx|varnish)$/ {
         printf "cache\t%s B hits c64\t%s\t%s\t%s\n", $1, $2, $3, $4 }' "$out" >>"$RESULTS"
}

# Issue 3: the whole miss path, client → PoP → backbone → origin → backend,
# against client → nginx → nginx → backend (scripts/bench-chain.sh).
bench_chain() {
  local out="$WORK/bench-chain.out"
  "$ROOT/scripts/bench-chain.sh" "$SECS" "$ROUNDS" | tee "$out"
  # Its table: "BODY TARGET RPS P99" lines.
  awk '$1 ~ /^[0-9]+$/ && NF == 4 && $2 ~ /^(backend|portico|nginx|portico-cpus|nginx-cpus|portico-svc|nginx-svc|portico-replicas)$/ {
         printf "chain\t%s B tls c64\t%s\t%s\t%s\n", $1, $2, $3, $4 }' "$out" >>"$RESULTS"
}

# Issue 5: HTTP/3 against HTTP/2 on the same Portico listener and work
# (scripts/bench-h3.sh, oha with http3). The h2 target is Portico too; it is
# named `h2-portico` so that the table prints the h3/h2 ratio.
bench_h3() {
  local out="$WORK/bench-h3.out"
  "$ROOT/scripts/bench-h3.sh" "$SECS" "$ROUNDS" | tee "$out"
  awk '$1 ~ /^(mock|proxy|pop)$/ && NF == 4 && $2 ~ /^h[23]$/ {
         printf "h3\t%s c8x8\t%s\t%s\t%s\n", $1, ($2 == "h3" ? "portico-h3" : "h2-portico"), $3, $4 }' \
    "$out" >>"$RESULTS"
}

# Issue 7: the same PoP path with throttling on (nothing trips) and off
# (scripts/bench-limits.sh); the ratio is 1 - overhead.
bench_limits() {
  local out="$WORK/bench-limits.out"
  "$ROOT/scripts/bench-limits.sh" "$SECS" "$ROUNDS" | tee "$out"
  awk '$1 ~ /^pop-(on|off)$/ && NF == 3 {
         printf "limits\tmock via PoP h1 c64\t%s\t%s\t%s\n", ($1 == "pop-on" ? "portico-throttled" : "unthrottled"), $2, $3 }' \
    "$out" >>"$RESULTS"
}

print_table() {
  echo
  echo "# scripts/bench.sh: medians of $ROUNDS interleaved round(s) of ${SECS}s"
  echo "# $(machine)"
  printf '%-8s %-20s %-18s %12s %10s\n' bench case target "req/s" "p99 ms"
  sort -s -t$'\t' -k1,1 "$RESULTS" | awk -F'\t' '{ printf "%-8s %-20s %-18s %12s %10s\n", $1, $2, $3, $4, $5 }'
  echo
  printf '%-8s %-20s %-30s %12s %10s\n' bench case "ratio" "throughput" "p99"
  awk -F'\t' '
    { key = $1 "\t" $2; rps[key, $3] = $4; p99[key, $3] = $5; targets[key] = targets[key] " " $3; keys[key] = 1 }
    END {
      for (key in keys) {
        n = split(targets[key], t, " ")
        for (i = 1; i <= n; i++) for (j = 1; j <= n; j++) {
          if (t[i] !~ /^portico/ || t[j] ~ /^portico/ || t[j] == "backend") continue
          split(key, k, "\t")
          r = (rps[key, t[j]] > 0) ? rps[key, t[i]] / rps[key, t[j]] : 0
          p = (p99[key, t[j]] > 0) ? p99[key, t[i]] / p99[key, t[j]] : 0
          printf "%-8s %-20s %-30s %11.2fx %9.2fx\n", k[1], k[2], t[i] "/" t[j], r, p
        }
      }
    }' "$RESULTS" | sort
}

ensure_tools
build_release   # once for every benchmark below (PGO=1: the profile-guided build)
for name in "${SELECTED[@]}"; do
  if ! declare -F "bench_$name" >/dev/null; then
    echo "unknown benchmark \`$name\` (known: ${BENCHES[*]})" >&2
    exit 2
  fi
  echo "== $name" >&2
  "bench_$name"
done
print_table
