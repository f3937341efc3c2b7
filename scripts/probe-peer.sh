#!/usr/bin/env bash
# The topology probe's peers (issue 4): how close to the physical minimum
# nginx and Caddy get on the same simulated path as a Portico PoP and origin.
#
# For each short path of topology/world.toml (the sites whose 10 % margin is
# smallest: New York → us-east-1, London and Frankfurt → eu-central-1), one
# small topology of that site, its PoP and its region, with the links of
# world.toml, runs three ways side by side:
#   * Portico: `portico up` (client -TCP and UDP relay-> PoP =QUIC backbone
#     over a UDP relay=> origin -> demo backend), as in the README's world table;
#   * nginx:   client -TCP relay-> nginx (TLS) -TCP relay, mutual TLS,
#     keep-alive-> nginx (TLS) -> the same demo backend;
#   * Caddy:   the same with Caddy at both hops; its front also serves HTTP/3,
#     so its entry relay carries UDP too (nginx in Debian has no HTTP/3),
# with `portico relay` (the same relays `up` uses) for the links. All are
# measured by `portico probe` against the same topology file, so against
# the same minimum, alternating ROUNDS times. Each nginx runs one worker: the
# probe sends one request at a time, and a second worker would open its own
# upstream connection on its first request. The peers cache nothing here, so
# only the cold (TCP + TLS, and QUIC for Portico and Caddy) and warm-miss
# measures compare.
#
# Usage: scripts/probe-peer.sh [ROUNDS] [RUNS]   (RUNS: the probe's --runs)
# ZERO=1: every link's delay and jitter set to 0, so each column is what the
# servers, the relays and the probe's client cost on this host, the floor
# under every ratio of the delayed paths.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

ROUNDS="${1:-3}"
RUNS="${2:-7}"
# WORLD: another file with the same sites, PoPs and origins (e.g. other delays).
WORLD="${WORLD:-$ROOT/topology/world.toml}"
if [ "${ZERO:-0}" = 1 ]; then
  sed -E 's/^(delay_ms|jitter_ms) = .*/\1 = 0/' "$WORLD" > "$WORK/world-zero.toml"
  WORLD="$WORK/world-zero.toml"
fi

ensure_pkg nginx nginx
ensure_pkg caddy caddy
ensure_pkg curl curl
build_release

