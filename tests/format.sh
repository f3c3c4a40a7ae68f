#!/usr/bin/env bash
# Checks that every C file follows the committed .clang-format; prints the
# files that do not. Fix with: clang-format -i FILE.
# Usage: format.sh SOURCE_DIR
set -euo pipefail
cd "$1"
status=0
while IFS= read -r f; do
  if ! clang-format --style=file --dry-run -Werror "$f" >/dev/null 2>&1; then
    echo "not formatted: $f"
    status=1
  fi
done < <(find sidecar client tests -name '*.[ch]' | sort)
[ $status -eq 0 ] && echo "format: every C file follows .clang-format"
exit $status
