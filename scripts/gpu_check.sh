#!/usr/bin/env bash
# The CUDA checks and the benchmark on a machine with a GPU, in one go (about 3 to 5 minutes):
#   device      the driver, the device, NVRTC and cuDNN found
#   compile     the seed's training step (meta-batch 32): cold NVRTC compile, then warm start
#   fixtures    `mamlc grad --backend cuda` on PyTorch's fixtures against float64, every tensor within
#               1e-4 relative (or 3x the float32 reference's own error where that is larger)
#   steps       10 training steps of every shipped graph, cuda against ref (build/gpu_compare steps;
#               the 20-way graph, whose 5 second-order inner steps take ref minutes, against the cpu
#               backend in float64, which the test suite holds to ref within 1e-12); the seed also
#               with --conv cudnn and --conv tensor, 5w1s with --conv tensor
#   sanitizer   compute-sanitizer memcheck, synccheck and racecheck on one meta-gradient, and
#               memcheck and racecheck on one omniglot_5w1s training step
#   bench       `mamlc bench --backend cuda` on the shipped graphs, and the seed's slowest kernels
#   pytorch     examples/pytorch_seed_maml.py --device cuda (q 1 and 15) against the bench figures
# then a short table. Usage:
#   scripts/gpu_check.sh [LOG_DIR]
# LOG_DIR (default $OUT when set, else build/gpu-check) receives gpu_check.log (everything printed)
# and bench.txt (the benchmark JSON). Needs ./mamlc and build/gpu_compare: built with
# `make all build/gpu_compare` when missing (that needs the build dependencies); on a machine
# without them, build here with `make gpu-check-prep` and bring mamlc, build/gpu_compare and
# build/gpucheck along (and build/tests/test_cuda, build/tests/test_faults for the device tests).
# Fixtures come from $MAMLC_FIXTURES, ../shared/fixtures/pytorch_maml or
# build/gpucheck/shared/fixtures/pytorch_maml. GPU_CHECK_BACKEND=cpu runs the same script on the
# cpu backend (a dry run of the script itself on a machine without a GPU; the device-only parts
# are skipped);
# GPU_CHECK_STEPS (default 10) and GPU_CHECK_REPS (default 30) shorten such a run;
# GPU_CHECK_SANITIZERS (default "memcheck synccheck racecheck") picks compute-sanitizer's tools
# ("" for none); GPU_CHECK_PYTHON (default python3) runs the PyTorch side ("" to skip it).
set -u -o pipefail
cd "$(dirname "$0")/.." || exit 1
LOG_DIR=${1:-${OUT:-build/gpu-check}}
BACKEND=${GPU_CHECK_BACKEND:-cuda}
STEPS=${GPU_CHECK_STEPS:-10}
REPS=${GPU_CHECK_REPS:-30}
SANITIZERS=${GPU_CHECK_SANITIZERS-memcheck synccheck racecheck}
PYTHON=${GPU_CHECK_PYTHON-python3}
mkdir -p "$LOG_DIR"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
exec > >(tee "$LOG_DIR/gpu_check.log") 2>&1
TEE_PID=$!
START=$(date +%s)
SUMMARY=()
FAILED=0
MAMLC=./mamlc
CMP=build/gpu_compare

elapsed() { echo $(($(date +%s) - START)); }
section() { printf '\n== %s  (t=%ss)\n' "$*" "$(elapsed)"; }
# result NAME TEXT: one row of the final table; TEXT starting with FAIL fails the check.
result() {
    SUMMARY+=("$(printf '%-30s %s' "$1" "$2")")
    case "$2" in FAIL*) FAILED=1 ;; esac
}

finish() {
    section "summary (backend $BACKEND)"
    printf '%s\n' "${SUMMARY[@]}"
    [ -f "$WORK/bench_table.txt" ] && { echo; cat "$WORK/bench_table.txt"; }
    echo
    if [ "$FAILED" = 0 ]; then echo "gpu-check: all checks passed ($(elapsed) s)"; else echo "gpu-check: FAILED ($(elapsed) s)"; fi
    echo "full log: $LOG_DIR/gpu_check.log"
    rm -rf "$WORK"
    exec 1>&- 2>&-
    wait "$TEE_PID" 2>/dev/null
    exit "$FAILED"
}

