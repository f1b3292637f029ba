"""Token clusters for the semantic entropy H_sem.

The paper groups "tokens whose cosine similarity exceeds 0.1" into clusters without
naming the algorithm. Methods (named option ``method``):

- ``"connected_components"`` (default, the natural reading): clusters are the connected
  components of the graph whose edges are token pairs with cosine > threshold.
- ``"leader"``: a simple, stricter alternative. Tokens are visited in the order given;
  each still-unassigned token becomes a leader and takes every unassigned token whose
  cosine with *it* exceeds the threshold. Every member is then similar to its leader, so
  chains of weak similarities no longer merge everything into one cluster.

The graph is built blockwise (never vocab x vocab dense); only the token ids passed in
are clustered, every other id gets a singleton cluster.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.csgraph import connected_components

from sae_bilingual.errors import ConfigError, DataError

log = logging.getLogger(__name__)

CLUSTER_METHODS = ("connected_components", "leader")


def _block_rows(n: int, budget: int = 1 << 22) -> int:
    return max(1, min(n, budget // max(n, 1)))


def _normalised(E: Any, token_ids: np.ndarray) -> torch.Tensor:
    if isinstance(E, np.ndarray):
        E = torch.from_numpy(E)
    X = E[torch.as_tensor(token_ids, dtype=torch.long)].float()
    return X / X.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _components(X: torch.Tensor, threshold: float) -> np.ndarray:
    """Connected components of cos > threshold, merging labels block by block."""
    u = X.shape[0]
    lab = np.arange(u)
    n_lab = u
    b = _block_rows(u)
    for s in range(0, u, b):
        e = min(u, s + b)
        sim = X[s:e] @ X[s:].T  # upper triangle only: pairs (i, j) with j >= i
        r, c = torch.nonzero(sim > threshold, as_tuple=True)
        if r.numel() == 0:
            continue
        a = lab[r.numpy() + s]
        bb = lab[c.numpy() + s]
        keep = a != bb
        if not keep.any():
            continue
        g = sp.coo_matrix((np.ones(int(keep.sum()), np.int8), (a[keep], bb[keep])), shape=(n_lab, n_lab))
        n_lab, comp = connected_components(g, directed=False)
        lab = comp[lab]
    return lab


def _leader(X: torch.Tensor, threshold: float) -> np.ndarray:
    """Greedy leader clustering (loops over leaders only; not a hot path)."""
    u = X.shape[0]
    lab = np.full(u, -1, dtype=np.int64)
    b = _block_rows(u)
    # Adjacency rows are computed lazily per block of candidate leaders.
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
    """Cluster id for every token id (row of the embedding matrix ``E`` [vocab, d]).

    Only ``token_ids`` (default: all rows) are clustered by cosine > ``threshold``; the
    other ids get singleton clusters. Ids are compact: 0..n_clusters-1.
    """
    if method not in CLUSTER_METHODS:
        raise ConfigError(f"unknown clustering method {method!r}; choose one of {CLUSTER_METHODS}.")
    vocab = int(E.shape[0])
    if token_ids is None:
        token_ids = np.arange(vocab)
    token_ids = np.unique(np.asarray(token_ids, dtype=np.int64))
    if token_ids.size and (token_ids[0] < 0 or token_ids[-1] >= vocab):
        raise DataError(
            f"token ids range {token_ids[0]}..{token_ids[-1]} falls outside the embedding "
            f"matrix ({vocab} rows); pass the embedding of the model that produced the codes."
        )
    X = _normalised(E, token_ids)
    lab = _components(X, threshold) if method == "connected_components" else _leader(X, threshold)
    out = np.full(vocab, -1, dtype=np.int64)
    _, out[token_ids] = np.unique(lab, return_inverse=True)
    rest = out < 0
    out[rest] = out.max(initial=-1) + 1 + np.arange(int(rest.sum()))
    log.info("clustered %d tokens into %d clusters (%s, cos > %g)",
             token_ids.size, len(np.unique(out[token_ids])), method, threshold)
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
