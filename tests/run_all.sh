#!/usr/bin/env bash
# Runs every Criterion test binary in $1 and prints one summary line; fails if any test failed.
set -u
dir=$1
status=0
for t in "$dir"/test_*; do
  [ -x "$t" ] || continue
  echo "== $(basename "$t")"
  "$t" --jobs 2 || status=1
done
exit $status
