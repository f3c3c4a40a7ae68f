#!/usr/bin/env bash
# Installs the Debian 12 packages meshsync needs to build, test, run the
# demo and draw the benchmark's plot (gnuplot), if any is missing. Run by
# tests/demo.sh and tests/run.sh; needs root (or sudo) only when
# something is missing.
set -euo pipefail

MESHSYNC_PACKAGES=(
  build-essential cmake pkg-config clang-format
  libuv1-dev libhiredis-dev libmsgpack-dev libsqlite3-dev libjansson-dev
  libcmocka-dev redis-server redis-tools
  gnuplot-nox
)

missing=()
for p in "${MESHSYNC_PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null |
      grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "meshsync: installing ${missing[*]}"
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null; then
      echo "meshsync: installing packages needs root; run as root or" \
           "install sudo" >&2
      exit 1
    fi
    sudo="sudo"
  fi
  # Debian's redis-server package also starts a system Redis on
  # 127.0.0.1:6379; meshsync's tests and demo never use it, they start
  # their own on private Unix sockets.
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    --no-install-recommends "${missing[@]}" >/dev/null
fi
