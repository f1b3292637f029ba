#!/usr/bin/env bash
# Second GPU call: profiler tables of the SAE step and the GPU roofline (see README "GPU run").
set -u
OUT=${OUT:-/tmp/bench_out}; mkdir -p "$OUT"; export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
mkdir -p /tmp/stub/wandb; python3 -c "import wandb" 2>/dev/null || printf '__version__ = "0.0.0"\n' > /tmp/stub/wandb/__init__.py
export PYTHONPATH=/tmp/stub:/tmp/site:$PWD
S="--device cuda --d 3072 --n 32768 --batch 32768"
for w in ours saelens; do python3 benchmarks/profile_sae_step.py $S --dtype bf16 --which $w 2>&1 | grep -v Warn | tee "$OUT/profile_${w}_bf16.txt"; done
python3 benchmarks/bench_roofline.py $S --dtype bf16 --out "$OUT/roofline_h100_bf16.png" --json "$OUT/roofline_bf16.json" | tee "$OUT/roofline_bf16.txt"
python3 benchmarks/bench_roofline.py $S --dtype fp32 --out "$OUT/roofline_h100_fp32.png" --json "$OUT/roofline_fp32.json" | tee "$OUT/roofline_fp32.txt"
