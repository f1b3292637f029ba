"""Our paper TopK SAE training step vs SAELens's stock TopK training SAE, side by side.

Both SAEs see the same batches (structured synthetic data, unit-norm) and are driven by the
same step, a copy of SAELens's ``SAETrainer._train_step`` (training_forward_pass, firing stats,
backward, grad clip, Adam step). Ours: ``PaperTopKTrainingSAE`` (decoder renorm + sparse
encode/decode with custom autograd, sae_bilingual/sae/kernels.py). Theirs: ``TopKTrainingSAE`` with its
default config (rescale_acts_by_decoder_norm=True, dense decode, aux-k loss). Steps are
interleaved (rotating who goes first) and the median step time of each is compared. After
the same steps on the same data both are scored on a held-out batch.

CPU default:  python benchmarks/bench_sae_step.py            (d=512 n=8192 K=32 B=4096)
GPU (paper):  python benchmarks/bench_sae_step.py --device cuda --d 3072 --n 32768 --k 32 \
                  --batch 32768 --dtype bf16
A third contender is SAELens at its fastest on the CPU (``use_sparse_activations=True``,
``rescale_acts_by_decoder_norm=False``). Last line:
``RATIO steps/s ours/saelens = X.XX ours/saelens_best = Y.YY``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from common import SyntheticData, TrainerState, machine_line, median, sync, timed, trainer_step  # noqa: E402

log = logging.getLogger("bench_sae_step")


def make_ours(d: int, n: int, k: int, device: str):
    from sae_bilingual.sae.model import new_paper_sae

    return new_paper_sae(d, k=k, d_sae=n, training=True, device=device, dtype="float32")


def make_saelens(d: int, n: int, k: int, device: str, **overrides):
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig

    cfg = TopKTrainingSAEConfig(d_in=d, d_sae=n, k=k, device=device, dtype="float32", **overrides)
    return TopKTrainingSAE(cfg)


def make_saelens_best(d: int, n: int, k: int, device: str):
    """SAELens's fastest CPU TopK: sparse activations, no decoder-norm rescaling."""
    return make_saelens(d, n, k, device, use_sparse_activations=True, rescale_acts_by_decoder_norm=False)


@torch.no_grad()
def eval_mse(sae, x: torch.Tensor, autocast_dtype: torch.dtype | None, chunk: int = 4096) -> float:
    """Mean over vectors of ||x - x_hat||^2 (inputs are unit-norm, so also ~FVU scale)."""
    from sae_lens.saes.sae import TrainStepInput

    tot = 0.0
    for s in range(0, x.shape[0], chunk):
        xb = x[s:s + chunk]
        ctx = (torch.autocast(device_type=xb.device.type, dtype=autocast_dtype)
               if autocast_dtype is not None else torch.autocast(xb.device.type, enabled=False))
        with ctx:
            out = sae.training_forward_pass(TrainStepInput(
                sae_in=xb, dead_neuron_mask=None, coefficients=sae.get_coefficients(),
                n_training_steps=0, is_logging_step=False))
        tot += float((out.sae_out.float() - xb.float()).pow(2).sum())
    return tot / x.shape[0]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--n", type=int, default=8192)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--steps", type=int, default=8, help="timed steps per SAE (after warm-up)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                   help="bf16 = torch.autocast(bf16) around the forward, fp32 weights (SAELens's autocast)")
    p.add_argument("--active", type=int, default=8, help="atoms per synthetic vector")
    p.add_argument("--eval-vectors", type=int, default=16384)
    p.add_argument("--only", choices=["all", *MAKERS], default="all")
    p.add_argument("--json", default=None, help="also write the result dict here")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    dev = a.device
    ac = torch.bfloat16 if a.dtype == "bf16" else None
    torch.manual_seed(a.seed)
    print(f"# {machine_line()}")
    print(f"# d={a.d} n={a.n} K={a.k} B={a.batch} steps={a.warmup}+{a.steps} lr={a.lr} "
          f"dtype={a.dtype} device={dev}")

    data = SyntheticData(d=a.d, n_atoms=a.n, active=a.active, seed=a.seed, device=dev)
    x_eval = data.batch(a.eval_vectors, seed=-1)

    names = list(MAKERS) if a.only == "all" else [a.only]
    ctxs = {nm: contextlib.nullcontext for nm in names}
    saes, opts, states, times, errors = {}, {}, {}, {k: [] for k in names}, {}
    for nm in names:
        torch.manual_seed(a.seed)
        saes[nm] = MAKERS[nm](a.d, a.n, a.k, dev)
        opts[nm] = torch.optim.Adam(saes[nm].parameters(), lr=a.lr)  # SAETrainer: Adam, default betas
        states[nm] = TrainerState(a.n, dev)
    mse0 = {}
    for nm in names:
        with ctxs[nm]():
            mse0[nm] = eval_mse(saes[nm], x_eval, ac)

    for step in range(a.warmup + a.steps):
        x = data.batch(a.batch, seed=step)
        r = step % len(names)  # rotate who goes first
        order = names[r:] + names[:r]
        for nm in order:
            if nm in errors:
                continue
            try:
                with ctxs[nm]():
                    dt, _ = timed(lambda nm=nm: trainer_step(saes[nm], opts[nm], x, states[nm], ac), dev)
            except torch.OutOfMemoryError as e:  # report, keep measuring the other one
                errors[nm] = f"OOM: {str(e).splitlines()[0]}"
                opts[nm].zero_grad(set_to_none=True)
                gc.collect()
                torch.cuda.empty_cache()
                continue
            if step >= a.warmup:
                times[nm].append(dt)
        x = None  # free the batch (the timed lambda refers to the name)
    sync(dev)

    res: dict = {"args": vars(a), "machine": machine_line(), "errors": errors}
    for nm in names:
        if nm in errors:
            print(f"{nm:8s} FAILED: {errors[nm]}")
            continue
        t = median(times[nm])
        with ctxs[nm]():
            mse = eval_mse(saes[nm], x_eval, ac)
        res[nm] = {"median_s": t, "steps_per_s": 1 / t, "min_s": min(times[nm]),
                   "max_s": max(times[nm]), "mse_init": mse0[nm], "mse_final": mse,
                   "vectors_per_s": a.batch / t}
        if dev.startswith("cuda"):
            res[nm]["max_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
        print(f"{nm:8s} median step {t * 1e3:9.1f} ms  ({1 / t:7.2f} steps/s, "
              f"{a.batch / t:,.0f} vec/s; min {min(times[nm]) * 1e3:.1f}, max {max(times[nm]) * 1e3:.1f})"
              f"  eval MSE {mse0[nm]:.4f} -> {mse:.4f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    if all(nm in res for nm in MAKERS):
        ratios = {nm: res[nm]["median_s"] / res["ours"]["median_s"] for nm in MAKERS if nm != "ours"}
        res["ratio"], res["ratio_best"] = ratios["saelens"], ratios["saelens_best"]
        for nm in ratios:
            ok = res["ours"]["mse_final"] <= res[nm]["mse_final"] + 1e-6
            print(f"final eval MSE after {a.warmup + a.steps} steps: ours {res['ours']['mse_final']:.5f} vs "
                  f"{nm} {res[nm]['mse_final']:.5f} ({'ours not worse' if ok else 'OURS WORSE'})")
        print(f"RATIO steps/s ours/saelens = {res['ratio']:.2f} ours/saelens_best = {res['ratio_best']:.2f}")
    return res


MAKERS = {"ours": make_ours, "saelens": make_saelens, "saelens_best": make_saelens_best}

if __name__ == "__main__":
    main()
