"""Semantic clusters for the semantic entropy H_sem (PAPER.md, "Feature analysis" 7).

The paper embeds "the distinct activating tokens" of feature i with an input embedding
matrix and groups "tokens whose cosine similarity exceeds 0.1" into C_i, "the set of
semantic clusters for the i-th feature". So the clusters are formed PER FEATURE, over
that feature's own active tokens only: two of its tokens must never be joined through a
token the feature did not fire on (connected components are transitive, so a global
clustering chains unrelated tokens together and at real vocabulary sizes one giant
component swallows almost everything).

How (all features at once, no per-feature loop):

1. :func:`token_graph_from_embeddings` computes the global edge list ``cos(u, v) > t``
   over the token ids that occur (blockwise, never vocab x vocab dense) -> a
   :class:`TokenGraph`.
2. :func:`feature_token_components` takes every active (feature, token) pair as a node,
   joins (i, u)-(i, v) when u-v is an edge, and runs ONE
   ``scipy.sparse.csgraph.connected_components`` over those nodes. An edge only ever joins
   two nodes of the same feature, so each component is one cluster of C_i.

A token -> cluster array (:func:`token_clusters_from_embeddings`, the "global" scope, or
:func:`clusters_from_ground_truth` on the toy world) is a partition of the vocabulary; a
partition restricted to a feature's tokens is still that partition, so arrays need no
per-feature step. The global embedding scope is kept as a named, non-default option for
comparison with earlier results.

Methods for the embedding clusters (named option ``method``): ``"connected_components"``
(default, the natural reading of "cosine above 0.1"); ``"leader"`` (global scope only):
tokens visited in order, each unassigned token leads a cluster of the unassigned tokens
similar to it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.csgraph import connected_components

from sae_bilingual.errors import ConfigError, DataError

log = logging.getLogger(__name__)

CLUSTER_METHODS = ("connected_components", "leader")
CLUSTER_SCOPES = ("feature", "global")
"""'feature': C_i over feature i's own active tokens (the paper); 'global': one clustering
of every evaluation token shared by all features (earlier versions of this project)."""

_TRIPLES_PER_CHUNK = 1 << 23
"""Candidate (pair, neighbour) expansions held at once in feature_token_components."""


def _block_rows(n: int, budget: int = 1 << 22) -> int:
    return max(1, min(n, budget // max(n, 1)))


def _checked_ids(E: Any, token_ids: Any) -> np.ndarray:
    vocab = int(E.shape[0])
    ids = np.arange(vocab) if token_ids is None else np.unique(np.asarray(token_ids, dtype=np.int64))
    if ids.size and (ids[0] < 0 or ids[-1] >= vocab):
        raise DataError(
            f"token ids range {ids[0]}..{ids[-1]} falls outside the embedding matrix ({vocab} rows); "
            "pass the embedding of a model that shares the tokenizer of the codes."
        )
    return ids


def _normalised(E: Any, token_ids: np.ndarray) -> torch.Tensor:
    if isinstance(E, np.ndarray):
        E = torch.from_numpy(E)
    X = E[torch.as_tensor(token_ids, dtype=torch.long)].float()
    return X / X.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _similar_pairs(X: torch.Tensor, threshold: float):
    """Yield (i, j) row-index arrays of the pairs i < j with cos > threshold, block by block."""
    u = X.shape[0]
    b = _block_rows(u)
    for s in range(0, u, b):
        e = min(u, s + b)
        sim = X[s:e] @ X[s:].T  # rows s..e-1 against rows s..u-1
        r, c = torch.nonzero(sim > threshold, as_tuple=True)
        i, j = r.numpy() + s, c.numpy() + s
        keep = j > i
        yield i[keep], j[keep]


@dataclass(frozen=True)
class TokenGraph:
    """Undirected graph over token ids; an edge joins two tokens whose cosine > threshold.

    CSR over the whole vocabulary holding each edge once, from the smaller id to the larger.
    """

    indptr: np.ndarray
    """int64 [vocab + 1]"""
    indices: np.ndarray
    """int64 [n_edges]: the larger id of each edge"""
    threshold: float

    @property
    def vocab(self) -> int:
        return int(self.indptr.size - 1)

    @property
    def n_edges(self) -> int:
        return int(self.indices.size)


def token_graph_from_embeddings(E: Any, threshold: float = 0.1, token_ids: Any = None) -> TokenGraph:
    """Edges cos > ``threshold`` among ``token_ids`` (default: all rows of ``E`` [vocab, d])."""
    ids = _checked_ids(E, token_ids)
    X = _normalised(E, ids)
    rows, cols = [], []
    for r, c in _similar_pairs(X, threshold):
        rows.append(ids[r])
        cols.append(ids[c])
    r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    c = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    vocab = int(E.shape[0])
    A = sp.csr_matrix((np.ones(r.size, np.int8), (r, c)), shape=(vocab, vocab))
    A.sort_indices()
    log.info("token graph: %d tokens, %d edges with cos > %g", ids.size, r.size, threshold)
    return TokenGraph(A.indptr.astype(np.int64), A.indices.astype(np.int64), float(threshold))


def feature_token_components(pair_feature: np.ndarray, pair_token: np.ndarray, graph: TokenGraph) -> np.ndarray:
    """Cluster label of every (feature, token) pair: components of the feature's own tokens.

    ``pair_feature``/``pair_token`` list the distinct active pairs sorted by
    (feature, token) (as ``np.unique`` of ``feature * vocab + token`` returns them). Two
    pairs share a label iff they belong to one feature and its active tokens connect them
    through edges of ``graph``. Labels are 0..n_components-1.
    """
    P = int(pair_feature.size)
    if P == 0:
        return np.zeros(0, dtype=np.int64)
    pf = np.asarray(pair_feature, dtype=np.int64)
    pt = np.asarray(pair_token, dtype=np.int64)
    if int(pt.max()) >= graph.vocab:
        raise DataError(
            f"token id {int(pt.max())} is outside the token graph ({graph.vocab} ids); build the graph "
            "from an embedding matrix that covers the tokenizer of the codes."
        )
    key = pf * graph.vocab + pt
    if P > 1 and np.any(np.diff(key) <= 0):
        raise DataError("(feature, token) pairs must be distinct and sorted by (feature, token)")
    deg = graph.indptr[pt + 1] - graph.indptr[pt]
    ends = np.cumsum(deg)
    src, dst = [], []
    start = 0
    while start < P:
        # the largest chunk of pairs whose neighbour lists fit the triple budget (>= 1 pair)
        base = ends[start - 1] if start else 0
        stop = max(start + 1, int(np.searchsorted(ends, base + _TRIPLES_PER_CHUNK, side="right")))
        p = np.arange(start, stop)
        d = deg[p]
        p_rep = np.repeat(p, d)
        offs = np.arange(int(d.sum())) - np.repeat(np.cumsum(d) - d, d)
        v = graph.indices[np.repeat(graph.indptr[pt[p]], d) + offs]
        want = pf[p_rep] * graph.vocab + v
        q = np.searchsorted(key, want)
        hit = q < P
        hit[hit] = key[q[hit]] == want[hit]
        src.append(p_rep[hit])
        dst.append(q[hit])
        start = stop
    s, t = np.concatenate(src), np.concatenate(dst)
    A = sp.coo_matrix((np.ones(s.size, np.int8), (s, t)), shape=(P, P))
    _, labels = connected_components(A, directed=False)
    return labels.astype(np.int64)


def _components(X: torch.Tensor, threshold: float) -> np.ndarray:
    """Connected components of cos > threshold over all rows of X, merging labels block by
    block so that the global edge list is never held at once."""
    lab = np.arange(X.shape[0])
    n_lab = lab.size
    for i, j in _similar_pairs(X, threshold):
        a, b = lab[i], lab[j]
        keep = a != b
        if not keep.any():
            continue
        g = sp.coo_matrix((np.ones(int(keep.sum()), np.int8), (a[keep], b[keep])), shape=(n_lab, n_lab))
        n_lab, comp = connected_components(g, directed=False)
        lab = comp[lab]
    return lab


def _leader(X: torch.Tensor, threshold: float) -> np.ndarray:
    """Greedy leader clustering (loops over leaders only; not a hot path)."""
    u = X.shape[0]
    lab = np.full(u, -1, dtype=np.int64)
    b = _block_rows(u)
    n_clusters = 0
    for s in range(0, u, b):
        e = min(u, s + b)
        sim = (X[s:e] @ X.T > threshold).numpy()
        for i in range(s, e):
            if lab[i] >= 0:
                continue
            members = sim[i - s] & (lab < 0)
            members[i] = True
            lab[members] = n_clusters
            n_clusters += 1
    return lab


def token_clusters_from_embeddings(
    E: Any,
    threshold: float = 0.1,
    method: str = "connected_components",
    token_ids: np.ndarray | None = None,
) -> np.ndarray:
    """GLOBAL clustering (scope "global"): a cluster id for every token id of ``E`` [vocab, d].

    Only ``token_ids`` (default: all rows) are clustered by cosine > ``threshold``; the
    other ids get singleton clusters. Ids are compact: 0..n_clusters-1. The paper's
    per-feature clusters come from :func:`token_graph_from_embeddings` instead.
    """
    if method not in CLUSTER_METHODS:
        raise ConfigError(f"unknown clustering method {method!r}; choose one of {CLUSTER_METHODS}.")
    vocab = int(E.shape[0])
    ids = _checked_ids(E, token_ids)
    X = _normalised(E, ids)
    lab = _components(X, threshold) if method == "connected_components" else _leader(X, threshold)
    out = np.full(vocab, -1, dtype=np.int64)
    _, out[ids] = np.unique(lab, return_inverse=True)
    rest = out < 0
    out[rest] = out.max(initial=-1) + 1 + np.arange(int(rest.sum()))
    log.info("clustered %d tokens into %d clusters (%s, cos > %g)",
             ids.size, len(np.unique(out[ids])), method, threshold)
    return out


def clusters_from_ground_truth(concept_of_token: Any) -> np.ndarray:
    """Toy world: cluster = ground-truth concept; tokens with concept -1 are singletons.

    ``concept_of_token`` is an array indexed by token id, or a Series indexed by token id
    (e.g. ``World.ground_truth["concept"]``); missing ids become singletons.
    """
    if hasattr(concept_of_token, "index") and hasattr(concept_of_token, "to_numpy"):
        ids = np.asarray(concept_of_token.index, dtype=np.int64)
        conc = np.full(int(ids.max(initial=-1)) + 1, -1, dtype=np.int64)
        conc[ids] = concept_of_token.to_numpy().astype(np.int64)
    else:
        conc = np.asarray(concept_of_token, dtype=np.int64)
    out = np.empty_like(conc)
    has = conc >= 0
    _, inv = np.unique(conc[has], return_inverse=True)
    out[has] = inv
    n_c = int(inv.max(initial=-1)) + 1
    out[~has] = n_c + np.arange(int((~has).sum()))
    return out
