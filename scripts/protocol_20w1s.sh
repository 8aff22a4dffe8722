#!/usr/bin/env bash
# Continues the MAML paper's 20-way 1-shot run (results/omniglot_20w1s, README: "The MAML paper's
# 20-way 1-shot protocol") for a while on the best backend: the run outlasts any one session, so
# each session (or a short lease of a GPU machine) moves it on and commits where it got. Usage:
#   scripts/protocol_20w1s.sh [SECONDS] [OUT_DIR]
# SECONDS (default 300) is the training time limit; OUT_DIR (default $OUT when set, else
# build/protocol) receives omniglot_20w1s/ (the run directory: checkpoint.safetensors and
# log.csv, to be copied back into results/ and committed) and protocol.log. When the run reaches
# its 60,000 steps, the script also evaluates it on 600 test tasks (eval.txt).
# The run starts from results/omniglot_20w1s (the committed checkpoint), or from OUT_DIR's copy
# when that one is further along (a second call). Omniglot comes from $OMNIGLOT,
# ../shared/data/omniglot or build/gpucheck/shared/data/omniglot (`make gpu-check-prep` puts the
# two archives there for a GPU machine without ../shared). PROTOCOL_BACKEND (default auto: cuda
# where a GPU is, else cpu) and PROTOCOL_CONV (default generated, applied on cuda) pick the
# backend and the convolution lowering. On the CPU, run it niced in the background:
#   nohup nice -n 10 scripts/protocol_20w1s.sh 9000 /work/protocol >/dev/null 2>&1 &
set -u -o pipefail
cd "$(dirname "$0")/.." || exit 1
SECONDS_LIMIT=${1:-300}
OUT_DIR=${2:-${OUT:-build/protocol}}
BACKEND=${PROTOCOL_BACKEND:-auto}
CONV=${PROTOCOL_CONV:-generated}
GRAPH=graphs/omniglot_20w1s.yaml
SOURCE=results/omniglot_20w1s
RUN=$OUT_DIR/omniglot_20w1s
STEPS=60000
mkdir -p "$OUT_DIR"
exec > >(tee -a "$OUT_DIR/protocol.log") 2>&1
[ -d build/gpucheck/lib ] && export LD_LIBRARY_PATH="$PWD/build/gpucheck/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

fail() {
    echo "protocol: $*"
    exit 1
}

# The step a run directory's checkpoint holds (0 when it has none).
checkpoint_step() {
    local ckpt=$1/checkpoint.safetensors
    [ -f "$ckpt" ] || { echo 0; return; }
    head -c 1024 "$ckpt" | tr -d '\0' | grep -ao '"step":"[0-9]*"' | head -n1 | tr -dc '0-9'
}

DATA=${OMNIGLOT:-}
for d in ../shared/data/omniglot build/gpucheck/shared/data/omniglot; do
    [ -z "$DATA" ] && [ -f "$d/images_background.zip" ] && DATA=$d
done
[ -n "$DATA" ] || fail "no Omniglot archives (set OMNIGLOT=DIR or run make gpu-check-prep)"
[ -x ./mamlc ] || fail "no ./mamlc (build it, or carry it here)"
from=$(checkpoint_step "$SOURCE")
[ "$from" -gt 0 ] || fail "$SOURCE holds no checkpoint to continue"
if [ "$(checkpoint_step "$RUN")" -lt "$from" ]; then
    if ! { rm -rf "$RUN" && mkdir -p "$RUN" && cp "$SOURCE"/checkpoint.safetensors "$SOURCE"/log.csv "$RUN"/; }; then
        fail "cannot copy $SOURCE to $RUN"
    fi
fi
echo "protocol: $(date -u +%FT%TZ) $GRAPH from step $(checkpoint_step "$RUN") for up to ${SECONDS_LIMIT} s on $BACKEND (--conv $CONV), data $DATA"
conv_flag=()
[ "$BACKEND" != cpu ] && [ "$BACKEND" != ref ] && conv_flag=(--conv "$CONV")
./mamlc train "$GRAPH" --data "$DATA" --steps "$STEPS" --backend "$BACKEND" "${conv_flag[@]}" \
    --out "$RUN" --resume --val-every 2000 --val-tasks 200 --ckpt-every 250 \
    --time-limit "$SECONDS_LIMIT" --progress lines
rc=$?
reached=$(checkpoint_step "$RUN")
echo "protocol: train exited $rc; checkpoint at step $reached of $STEPS in $RUN"
if [ "$rc" = 0 ] && [ "$reached" -ge "$STEPS" ]; then
    ./mamlc eval "$GRAPH" --data "$DATA" --checkpoint "$RUN/checkpoint.safetensors" --tasks 600 \
        --backend "$BACKEND" "${conv_flag[@]}" | tee "$OUT_DIR/eval.txt"
    rc=$?
fi
exit "$rc"
