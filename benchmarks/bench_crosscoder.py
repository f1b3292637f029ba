"""One BatchTopK crosscoder over C checkpoints vs C per-checkpoint paper TopK SAEs, side by side.

Both see the same aligned rows (synthetic: shared atoms with one direction per checkpoint plus
checkpoint-exclusive atoms, each slice unit-norm) and are driven by the same step, a copy of
SAELens's ``SAETrainer._train_step`` (common.trainer_step); steps are interleaved, rotating who
goes first. Compared at the SAME TOTAL NUMBER OF LATENTS (the issue's rule for FVU): each SAE
has n latents and K per vector, the crosscoder C x n latents and k = C x K per row (the same
active latents per token over all checkpoints). A "C SAEs step" is one step of each of the C
SAEs on its slice of the batch. After the same steps both are scored on held-out rows: FVU per
checkpoint slice (the crosscoder by its inference threshold).

CPU default:  python benchmarks/bench_crosscoder.py   (C=3 d=128 n=1024 K=16 B=2048)
Last line: ``RATIO step time crosscoder/C_saes = X.XX fvu crosscoder/saes worst slice = Y.YY``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from common import TrainerState, machine_line, median, sync, timed, trainer_step  # noqa: E402


class AlignedSynthetic:
    """Rows [B, C*d]: ``active`` atoms per row from shared atoms (a direction per checkpoint) and
    exclusive atoms (one checkpoint only), plus an offset and noise; each slice L2-normalised."""

    def __init__(self, C: int, d: int, n_shared: int, n_excl: int, active: int, seed: int, device: str):
        g = torch.Generator().manual_seed(seed)
        n_atoms = n_shared + C * n_excl
        dirs = torch.zeros(n_atoms, C, d)
        dirs[:n_shared] = torch.randn(n_shared, C, d, generator=g)
        for c in range(C):
            dirs[n_shared + c * n_excl: n_shared + (c + 1) * n_excl, c] = torch.randn(n_excl, d, generator=g)
        self.dirs = (dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)).reshape(n_atoms, C * d).to(device)
        b = torch.randn(C, d, generator=g)
        self.bias = (0.5 * b / b.norm(dim=-1, keepdim=True)).reshape(-1).to(device)
        self.C, self.d, self.n_atoms, self.active, self.device = C, d, n_atoms, active, device

    @torch.no_grad()
    def batch(self, B: int, seed: int) -> torch.Tensor:
        g = torch.Generator(device=self.device).manual_seed(10_000 + seed)
        idx = torch.randint(self.n_atoms, (B, self.active), generator=g, device=self.device)
        c = torch.rand(B, self.active, generator=g, device=self.device) + 0.1
        x = F.embedding_bag(idx, self.dirs, per_sample_weights=c, mode="sum") + self.bias
        x += 0.02 * torch.randn(B, self.C * self.d, generator=g, device=self.device)
        v = x.view(B, self.C, self.d)
        return (v / v.norm(dim=-1, keepdim=True)).reshape(B, -1)


def slice_fvu(x: torch.Tensor, rec: torch.Tensor) -> float:
    """sum ||x - rec||^2 / sum ||x - mean x||^2 (ReconstructionStats' FVU)."""
    x, rec = x.double(), rec.double()
    return float((x - rec).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


@torch.no_grad()
def gemm_floor(a: argparse.Namespace, dev: str, repeats: int = 7) -> dict[str, float]:
    """Median time of the dense encoder product alone, (B, C d) @ (C d, C n) for the crosscoder and
    C x (B, d) @ (d, n) for the SAEs, interleaved: the part of a step no sparse kernel removes."""
    C, d, n, B = a.C, a.d, a.n, a.batch
    xc, wc = torch.randn(B, C * d, device=dev), torch.randn(C * d, C * n, device=dev)
    xs, ws = torch.randn(B, d, device=dev), torch.randn(d, n, device=dev)
    oc, os_ = torch.empty(B, C * n, device=dev), torch.empty(B, n, device=dev)
    fns = {"crosscoder": lambda: torch.matmul(xc, wc, out=oc),
           "saes": lambda: [torch.matmul(xs, ws, out=os_) for _ in range(C)]}
    ts: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(repeats + 1):
        for nm in (list(fns) if r % 2 else list(fns)[::-1]):
            dt, _ = timed(fns[nm], dev)
            if r:
                ts[nm].append(dt)
    return {k: median(v) for k, v in ts.items()}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--C", type=int, default=3)
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--n", type=int, default=1024, help="latents per SAE (crosscoder: C x n)")
    p.add_argument("--k", type=int, default=16, help="K per SAE (crosscoder: k = C x K per row)")
    p.add_argument("--batch", type=int, default=2048)
    p.add_argument("--steps", type=int, default=150, help="steps for each contender (all timed after warm-up)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--active", type=int, default=12, help="atoms per synthetic row")
    p.add_argument("--eval-rows", type=int, default=8192)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    p.add_argument("--json", default=None)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    from sae_bilingual.sae.crosscoder import PaperCrosscoderTraining, to_inference
    from sae_bilingual.sae.crosscoder_config import PaperCrosscoderTrainingConfig
    from sae_bilingual.sae.crosscoder_train import calibrate_threshold
    from sae_bilingual.sae.model import new_paper_sae
    from sae_bilingual.sae.model import to_inference as sae_to_inference

    dev, C, d = a.device, a.C, a.d
    print(f"# {machine_line()}")
    print(f"# C={C} d={d} SAEs: {C} x (n={a.n}, K={a.k}); crosscoder: n={C * a.n}, k={C * a.k}; "
          f"B={a.batch} steps={a.warmup}+{a.steps} lr={a.lr} device={dev}")
    data = AlignedSynthetic(C, d, n_shared=a.n // 2, n_excl=a.n // 4, active=a.active, seed=a.seed, device=dev)
    torch.manual_seed(a.seed)
    saes = [new_paper_sae(d, k=a.k, d_sae=a.n, training=True, device=dev) for _ in range(C)]
    cc = PaperCrosscoderTraining(PaperCrosscoderTrainingConfig(d_in=C * d, d_sae=C * a.n, n_checkpoints=C,
                                                               k=C * a.k, device=dev))
    opt_s = [torch.optim.Adam(s.parameters(), lr=a.lr) for s in saes]
    opt_c = torch.optim.Adam(cc.parameters(), lr=a.lr)
    st_s = [TrainerState(a.n, dev) for _ in range(C)]
    st_c = TrainerState(C * a.n, dev)

    def saes_step(x: torch.Tensor) -> None:
        for c in range(C):
            trainer_step(saes[c], opt_s[c], x[:, c * d:(c + 1) * d].contiguous(), st_s[c], None)

    def cc_step(x: torch.Tensor) -> None:
        trainer_step(cc, opt_c, x, st_c, None)

    contenders = {"saes": saes_step, "crosscoder": cc_step}
    times: dict[str, list[float]] = {nm: [] for nm in contenders}
    for step in range(a.warmup + a.steps):
        x = data.batch(a.batch, seed=step)
        names = list(contenders)
        r = step % len(names)
        for nm in names[r:] + names[:r]:
            dt, _ = timed(lambda nm=nm: contenders[nm](x), dev)
            if step >= a.warmup:
                times[nm].append(dt)
    sync(dev)

    x_eval = data.batch(a.eval_rows, seed=-1)
    inf_c = to_inference(cc)
    with torch.no_grad():
        l0_ema = float(inf_c.reconstruct(x_eval)[1].float().mean())
        calibrate_threshold(cc, inf_c)  # as train_crosscoder does
        rec_c, counts, _ = inf_c.reconstruct(x_eval)
        fvu_c = [slice_fvu(x_eval[:, c * d:(c + 1) * d], rec_c[:, c * d:(c + 1) * d]) for c in range(C)]
        fvu_s = []
        for c in range(C):
            inf = sae_to_inference(saes[c])
            u = x_eval[:, c * d:(c + 1) * d]
            fvu_s.append(slice_fvu(u, inf.decode_normalized(inf.encode_normalized(u))))
    res = {"args": vars(a), "machine": machine_line(), "gemm": gemm_floor(a, dev)}
    for nm in contenders:
        t = median(times[nm])
        res[nm] = {"median_s": t, "min_s": min(times[nm]), "max_s": max(times[nm]), "rows_per_s": a.batch / t}
        print(f"{nm:10s} median step {t * 1e3:9.1f} ms  ({a.batch / t:,.0f} rows/s; min {min(times[nm]) * 1e3:.1f},"
              f" max {max(times[nm]) * 1e3:.1f})")
    res["fvu_crosscoder"], res["fvu_saes"] = fvu_c, fvu_s
    res["crosscoder_l0"], res["crosscoder_l0_ema"] = float(counts.float().mean()), l0_ema
    print("FVU per slice after the same steps: crosscoder " + " ".join(f"{v:.4f}" for v in fvu_c)
          + " | SAEs " + " ".join(f"{v:.4f}" for v in fvu_s)
          + f"  (crosscoder L0 {res['crosscoder_l0']:.1f} per row with the calibrated threshold, "
          f"{l0_ema:.1f} with the EMA; SAEs {C * a.k})")
    g = res["gemm"]
    print(f"encoder GEMM floor: crosscoder {g['crosscoder'] * 1e3:.1f} ms, C SAEs {g['saes'] * 1e3:.1f} ms; "
          f"step / floor: crosscoder {res['crosscoder']['median_s'] / g['crosscoder']:.2f}, "
          f"SAEs {res['saes']['median_s'] / g['saes']:.2f}")
    res["ratio"] = res["crosscoder"]["median_s"] / res["saes"]["median_s"]
    res["fvu_ratio_worst"] = max(fc / fs for fc, fs in zip(fvu_c, fvu_s))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    print(f"RATIO step time crosscoder/C_saes = {res['ratio']:.2f} "
          f"fvu crosscoder/saes worst slice = {res['fvu_ratio_worst']:.2f}")
    return res


if __name__ == "__main__":
    main()