# ---- binaries -------------------------------------------------------------------------------------
section "environment"
uname -srm
command -v nvidia-smi >/dev/null && nvidia-smi -L
[ -d build/gpucheck/lib ] && export LD_LIBRARY_PATH="$PWD/build/gpucheck/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if ! "$MAMLC" check graphs/sinusoid.yaml >/dev/null 2>&1 || ! [ -x "$CMP" ]; then
    echo "building mamlc and $CMP"
    if ! timeout 600 make -j"$(nproc)" all "$CMP"; then
        result build "FAIL: no usable ./mamlc or $CMP and the build failed (see above)"
        finish
    fi
fi
ldd "$MAMLC" | grep "not found" && { result binaries "FAIL: libraries missing for ./mamlc"; finish; }
FIX=${MAMLC_FIXTURES:-}
for d in ../shared/fixtures/pytorch_maml build/gpucheck/shared/fixtures/pytorch_maml; do
    [ -z "$FIX" ] && [ -f "$d/manifest.yaml" ] && FIX=$d
done
echo "fixtures: ${FIX:-none found}"
# A fresh kernel cache: the first open of every program compiles, so compile times are cold.
export MAMLC_CACHE="$WORK/cache"

# ---- device ---------------------------------------------------------------------------------------
section "device"
"$CMP" device | tee "$WORK/device.txt"
if [ "${PIPESTATUS[0]}" != 0 ] && [ "$BACKEND" = cuda ]; then
    result device "FAIL: $(head -n 1 "$WORK/device.txt")"
    finish
fi
result device "$(sed -n 's/^device: //p' "$WORK/device.txt")"

# ---- steps (CPU-heavy reference runs, in the background while the GPU works) ----------------------
section "steps: $STEPS training steps of each shipped graph, $BACKEND against ref (background)"
STEP_GRAPHS="omniglot_seed:2:ref omniglot_5w1s:2:ref omniglot_20w1s:1:cpu sinusoid:4:ref"
STEP_PIDS=()
for gto in $STEP_GRAPHS; do
    IFS=: read -r g t oracle <<<"$gto"
    (
        timeout 300 "$CMP" steps "graphs/$g.yaml" --backend "$BACKEND" --oracle "$oracle" --steps "$STEPS" \
            --tasks "$t" >"$WORK/steps_$g.txt" 2>&1
        echo $? >"$WORK/steps_$g.rc"
    ) &
    STEP_PIDS+=($!)
done
# the seed's trajectory with the convolutions on cuDNN, and on tensor cores (3xTF32)
CONV_STEPS="cudnn:omniglot_seed tensor:omniglot_seed tensor:omniglot_5w1s"
for cg in $CONV_STEPS; do
    [ "$BACKEND" = cuda ] || break
    IFS=: read -r conv g <<<"$cg"
    (
        timeout 300 "$CMP" steps "graphs/$g.yaml" --backend cuda --oracle ref --steps "$STEPS" \
            --tasks 2 --conv "$conv" >"$WORK/steps_${g}_$conv.txt" 2>&1
        echo $? >"$WORK/steps_${g}_$conv.rc"
    ) &
    STEP_PIDS+=($!)
done

# ---- compile --------------------------------------------------------------------------------------
[ "$BACKEND" = cuda ] && section "compile: the seed's training step, cold then warm"
nvrtc_ms() { sed -n 's/.*NVRTC \([0-9]*\) ms (\([0-9]*\) of \([0-9]*\) pieces.*/\1 ms (\2 of \3 pieces cached)/p' "$1" | head -n 1; }
for pass in cold warm; do
    [ "$BACKEND" = cuda ] || break
    timeout 180 "$MAMLC" bench graphs/omniglot_seed.yaml --backend "$BACKEND" --reps 1 --warmup 0 \
        >"$WORK/compile_$pass.out" 2>"$WORK/compile_$pass.err"
    rc=$?
    cat "$WORK/compile_$pass.err"
    [ $rc = 0 ] || { result "compile ($pass)" "FAIL: mamlc bench exit status $rc"; continue; }
    [ "$BACKEND" = cuda ] && result "NVRTC seed step ($pass)" "$(nvrtc_ms "$WORK/compile_$pass.err")"
