#!/usr/bin/env bash
# The GPU checks of issue 27, prepared for a session lent a GPU (not run yet): under 10 minutes on one H100/H200.
#
#     OUT=/some/folder bash bench/gpu_check.sh        # results in $OUT (default runs/gpu_check), one file per check
#
# In order, each under its own timeout so one stuck check cannot eat the others' time (570 s in all):
#   1. the CUDA-marked tests (bf16, fp16 + GradScaler, compile, fused resume, sync debug mode; NCCL on 2 GPUs)
#   2. bench/gpu_profile.py: kernels and synchronizing calls per step, eager and compiled
#   3. train.py configs/base.json, 300 steps, compile off, on the real length distribution
#   4. bench/gpu_step.py: MFU at batch 32 and 128, eager and compiled (inductor's cache then serves 5.)
#   5. train.py as 3 with compile on
# No Hub: the encoder is a random-initialised BertConfig() folder (bert-base's shapes) with the MiniLM tokenizer
# files (bert-base-uncased's WordPiece vocabulary), so lengths and speed are bert-base's, the AUC means nothing.
# Data: ../shared/data/jigsaw/train.csv (44,073 real, toxic-enriched rows), copied under runs/ (git-ignored).
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${OUT:-runs/gpu_check}
WORK=runs/gpu_check_work
mkdir -p "$OUT" "$WORK"
export TORCHINDUCTOR_CACHE_DIR=$PWD/$WORK/inductor   # shared by 4. and 5.: the same graphs compile once
export PYTHONUNBUFFERED=1
$PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA'; print(torch.__version__, torch.cuda.get_device_name())" \
    2>&1 | tee "$OUT/device.txt" || exit 1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv >> "$OUT/device.txt" 2>&1
cp ../shared/data/jigsaw/train.csv "$WORK/train.csv" || exit 1
$PY -c "import sys; sys.path.insert(0, 'bench'); from gpu_step import bert_base_encoder; bert_base_encoder('$WORK/bert')" \
    > "$OUT/encoder.log" 2>&1 || exit 1

step() {  # name, seconds, command...: its output in $OUT/name.log, its exit code and time in $OUT/summary.txt
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS
    timeout --signal=TERM --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
    echo "$name: exit $? in $((SECONDS - t0)) s (limit $limit s)" | tee -a "$OUT/summary.txt"
}
# 300 steps, evaluation at the end only, no Aim
TRAIN=($PY train.py configs/base.json --encoder "$WORK/bert" --data_path "$WORK/train.csv" --max_steps 300
       --eval_every 300 --log_every 50 --aim false --cache_dir "$WORK/cache")
step cuda_tests 100 $PY -m pytest -q -m cuda -rs tests/ -s
step gpu_profile 90 $PY bench/gpu_profile.py --out "$OUT"
step train_compile_false 75 "${TRAIN[@]}" --compile false --out_dir "$WORK/eager"
step gpu_step 210 $PY bench/gpu_step.py --out "$OUT"
step train_compile_true 95 "${TRAIN[@]}" --compile true --out_dir "$WORK/compiled"
cat "$OUT/summary.txt"
