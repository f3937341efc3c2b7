#!/usr/bin/env bash
# Side-by-side cache benchmark (issue 6): wrk, HTTP/1.1 keep-alive, 64
# connections, cache HITS of 1 KB and 100 KB bodies at
#   * portico origin (route cache in `ttl` mode, moka in memory),
#   * nginx proxy_cache (keys in shared memory, bodies in files: the page cache),
#   * Varnish (malloc storage),
# all in front of the same demo backend, interleaved over ROUNDS rounds; prints
# medians and Portico/peer ratios. Then fills a Portico cache with distinct 1 KB
# objects and reports the memory each entry costs beyond its body (RSS delta per
# entry, and the weigher's estimate).
#
# Usage: scripts/bench-cache.sh [SECONDS_PER_RUN] [ROUNDS]
set -euo pipefail
source "$(dirname "$0")/lib.sh"

SECS="${1:-10}"
ROUNDS="${2:-3}"
CONNS=64
TOKEN=bench-token

ensure_pkg wrk wrk
ensure_pkg nginx nginx
ensure_pkg varnishd varnish
build_release

BACKEND=$(free_port); start_backend "$BACKEND"
PORTICO_PORT=$(free_port)
ADMIN_PORT=$(free_port)
NGINX_PORT=$(free_port)
VARNISH_PORT=$(free_port)

# Portico: GET cached for an hour whatever the backend says (API Gateway's TTL
# semantics; the demo backend's /bytes/N sends no Cache-Control).
cat >"$WORK/origin.toml" <<TOML
[node]
id = "bench-origin"
region = "local"

[[listeners]]
address = "127.0.0.1:$PORTICO_PORT"
tls = false
default_api = "bench"

[admin]
address = "127.0.0.1:$ADMIN_PORT"
token = "$TOKEN"

[cache]
max_bytes = 268435456

# Hits only: the node's default throttle (10 000 rps) would answer 429s.
[throttle]
enabled = false

[[apis]]
name = "bench"
endpoint = "regional"
[[apis.routes]]
method = "GET"
path = "/{proxy+}"
cache = { mode = "ttl", ttl_seconds = 3600 }
integration = { type = "http_proxy", uri = "http://127.0.0.1:$BACKEND/{proxy}" }
[[apis.stages]]
name = "prod"
TOML
# The access log is off (warn level) as nginx's and Varnish's are: all measure hits only.
RUST_LOG=warn "$PORTICO" origin --config "$WORK/origin.toml" >/dev/null 2>"$WORK/origin.log" &
PORTICO_PID=$!
PIDS+=("$PORTICO_PID")

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
  proxy_cache_path $WORK/nginx/cache keys_zone=bench:64m max_size=256m inactive=1h use_temp_path=off;
  upstream backend { server 127.0.0.1:$BACKEND; keepalive 256; }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location /prod/ {
      proxy_cache bench;
      proxy_cache_valid 200 1h;
      proxy_cache_lock on;
      add_header X-Cache-Status \$upstream_cache_status;
      proxy_pass http://backend/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
NGINX
nginx -c "$WORK/nginx/nginx.conf" -g 'daemon off;' &
PIDS+=($!)

# varnishd drops privileges: its files must be readable by its own user.
mkdir -p "$WORK/varnish"
chmod a+rx "$WORK" "$WORK/varnish"
cat >"$WORK/varnish/bench.vcl" <<VCL
vcl 4.1;
backend default { .host = "127.0.0.1"; .port = "$BACKEND"; }
sub vcl_recv { set req.url = regsub(req.url, "^/prod", ""); }
sub vcl_backend_response { set beresp.ttl = 1h; }
sub vcl_deliver { if (obj.hits > 0) { set resp.http.X-Cache = "HIT"; } else { set resp.http.X-Cache = "MISS"; } }
VCL
chmod a+r "$WORK/varnish/bench.vcl"
varnishd -F -a "127.0.0.1:$VARNISH_PORT" -f "$WORK/varnish/bench.vcl" -s malloc,256m \
  -n "$WORK/varnish/work" >"$WORK/varnish/log" 2>&1 &
PIDS+=($!)
for port in "$PORTICO_PORT" "$NGINX_PORT" "$VARNISH_PORT"; do
  wait_port "$port" || { tail -n 20 "$WORK/origin.log" "$WORK/nginx/error.log" "$WORK/varnish/log" >&2; exit 1; }
done

# wrk_hits URL: like wrk_run ("RPS P99_MS"), but fails when any answer was not 2xx.
wrk_hits() {
  local out
  out=$(wrk -t2 -c"$CONNS" -d"$SECS"s --latency "$1" 2>&1)
  if grep -q "Non-2xx" <<<"$out"; then
    echo "non-2xx answers from $1:" >&2; echo "$out" >&2; exit 1
  fi
  echo "$(awk '/^Requests\/sec:/ {print $2}' <<<"$out") $(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")"
}

