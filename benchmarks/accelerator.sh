#!/usr/bin/env bash
# The benchmarks as run on an accelerator host, results into DIR (default benchmarks/results/gpu).
#   bash benchmarks/accelerator.sh [DIR]
# Each part is bounded in time so one slow part cannot take the others' turn.
set -u
out=${1:-benchmarks/results/gpu}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python3 -c "import jax; print(jax.__version__, jax.devices())"
timeout 170 python3 benchmarks/train_step.py --out "$out/train_step.json"
timeout 120 python3 benchmarks/train_step.py --batch 64 --size 256 --no-compile --out "$out/train_step_b64_256.json"
timeout 60 python3 benchmarks/scaling.py --devices 1 --out "$out/scaling.json"
# smp's architectures in bfloat16 on both sides; torch.compile left out to stay in the budget.
timeout 110 python3 benchmarks/models.py --dtype bfloat16 --no-compile --out "$out/models.json"
