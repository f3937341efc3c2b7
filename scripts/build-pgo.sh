#!/usr/bin/env bash
# A profile-guided (PGO) release build of `portico`, as the benchmarks measure it.
#
# 1. builds an instrumented release binary (`-Cprofile-generate`),
# 2. trains it: `portico up topology/local.toml`, then wrk loads on its entries
#    (1 KB and 100 KB misses through the PoP and the backbone, the same
#    through the origin, cache hits at the PoP; h2load for HTTP/2) and
#    `portico probe` (cold TCP + TLS, QUIC and 0-RTT connections, warm misses
#    and hits), once with access logs on and once off; every node writes its
#    counts when it stops,
# 3. merges the counts with `llvm-profdata` of rustc's own LLVM version
#    (installed from the Debian package `llvm-N` when absent),
# 4. builds the release binary again with `-Cprofile-use`.
#
# Both builds have target dirs of their own under target/ (their RUSTFLAGS
# differ from the plain build's), so the plain release build is untouched.
# Prints the path of the optimised binary; use it with PORTICO_BIN=... or
# PGO=1 in the other scripts.
#
# Usage: scripts/build-pgo.sh [SECONDS_PER_LOAD]   (default 3)
set -euo pipefail
source "$(dirname "$0")/lib.sh"

SECS="${1:-3}"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
GEN_DIR="$TARGET/pgo-gen"
USE_DIR="$TARGET/pgo"
PROFILES="$TARGET/pgo-profiles"

# llvm-profdata must read what rustc's LLVM writes: same major version.
LLVM_MAJOR=$(rustc -vV | awk '/^LLVM version:/ {split($3, v, "."); print v[1]}')
find_profdata() {
  for p in "/usr/lib/llvm-$LLVM_MAJOR/bin/llvm-profdata" \
    "$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | awk '/^host:/ {print $2}')/bin/llvm-profdata"; do
    [ -x "$p" ] && { echo "$p"; return 0; }
  done
  return 1
}
PROFDATA=$(find_profdata || true)
if [ -z "$PROFDATA" ]; then
  ensure_pkg "/usr/lib/llvm-$LLVM_MAJOR/bin/llvm-profdata" "llvm-$LLVM_MAJOR" || true
  PROFDATA=$(find_profdata) || {
    echo "build-pgo: needs llvm-profdata of LLVM $LLVM_MAJOR (rustc's): apt-get install llvm-$LLVM_MAJOR, or rustup component add llvm-tools" >&2
    exit 1
  }
fi
ensure_pkg wrk wrk
ensure_pkg h2load nghttp2-client

# build WHAT DIR FLAG: `cargo build --release -p portico` into target dir DIR
# with rustc flag FLAG added.
build() {
  echo "build-pgo: $1 build (target dir $2)..." >&2
  (cd "$ROOT" && RUSTFLAGS="${RUSTFLAGS:-} $3" CARGO_TARGET_DIR="$2" \
    cargo build --release -p portico --quiet)
}
rm -rf "$PROFILES"
mkdir -p "$PROFILES"
build instrumented "$GEN_DIR" "-Cprofile-generate=$PROFILES"
GEN="$GEN_DIR/release/portico"

# train LEVEL: `up topology/local.toml` with RUST_LOG=LEVEL (info: nodes
# log every request, as by default; warn: as the benchmarks run them), wrk
# loads on its entries, the probe; then a clean stop, so that every node
# writes its counts.
train() {
  local manifest="$WORK/up-$1.json"
  echo "build-pgo: training on topology/local.toml (RUST_LOG=$1)..." >&2
  RUST_LOG="$1" "$GEN" up "$ROOT/topology/local.toml" --json "$manifest" \
    >"$WORK/up-$1.out" 2>"$WORK/up-$1.log" &
  local up=$!
  PIDS+=("$up")
  for _ in $(seq 600); do
    [ -f "$manifest" ] && break
    kill -0 "$up" 2>/dev/null || { cat "$WORK/up-$1.log" >&2; exit 1; }
    sleep 0.1
  done
  [ -f "$manifest" ] || { echo "build-pgo: the topology did not come up" >&2; exit 1; }
  local edge regional url
  edge=$(entry "$manifest" edge)
  regional=$(entry "$manifest" regional)
  for url in "$edge/bytes/1024" "$edge/bytes/102400" "$regional/bytes/1024" \
    "$regional/bytes/102400" "$edge/cache/60"; do
    wrk -t2 -c64 -d"${SECS}s" "$url" >/dev/null
  done
  # HTTP/2 (ALPN h2) too: code no load runs is laid out as cold.
  for url in "$edge/bytes/1024" "$regional/bytes/1024"; do
    h2load -c8 -m8 -D"$SECS" "$url" >/dev/null
  done
  "$GEN" probe "$ROOT/topology/local.toml" --json "$manifest" --runs 5 \
    --out "$WORK/probe-$1" >/dev/null 2>"$WORK/probe-$1.log"
  # `up` stops its nodes with SIGTERM and waits for them.
  kill -TERM "$up"
  wait "$up" || true
}
# entry MANIFEST MODE: the URL of the first entry in MODE (edge, regional).
entry() {
  python3 -c 'import json, sys
for e in json.load(open(sys.argv[1]))["entries"]:
    if e["mode"] == sys.argv[2]:
        print(e["url"]); break' "$1" "$2"
}
train info
train warn

echo "build-pgo: merging $(find "$PROFILES" -name "*.profraw" | wc -l) profile file(s) with $PROFDATA..." >&2
"$PROFDATA" merge -o "$PROFILES/merged.profdata" "$PROFILES"/*.profraw

build optimised "$USE_DIR" "-Cprofile-use=$PROFILES/merged.profdata"
echo "$USE_DIR/release/portico"
