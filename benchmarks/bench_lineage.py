"""Benchmark: matching two SAEs' codes (n = 32,768 latents, K = 32) over 1M eval tokens.

Synthetic, correlated codes: every row draws a "topic" (2,048 topics); a topic owns 64
features and a row selects 32 distinct ones of them. SAE B is SAE A with its features
permuted and 20% of the entries replaced (noise). Target: under 60 s on 2 cores.

    .venv/bin/python benchmarks/bench_lineage.py [--rows 1000000] [--n 32768] [--k 32]

The last line prints the seconds and their ratio to the 60 s target.
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np


def synthetic_pair(m: int, n: int, k: int, seed: int = 0):
    """Two Codes over the same rows with known correspondence (B = perm(A) + noise)."""
    from sae_bilingual.analysis.codes import Codes

    rng = np.random.default_rng(seed)
    pool = 64
    topics = 2048
    fid = rng.permutation(n)
    topic = rng.integers(0, topics, m)
    start = rng.integers(0, pool, m)
    stride = 2 * rng.integers(0, pool // 2, m) + 1  # odd: the k offsets are distinct mod 64
    slot = (start[:, None] + stride[:, None] * np.arange(k)[None, :]) % pool
    idx_a = fid[(topic[:, None] * pool + slot) % n].astype(np.int32)
    val = rng.uniform(0.05, 1.0, (m, k)).astype(np.float32)
    noisy = rng.random((m, k)) < 0.2
    idx_b = np.where(noisy, fid[(topic[:, None] * pool + slot + n // 2) % n], idx_a)
    perm = rng.permutation(n)
    idx_b = perm[idx_b].astype(np.int32)
    lab = dict(token_id=np.zeros(m, np.int64), lang=rng.integers(0, 2, m), doc_id=np.arange(m) // 64,
               position=np.arange(m) % 64)
    return Codes(idx_a, val, **lab), Codes(idx_b, val, **lab), perm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--n", type=int, default=32768)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--block", type=int, default=1024)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from sae_bilingual.analysis.matching import MatchConfig, match_codes

    t = time.perf_counter()
    a, b, perm = synthetic_pair(args.rows, args.n, args.k)
    print(f"synthetic codes: {args.rows:,} rows x K={args.k}, n={args.n:,} ({time.perf_counter() - t:.1f} s)")
    t0 = time.perf_counter()
    res = match_codes(a, b, args.n, args.n, MatchConfig(block=args.block))
    sec = time.perf_counter() - t0
    one = res.one_to_one
    live = np.flatnonzero(res.n_a > 0)
    hit = np.mean(one.set_index("feature_a")["feature_b"].reindex(live).to_numpy() == perm[live])
    print("phases: " + ", ".join(f"{k} {v:.1f} s" for k, v in res.seconds.items()))
    print(f"candidates {len(res.candidates):,}, one-to-one {len(one):,}, recovered permutation "
          f"{hit:.4f} of {live.size:,} live features, mean one-to-one Jaccard {one['jaccard'].mean():.3f}")
    print(f"match_codes n={args.n} M={args.rows} K={args.k}: {sec:.1f} s, ratio to 60 s target {sec / 60:.2f}")


if __name__ == "__main__":
    main()
