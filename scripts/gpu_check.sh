#!/usr/bin/env bash
# The one-call device check (docs/benchmarks.md, "The device check"): run from the repository root.
#
#   GPU machine: bash scripts/gpu_check.sh        (carried: .bench/market1501.tar.xz, .wheels/*.whl; timeout_s 480)
#   rehearsal:   GPU_CHECK_DEVICE=cpu bash scripts/gpu_check.sh
#                the same steps, archive, wheels, paths and flags on the CPU, with capped sizes: the archive
#                trimmed to a few identities after extraction, ResNet18 at 32x16, a few steps. < 5 min on 2 cores.
#   CI:          GPU_CHECK_DEVICE=cpu GPU_CHECK_DATA=synthetic ... (tests/test_gpu_check.py: no archive needed)
#
# Steps run most important first; each has its own timeout, cut to what is left of GPU_CHECK_BUDGET_S
# (420 s: a 480 s call keeps a minute for the start of the Python processes still running and the copy back),
# so a budget cut drops the synthetic metric steps at the end. Each step appends one JSON line to
# $OUT/gpu_check.jsonl when it ends, so a later failure keeps the earlier figures; each starts from a clean
# output folder (a warm rerun must not resume a finished training). Step logs and run outputs stay in $WORK;
# on exit they come back as one $OUT/gpu_check_logs.tar.gz (only 8 files come back from $OUT).
# GPU_CHECK_STEPS: the step names to run (default: all), e.g. "env wheels data train" for a quick check.
# Exit status: 1 when a step failed.
set -u
cd "$(dirname "$0")/.."
DEVICE=${GPU_CHECK_DEVICE:-cuda}
OUT=${OUT:-$PWD/gpu_check_out}
WORK=${GPU_CHECK_WORK:-/tmp/gpu_check}
BUDGET=${GPU_CHECK_BUDGET_S:-420}
STEPS=${GPU_CHECK_STEPS:-all}
DATA_SOURCE=${GPU_CHECK_DATA:-archive}
KEEP_IDS=${GPU_CHECK_KEEP_IDS:-8}  # rehearsal: identities kept per split of the real archive
mkdir -p "$OUT" "$WORK"
JSONL=$OUT/gpu_check.jsonl
: > "$JSONL"
START=$SECONDS
FAILED=0
PY=${PYTHON:-python3}
# the carried wheels (hydra-core, omegaconf, antlr4; the `wheels` step installs them) come first, then the checkout
export PYTHONUNBUFFERED=1 PYTHONPATH=$WORK/site:$PWD${PYTHONPATH:+:$PYTHONPATH}

finish() {  # step logs and run outputs (no checkpoints, no images) as one file in $OUT
    (cd "$WORK" && find . \( -path ./market -o -path ./site \) -prune -o -type f \
        \( -name '*.log' -o -name '*.json' -o -name '*.yaml' \) -size -4M -print0) \
        | tar --null -czf "$OUT/gpu_check_logs.tar.gz" -C "$WORK" -T - 2>/dev/null
    echo "gpu_check: done in $((SECONDS - START)) s, $FAILED failed; $JSONL"
    if [ "$FAILED" -ne 0 ]; then exit 1; fi
}
trap finish EXIT
trap 'exit 143' TERM INT  # so the EXIT trap runs when the call is stopped

step() {  # step NAME LIMIT_S COMMAND...: clean $WORK/out/NAME, run with a timeout, append its JSON line
    local name=$1 limit=$2; shift 2
    if [ "$STEPS" != all ] && [[ " $STEPS " != *" $name "* ]]; then return 0; fi
    local left=$((BUDGET - (SECONDS - START)))
    if [ "$left" -lt 20 ]; then  # too little for any step to finish
        echo "{\"step\": \"$name\", \"rc\": -1, \"skipped\": \"budget spent\"}" >> "$JSONL"; return 0
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    rm -rf "${WORK:?}/out/$name" && mkdir -p "$WORK/out/$name"
    local begin=$SECONDS
    timeout -k 10 "$limit" "$@" > "$WORK/$name.log" 2>&1
    local rc=$?
    [ "$rc" -ne 0 ] && FAILED=$((FAILED + 1))
    $PY scripts/gpu_check.py record "$name" "$rc" "$((SECONDS - begin))" "$WORK/$name.log" >> "$JSONL"
    echo "gpu_check: $name rc=$rc $((SECONDS - begin)) s"
}

MARKET=$WORK/market
if [ "$DATA_SOURCE" = synthetic ]; then
    DATA=(--synthetic)
else
    DATA=(--archive .bench/market1501.tar.xz $([ "$DEVICE" = cpu ] && echo --keep-ids "$KEEP_IDS"))
