#!/usr/bin/env bash
# The meshsync demo: installs what is missing, builds, starts a private
# redis-server and two sidecars (think: two app servers) on Unix sockets in
# a temporary folder, runs every example of Mesh's metadata API through the
# `meshsync` command-line client, shows that a write through one sidecar is
# served by the other, and stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."
tests/deps.sh

echo "== building"
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j "$(nproc 2>/dev/null || echo 2)" >/dev/null

tmp=$(mktemp -d /tmp/meshsync-demo.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

# Waits (at most 10 s) until a log file has a line matching a pattern.
wait_log() {
  local file=$1 pattern=$2 i
  for i in $(seq 1 100); do
    grep -q "$pattern" "$file" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "demo: timed out waiting for '$pattern' in $file" >&2
  cat "$file" >&2
  return 1
}

echo "== starting redis-server and two sidecars in $tmp"
redis-server --port 0 --unixsocket "$tmp/redis.sock" --save "" \
  --appendonly no --dir "$tmp" >"$tmp/redis.log" 2>&1 &
pids+=($!)
wait_log "$tmp/redis.log" "ready to accept connections"

for s in a b; do
  build/meshsyncd --socket "$tmp/$s.sock" --cache "$tmp/$s.db" \
    --redis "unix://$tmp/redis.sock" --instance-id "demo-$s" \
    2>"$tmp/$s.log" &
  pids+=($!)
done
wait_log "$tmp/a.log" 'msg="ready"'
wait_log "$tmp/b.log" 'msg="ready"'

A() { echo "\$ meshsync --socket a.sock $*" >&2; build/meshsync --socket "$tmp/a.sock" "$@"; }
B() { echo "\$ meshsync --socket b.sock $*" >&2; build/meshsync --socket "$tmp/b.sock" "$@"; }

# Reads through one sidecar until it serves what the other wrote (at most
# 2 s): the change travels writer -> Redis -> subscription -> cache.
read_until() {
  local sock=$1 want=$2 got i
  shift 2
  for i in $(seq 1 200); do
    got=$(build/meshsync --socket "$tmp/$sock" "$@")
    [ "$got" = "$want" ] && break
    sleep 0.01
  done
  echo "\$ meshsync --socket $sock $*" >&2
  echo "$got"
  [ "$got" = "$want" ] || { echo "demo: $sock served $got, not $want" >&2; exit 1; }
}
A_until() { read_until a.sock "$@"; }
B_until() { read_until b.sock "$@"; }

echo
echo "== connection metadata"
A conn set conn123 '{"userId":"user123","role":"admin"}'
A conn set conn123 '{"role":"moderator"}' --strategy merge
A conn set conn123 '{"preferences":{"theme":"dark"}}' --strategy deepMerge
A conn get conn123
B_until '{"userId":"user123","role":"moderator","preferences":{"theme":"dark"}}' \
  conn get conn123
B conn set conn123 '{"preferences":{"fontSize":14}}' --strategy deepMerge
B conn get conn123

echo
echo "== room metadata"
A room set lobby '{"topic":"General Discussion","createdBy":"user123"}'
A room set lobby '{"topic":"Updated Topic"}' --strategy merge
A room set lobby '{"settings":{"maxUsers":100}}' --strategy deepMerge
A room get lobby
B_until '{"topic":"Updated Topic","createdBy":"user123","settings":{"maxUsers":100}}' \
  room get lobby

echo
echo "== what Redis holds, in Mesh's own keys"
echo "\$ redis-cli HGET mesh:connection-meta conn123" >&2
redis-cli -s "$tmp/redis.sock" HGET mesh:connection-meta conn123
echo "\$ redis-cli HGET mesh:roommeta:lobby data" >&2
redis-cli -s "$tmp/redis.sock" HGET mesh:roommeta:lobby data

echo
echo "== clearing"
A room set lobby null
B_until null room get lobby
A room set lobby '{"topic":"Back again"}'
A room delete lobby
B_until null room get lobby
B conn close conn123
A_until null conn get conn123
A ping

echo
echo "== stopping"
for p in "${pids[@]:1}"; do kill -TERM "$p"; wait "$p"; done
echo "sidecars stopped cleanly; their logs:"
cat "$tmp/a.log"
echo "demo: all examples ran"