done

# ---- fixtures -------------------------------------------------------------------------------------
section "fixtures: mamlc grad --backend $BACKEND against PyTorch's float64"
# case, parameters, batch (the first-order case shares the second-order one's), settings
CASES=(
    "so_T2_5w1s_q1_in1 params_p5_default so_T2_5w1s_q1_in1"
    "so_T2_5w1s_q5_in1 params_p5_default so_T2_5w1s_q5_in1 --set maml.q_query=5"
    "so_T3_5w1s_q3_in3 params_p5_bnpert so_T3_5w1s_q3_in3 --set maml.q_query=3 --set maml.inner.steps=3"
    "fo_T3_5w1s_q3_in3 params_p5_bnpert so_T3_5w1s_q3_in3 --set maml.q_query=3 --set maml.inner.steps=3 --set maml.inner.first_order=true"
    "so_T2_20w1s_q1_in1 params_p20_default so_T2_20w1s_q1_in1 --set maml.n_way=20"
)
run_grad() { # run_grad OUT BACKEND PARAMS BATCH [ARGS...]
    local out=$1 backend=$2 params=$3 batch=$4
    shift 4
    timeout 240 "$MAMLC" grad graphs/omniglot_seed.yaml --params "$FIX/$params.safetensors" \
        --batch "$FIX/batch_$batch.safetensors" --out "$out" --backend "$backend" \
        --set maml.inner.lr=0.4 "$@"
}
if [ -z "$FIX" ]; then
    result fixtures "FAIL: no fixtures (set MAMLC_FIXTURES or run make gpu-check-prep)"
else
    for c in "${CASES[@]}"; do
        set -- $c
        name=$1 params=$2 batch=$3
        shift 3
        run_grad "$WORK/$name.ref32.safetensors" ref "$params" "$batch" "$@" --dtype f32 >"$WORK/$name.ref32.txt" 2>&1 &
        ref_pid=$!
        if ! run_grad "$WORK/$name.got.safetensors" "$BACKEND" "$params" "$batch" "$@"; then
            wait $ref_pid
            if [ "$BACKEND" = cuda ]; then
                echo "again with MAMLC_CUDA_SYNC=1, to name the failing kernel:"
                MAMLC_CUDA_SYNC=1 run_grad "$WORK/$name.got.safetensors" cuda "$params" "$batch" "$@"
            fi
            result "fixture $name" "FAIL: mamlc grad failed"
            continue
        fi
        wait $ref_pid || { cat "$WORK/$name.ref32.txt"; result "fixture $name" "FAIL: the ref run failed"; continue; }
        "$CMP" tensors "$WORK/$name.got.safetensors" "$FIX/expected64_$name.safetensors" \
            "$WORK/$name.ref32.safetensors" >"$WORK/$name.cmp"
        rc=$?
        grep -E "OVER|missing" "$WORK/$name.cmp"
        tail -n 1 "$WORK/$name.cmp"
        worst=$(sed -n 's/.*worst error\/bound \(.*\)/\1/p' "$WORK/$name.cmp")
        if [ $rc = 0 ]; then result "fixture $name" "ok (worst error/bound $worst)"
        else result "fixture $name" "FAIL (worst error/bound $worst; see the log)"; cat "$WORK/$name.cmp"; fi
    done
fi

if [ "$BACKEND" = cuda ] && [ -n "$FIX" ]; then
    section "conv: fixture so_T2_5w1s_q5_in1 with --conv cudnn, auto and tensor"
    n=so_T2_5w1s_q5_in1
    for conv in cudnn auto tensor; do
        if run_grad "$WORK/conv_$conv.safetensors" cuda params_p5_default $n --set maml.q_query=5 \
            --conv $conv && "$CMP" tensors "$WORK/conv_$conv.safetensors" \
            "$FIX/expected64_$n.safetensors" "$WORK/$n.ref32.safetensors" >"$WORK/conv_$conv.cmp"; then
            worst=$(sed -n 's/.*worst error\/bound \(.*\)/\1/p' "$WORK/conv_$conv.cmp")
            result "fixture q5 --conv $conv" "ok (worst error/bound $worst)"
        else
            cat "$WORK/conv_$conv.cmp" 2>/dev/null
            echo "again with MAMLC_CUDA_SYNC=1, to name the failing call:"
            MAMLC_CUDA_SYNC=1 run_grad "$WORK/conv_$conv.safetensors" cuda params_p5_default $n \
                --set maml.q_query=5 --conv $conv
            result "fixture q5 --conv $conv" "FAIL (see the log)"
        fi
    done
