#!/usr/bin/env bash
# Side-by-side proxy benchmark (issue 2): wrk, HTTP/1.1 keep-alive, 64
# connections, 1 KB and 100 KB responses, against
#   * the demo backend directly (the ceiling),
#   * portico origin (http_proxy to the backend),
#   * nginx proxy_pass (keep-alive upstream) to the same backend,
#   * HAProxy (HTTP mode, keep-alive and connection reuse) to the same backend,
# interleaved over ROUNDS rounds; prints medians and Portico/peer ratios.
#
# Usage: scripts/bench-proxy.sh [SECONDS_PER_RUN] [ROUNDS]
set -euo pipefail
source "$(dirname "$0")/lib.sh"

SECS="${1:-10}"
ROUNDS="${2:-3}"
CONNS=64

ensure_pkg wrk wrk
ensure_pkg nginx nginx
ensure_pkg haproxy haproxy
build_release

BACKEND=$(free_port); start_backend "$BACKEND"
PORTICO_PORT=$(free_port)
NGINX_PORT=$(free_port)
HAPROXY_PORT=$(free_port)

cat >"$WORK/origin.toml" <<TOML
[node]
id = "bench-origin"
region = "local"

# Throttling off: this measures proxying, not 429s from the node-wide default.
[throttle]
enabled = false

[[listeners]]
address = "127.0.0.1:$PORTICO_PORT"
tls = false
default_api = "bench"

[[apis]]
name = "bench"
endpoint = "regional"
$(proxy_route_and_stage "$BACKEND")
TOML
# The access log is off (start_node: warn level) as the peers' are below.
start_node origin origin

mkdir -p "$WORK/nginx"
cat >"$WORK/nginx/nginx.conf" <<NGINX
worker_processes auto;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx/body;
  proxy_temp_path $WORK/nginx/proxy;
  upstream backend { server 127.0.0.1:$BACKEND; keepalive 256; }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location /prod/ {
      proxy_pass http://backend/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_buffering off;
    }
  }
}
NGINX
nginx -c "$WORK/nginx/nginx.conf" -g 'daemon off;' &
PIDS+=($!)

# HAProxy: one thread per CPU (its default), no log; strips the stage as
# nginx's proxy_pass and Portico's {proxy} route do.
cat >"$WORK/haproxy.cfg" <<HAPROXY
global
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
  option forwardfor
  http-reuse always
frontend bench
  bind 127.0.0.1:$HAPROXY_PORT
  default_backend demo
backend demo
  http-request set-path %[path,regsub(^/prod/,/)]
  server demo 127.0.0.1:$BACKEND
HAPROXY
haproxy -f "$WORK/haproxy.cfg" -db >"$WORK/haproxy.log" 2>&1 &
PIDS+=($!)
wait_port "$PORTICO_PORT"; wait_port "$NGINX_PORT"; wait_port "$HAPROXY_PORT"

declare -A RPS P99
for size in 1024 102400; do
  for round in $(seq "$ROUNDS"); do
    for target in $(in_order "$round" backend portico nginx haproxy); do
      case $target in
        backend) url="http://127.0.0.1:$BACKEND/bytes/$size" ;;
        portico) url="http://127.0.0.1:$PORTICO_PORT/prod/bytes/$size" ;;
        nginx) url="http://127.0.0.1:$NGINX_PORT/prod/bytes/$size" ;;
        haproxy) url="http://127.0.0.1:$HAPROXY_PORT/prod/bytes/$size" ;;
      esac
      read -r rps p99 < <(wrk_run "$url" "$CONNS" "$SECS")
      RPS[$target.$size]+="$rps "; P99[$target.$size]+="$p99 "
      echo "round $round size $size $target: $rps req/s, p99 $p99 ms" >&2
    done
  done
done

echo
echo "# bench-proxy: wrk -t2 -c$CONNS -d${SECS}s, $ROUNDS interleaved rounds, medians"
echo "# $(machine)"
printf '%-8s %-8s %12s %10s\n' body target "req/s" "p99 ms"
for size in 1024 102400; do
  for target in backend portico nginx haproxy; do
    # shellcheck disable=SC2086
    printf '%-8s %-8s %12s %10s\n' "$size" "$target" "$(median ${RPS[$target.$size]})" "$(median ${P99[$target.$size]})"
  done
  for peer in nginx haproxy; do
    # shellcheck disable=SC2086
    pr=$(median ${RPS[portico.$size]}); qr=$(median ${RPS[$peer.$size]})
    # shellcheck disable=SC2086
    pp=$(median ${P99[portico.$size]}); qp=$(median ${P99[$peer.$size]})
    printf '%-8s portico/%-7s throughput %.2fx, p99 %.2fx\n' "$size" "$peer" "$(echo "$pr / $qr" | bc -l)" "$(echo "$pp / $qp" | bc -l)"
  done
done
