"""Benchmark: analyse_features on 1M code vectors (K=32, n=16,384) vs encoding them.

Encoding 1M d=512 vectors with a 16,384-latent TopK encoder is ~1.7e13 FLOPs, minutes on
2 CPU cores, so by default it is timed on --encode-rows vectors (chunked matmul + topk,
the same work per row) and scaled linearly to 1M; pass --encode-rows 0 to encode all.

The semantic clusters are the paper's per-feature ones: a token graph (cos > --threshold)
over synthetic embeddings in which tokens of one of 4,000 concepts point the same way
(plus noise, so unrelated tokens still cross the threshold now and then), and each
feature's components of its own active tokens inside analyse_features. The clustering
cost is the graph build plus analyse_features with the graph minus analyse_features with
a fixed token -> cluster array. The last two lines print
`ratio clustering/encode = X` and `ratio analysis/encode = Y`.

    .venv/bin/python benchmarks/bench_analysis.py [--rows 1000000] [--encode-rows 32768]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from sae_bilingual.config_analysis import AnalysisSpec
from sae_bilingual.analysis.features import analyse_features
from sae_bilingual.analysis.codes import Codes
from sae_bilingual.analysis.semantic import token_graph_from_embeddings


def synthetic_codes(m: int, k: int, n: int, seed: int = 0, doc_len: int = 64, vocab: int = 17_664) -> Codes:
    """Codes with realistic structure: Zipf feature popularity, Zipf tokens, documents of
    `doc_len` tokens in two languages, and features that persist over neighbouring tokens."""
    assert n & (n - 1) == 0, "n must be a power of two (distinct strided ids)"
    rng = np.random.default_rng(seed)
    doc = np.arange(m) // doc_len
    pos = np.arange(m) % doc_len
    base = (rng.zipf(1.3, m) - 1) % n
    stride = 2 * rng.integers(0, n // 2, m) + 1
    keep = (rng.random(m) < 0.5) & (pos > 0)  # half the rows repeat the previous row's set
    src = np.where(keep, 0, np.arange(m))
    np.maximum.accumulate(src, out=src)
    base, stride = base[src], stride[src]
    idx = ((base[:, None] + np.arange(k)[None, :] * stride[:, None]) % n).astype(np.int32)
    val = rng.exponential(1.0, (m, k)).astype(np.float32)
    tok = (rng.zipf(1.2, m) - 1) % vocab
    lang = (doc % 2).astype(np.int64)
    perm = rng.permutation(m)  # codes arrive shuffled (as from a shuffled activation store)
    return Codes(idx[perm], val[perm], tok[perm], lang[perm], doc[perm], pos[perm], ("en", "ja"))


def concept_embeddings(vocab: int, d: int, concepts: np.ndarray, noise: float = 1.0, seed: int = 2) -> np.ndarray:
    """Token embeddings: their concept's direction plus Gaussian noise of the same norm."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(int(concepts.max()) + 1, d)).astype(np.float32)
    return centers[concepts] + noise * rng.normal(size=(vocab, d)).astype(np.float32)


@torch.no_grad()
def time_encode(rows: int, d: int, n: int, k: int, chunk: int = 4096) -> float:
    g = torch.Generator().manual_seed(0)
    W = torch.randn(d, n, generator=g) / d**0.5
    b = torch.zeros(d)
    x = torch.nn.functional.normalize(torch.randn(chunk, d, generator=g), dim=1)
    t = time.perf_counter()
    done = 0
    while done < rows:
        c = min(chunk, rows - done)
        v, i = torch.topk((x[:c] - b) @ W, k, dim=-1)
        done += c
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--n", type=int, default=16_384)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--encode-rows", type=int, default=32_768, help="0 = encode all rows")
    ap.add_argument("--emb-d", type=int, default=512, help="width of the synthetic token embeddings")
    ap.add_argument("--threshold", type=float, default=0.1, help="cosine threshold of the token graph")
    a = ap.parse_args()
    print(f"torch threads: {torch.get_num_threads()}")
    t = time.perf_counter()
    codes = synthetic_codes(a.rows, a.k, a.n)
    print(f"synthetic codes {a.rows} x K={a.k}, n={a.n}: built in {time.perf_counter() - t:.1f} s")
    vocab = 17_664
    clusters = np.random.default_rng(1).integers(0, 4000, vocab)
    t = time.perf_counter()
    df_fixed = analyse_features(codes, a.n, token_clusters=clusters, cfg=AnalysisSpec())
    t_fixed = time.perf_counter() - t
    E = concept_embeddings(vocab, a.emb_d, clusters)
    t = time.perf_counter()
    graph = token_graph_from_embeddings(E, a.threshold, token_ids=np.unique(codes.token_id))
    t_graph = time.perf_counter() - t
    t = time.perf_counter()
    df = analyse_features(codes, a.n, token_clusters=graph, cfg=AnalysisSpec())
    t_an = time.perf_counter() - t
    t_cluster = t_graph + max(0.0, t_an - t_fixed)
    print(f"analyse_features, fixed clusters: {t_fixed:.2f} s  ({int(df_fixed['dead'].sum())} dead, "
          f"mean span {df_fixed['span_mean'].mean():.2f}, frac mixed {(df_fixed['cls'] == 'mixed').mean():.3f})")
    print(f"token graph ({a.emb_d}-d, cos > {a.threshold}): {graph.n_edges} edges in {t_graph:.2f} s")
    print(f"analyse_features, per-feature clusters: {t_an:.2f} s  (mean R {df['R'].mean():.3f} vs "
          f"{df_fixed['R'].mean():.3f} with the fixed partition)")
    enc_rows = a.rows if a.encode_rows <= 0 else min(a.encode_rows, a.rows)
    t_enc_part = time_encode(enc_rows, a.d, a.n, a.k)
    t_enc = t_enc_part * a.rows / enc_rows
    how = "measured" if enc_rows == a.rows else f"{t_enc_part:.2f} s for {enc_rows} rows, scaled x{a.rows / enc_rows:.1f}"
    print(f"encode (d={a.d} matmul + top-{a.k}, chunked): {t_enc:.2f} s for {a.rows} rows ({how})")
    print(f"ratio clustering/encode = {t_cluster / t_enc:.3f}")
    print(f"ratio analysis/encode = {(t_graph + t_an) / t_enc:.3f}")


if __name__ == "__main__":
    main()
