#!/usr/bin/env bash
# Runs every Criterion test binary in $1 and prints one summary line; fails if any test failed.
set -u
dir=$1
# Criterion runs two tests at once (--jobs 2) and the cpu backend's kernels use OpenMP: idle
# OpenMP threads that spin (GCC's default) take the cores from the other test; test_codegen runs
# 120 s with spinning threads and 53 s with sleeping ones on two cores.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
status=0
for t in "$dir"/test_*; do
  [ -x "$t" ] || continue
  echo "== $(basename "$t")"
  "$t" --jobs 2 || status=1
done
exit $status
