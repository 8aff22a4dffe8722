#!/usr/bin/env bash
# valgrind memcheck on `mamlc check`, `mamlc compile` and `mamlc grad` for every shipped graph
# (graphs/*.yaml). Run from the repository root after `make` (`make valgrind` builds what it needs
# and runs this).
#
#   scripts/valgrind_check.sh [GRAPH.yaml ...]      (default: graphs/*.yaml)
#
# Each run is `valgrind --error-exitcode=99 --leak-check=full
# --errors-for-leak-kinds=definite,indirect` with tests/valgrind.supp (third-party frames only).
# grad runs on the ref backend with one task: the parameters and batch come from
# build/tests/make_inputs (params_init, sampled or random tasks); the seed graph uses the PyTorch
# fixture files in $MAMLC_SHARED/fixtures/pytorch_maml (../shared by default) when present. The
# sinusoid graph also runs grad on the cpu backend (generated C, dlopen, OpenMP) with a private
# kernel cache, its kernels built with MAMLC_CFLAGS="-O2 -fopenmp" (valgrind does not decode the
# AVX-512 that the default -march=native may emit); the C compiler runs outside valgrind.
#
# Logs go to $VALGRIND_OUT (build/valgrind)/NAME.log. Prints one line per run and a summary;
# exits 1 if any run failed or reported an error.
set -u
MAMLC=${MAMLC:-./mamlc}
MAKE_INPUTS=${MAKE_INPUTS:-build/tests/make_inputs}
OUT=${VALGRIND_OUT:-build/valgrind}
FIX=${MAMLC_SHARED:-../shared}/fixtures/pytorch_maml
SUPP=tests/valgrind.supp
VALGRIND=(valgrind --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite,indirect
          --suppressions="$SUPP" --gen-suppressions=all --num-callers=30)

command -v valgrind >/dev/null || { echo "valgrind not found (apt-get install valgrind)"; exit 2; }
for f in "$MAMLC" "$MAKE_INPUTS"; do
  [ -x "$f" ] || { echo "$f not built (run 'make valgrind')"; exit 2; }
done
graphs=("$@")
[ ${#graphs[@]} -gt 0 ] || graphs=(graphs/*.yaml)

rm -rf "$OUT"
mkdir -p "$OUT/cache"
export MAMLC_CACHE=$PWD/$OUT/cache OMP_NUM_THREADS=2
status=0
summary=()
t_all=$SECONDS

# run NAME ARGS...: mamlc ARGS under valgrind, log in $OUT/NAME.log
run() {
  local name=$1 t0=$SECONDS rc line
  shift
  "${VALGRIND[@]}" --log-file="$OUT/$name.log" "$MAMLC" "$@" >"$OUT/$name.out" 2>&1
  rc=$?
  local errors
  errors=$(sed -n 's/.*ERROR SUMMARY: \([0-9]*\) errors.*/\1/p' "$OUT/$name.log" | tail -n1)
  local defl
  defl=$(sed -n 's/.*definitely lost: \([0-9,]*\) bytes.*/\1/p' "$OUT/$name.log" | tail -n1)
  line=$(printf '%-34s %5ds  errors %s, definitely lost %s bytes' "$name" $((SECONDS - t0)) \
    "${errors:-?}" "${defl:-0}")
  if [ $rc -ne 0 ]; then
    status=1
    line="$line: FAILED (exit $rc; $OUT/$name.log, output $OUT/$name.out)"
    tail -n 40 "$OUT/$name.out"
    grep -B2 -A30 'Invalid\|uninitialised\|definitely lost in\|indirectly lost in' \
      "$OUT/$name.log" | head -n 120
  fi
  summary+=("$line")
  echo "$line"
}

for g in "${graphs[@]}"; do
  n=$(basename "$g" .yaml)
  run "check-$n" check "$g"
  run "compile-$n" compile "$g" -o "$OUT/compile-$n" --dot
  if [ "$n" = omniglot_seed ] && [ -f "$FIX/params_p5_default.safetensors" ]; then
    params=$FIX/params_p5_default.safetensors batch=$FIX/batch_so_T2_5w1s_q1_in1.safetensors
    run "grad-ref-$n" grad "$g" --params "$params" --batch "$batch" --out "$OUT/grad-$n.safetensors" \
      --backend ref --set maml.inner.lr=0.4
  else
    params=$OUT/params-$n.safetensors batch=$OUT/batch-$n.safetensors
    if ! "$MAKE_INPUTS" "$g" "$params" "$batch" 1; then
      status=1
      summary+=("grad-ref-$n: FAILED (make_inputs)")
      continue
    fi
    run "grad-ref-$n" grad "$g" --params "$params" --batch "$batch" --out "$OUT/grad-$n.safetensors" \
      --backend ref
  fi
  if [ "$n" = sinusoid ]; then
    MAMLC_CFLAGS="-O2 -fopenmp" run "grad-cpu-$n" grad "$g" --params "$params" --batch "$batch" \
      --out "$OUT/grad-cpu-$n.safetensors" --backend cpu
  fi
done

echo "== valgrind summary ($((SECONDS - t_all)) s)"
printf '%s\n' "${summary[@]}"
[ $status -eq 0 ] && echo "valgrind: all clean" || echo "valgrind: FAILED"
exit $status
