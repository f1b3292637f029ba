"""Per-feature semantic clusters (the paper's C_i): hand-worked answers and a brute-force reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.sparse.csgraph import connected_components

import sae_bilingual.analysis.semantic as sem
from sae_bilingual.config_analysis import AnalysisSpec
from sae_bilingual.analysis.features import analyse_features
from sae_bilingual.analysis.codes import Codes
from sae_bilingual.errors import DataError
from sae_bilingual.analysis.semantic import (
    TokenGraph,
    feature_token_components,
    token_clusters_from_embeddings,
    token_graph_from_embeddings,
)

A, B, C = 0, 1, 2
CHAIN_E = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=np.float32)  # cos(a,b)=0, cos(a,c)=cos(b,c)=.71


def codes_of(rows: list[tuple[int, list[tuple[int, float]]]]) -> Codes:
    """rows: (token, [(feature, value), ...]) in one English document, consecutive positions."""
    k = max(len(r[1]) for r in rows)
    idx = np.array([[f for f, _ in fv] for _, fv in rows])
    val = np.array([[v for _, v in fv] for _, fv in rows], dtype=np.float32)
    assert idx.shape == (len(rows), k)
    m = len(rows)
    return Codes(idx=idx, val=val, token_id=np.array([t for t, _ in rows]), lang=np.zeros(m, np.int64),
                 doc_id=np.zeros(m, np.int64), position=np.arange(1, m + 1), languages=("en", "ja"))


def test_chain_through_a_token_of_another_feature():
    # feature 0 fires once on a and once on b; c occurs only under feature 1
    codes = codes_of([(A, [(0, 1.0)]), (B, [(0, 1.0)]), (C, [(1, 1.0)])])
    graph = token_graph_from_embeddings(CHAIN_E, threshold=0.1)
    assert graph.n_edges == 2  # a-c and b-c, not a-b
    df = analyse_features(codes, 2, token_clusters=graph)
    assert df.loc[0, "H_tok"] == pytest.approx(math.log(2))
    assert df.loc[0, "H_sem"] == pytest.approx(math.log(2))  # C_0 = {a}, {b}
    assert df.loc[0, "R"] == pytest.approx(0.0)
    assert df.loc[1, "R"] == 1.0  # one token: H_tok = 0
    # the global scope (kept as a named option) chains a-c-b into one cluster: H_sem = 0, R = 1
    glob = analyse_features(codes, 2, token_clusters=token_clusters_from_embeddings(CHAIN_E, 0.1))
    assert glob.loc[0, "H_sem"] == pytest.approx(0.0) and glob.loc[0, "R"] == pytest.approx(1.0)


def test_two_clusters_joined_only_through_an_inactive_token():
    # feature 0 is selected on c too, but at 0.5 <= 0.7 x max: c is not among its active tokens
    rows = [(A, [(0, 1.0)]), (B, [(0, 1.0)]), (C, [(0, 0.5)])]
    graph = token_graph_from_embeddings(CHAIN_E, threshold=0.1)
    df = analyse_features(codes_of(rows), 1, token_clusters=graph)
    assert df.loc[0, "n_active"] == 2
    assert df.loc[0, "H_sem"] == pytest.approx(math.log(2)) and df.loc[0, "R"] == pytest.approx(0.0)
    # once c is active (0.9 > 0.7) it joins a and b: one cluster, H_sem = 0, R = 1
    rows[2] = (C, [(0, 0.9)])
    df = analyse_features(codes_of(rows), 1, token_clusters=graph)
    assert df.loc[0, "H_tok"] == pytest.approx(math.log(3))
    assert df.loc[0, "H_sem"] == pytest.approx(0.0) and df.loc[0, "R"] == pytest.approx(1.0)


def test_weighted_clusters_hand():
    # feature 0: a twice, c once, b once; with c active all three are one cluster; the
    # feature-1-only token d (parallel to a) must not matter
    E = np.vstack([CHAIN_E, [[2.0, 0.0]]]).astype(np.float32)
    rows = [(A, [(0, 1.0)]), (A, [(0, 1.0)]), (B, [(0, 1.0)]), (3, [(1, 1.0)])]
    df = analyse_features(codes_of(rows), 2, token_clusters=token_graph_from_embeddings(E, 0.1))
    # C_0 = {a} (2/3), {b} (1/3): a-b has cos 0 and c is not among feature 0's tokens
    h = -(2 / 3) * math.log(2 / 3) - (1 / 3) * math.log(1 / 3)
    assert df.loc[0, "H_tok"] == pytest.approx(h) and df.loc[0, "H_sem"] == pytest.approx(h)


def brute_force_H_sem(codes: Codes, n: int, E: np.ndarray, threshold: float, cfg: AnalysisSpec) -> np.ndarray:
    """Feature by feature: its active tokens, their dense cosine graph, components, entropy."""
    X = E / np.linalg.norm(E, axis=1, keepdims=True)
    out = np.full(n, np.nan)
    for i in range(n):
        rows, cols = np.nonzero(codes.idx == i)
        if rows.size == 0:
            continue
        vals = codes.val[rows, cols]
        thr = np.float32(cfg.act_threshold * vals.max())
        act = rows[vals > thr]
        if act.size == 0:
            continue
        toks, counts = np.unique(codes.token_id[act], return_counts=True)
        adj = X[toks] @ X[toks].T > threshold
        _, lab = connected_components(adj, directed=False)
        p = np.bincount(lab, weights=counts) / counts.sum()
        out[i] = -(p * np.log(p)).sum()
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("chunk", [None, 5])
def test_matches_brute_force_per_feature(seed, chunk, monkeypatch):
    if chunk is not None:  # the chunked expansion must give the same components
        monkeypatch.setattr(sem, "_TRIPLES_PER_CHUNK", chunk)
    rng = np.random.default_rng(seed)
    m, k, n, vocab = 400, 4, 40, 60
    idx = np.stack([rng.choice(n, size=k, replace=False) for _ in range(m)])
    val = np.round(rng.random((m, k)) * 10, 0).astype(np.float32)
    codes = Codes(idx=idx, val=val, token_id=rng.integers(0, vocab, m), lang=rng.integers(0, 2, m),
                  doc_id=np.arange(m), position=np.ones(m, np.int64), languages=("en", "ja"))
    E = rng.normal(size=(vocab, 8)).astype(np.float32)
    threshold = 0.5
    graph = token_graph_from_embeddings(E, threshold)
    df = analyse_features(codes, n, token_clusters=graph)
    ref = brute_force_H_sem(codes, n, E, threshold, AnalysisSpec())
    live = ~df["dead"].to_numpy()
    assert live.sum() > 30 and (df["R"][live] < 1).any() and (df["R"][live] > 0).any()
    np.testing.assert_allclose(df["H_sem"].to_numpy()[live], ref[live], atol=1e-9)
    # the global clustering of the same tokens merges more: H_sem never higher, lower somewhere
    glob = analyse_features(codes, n, token_clusters=token_clusters_from_embeddings(E, threshold))
    assert (glob["H_sem"][live] <= df["H_sem"][live] + 1e-12).all()
    assert (glob["H_sem"][live] < df["H_sem"][live] - 1e-6).any()


def test_graph_matches_dense_and_blocks(monkeypatch):
    E = np.random.default_rng(0).normal(size=(50, 6)).astype(np.float32)
    X = E / np.linalg.norm(E, axis=1, keepdims=True)
    dense = np.triu(X @ X.T > 0.3, k=1)
    monkeypatch.setattr(sem, "_block_rows", lambda n, budget=0: 7)
    g = token_graph_from_embeddings(E, 0.3, token_ids=np.arange(50))
    got = np.zeros_like(dense)
    for u in range(50):
        got[u, g.indices[g.indptr[u]:g.indptr[u + 1]]] = True
    np.testing.assert_array_equal(got, dense)
    only = token_graph_from_embeddings(E, 0.3, token_ids=[0, 1, 2])  # other ids have no edges
    assert only.vocab == 50 and set(np.repeat(np.arange(50), np.diff(only.indptr))) <= {0, 1}


def test_components_refuse_bad_pairs():
    g = TokenGraph(np.zeros(4, np.int64), np.zeros(0, np.int64), 0.1)
    with pytest.raises(DataError, match="outside the token graph"):
        feature_token_components(np.array([0]), np.array([7]), g)
    with pytest.raises(DataError, match="sorted"):
        feature_token_components(np.array([1, 0]), np.array([0, 0]), g)
    with pytest.raises(DataError, match="embedding matrix"):
        token_graph_from_embeddings(CHAIN_E, 0.1, token_ids=[5])
