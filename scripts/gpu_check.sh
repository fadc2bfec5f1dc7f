#!/usr/bin/env bash
# The one-call device check (docs/benchmarks.md, "The device check"): run from the repository root.
#
#   GPU machine:  bash scripts/gpu_check.sh            (carried: .bench/market1501.tar.xz, .wheels/*.whl)
#   rehearsal:    GPU_CHECK_DEVICE=cpu bash scripts/gpu_check.sh   (tiny synthetic data, every step, < 5 min)
#
# Each step has its own timeout (cut to what is left of GPU_CHECK_BUDGET_S, 540 s by default) and appends
# one JSON line to $OUT/gpu_check.jsonl when it ends, so a later failure keeps the earlier figures. Step
# logs go to $WORK (not $OUT: only 8 files come back); a failed step's last lines are in its JSON line.
# GPU_CHECK_STEPS: the step names to run (default: all), e.g. "env data metrics_market" for a quick check.
set -u
cd "$(dirname "$0")/.."
DEVICE=${GPU_CHECK_DEVICE:-cuda}
OUT=${OUT:-$PWD/gpu_check_out}
WORK=${GPU_CHECK_WORK:-/tmp/gpu_check}
BUDGET=${GPU_CHECK_BUDGET_S:-540}
STEPS=${GPU_CHECK_STEPS:-all}
mkdir -p "$OUT" "$WORK"
JSONL=$OUT/gpu_check.jsonl
START=$SECONDS
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
PY=${PYTHON:-python3}

# hydra-core, omegaconf and antlr4 are not installed there: carried wheels, installed without the network
if [ -d .wheels ] && ! $PY -c "import hydra, omegaconf" 2>/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" .wheels/*.whl \
        || echo '{"step": "wheels", "rc": 1}' >> "$JSONL"
    export PYTHONPATH=$PYTHONPATH:$WORK/site
fi

step() {  # step NAME LIMIT_S COMMAND...: run with a timeout, append its JSON line
    local name=$1 limit=$2; shift 2
    if [ "$STEPS" != all ] && [[ " $STEPS " != *" $name "* ]]; then return 0; fi
    local left=$((BUDGET - (SECONDS - START)))
    if [ "$left" -lt 10 ]; then
        echo "{\"step\": \"$name\", \"rc\": -1, \"skipped\": \"budget spent\"}" >> "$JSONL"; return 0
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    local begin=$SECONDS
    timeout -k 10 "$limit" "$@" > "$WORK/$name.log" 2>&1
    local rc=$?
    $PY scripts/gpu_check.py record "$name" "$rc" "$((SECONDS - begin))" "$WORK/$name.log" >> "$JSONL"
    echo "gpu_check: $name rc=$rc $((SECONDS - begin)) s"
}

if [ "$DEVICE" = cpu ]; then  # rehearsal: small sizes, tiny model, synthetic images
    MARKET=$WORK/market
    DATA=($PY scripts/make_synthetic_market.py "$MARKET" --num-train-ids 4 --num-test-ids 6)
    SIZES_MARKET=(--num-query 200 --num-gallery 1000 --dim 256)
    SIZES_MSMT=(--num-query 300 --num-gallery 1500 --dim 256)
    MODEL=(model.backbone=resnet_18 model.input_height=32 model.input_width=16 dataset.batch_size=16
           dataset.val_batch_size=64 dataset.num_workers=0 train.accelerator=cpu evaluate.accelerator=cpu)
    BENCH=(--device cpu --backbone resnet_18 --height 32 --width 16 --batch-size 16 --workers 0
           --steps 3 --warmup-steps 1 --ceiling-steps 2)
    EPOCHS=1; REPEATS=1
else
    MARKET=$WORK/market/Market-1501-v15.09.15
    DATA=(tar -xJf .bench/market1501.tar.xz -C "$WORK/market")
    SIZES_MARKET=(--num-query 3368 --num-gallery 15913 --dim 2048)
    SIZES_MSMT=(--num-query 11659 --num-gallery 82161 --dim 2048)
    MODEL=(train.accelerator=gpu evaluate.accelerator=gpu)
    BENCH=(--device "$DEVICE" --steps 60 --warmup-steps 10 --ceiling-steps 60)
    EPOCHS=2; REPEATS=3
fi
mkdir -p "$WORK/market"
DIRS=(dataset.train_dataset_dir="$MARKET/bounding_box_train" dataset.query_dataset_dir="$MARKET/query"
      dataset.test_dataset_dir="$MARKET/bounding_box_test")
RESULTS=$WORK/results

step env 60 $PY scripts/gpu_check.py env
step data 90 "${DATA[@]}"
step metrics_market 60 $PY scripts/benchmark.py metrics "${SIZES_MARKET[@]}" --device "$DEVICE" --repeats $REPEATS
step rerank_market 90 $PY scripts/benchmark.py rerank "${SIZES_MARKET[@]}" --device "$DEVICE" --repeats $REPEATS
step metrics_msmt17 60 $PY scripts/benchmark.py metrics "${SIZES_MSMT[@]}" --device "$DEVICE"
step rerank_msmt17 120 $PY scripts/benchmark.py rerank "${SIZES_MSMT[@]}" --device "$DEVICE"
# `reid train` itself: the BoT ResNet50 recipe (random init: no network for ImageNet weights; speed only)
step train 180 $PY scripts/gpu_check.py reid train -e specs/market1501.yaml "${DIRS[@]}" "${MODEL[@]}" \
    "model.pretrain_choice=''" train.num_epochs=$EPOCHS train.validation_interval=$EPOCHS \
    train.checkpoint_interval=100 results_dir="$RESULTS"
# the same recipe's pure model step (no loader, no loss syncs) and a conventional loop, for comparison
step train_bench 150 $PY scripts/benchmark.py train --data "$MARKET" "${BENCH[@]}"
step evaluate 90 $PY scripts/gpu_check.py reid evaluate -e specs/market1501.yaml "${DIRS[@]}" "${MODEL[@]}" \
    evaluate.checkpoint="$RESULTS/train/reid_model_latest.pth" results_dir="$RESULTS"
step checkpoint 60 $PY scripts/benchmark.py checkpoint --device "$DEVICE" --repeats 2 --dir "$WORK" \
    $([ "$DEVICE" = cpu ] && echo --backbone resnet_18)
echo "gpu_check: done in $((SECONDS - START)) s; $JSONL"
