# Shared helpers of Portico's benchmark scripts (sourced, not run).
# shellcheck shell=bash

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# PORTICO_BIN: run that binary instead of building (A/B runs of two builds).
# PGO=1: build and measure the profile-guided build (scripts/build-pgo.sh).
PORTICO="${PORTICO_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/portico}"
WORK="$(mktemp -d /tmp/portico-bench.XXXXXX)"
PIDS=()

cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
# A signal exits (128 + its number), which runs cleanup once through the EXIT
# trap; trapping INT and TERM with cleanup itself would carry on afterwards.
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ensure_pkg CMD PACKAGE: installs a Debian package when CMD is missing.
ensure_pkg() {
  command -v "$1" >/dev/null 2>&1 && return 0
  echo "installing $2 (for $1)..." >&2
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2") >/dev/null
  else
    (sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2") >/dev/null
  fi
}

# free_port, cpu_mask, two_cpus and to_ms below need it.
ensure_pkg python3 python3

# free_port: a TCP port nothing listens on right now.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# wait_port PORT: waits up to 10 s for something to listen on PORT.
wait_port() {
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on port $1" >&2
  return 1
}

# build_release: builds the binary this script measures. PGO=1: the
# profile-guided build of scripts/build-pgo.sh, exported as PORTICO_BIN so
# that the scripts this one runs measure it too without building it again.
build_release() {
  [ -n "${PORTICO_BIN:-}" ] && return 0
  if [ "${PGO:-0}" = 1 ]; then
    PORTICO=$("$ROOT/scripts/build-pgo.sh")
    export PORTICO_BIN="$PORTICO"
    return 0
  fi
  (cd "$ROOT" && cargo build --release -p portico --quiet)
}

# cpu_mask CPU: nginx's bit mask of that one CPU (3 -> 1000).
cpu_mask() {
  python3 -c 'import sys; print(format(1 << int(sys.argv[1]), "b"))' "$1"
}

# two_cpus: the first two CPUs this shell may use ("0 1"), or nothing with
# fewer than two.
two_cpus() {
  python3 -c 'import os; c = sorted(os.sched_getaffinity(0)); print(*c[:2]) if len(c) > 1 else None'
}

# SESSION: empty, or `setsid`, which the servers and wrk are started under
# (start_node, start_backend, start_nginx_chain, wrk_run) when each is to run
# in a session of its own, as a service under systemd or a daemon does: the
# kernel's autogroups (or systemd's per-service cgroups) then share the CPUs
# between processes rather than between threads.
SESSION=""

# start_node KIND NAME: `portico KIND --config $WORK/NAME.toml` with the
# access log off (warn level: the peers measured log nothing either); waits
# for `ready` on its stdout.
start_node() {
  RUST_LOG=warn $SESSION "$PORTICO" "$1" --config "$WORK/$2.toml" >"$WORK/$2.out" 2>"$WORK/$2.log" &
  PIDS+=($!)
  for _ in $(seq 200); do
    grep -q '^ready' "$WORK/$2.out" 2>/dev/null && return 0
    sleep 0.05
  done
  echo "portico $1 did not start:" >&2
  cat "$WORK/$2.log" >&2
  return 1
}

# proxy_route_and_stage BACKEND_PORT: TOML for an API's `ANY /{proxy+}` route
# to the demo backend and its stage `prod` (inside an [[apis]] entry).
proxy_route_and_stage() {
  cat <<TOML
[[apis.routes]]
method = "ANY"
path = "/{proxy+}"
integration = { type = "http_proxy", uri = "http://127.0.0.1:$1/{proxy}" }
[[apis.stages]]
name = "prod"
TOML
}

# backbone_addr NAME: the backbone address node NAME (started with
# start_node) printed at start.
backbone_addr() {
  awk '$1 == "listening" && $2 == "backbone" {print $3; exit}' "$WORK/$1.out"
}

# wait_ok URL: waits up to 10 s for URL to answer 200 (a PoP serves a route
# once its link is up and the origin's snapshot arrived); fails loudly.
wait_ok() {
  for _ in $(seq 200); do
    [ "$(curl -sk -o /dev/null -w '%{http_code}' "$1")" = 200 ] && return 0
    sleep 0.05
  done
  echo "$1 never answered 200; logs in $WORK" >&2
  curl -sk -i "$1" >&2 || true
  return 1
}

# start_backend PORT [NAME]: the demo backend (release build), its log in
# $WORK/NAME.log (default backend.log).
start_backend() {
  $SESSION "$PORTICO" backend --listen "127.0.0.1:$1" >/dev/null 2>"$WORK/${2:-backend}.log" &
  PIDS+=($!)
  wait_port "$1"
}

# wrk_run URL CONNS SECONDS: prints "RPS P99_MS".
wrk_run() {
  local out
  out=$(${SESSION:+$SESSION -w} wrk -t2 -c"$2" -d"$3"s --latency "$1" 2>&1)
  # A run that measured error answers measures the wrong thing: stop.
  if grep -q "Non-2xx or 3xx responses" <<<"$out"; then
    echo "wrk saw non-2xx answers from $1:" >&2
    grep "Non-2xx" <<<"$out" >&2
    exit 1
  fi
  local rps p99
  rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
  echo "$rps $(to_ms "$p99")"
}

# to_ms "1.23ms" | "512.00us" | "1.02s" -> milliseconds.
to_ms() {
  python3 -c '
import sys, re
v = sys.argv[1]
m = re.match(r"([0-9.]+)(us|ms|s)$", v)
if not m: print("nan"); sys.exit()
n, u = float(m.group(1)), m.group(2)
print(round(n / 1000 if u == "us" else n * 1000 if u == "s" else n, 3))' "$1"
}

# median of the arguments.
median() {
  printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'
}

# ratios "A1 A2 ..." "B1 B2 ...": the per-round ratios A_i / B_i, two decimals
# each. Rounds are interleaved, so a pair shares the machine's state of the
# moment; the median of these ratios is steadier than the ratio of medians
# when the host's speed drifts during a run.
ratios() {
  paste -d' ' <(printf '%s\n' $1) <(printf '%s\n' $2) | awk '{printf "%.2f ", $1 / $2}'
}

# machine: one line describing where the numbers came from.
machine() {
  echo "$(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r), release build, loopback, load generator on the same machine"
}

# start_nginx_chain DIR CERTS WORKERS FRONT_PORT UPSTREAM_PORT BACK_PORT BACKEND_PORT FRONT_CERT CLIENT_CERT BACK_CERT [FRONT_CPU BACK_CPU]
# The peer of a PoP and its origin: two nginx instances, DIR/front and
# DIR/back, each with its own prefix (pid, temp paths, logs) and WORKERS
# worker processes; with FRONT_CPU and BACK_CPU, every worker of the front
# runs on CPU FRONT_CPU and every worker of the back on BACK_CPU
# (`worker_cpu_affinity auto MASK`), as a PoP and an origin with `[node]
# cpus` do.
#   client -TLS-> front (127.0.0.1:FRONT_PORT, certificate FRONT_CERT)
#     -HTTPS, mutual TLS (CLIENT_CERT), keep-alive-> UPSTREAM_PORT (BACK_PORT
#     itself, or a relay in front of it)
#   -> back (BACK_PORT, certificate BACK_CERT, clients of CERTS/ca.pem only)
#     -HTTP keep-alive-> the demo backend on BACKEND_PORT, `/prod` stripped.
# Certificate names are files CERTS/NAME.pem and CERTS/NAME.key (`portico
# certs`). The front prefers AES-128-GCM, as a PoP's listener does.
# keepalive_requests is raised everywhere (the default 1000 would close
# connections, and redo TLS handshakes, that Portico keeps open), and idle
# upstream connections live 600 s.
start_nginx_chain() {
  local d="$1" certs="$2" workers="$3"
  local front_port="$4" upstream_port="$5" back_port="$6" backend_port="$7"
  local front_cert="$8" client_cert="$9" back_cert="${10}"
  local -A cpu=([front]="${11:-}" [back]="${12:-}")
  local side
  for side in front back; do
    mkdir -p "$d/$side"
    cat >"$d/$side/common.conf" <<NGINX
worker_processes $workers;
pid $d/$side/nginx.pid;
error_log $d/$side/error.log warn;
events { worker_connections 4096; }
NGINX
    if [ -n "${cpu[$side]}" ]; then
      echo "worker_cpu_affinity auto $(cpu_mask "${cpu[$side]}");" >>"$d/$side/common.conf"
    fi
    cat >"$d/$side/http.conf" <<NGINX
access_log off;
client_body_temp_path $d/$side/body;
proxy_temp_path $d/$side/proxy;
keepalive_requests 1000000;
keepalive_timeout 600s;
ssl_protocols TLSv1.3;
proxy_http_version 1.1;
proxy_set_header Connection "";
proxy_set_header Host \$host;
proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
proxy_buffering off;
NGINX
  done
  cat >"$d/front/nginx.conf" <<NGINX
include $d/front/common.conf;
http {
  include $d/front/http.conf;
  upstream back { server 127.0.0.1:$upstream_port; keepalive 256; keepalive_requests 1000000; keepalive_timeout 600s; }
  server {
    listen 127.0.0.1:$front_port ssl;
    ssl_certificate $certs/$front_cert.pem;
    ssl_certificate_key $certs/$front_cert.key;
    ssl_prefer_server_ciphers on;
    ssl_conf_command Ciphersuites TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256;
    location / {
      proxy_pass https://back;
      proxy_ssl_protocols TLSv1.3;
      proxy_ssl_certificate $certs/$client_cert.pem;
      proxy_ssl_certificate_key $certs/$client_cert.key;
      proxy_ssl_trusted_certificate $certs/ca.pem;
      proxy_ssl_verify on;
      proxy_ssl_name $back_cert;
      proxy_ssl_server_name on;
      proxy_ssl_session_reuse on;
    }
  }
}
NGINX
  cat >"$d/back/nginx.conf" <<NGINX
include $d/back/common.conf;
http {
  include $d/back/http.conf;
  upstream backend { server 127.0.0.1:$backend_port; keepalive 256; keepalive_requests 1000000; keepalive_timeout 600s; }
  server {
    listen 127.0.0.1:$back_port ssl;
    ssl_certificate $certs/$back_cert.pem;
    ssl_certificate_key $certs/$back_cert.key;
    ssl_client_certificate $certs/ca.pem;
    ssl_verify_client on;
    location /prod/ {
      proxy_pass http://backend/;
    }
  }
}
NGINX
  for side in back front; do
    $SESSION nginx -p "$d/$side" -c "$d/$side/nginx.conf" -g 'daemon off;' 2>>"$d/$side/error.log" &
    PIDS+=($!)
  done
}

# caddy_globals SERVER_OPTION...: the Caddyfile global options of both sides
# of start_caddy_chain (no admin endpoint, no automatic HTTPS, errors only),
# with these `servers` options.
caddy_globals() {
  printf '{\n\tadmin off\n\tauto_https off\n\tlog {\n\t\tlevel ERROR\n\t}\n\tservers {\n'
  printf '\t\t%s\n' "$@"
  printf '\t}\n}\n'
}

# start_caddy_chain DIR CERTS FRONT_PORT UPSTREAM_PORT BACK_PORT BACKEND_PORT FRONT_CERT CLIENT_CERT BACK_CERT
# The same two hops as start_nginx_chain with Caddy (Debian's package; Go,
# quic-go), the one peer here that serves HTTP/3: the front serves HTTP/1.1,
# HTTP/2 and HTTP/3 (TCP and UDP on FRONT_PORT) and proxies over HTTPS with
# mutual TLS to the back, which strips `/prod` and proxies to the demo
# backend. Both bind 127.0.0.1, log errors only, run no admin endpoint and
# keep their state under DIR. The back accepts a Host that differs from the
# SNI its client sent (Caddy refuses that by default when it verifies
# client certificates; nginx's front sends the client's Host too).
start_caddy_chain() {
  local d="$1" certs="$2" front_port="$3" upstream_port="$4" back_port="$5"
  local backend_port="$6" front_cert="$7" client_cert="$8" back_cert="$9"
  mkdir -p "$d"
  {
    caddy_globals "protocols h1 h2" "strict_sni_host insecure_off"
    cat <<CADDY
:$back_port {
	bind 127.0.0.1
	tls $certs/$back_cert.pem $certs/$back_cert.key {
		client_auth {
			mode require_and_verify
			trusted_ca_cert_file $certs/ca.pem
		}
	}
	handle_path /prod/* {
		reverse_proxy 127.0.0.1:$backend_port
	}
}
CADDY
  } >"$d/back.caddy"
  {
    caddy_globals "protocols h1 h2 h3"
    cat <<CADDY
:$front_port {
	bind 127.0.0.1
	tls $certs/$front_cert.pem $certs/$front_cert.key
	reverse_proxy https://127.0.0.1:$upstream_port {
		transport http {
			tls_client_auth $certs/$client_cert.pem $certs/$client_cert.key
			tls_trusted_ca_certs $certs/ca.pem
			tls_server_name $back_cert
			keepalive 600s
		}
	}
}
CADDY
  } >"$d/front.caddy"
  local side
  for side in back front; do
    XDG_DATA_HOME="$d/data" XDG_CONFIG_HOME="$d/config" HOME="$d" \
      caddy run --config "$d/$side.caddy" --adapter caddyfile >"$d/$side.log" 2>&1 &
    PIDS+=($!)
  done
}

# in_order ROUND ITEM...: the items, reversed on even rounds, so that no
# target of an interleaved benchmark is always measured right after the
# same one (in session 17 an A/B in a fixed order showed a gain that
# alternating rounds did not).
in_order() {
  local round="$1" i
  shift
  if (( round % 2 == 0 )); then
    for (( i = $#; i >= 1; i-- )); do printf '%s\n' "${!i}"; done
  else
    printf '%s\n' "$@"
  fi
}
