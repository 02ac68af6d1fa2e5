#!/usr/bin/env bash
# One call on a lent GPU machine (the device tool): CUDA tests, the recipe with both BatchNorm-statistics settings,
# a --time budget, --compile, the engine suite with a GPU present, torchrun with more ranks than GPUs, and the demo
# (train, evaluate, predict) with an ONNX export. Each step has its own time limit, so the whole stays inside one call;
# logs go to $OUT. STEPS="compile demo" runs only those. Needs TrashNet copied beside the repo first (it does not
# travel):
#   .venv/bin/python scripts/shrink_dataset.py ../shared/datasets/trashnet .gpudata/trashnet
# and the call names .gpudata in `carry`. Runs with the machine's own python3 (its torch), from the repo root.
set -u
OUT=${OUT:-/tmp/gpu_check}
DATA=${DATA:-.gpudata/trashnet}
EPOCHS=${EPOCHS:-20}  # the recipe's; a smoke run of the script on a CPU takes EPOCHS=1
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
STEPS=${STEPS:-cuda_tests recipe_epoch recipe_running time_budget compile engine_suite torchrun demo}
step() {  # step NAME SECONDS CMD...: runs CMD with a limit, logs to $OUT/NAME.log, prints its tail and time
    local name=$1 limit=$2 t0=$SECONDS
    shift 2
    [[ " $STEPS " == *" $name "* ]] || return 0
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
grep -ci recompil "$OUT/compile.log" 2>/dev/null | sed 's/^/recompile lines: /'
step engine_suite 120 python3 -m pytest -q -p no:cacheprovider -n 8 -m "not slow" tests/engine
# One GPU, two ranks: every rank should stop with the same one-line advice, at once.
TAIL=3 step torchrun 60 python3 -m torch.distributed.run --standalone --nproc-per-node 2 -m resnetlab train "$DATA" \
    --epochs 1 --out "$OUT/runs/torchrun"
grep -c "resnetlab train: error: torchrun started 2 processes" "$OUT/torchrun.log" 2>/dev/null | sed 's/^/ranks that said it: /'
TAIL=8 step demo 150 bash -c "python3 -m resnetlab demo --out '$OUT/runs/demo' &&
    python3 -m resnetlab export '$OUT/runs/demo' --check-images demo/trashnet-mini"
for r in epoch running time compile; do  # one line per run: best epoch and accuracy, wall time
    python3 -c "import json,sys; s=json.load(open(sys.argv[1])); print(sys.argv[2], {k: s.get(k) for k in
      ('best_epoch','best_val_acc','epochs_run','wall_seconds','train_images_per_s')})" \
      "$OUT/runs/$r/summary.json" "$r" 2>/dev/null
    { echo "# $r"; cat "$OUT/runs/$r/history.csv"; } >>"$OUT/histories.csv" 2>/dev/null
done
rm -rf "$OUT/runs"  # checkpoints stay behind
tar czf "$OUT/logs.tgz" -C "$OUT" --remove-files $(cd "$OUT" && ls *.log histories.csv 2>/dev/null)  # 8 files come back