fi

# ---- device tests: the Criterion tests that need a GPU, where their binaries came along ------
if [ "$BACKEND" = cuda ]; then
    for t in "test_cuda cuda_device/*" "test_faults faults/device_out_of_memory*"; do
        set -- $t
        [ -x "build/tests/$1" ] || { result "$1 device tests" "skipped (build/tests/$1 not here)"; continue; }
        section "build/tests/$1 --filter '$2'"
        LD_LIBRARY_PATH="$PWD/build/gpucheck/testlib:${LD_LIBRARY_PATH:-}" \
            MAMLC_SHARED=${MAMLC_SHARED:-build/gpucheck/shared} timeout 120 "build/tests/$1" \
            --filter "$2" --verbose 2>&1 | tail -n 30
        rc=${PIPESTATUS[0]}
        if [ "$rc" = 0 ]; then result "$1 device tests" "ok"; else result "$1 device tests" "FAIL: exit status $rc"; fi
    done
fi

# ---- track: each step from the float64 trajectory (one wrong step vs accumulated drift) ---------
if [ "$BACKEND" = cuda ]; then
    section "track: omniglot_5w1s, every step from ref's float64 state"
    timeout 120 "$CMP" track graphs/omniglot_5w1s.yaml --backend cuda --oracle ref --steps "$STEPS" \
        --tasks 2 --dump "$LOG_DIR/track_5w1s_worst_state.safetensors"
    case $? in
    0) result "track omniglot_5w1s" "ok (every step within its bound)" ;;
    1) result "track omniglot_5w1s" "FAIL (a step over its bound; see the log)" ;;
    *) result "track omniglot_5w1s" "FAIL: gpu_compare track failed" ;;
    esac
fi

# ---- sanitizers (while the reference runs finish) -------------------------------------------------
CS=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)
if [ "$BACKEND" = cuda ] && [ -n "$CS" ] && [ -n "$FIX" ]; then
    for tool in $SANITIZERS; do
        case $tool in racecheck) limit=120 ;; memcheck) limit=90 ;; *) limit=60 ;; esac
        section "compute-sanitizer --tool $tool on one meta-gradient (kernels one at a time; at most ${limit}s)"
        MAMLC_CUDA_SYNC=1 timeout "$limit" "$CS" --tool "$tool" --error-exitcode 9 --print-limit 20 \
            "$MAMLC" grad graphs/omniglot_seed.yaml --params "$FIX/params_p5_default.safetensors" \
            --batch "$FIX/batch_so_T2_5w1s_q1_in1.safetensors" --out "$WORK/sanitized.safetensors" \
            --backend cuda --set maml.inner.lr=0.4 2>&1 | tail -n 25
        rc=${PIPESTATUS[0]}
        case $rc in
        0) result "sanitizer $tool" "ok" ;;
        124) result "sanitizer $tool" "not finished in ${limit}s" ;;
        *) result "sanitizer $tool" "FAIL: exit status $rc (see the log)" ;;
        esac
    done
elif [ "$BACKEND" = cuda ] && [ -n "$SANITIZERS" ]; then
    result sanitizers "skipped (no compute-sanitizer or no fixtures)"
fi
# omniglot_5w1s leaves ref's trajectory on the GPU only (see README): its own kernels (stride-2
# convolutions, global average pooling, batch norm without scale), one training step under the
# sanitizers that find races and bad accesses
if [ "$BACKEND" = cuda ] && [ -n "$CS" ]; then
    for tool in $SANITIZERS; do
        [ "$tool" = synccheck ] && continue
        section "compute-sanitizer --tool $tool on one omniglot_5w1s training step (at most 120s)"
        MAMLC_CUDA_SYNC=1 timeout 120 "$CS" --tool "$tool" --error-exitcode 9 --print-limit 20 \
            "$CMP" steps graphs/omniglot_5w1s.yaml --backend cuda --oracle ref --steps 1 \
            --tasks 2 2>&1 | tail -n 25
        rc=${PIPESTATUS[0]}
        case $rc in
        0 | 1) result "sanitizer $tool 5w1s" "ok (no report; comparison exit $rc)" ;;
        124) result "sanitizer $tool 5w1s" "not finished in 120s" ;;
        *) result "sanitizer $tool 5w1s" "FAIL: exit status $rc (see the log)" ;;
        esac
    done
