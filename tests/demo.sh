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

# Shows a command as one would type it, then runs it against a sidecar.
show() {
  local line="\$" a
  for a in "$@"; do
    if [[ $a =~ ^[A-Za-z0-9._:/=-]+$ ]]; then line+=" $a"; else line+=" '$a'"; fi
  done
  echo "$line" >&2
}
A() { show meshsync --socket a.sock "$@"; build/meshsync --socket "$tmp/a.sock" "$@"; }
B() { show meshsync --socket b.sock "$@"; build/meshsync --socket "$tmp/b.sock" "$@"; }

# Runs a set and keeps the version it printed ({"version":N}) in $v, so a
# read through the other sidecar can wait for that write (--min-version):
# the change travels writer -> Redis -> subscription -> the other cache.
set_v() {
  local out
  out=$("$@")
  echo "$out"
  v=${out//[^0-9]/}
}

echo
echo "== connection metadata"
set_v A conn set conn123 '{"userId":"user123","role":"admin"}'
set_v A conn set conn123 '{"role":"moderator"}' --strategy merge
set_v A conn set conn123 '{"preferences":{"theme":"dark"}}' --strategy deepMerge
A conn get conn123
B conn get conn123 --min-version "$v"
echo "# an app reading its own metadata: --as binds the session (hello)" >&2
A --as conn123 conn get
set_v B conn set conn123 '{"preferences":{"fontSize":14}}' --strategy deepMerge
A conn get conn123 --min-version "$v"

echo
echo "== room metadata"
set_v A room set lobby '{"topic":"General Discussion","createdBy":"user123"}'
set_v A room set lobby '{"topic":"Updated Topic"}' --strategy merge
set_v A room set lobby '{"settings":{"maxUsers":100}}' --strategy deepMerge
A room get lobby
B room get lobby --min-version "$v"

echo
echo "== what Redis holds, in Mesh's own keys"
show redis-cli -s redis.sock HGET mesh:connection-meta conn123
redis-cli -s "$tmp/redis.sock" HGET mesh:connection-meta conn123
show redis-cli -s redis.sock HGET mesh:roommeta:lobby data
redis-cli -s "$tmp/redis.sock" HGET mesh:roommeta:lobby data

echo
echo "== connections and rooms, in Mesh's registry"
A conn open conn123
A room join lobby conn123
set_v A room set lobby '{"topic":"Registry"}'
B room get lobby --min-version "$v"
B room members lobby
show redis-cli -s redis.sock HGET mesh:connections conn123
redis-cli -s "$tmp/redis.sock" HGET mesh:connections conn123
A room list
A conn mget conn123 nobody

echo
echo "== watching: B pushes every change to lobby, in version order"
show meshsync --socket b.sock watch --room lobby --count 2
build/meshsync --socket "$tmp/b.sock" watch --room lobby --count 2 \
  >"$tmp/watch.out" &
watcher=$!
# The watch starts in the background: write until it has seen two changes.
for i in $(seq 1 50); do
  kill -0 "$watcher" 2>/dev/null || break
  build/meshsync --socket "$tmp/a.sock" room set lobby "{\"round\":$i}" >/dev/null
done
wait "$watcher"
cat "$tmp/watch.out"

echo
echo "== clearing"
set_v A room set lobby null
B room get lobby --min-version "$v"
set_v A room set lobby '{"topic":"Back again"}'
set_v A room delete lobby
B room get lobby --min-version "$v"
set_v B conn close conn123
A conn get conn123 --min-version "$v"
B room members lobby
A ping

echo
echo "== stopping"
for p in "${pids[@]:1}"; do kill -TERM "$p"; wait "$p"; done
echo "sidecars stopped cleanly; their logs:"
cat "$tmp/a.log" "$tmp/b.log"
echo "demo: all examples ran"