# link_param A B FIELD: FIELD (delay_ms, jitter_ms) of world.toml's link
# between A and B (0 when the link does not set it).
link_param() {
  awk -v a="$1" -v b="$2" -v f="$3" '
    /^\[\[/ { inlink = 0 }
    $1 == "between" { inlink = (index($0, "\"" a "\"") && index($0, "\"" b "\"")) }
    inlink && $1 == f { print $3; found = 1; exit }
    END { if (!found) print 0 }' "$WORLD"
}

# site  PoP  region  origin  API (the edge API homed in that region)
PATHS=(
  "new-york pop-nyc us-east-1 origin-iad echo-edge"
  "london pop-lhr eu-central-1 origin-fra echo-edge-eu"
  "frankfurt pop-fra eu-central-1 origin-fra echo-edge-eu"
)

# topology SITE POP REGION ORIGIN API: the one-path topology, on stdout.
topology() {
  cat <<TOML
[topology]
name = "peer-$1"
description = "$1 through $2 to $3, links from topology/world.toml"
http3 = true

[[regions]]
name = "$3"
location = "$3"
origin = "$4"
backends = ["backend-$3"]

[[pops]]
id = "$2"
location = "$1"
regions = ["$3"]

[[sites]]
name = "$1"
location = "$1"

[[links]]
between = ["$1", "$2"]
delay_ms = $(link_param "$1" "$2" delay_ms)
jitter_ms = $(link_param "$1" "$2" jitter_ms)

[[links]]
between = ["$2", "$4"]
delay_ms = $(link_param "$2" "$4" delay_ms)
jitter_ms = $(link_param "$2" "$4" jitter_ms)

[[apis]]
name = "$5"
endpoint = "edge"
region = "$3"
TOML
}

# start_relay NAME TARGET_PORT DELAY JITTER [--udp]: `portico relay` on a free
# port (its UDP side too with --udp); sets RELAY_PORT to that port and
# RELAY_PID to its process. Not to be called in a command substitution: the
# relay must be in PIDS for the exit trap to stop it.
start_relay() {
  "$PORTICO" relay --listen 127.0.0.1:0 --to "127.0.0.1:$2" --delay-ms "$3" \
    --jitter-ms "$4" ${5:+"$5"} >"$WORK/$1.out" 2>"$WORK/$1.log" &
  RELAY_PID=$!
  PIDS+=("$RELAY_PID")
  for _ in $(seq 200); do
    grep -q '^ready' "$WORK/$1.out" 2>/dev/null && break
    sleep 0.05
  done
  RELAY_PORT=$(awk '$1 == "listening" && $2 == "tcp" {split($3, a, ":"); print a[2]; exit}' "$WORK/$1.out")
}

# peer_json PEER ENTRY_PORT H3 LINK_PIDS HOST_PIDS: the manifest for `portico
# probe` of this path's PEER chain, naming its entry relay, its link processes
# (the `portico relay`s) and its host processes (every process of the servers
# and the backend), so that the probe places the peer's links and hosts on
# CPUs as it does `up`'s.
peer_json() {
  local links hosts pid
  links=$(echo "$4" | tr ' ' '\n' | grep . | paste -sd, -)
  hosts=$(for pid in $5; do printf '{"node": "%s", "kind": "peer", "pid": %s}\n' "$1" "$pid"; done | paste -sd, -)
  cat <<JSON
{"topology": "peer-$SITE", "entries": [{"site": "$SITE", "api": "$API", "mode": "edge",
 "url": "https://127.0.0.1:$2/prod", "h3": $3, "node": "$1"}],
 "admin": [], "ca": "$CERTS/ca.pem", "processes": [$hosts], "links": [$links], "run_dir": "$WORK"}
JSON
}

# start_peer PEER H3 PATTERN: this path's two links in front of a fresh PEER
# chain (start_PEER_chain in lib.sh; with H3 true, the entry relay carries
# UDP too), and its manifest $WORK/$SITE-PEER.json once it answers. PATTERN
# matches the command lines of the chain's server processes.
start_peer() {
  local peer="$1" h3="$2" front back core entry links
  front=$(free_port); back=$(free_port)
  start_relay "$SITE-$peer-core" "$back" "$(link_param "$POP" "$ORIGIN" delay_ms)" "$(link_param "$POP" "$ORIGIN" jitter_ms)"
  core=$RELAY_PORT; links=$RELAY_PID
  start_relay "$SITE-$peer-access" "$front" "$(link_param "$SITE" "$POP" delay_ms)" "$(link_param "$SITE" "$POP" jitter_ms)" \
    "$([ "$h3" = true ] && echo --udp)"
  entry=$RELAY_PORT; links="$links $RELAY_PID"
  case $peer in
    nginx) start_nginx_chain "$WORK/$SITE-nginx" "$CERTS" 1 "$front" "$core" "$back" "$BACKEND" "$POP" "$POP" "$ORIGIN" ;;
    caddy) start_caddy_chain "$WORK/$SITE-caddy" "$CERTS" "$front" "$core" "$back" "$BACKEND" "$POP" "$POP" "$ORIGIN" ;;
  esac
  wait_port "$front"; wait_port "$back"
  wait_ok "https://127.0.0.1:$entry/prod/bytes/16"
  peer_json "$peer" "$entry" "$h3" "$links" "$(tree "$3") $(tree "backend --listen 127.0.0.1:$BACKEND")" \
    >"$WORK/$SITE-$peer.json"
}

# tree PATTERN: the pids of the processes whose command line matches, and
# of their children (an nginx master and its workers).
tree() {
  local p
  for p in $(pgrep -f "$1"); do echo "$p"; pgrep -P "$p" || true; done
}

