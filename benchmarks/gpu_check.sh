#!/usr/bin/env bash
# One call on a lent GPU machine (the device tool): CUDA tests, the recipe with both BatchNorm-statistics settings,
# a --time budget, --compile, then the engine suite with a GPU present. Each step has its own time limit, so the
# whole stays inside one call; logs go to $OUT. Needs TrashNet copied beside the repo first (it does not travel):
#   .venv/bin/python scripts/shrink_dataset.py ../shared/datasets/trashnet .gpudata/trashnet
# and the call names .gpudata in `carry`. Runs with the machine's own python3 (its torch), from the repo root.
set -u
OUT=${OUT:-/tmp/gpu_check}
DATA=${DATA:-.gpudata/trashnet}
EPOCHS=${EPOCHS:-20}  # the recipe's; a smoke run of the script on a CPU takes EPOCHS=1
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
step() {  # step NAME SECONDS CMD...: runs CMD with a limit, logs to $OUT/NAME.log, prints its tail and time
    local name=$1 limit=$2 t0=$SECONDS
    shift 2
    echo "=== $name (limit ${limit}s): $*"
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    tail -n "${TAIL:-6}" "$OUT/$name.log"
    echo "=== $name rc=$rc in $((SECONDS - t0)) s"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__,
  torch.cuda.get_device_name(), "cpus", __import__("os").cpu_count())'
recipe=(python3 -m resnetlab train "$DATA" --model resnet18 --img-size 96 --no-progress)
step cuda_tests 120 python3 -m pytest -q -p no:cacheprovider tests/engine/test_cuda.py tests/engine/test_bn_stats.py \
    tests/engine/test_ema.py tests/engine/test_muon.py
TAIL=4 step recipe_epoch 90 "${recipe[@]}" --epochs "$EPOCHS" --out "$OUT/runs/epoch"
TAIL=4 step recipe_running 90 "${recipe[@]}" --epochs "$EPOCHS" --bn-stats running --out "$OUT/runs/running"
TAIL=4 step time_budget 45 "${recipe[@]}" --epochs "$EPOCHS" --time 15s --out "$OUT/runs/time"
TORCH_LOGS=recompiles TAIL=4 step compile 150 "${recipe[@]}" --epochs $((EPOCHS < 4 ? EPOCHS : 4)) --compile --out "$OUT/runs/compile"
grep -ci recompil "$OUT/compile.log" | sed 's/^/recompile lines: /'
step engine_suite 120 python3 -m pytest -q -p no:cacheprovider -n 8 -m "not slow" tests/engine
for r in epoch running time compile; do  # one line per run: best epoch and accuracy, wall time
    python3 -c "import json,sys; s=json.load(open(sys.argv[1])); print(sys.argv[2], {k: s.get(k) for k in
      ('best_epoch','best_val_acc','epochs_run','wall_seconds','train_images_per_s')})" \
      "$OUT/runs/$r/summary.json" "$r" 2>/dev/null
    { echo "# $r"; cat "$OUT/runs/$r/history.csv"; } >>"$OUT/histories.csv" 2>/dev/null
done
rm -rf "$OUT/runs"  # checkpoints stay behind: the tool brings back 8 files, the logs and one file of histories