fi
if [ "$DEVICE" = cpu ]; then  # rehearsal: capped sizes, the same paths and flags
    SIZES_MARKET=(--num-query 200 --num-gallery 1000 --dim 256)
    SIZES_MSMT=(--num-query 300 --num-gallery 1500 --dim 256)
    MODEL=(model.backbone=resnet_18 model.input_height=32 model.input_width=16 dataset.batch_size=16
           dataset.val_batch_size=64 dataset.num_workers=0 train.accelerator=cpu evaluate.accelerator=cpu)
    ACCURACY=(--capped train.num_epochs=1 model.input_height=32 model.input_width=16 dataset.batch_size=16
              dataset.num_workers=0 train.precision=32 train.accelerator=cpu evaluate.accelerator=cpu)
    BENCH=(--device cpu --backbone resnet_18 --height 32 --width 16 --batch-size 16 --workers 0
           --steps 4 --warmup-steps 1 --ceiling-steps 2)
    EVAL_BENCH=(--device cpu --backbone resnet_18 --height 32 --width 16 --batch-size 64 --workers 0)
    CHECKPOINT=(--device cpu --backbone resnet_18)
    REPEATS=1
else
    SIZES_MARKET=(--num-query 3368 --num-gallery 15913 --dim 2048)
    SIZES_MSMT=(--num-query 11659 --num-gallery 82161 --dim 2048)
    MODEL=(train.accelerator=gpu evaluate.accelerator=gpu)
    ACCURACY=(train.accelerator=gpu evaluate.accelerator=gpu)
    # one whole epoch (~180 PK batches of 64), the first 10 steps untimed
    BENCH=(--device "$DEVICE" --epochs 1 --warmup-steps 10 --ceiling-steps 60)
    EVAL_BENCH=(--device "$DEVICE")
    CHECKPOINT=(--device "$DEVICE")
    REPEATS=3
fi
DIRS=(dataset.train_dataset_dir="$MARKET/bounding_box_train" dataset.query_dataset_dir="$MARKET/query"
      dataset.test_dataset_dir="$MARKET/bounding_box_test")
TRAINED=$WORK/out/train/train/reid_model_latest.pth

step wheels 60 $PY scripts/gpu_check.py wheels .wheels "$WORK/site"
step env 60 $PY scripts/gpu_check.py env
step data 90 $PY scripts/gpu_check.py data "$MARKET" "${DATA[@]}"
# `reid train` itself: the BoT ResNet50 recipe at random init (no network for ImageNet weights; speed only),
# 3 epochs, validation at the end only: epochs 1-2 give the clean seconds per epoch
step train 150 $PY scripts/gpu_check.py reid train -e specs/market1501.yaml "${DIRS[@]}" "${MODEL[@]}" \
    "model.pretrain_choice=''" train.num_epochs=3 train.validation_interval=3 train.checkpoint_interval=100 \
    results_dir="$WORK/out/train"
# what a user times (`reid evaluate`, re-ranking on), then the evaluation alone, broken down
step evaluate 75 $PY scripts/gpu_check.py reid evaluate -e specs/market1501.yaml "${DIRS[@]}" "${MODEL[@]}" \
    re_ranking.re_ranking=true evaluate.checkpoint="$TRAINED" results_dir="$WORK/out/evaluate"
step evaluate_breakdown 75 $PY scripts/benchmark.py evaluate --data "$MARKET" --checkpoint "$TRAINED" --rerank \
    "${EVAL_BENCH[@]}"
# specs/market1501_cpu.yaml trained on the GPU: accuracy against its CPU figures
step accuracy 150 $PY scripts/gpu_check.py accuracy specs/market1501_cpu.yaml "$WORK/out/accuracy" \
    "${DIRS[@]}" "${ACCURACY[@]}"
step gpu_tests 60 $PY scripts/gpu_check.py pytest -q -m gpu -p no:cacheprovider --basetemp "$WORK/out/gpu_tests/tmp" \
    tests/test_gpu_device.py tests/test_rerank.py tests/test_losses.py
# the recipe's model step alone (no loader, no loss syncs) and a conventional loop, for comparison
step train_bench 120 $PY scripts/benchmark.py train --data "$MARKET" "${BENCH[@]}"
step checkpoint 60 $PY scripts/benchmark.py checkpoint "${CHECKPOINT[@]}" --repeats 2 --dir "$WORK/out/checkpoint"
# synthetic features: metrics and re-ranking at Market and MSMT17 sizes (last: a budget cut drops these)
step metrics_market 45 $PY scripts/benchmark.py metrics "${SIZES_MARKET[@]}" --device "$DEVICE" --repeats $REPEATS
step rerank_market 60 $PY scripts/benchmark.py rerank "${SIZES_MARKET[@]}" --device "$DEVICE" --repeats $REPEATS
step metrics_msmt17 45 $PY scripts/benchmark.py metrics "${SIZES_MSMT[@]}" --device "$DEVICE"
step rerank_msmt17 90 $PY scripts/benchmark.py rerank "${SIZES_MSMT[@]}" --device "$DEVICE"