# probe_csv TOPO JSON OUT: one probe run; prints its CSV's rows.
probe_csv() {
  "$PORTICO" probe "$1" --json "$2" --runs "$RUNS" --out "$3" >/dev/null 2>"$3.log" \
    || { echo "probe failed:" >&2; cat "$3.log" >&2; exit 1; }
  tail -n +2 "$3/probe.csv"
}

echo "portico probe, median of $RUNS per run, $ROUNDS alternating rounds; $(machine)"
RESULTS="$WORK/results.csv"
: >"$RESULTS"
for p in "${PATHS[@]}"; do
  read -r SITE POP REGION ORIGIN API <<<"$p"
  TOPO="$WORK/$SITE.toml"
  topology "$SITE" "$POP" "$REGION" "$ORIGIN" "$API" >"$TOPO"
  "$PORTICO" check "$TOPO" >/dev/null

  # Portico: the whole topology, as `portico up` runs it for the README.
  "$PORTICO" up "$TOPO" --json "$WORK/$SITE-portico.json" >"$WORK/$SITE-up.out" 2>"$WORK/$SITE-up.log" &
  UP=$!
  PIDS+=("$UP")
  for _ in $(seq 600); do [ -f "$WORK/$SITE-portico.json" ] && break; sleep 0.1; done
  [ -f "$WORK/$SITE-portico.json" ] || { echo "portico up did not start:" >&2; cat "$WORK/$SITE-up.log" >&2; exit 1; }

  # The peers: their own certificates from the same kind of private CA,
  # one demo backend for both.
  CERTS="$WORK/$SITE-certs"
  "$PORTICO" certs --out "$CERTS" --pops "$POP" --origins "$ORIGIN" >/dev/null
  BACKEND=$(free_port); start_backend "$BACKEND"
  start_peer nginx false "nginx -p $WORK/$SITE-nginx/"
  start_peer caddy true "caddy run --config $WORK/$SITE-caddy/"

  # One unmeasured run each: first connections, upstream keep-alive.
  for target in portico nginx caddy; do
    probe_csv "$TOPO" "$WORK/$SITE-$target.json" "$WORK/warm" >/dev/null
  done
  for round in $(seq "$ROUNDS"); do
    for target in $(in_order "$round" portico nginx caddy); do
      probe_csv "$TOPO" "$WORK/$SITE-$target.json" "$WORK/out" | sed "s/^/$target,$round,/" >>"$RESULTS"
    done
  done
  echo "  $SITE done" >&2
  kill "$UP" 2>/dev/null || true
  wait "$UP" 2>/dev/null || true
done

# target,round,site,api,mode,via,measure,samples,median_ms,minimum_ms,ratio,cache_hit
python3 - "$RESULTS" <<'PY'
import csv, statistics, sys
rows = list(csv.reader(open(sys.argv[1])))
def med(target, site, measure):
    v = [float(r[8]) for r in rows if r[0] == target and r[2] == site and r[6] == measure]
    return statistics.median(v) if v else None
def minimum(site, measure):
    return next(float(r[9]) for r in rows if r[2] == site and r[6] == measure)
print()
print("| site (path) | measure | minimum | Portico (/ min) | nginx (/ min) | Caddy (/ min) | Portico / nginx | Portico / Caddy |")
print("|---|---|---|---|---|---|---|---|")
for site in dict.fromkeys(r[2] for r in rows):
    for m in ("cold", "warm_miss", "cold_h3"):
        lo = minimum(site, m)
        p = med("portico", site, m)
        if p is None:
            continue
        def cell(x):
            if x is None:
                return "—"
            return f"{x:.2f} ms ({x / lo:.3f}×)" if lo > 0 else f"{x:.2f} ms"
        def vs(x):
            return f"{p / x:.3f}×" if x else "—"
        n, c = med("nginx", site, m), med("caddy", site, m)
        print(f"| {site} | {m} | {lo:.0f} ms | {cell(p)} | {cell(n)} | {cell(c)} | {vs(n)} | {vs(c)} |")
PY
