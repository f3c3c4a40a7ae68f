#!/usr/bin/env bash
# Installs the build into a temporary prefix, compiles tests/install/
# example.c against it with nothing but pkg-config's flags, and runs it.
# Usage: run.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build=$1
src=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

cmake --install "$build" --prefix "$tmp/prefix" >/dev/null
pc=$(find "$tmp/prefix" -name meshsync.pc)
libdir=$(dirname "$(dirname "$pc")")
export PKG_CONFIG_PATH
PKG_CONFIG_PATH=$(dirname "$pc")
# shellcheck disable=SC2046
cc -Wall -Wextra -Werror -o "$tmp/example" "$src/tests/install/example.c" \
  $(pkg-config --cflags --libs meshsync)
LD_LIBRARY_PATH="$libdir" "$tmp/example" "$tmp/no-daemon.sock"
test -x "$tmp/prefix/bin/meshsyncd"
test -x "$tmp/prefix/bin/meshsync"
"$tmp/prefix/bin/meshsyncd" --help | grep -q -- "--redis URL"
echo "install: header, library, pkg-config file and binaries usable"