fi

# ---- steps: results -------------------------------------------------------------------------------
section "steps: waiting for the background runs"
wait "${STEP_PIDS[@]}" # not a bare wait: that would also wait for the log's tee
for gto in $STEP_GRAPHS; do
    g=${gto%%:*}
    echo "-- $g"
    grep -v " ok$" "$WORK/steps_$g.txt"
    rc=$(cat "$WORK/steps_$g.rc" 2>/dev/null || echo "?")
    worst=$(sed -n 's/.*worst error\/bound \(.*\)/\1/p' "$WORK/steps_$g.txt")
    case $rc in
    0) result "$STEPS steps $g" "ok (worst error/bound $worst)" ;;
    1) result "$STEPS steps $g" "FAIL (worst error/bound $worst)" ;;
    124) result "$STEPS steps $g" "FAIL: timed out" ;;
    *) result "$STEPS steps $g" "FAIL: exit status $rc" ;;
    esac
done
for cg in $CONV_STEPS; do
    IFS=: read -r conv g <<<"$cg"
    f=$WORK/steps_${g}_$conv
    [ -f "$f.rc" ] || continue
    echo "-- $g with --conv $conv"
    grep -v " ok$" "$f.txt"
    worst=$(sed -n 's/.*worst error\/bound \(.*\)/\1/p' "$f.txt")
    if [ "$(cat "$f.rc")" = 0 ]; then result "$STEPS steps $g --conv $conv" "ok (worst error/bound $worst)"
    else result "$STEPS steps $g --conv $conv" "FAIL (worst error/bound ${worst:-?})"; fi
done

# ---- bench ----------------------------------------------------------------------------------------
section "bench: mamlc bench --backend $BACKEND"
BENCHES=(
    "seed_q1 graphs/omniglot_seed.yaml"
    "seed_q15 graphs/omniglot_seed.yaml --set maml.q_query=15"
    "seed_q1_nofuse graphs/omniglot_seed.yaml --no-fuse"
    "5w1s graphs/omniglot_5w1s.yaml"
    "20w1s graphs/omniglot_20w1s.yaml"
    "sinusoid graphs/sinusoid.yaml"
)
[ "$BACKEND" = cuda ] && BENCHES+=(
    "seed_q1_cudnn graphs/omniglot_seed.yaml --conv cudnn"
    "seed_q1_auto graphs/omniglot_seed.yaml --conv auto"
    "seed_q15_cudnn graphs/omniglot_seed.yaml --set maml.q_query=15 --conv cudnn"
    "seed_q1_tensor graphs/omniglot_seed.yaml --conv tensor"
    "seed_q15_tensor graphs/omniglot_seed.yaml --set maml.q_query=15 --conv tensor"
    "5w1s_tensor graphs/omniglot_5w1s.yaml --conv tensor"
    "20w1s_tensor graphs/omniglot_20w1s.yaml --conv tensor"
)
field() { sed -n "s/.*\"$2\": \([-0-9.e+]*\).*/\1/p" "$1" | head -n 1; }
printf '%-16s %8s %10s %10s %10s %11s %12s\n' bench kernels "step ms" "piped ms" "GFLOP/s" "arena MiB" "images/s" >"$WORK/bench_table.txt"
: >"$LOG_DIR/bench.txt"
for b in "${BENCHES[@]}"; do
    set -- $b
    name=$1
    shift
    timeout 120 "$MAMLC" bench "$@" --backend "$BACKEND" --json --reps "$REPS" --warmup 3 \
        >"$WORK/bench_$name.json" 2>"$WORK/bench_$name.err"
    rc=$?
    if [ $rc != 0 ]; then
        cat "$WORK/bench_$name.err"
        result "bench $name" "FAIL: mamlc bench exit status $rc$([ $rc = 124 ] && echo ' (timed out)')"
        continue
    fi
    cat "$WORK/bench_$name.err"
    { echo "== $name: mamlc bench $* --backend $BACKEND"; cat "$WORK/bench_$name.json"; } >>"$LOG_DIR/bench.txt"
    f=$WORK/bench_$name.json
    arena=$(sed -n 's/.*arena \([0-9.]*\) MiB.*/\1/p' "$WORK/bench_$name.err" | head -n 1)
    printf '%-16s %8s %10.3f %10.3f %10.1f %11s %12.0f\n' "$name" "$(field "$f" n_kernels)" "$(field "$f" step_ms_median)" \
        "$(field "$f" pipelined_ms)" "$(field "$f" gflops)" "${arena:--}" "$(field "$f" images_per_s)" >>"$WORK/bench_table.txt"
    result "bench $name" "$(field "$f" step_ms_median) ms per step, $(field "$f" pipelined_ms) ms pipelined"
