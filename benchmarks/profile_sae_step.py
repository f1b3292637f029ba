"""Where our SAE training step spends its time: torch.profiler table of a few steps.

    python benchmarks/profile_sae_step.py --device cuda --d 3072 --n 32768 --batch 32768 --dtype bf16
Prints the top ops by device (CUDA) or CPU self time; used to pick kernel changes for sae/kernels.py.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from bench_sae_step import make_ours, make_saelens  # noqa: E402
from common import SyntheticData, TrainerState, sync, trainer_step  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cpu")
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--n", type=int, default=8192)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--which", default="ours", choices=["ours", "saelens"])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--rows", type=int, default=22)
    a = p.parse_args()
    ac = torch.bfloat16 if a.dtype == "bf16" else None
    data = SyntheticData(d=a.d, n_atoms=a.n, device=a.device)
    sae = (make_ours if a.which == "ours" else make_saelens)(a.d, a.n, a.k, a.device)
    opt = torch.optim.Adam(sae.parameters(), lr=5e-4)
    st = TrainerState(a.n, a.device)
    x = data.batch(a.batch, 0)
    for _ in range(2):
        trainer_step(sae, opt, x, st, ac)
    sync(a.device)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if a.device.startswith("cuda") else [])
    with profile(activities=acts, record_shapes=True) as prof:
        for _ in range(a.steps):
            trainer_step(sae, opt, x, st, ac)
        sync(a.device)
    key = "self_cuda_time_total" if a.device.startswith("cuda") else "self_cpu_time_total"
    print(f"# {a.which} {a.dtype} d={a.d} n={a.n} K={a.k} B={a.batch}, {a.steps} steps")
    print(prof.key_averages(group_by_input_shape=True).table(sort_by=key, row_limit=a.rows,
                                                             max_name_column_width=45,
                                                             max_shapes_column_width=70))


if __name__ == "__main__":
    main()
