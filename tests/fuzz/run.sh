#!/usr/bin/env bash
# Runs libFuzzer targets, FUZZ_JOBS at a time (default: the number of cores, at most 2, so that
# CI's two cores fuzz for the same time in half the wall-clock time; each fuzzer is one thread).
#   tests/fuzz/run.sh BUILD_DIR SECONDS TARGET...
# Each target starts from a working corpus in BUILD_DIR/corpus/TARGET, seeded from
# tests/fuzz/corpus/TARGET and the reproducers in tests/fuzz/regressions/TARGET, and runs for
# SECONDS with a 10 s per-input timeout and a 2 GiB RSS limit. Crash, leak, timeout and OOM
# reproducers go to BUILD_DIR/artifacts/TARGET/, the full log to BUILD_DIR/logs/TARGET.log.
# Prints one summary line per target, in the order given; exits 1 if any target failed.
# Run from the repository root.
set -u
build=$1 seconds=$2
shift 2
cores=$(nproc 2>/dev/null || echo 1)
jobs=${FUZZ_JOBS:-$((cores < 2 ? cores : 2))}

# Runs one target; its summary line goes to BUILD_DIR/logs/TARGET.summary, and on failure the
# log's tail and the artifacts to BUILD_DIR/logs/TARGET.failure. Exits with the fuzzer's status.
run_target() {
  local t=$1
  local bin=$build/fuzz_$t corpus=$build/corpus/$t artifacts=$build/artifacts/$t
  local log=$build/logs/$t.log
  cp -n tests/fuzz/corpus/"$t"/* "$corpus"/ 2>/dev/null
  cp -n tests/fuzz/regressions/"$t"/* "$corpus"/ 2>/dev/null
  local dict=()
  [ -f tests/fuzz/"$t".dict ] && dict=(-dict=tests/fuzz/"$t".dict)
  echo "== fuzz_$t: ${seconds} s from $(find "$corpus" -type f | wc -l) inputs"
  "$bin" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$artifacts"/ "${dict[@]}" "$corpus" >"$log" 2>&1
  local rc=$?
  local execs
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
  local inputs line
  inputs=$(find "$corpus" -type f | wc -l)
  line="fuzz_$t: ${execs:-?} executions in ${seconds} s, corpus $inputs inputs"
  if [ $rc -ne 0 ]; then
    line="$line: FAILED (exit $rc; log $log)"
    { tail -n 60 "$log"; ls -l "$artifacts"; } >"$build/logs/$t.failure"
  fi
  echo "$line" >"$build/logs/$t.summary"
  return $rc
}

for t in "$@"; do
  mkdir -p "$build/corpus/$t" "$build/artifacts/$t" "$build/logs"
  rm -f "$build/logs/$t.summary" "$build/logs/$t.failure"
done
running=0
for t in "$@"; do
  if [ "$running" -ge "$jobs" ]; then
    wait -n
    running=$((running - 1))
  fi
  run_target "$t" &
  running=$((running + 1))
done
wait

status=0
for t in "$@"; do
  if [ -f "$build/logs/$t.failure" ] || [ ! -f "$build/logs/$t.summary" ]; then
    status=1
    [ -f "$build/logs/$t.failure" ] && cat "$build/logs/$t.failure"
  fi
done
echo "== fuzz summary"
for t in "$@"; do
  cat "$build/logs/$t.summary" 2>/dev/null || echo "fuzz_$t: no summary (the runner failed)"
done
exit $status