done
cat "$WORK/bench_table.txt"
if [ -f "$MAMLC_CACHE/cuda/conv_choices.txt" ]; then
    echo "--conv auto's choices (every candidate's mean ms; '-': not one):"
    cat "$MAMLC_CACHE/cuda/conv_choices.txt"
fi
# ---- train: the training loop's own pace (batch staged during each step, state kept on the device),
# beside the sinusoid bench's pipelined step above
section "train: mamlc train graphs/sinusoid.yaml --backend $BACKEND, 3000 steps"
timeout 120 "$MAMLC" train graphs/sinusoid.yaml --backend "$BACKEND" --steps 3000 --val-every 0 \
    --out "$WORK/train_sinusoid" --progress lines >"$WORK/train.txt" 2>&1
rc=$?
tail -n 3 "$WORK/train.txt"
if [ $rc = 0 ]; then
    result "train sinusoid" "$(grep -o '[0-9.]* steps/s' "$WORK/train.txt" | tail -n 1)"
else
    result "train sinusoid" "FAIL: mamlc train exit status $rc"
fi

if [ "$BACKEND" = cuda ] && [ -n "$PYTHON" ]; then
    section "pytorch: examples/pytorch_seed_maml.py --device cuda, the seed's step side by side"
    for q in 1 15; do
        name=seed_q$q
        [ -f "$WORK/bench_$name.json" ] || continue
        timeout 120 "$PYTHON" examples/pytorch_seed_maml.py --device cuda --q-query "$q" --steps 20 \
            --warmup 5 --mamlc-json "$WORK/bench_$name.json" --json >"$WORK/torch_$name.json" \
            2>"$WORK/torch_$name.err"
        rc=$?
        cat "$WORK/torch_$name.json" "$WORK/torch_$name.err"
        if [ $rc != 0 ]; then result "pytorch $name" "FAIL: exit status $rc"; continue; fi
        { echo "== pytorch $name"; cat "$WORK/torch_$name.json"; } >>"$LOG_DIR/bench.txt"
        result "pytorch $name" "$(field "$WORK/torch_$name.json" step_ms_median) ms per step; mamlc $(field "$WORK/torch_$name.json" speedup_mamlc_over_torch)x faster"
        tensor=$WORK/bench_${name}_tensor.json
        [ -f "$tensor" ] && result "pytorch $name, --conv tensor" "mamlc $(awk -v t="$(field "$WORK/torch_$name.json" step_ms_median)" \
            -v m="$(field "$tensor" step_ms_median)" 'BEGIN { printf "%.1f", t / m }')x faster"
    done
fi
if [ "$BACKEND" = cuda ]; then
    section "profile: the seed's slowest kernels"
    timeout 120 "$CMP" profile graphs/omniglot_seed.yaml --top 20 || result profile "FAIL: gpu_compare profile failed"
    for conv in cudnn tensor auto; do
        section "profile: the seed with --conv $conv"
        timeout 120 "$CMP" profile graphs/omniglot_seed.yaml --conv $conv --top 10 ||
            result "profile --conv $conv" "FAIL: gpu_compare profile failed"
    done
fi

finish
