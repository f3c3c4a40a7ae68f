#!/bin/sh
# Runs meshsync-bench at a tiny size and checks that it completes and
# reports everything: a change that breaks the benchmark shows here, not
# in the next person's measurement. Figures at this size mean nothing
# and are not judged; the run takes about ten seconds.
#
#   smoke.sh BENCH
set -eu
bench=$1
dir=$(mktemp -d "${TMPDIR:-/tmp}/meshsync-bench-smoke-XXXXXX")
trap 'rm -rf "$dir"' EXIT

fail() {
  echo "bench smoke: $1" >&2
  cat "$dir/log" >&2
  exit 1
}

"$bench" --quick --entries 2000 --sizes 1000 --samples 500 --pin none \
  --out "$dir/out" >"$dir/log" 2>&1 || fail "meshsync-bench failed"

# One line per target, each in the documented form.
targets=$(grep -c '^target ' "$dir/log" || true)
good=$(grep -cE '^target [a-z0-9_]+ measured=[^ ]+ goal=[<>]=[0-9.]+ (met|missed)$' \
  "$dir/log" || true)
[ "$targets" -ge 11 ] || fail "$targets target lines, want 11 or more"
[ "$good" -eq "$targets" ] || fail "a target line is not in the documented form"

# A header and a row per measurement; the CDF and its plot.
[ "$(wc -l <"$dir/out/results.csv")" -gt 20 ] || fail "results.csv is short"
grep -q '^scale 1000 full resync, warm cache file,' "$dir/out/results.csv" ||
  fail "results.csv lacks the scale rows"
[ -s "$dir/out/cdf.csv" ] || fail "no cdf.csv"
[ -s "$dir/out/latency-cdf.png" ] || fail "no latency-cdf.png (gnuplot-nox)"
echo "bench smoke: $targets targets reported"
