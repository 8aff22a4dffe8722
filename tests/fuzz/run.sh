#!/usr/bin/env bash
# Runs libFuzzer targets one after another (the machines are shared; one fuzzer at a time).
#   tests/fuzz/run.sh BUILD_DIR SECONDS TARGET...
# Each target starts from a working corpus in BUILD_DIR/corpus/TARGET, seeded from
# tests/fuzz/corpus/TARGET and the reproducers in tests/fuzz/regressions/TARGET, and runs for
# SECONDS with a 10 s per-input timeout and a 2 GiB RSS limit. Crash, leak, timeout and OOM
# reproducers go to BUILD_DIR/artifacts/TARGET/, the full log to BUILD_DIR/logs/TARGET.log.
# Prints one summary line per target; exits 1 if any target failed.
# Run from the repository root.
set -u
build=$1 seconds=$2
shift 2
status=0
summary=()
for t in "$@"; do
  bin=$build/fuzz_$t corpus=$build/corpus/$t artifacts=$build/artifacts/$t log=$build/logs/$t.log
  mkdir -p "$corpus" "$artifacts" "$(dirname "$log")"
  cp -n tests/fuzz/corpus/"$t"/* "$corpus"/ 2>/dev/null
  cp -n tests/fuzz/regressions/"$t"/* "$corpus"/ 2>/dev/null
  dict=()
  [ -f tests/fuzz/"$t".dict ] && dict=(-dict=tests/fuzz/"$t".dict)
  echo "== fuzz_$t: ${seconds} s from $(ls "$corpus" | wc -l) inputs"
  "$bin" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$artifacts"/ "${dict[@]}" "$corpus" >"$log" 2>&1
  rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
  line="fuzz_$t: ${execs:-?} executions in ${seconds} s, corpus $(ls "$corpus" | wc -l) inputs"
  if [ $rc -ne 0 ]; then
    status=1
    line="$line: FAILED (exit $rc; log $log)"
    tail -n 60 "$log"
    ls -l "$artifacts"
  fi
  summary+=("$line")
  echo "$line"
done
echo "== fuzz summary"
printf '%s\n' "${summary[@]}"
exit $status
