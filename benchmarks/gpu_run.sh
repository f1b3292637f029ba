#!/usr/bin/env bash
# GPU benchmarks in one device call (see benchmarks/README.md). Run from the repo root on a
# machine whose python3 has CUDA torch + transformers; sae-lens / transformer-lens and their
# missing pure-python deps come as wheels in .whl/ (README: "GPU run"). wandb is only imported
# (never used) by sae_lens/accelerate, so a stub stands in for it instead of a 20 MB wheel.
set -u
OUT=${OUT:-/tmp/bench_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
mkdir -p /tmp/stub/wandb
python3 -c "import wandb" 2>/dev/null || printf '__version__ = "0.0.0"\n' > /tmp/stub/wandb/__init__.py
export PYTHONPATH=/tmp/stub:/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers, sae_lens, transformer_lens; print('torch', torch.__version__, 'transformers', transformers.__version__, 'sae_lens', sae_lens.__version__)" 2>&1 | grep -v Warn | tee -a "$OUT/gpu.txt"
P="--device cuda --d 3072 --n 32768 --k 32 --batch 32768 --steps ${STEPS:-12} --warmup 3 --lr 5e-4"
python3 benchmarks/bench_sae_step.py $P --dtype bf16 --json "$OUT/sae_step_bf16.json" 2>&1 | grep -v Warn | tee "$OUT/sae_step_bf16.txt"
python3 benchmarks/bench_sae_step.py $P --dtype fp32 --json "$OUT/sae_step_fp32.json" 2>&1 | grep -v Warn | tee "$OUT/sae_step_fp32.txt"
python3 benchmarks/bench_lm_forward.py --device cuda --batch ${LM_BATCH:-256} --impl hf,tl --json "$OUT/lm_forward.json" 2>&1 | grep -v Warn | tee "$OUT/lm_forward.txt"
echo "== summary"; tail -n 2 "$OUT"/sae_step_*.txt; tail -n 3 "$OUT/lm_forward.txt"
