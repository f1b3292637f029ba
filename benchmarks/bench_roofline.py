"""Roofline of this machine and where our SAE encode sits on it.

Measures, interleaved (repeats alternate, medians reported):
* sgemm peak: torch.mm of two large square fp32 matrices into a reused output buffer;
* memory bandwidth: a large tensor copy (bytes read + bytes written);
* our SAE encode: ``pre = x @ W_enc`` (B x d @ d x n, reused output buffer, as
  ``sae_bilingual.sae.kernels.pre_activation`` computes it) alone, and followed by ``torch.topk(pre, K)``.
Writes ``benchmarks/roofline.png`` (achieved GFLOP/s vs arithmetic intensity, with the compute
roof and the bandwidth roof). Target: encode (matmul + topk) >= 50% of sgemm.

    python benchmarks/bench_roofline.py                 # CPU, d=512 n=8192 K=32 B=4096
    python benchmarks/bench_roofline.py --device cuda --d 3072 --n 32768 --batch 32768 --dtype bf16
Last line: ``RATIO encode/sgemm = X.XX``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from common import machine_line, sync  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--n", type=int, default=8192)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--square", type=int, default=None, help="sgemm size (default 2048 CPU, 8192 GPU)")
    p.add_argument("--copy-mb", type=int, default=None, help="copy size (default 512 CPU, 4096 GPU)")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--out", default=os.path.join(HERE, "roofline.png"))
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    dev = a.device
    gpu = dev.startswith("cuda")
    dt = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    es = torch.finfo(dt).bits // 8
    N = a.square or (8192 if gpu else 2048)
    copy_elems = (a.copy_mb or (4096 if gpu else 512)) * 2**20 // 4
    print(f"# {machine_line()}")
    print(f"# sgemm {N}^3 {a.dtype}; copy {copy_elems * 4 / 2**20:.0f} MiB; encode B={a.batch} d={a.d} "
          f"n={a.n} K={a.k}")

    g = torch.Generator(device=dev).manual_seed(0)
    A = torch.randn(N, N, device=dev, generator=g).to(dt)
    Bm = torch.randn(N, N, device=dev, generator=g).to(dt)
    C = torch.empty(N, N, device=dev, dtype=dt)
    src = torch.randn(copy_elems, device=dev, generator=g)
    dst = torch.empty_like(src)
    x = torch.randn(a.batch, a.d, device=dev, generator=g)
    x = (x / x.norm(dim=-1, keepdim=True)).to(dt)
    W = torch.randn(a.d, a.n, device=dev, generator=g)
    W = (W / W.norm(dim=0, keepdim=True)).to(dt)
    pre = torch.empty(a.batch, a.n, device=dev, dtype=dt)

    def t(fn) -> float:
        sync(dev)
        t0 = time.perf_counter()
        fn()
        sync(dev)
        return time.perf_counter() - t0

    jobs = {
        "sgemm": lambda: torch.mm(A, Bm, out=C),
        "copy": lambda: dst.copy_(src),
        "encode_mm": lambda: torch.mm(x, W, out=pre),
        "encode_mm_topk": lambda: torch.topk(torch.mm(x, W, out=pre), a.k, dim=-1, sorted=False),
        "topk": lambda: torch.topk(pre, a.k, dim=-1, sorted=False),
    }
    for fn in jobs.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in jobs}
    for r in range(a.reps):
        names = list(jobs) if r % 2 == 0 else list(jobs)[::-1]
        for nm in names:
            times[nm].append(t(jobs[nm]))
    med = {k: statistics.median(v) for k, v in times.items()}

    B, d, n = a.batch, a.d, a.n
    flops = {"sgemm": 2 * N**3, "encode_mm": 2 * B * d * n, "encode_mm_topk": 2 * B * d * n, "copy": 0,
             "topk": 0}
    bytes_ = {"sgemm": 3 * N * N * es, "copy": 2 * copy_elems * 4,
              "encode_mm": (B * d + d * n + B * n) * es,
              "encode_mm_topk": (B * d + d * n + 2 * B * n) * es + B * a.k * 12,
              "topk": B * n * es + B * a.k * 12}
    res = {"machine": machine_line(), "args": vars(a), "median_s": med}
    peak = flops["sgemm"] / med["sgemm"] / 1e9
    bw = bytes_["copy"] / med["copy"] / 1e9
    res.update(sgemm_gflops=peak, copy_gbs=bw)
    print(f"{'op':16s} {'median ms':>10s} {'GFLOP/s':>10s} {'GB/s':>9s} {'FLOP/byte':>10s}")
    pts = {}
    for k in jobs:
        gf = flops[k] / med[k] / 1e9
        gbs = bytes_[k] / med[k] / 1e9
        ai = flops[k] / bytes_[k]
        pts[k] = (ai, gf)
        res[k] = {"gflops": gf, "gbs": gbs, "intensity": ai}
        print(f"{k:16s} {med[k] * 1e3:10.2f} {gf:10.1f} {gbs:9.1f} {ai:10.1f}")
    frac_mm = pts["encode_mm"][1] / peak
    frac = pts["encode_mm_topk"][1] / peak
    res.update(encode_mm_frac=frac_mm, encode_frac=frac)
    print(f"sgemm peak {peak:.1f} GFLOP/s; copy bandwidth {bw:.1f} GB/s; ridge {peak / bw:.1f} FLOP/byte")
    print(f"encode matmul alone: {frac_mm:.0%} of sgemm; matmul + topk: {frac:.0%} "
          f"(topk = {med['topk'] / med['encode_mm_topk']:.0%} of the encode)")
    try:
        _plot(pts, peak, bw, a, res)
    except Exception as e:  # the numbers matter more than the figure
        print(f"figure not written: {e}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1, default=str)
    print(f"RATIO encode/sgemm = {frac:.2f}")
    return res


def _plot(pts, peak, bw, a, res) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ai = np.logspace(-1, 4, 200)
    ax.loglog(ai, np.minimum(peak, bw * ai), "k-", lw=1.5, label=f"roof: {peak:.0f} GFLOP/s, {bw:.0f} GB/s")
    for k, mk in [("sgemm", "s"), ("encode_mm", "o"), ("encode_mm_topk", "D")]:
        x, y = pts[k]
        ax.loglog([x], [y], mk, ms=8, label=f"{k}: {y:.0f} GFLOP/s ({y / peak:.0%})")
    ax.set_xlabel("arithmetic intensity (FLOP/byte)")
    ax.set_ylabel(f"achieved GFLOP/s ({a.dtype})")
    ax.set_title(f"{a.device}: SAE encode B={a.batch} d={a.d} n={a.n} K={a.k}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(a.out, dpi=110)
    plt.close(fig)
    res["figure"] = a.out
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
