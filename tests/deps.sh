#!/usr/bin/env bash
# Installs the Debian 12 packages meshsync needs to build, test and run the
# demo, if any is missing. Run by tests/demo.sh and
# tests/run.sh; needs root (or sudo) only when something is missing.
set -euo pipefail

MESHSYNC_PACKAGES=(
  build-essential cmake pkg-config clang-format
  libuv1-dev libhiredis-dev libmsgpack-dev libsqlite3-dev libjansson-dev
  libcmocka-dev redis-server redis-tools
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
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  # The packaged redis-server service is not used; tests start their own.
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    --no-install-recommends "${missing[@]}" >/dev/null
fi