url_of() { # TARGET SIZE
  case $1 in
    portico) echo "http://127.0.0.1:$PORTICO_PORT/prod/bytes/$2" ;;
    nginx) echo "http://127.0.0.1:$NGINX_PORT/prod/bytes/$2" ;;
    varnish) echo "http://127.0.0.1:$VARNISH_PORT/prod/bytes/$2" ;;
  esac
}

# Warm every cache and show that the second request is a hit.
for size in 1024 102400; do
  for target in portico nginx varnish; do
    curl -s -o /dev/null "$(url_of $target $size)"
    hit=$(curl -s -D - -o /dev/null "$(url_of $target $size)" | grep -i -E '^(cache-status|x-cache-status|x-cache):' | tr -d '\r' | tail -1)
    echo "warm $target $size: $hit" >&2
  done
done

declare -A RPS P99
for size in 1024 102400; do
  for round in $(seq "$ROUNDS"); do
    for target in $(in_order "$round" portico nginx varnish); do
      read -r rps p99 < <(wrk_hits "$(url_of $target $size)")
      RPS[$target.$size]+="$rps "; P99[$target.$size]+="$p99 "
      echo "round $round size $size $target: $rps req/s, p99 $p99 ms" >&2
    done
  done
done

# Memory per entry: distinct 1 KB objects from one wrk thread (a Lua counter per
# thread keeps paths unique), then RSS and the cache's own accounting.
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$PORTICO_PID/status"; }
stats() { curl -s -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$ADMIN_PORT/cache/stats"; }
cat >"$WORK/unique.lua" <<'LUA'
local n = 0
local id = tostring(math.random(1, 1e9))
request = function()
  n = n + 1
  return wrk.format("GET", "/prod/bytes/1024/" .. id .. "-" .. n)
end
LUA
before_kb=$(rss_kb); before=$(stats)
wrk -t1 -c16 -d"$SECS"s -s "$WORK/unique.lua" "http://127.0.0.1:$PORTICO_PORT" >/dev/null
after_kb=$(rss_kb); after=$(stats)
mem=$(python3 - "$before" "$after" "$before_kb" "$after_kb" <<'PY'
import json, sys
b, a = json.loads(sys.argv[1]), json.loads(sys.argv[2])
entries = a["entries"] - b["entries"]
rss = (int(sys.argv[4]) - int(sys.argv[3])) * 1024
weighed = a["weighted_bytes"] - b["weighted_bytes"]
print(f"{entries} entries of 1024 B: RSS +{rss / 1048576:.1f} MiB = {rss / entries - 1024:.0f} B/entry beyond the body; "
      f"weigher {weighed / entries - 1024:.0f} B/entry beyond the body")
PY
)

echo
echo "# bench-cache: cache hits, wrk -t2 -c$CONNS -d${SECS}s, $ROUNDS interleaved rounds, medians"
echo "# $(machine)"
printf '%-8s %-8s %12s %10s\n' body target "req/s" "p99 ms"
for size in 1024 102400; do
  for target in portico nginx varnish; do
    # shellcheck disable=SC2086
    printf '%-8s %-8s %12s %10s\n' "$size" "$target" "$(median ${RPS[$target.$size]})" "$(median ${P99[$target.$size]})"
  done
  for peer in nginx varnish; do
    # shellcheck disable=SC2086
    pr=$(median ${RPS[portico.$size]}); qr=$(median ${RPS[$peer.$size]})
    # shellcheck disable=SC2086
    pp=$(median ${P99[portico.$size]}); qp=$(median ${P99[$peer.$size]})
    printf '%-8s portico/%-7s throughput %.2fx, p99 %.2fx\n' "$size" "$peer" "$(echo "$pr / $qr" | bc -l)" "$(echo "$pp / $qp" | bc -l)"
  done
done
echo "# memory: $mem"
