"""Feature matching between two SAEs: which feature of one SAE is which feature of another.

Why: to follow features through training (:mod:`sae_bilingual.analysis.lineage`), two SAEs
of one layer, evaluated on the SAME tokens, are compared by how their features co-fire.

Definitions (decided here):

- Rows of the two code sets are aligned on (doc_id, position); rows present in only one
  set are dropped (logged). ``a[m] = 1`` when feature a is selected by the TopK for row m
  with a positive activation (``weighting="binary"``, default).
- Co-activation C = AᵀB from two sparse [M, n] matrices, computed in blocks of A's
  features so no dense n1 x n2 matrix ever exists for large n (each block is densified,
  reduced to its candidates and dropped).
- Jaccard J = C / (|a| + |b| - C) (0 when both never fire). Pearson correlation from sparse
  sums: cov = C/M - (Σa/M)(Σb/M), var = Σa²/M - (Σa/M)² (binary: the phi coefficient).
  With ``weighting="activation"`` the correlation uses activation values (a second
  weighted product); Jaccard stays binary.
- Candidates: for every feature of A its ``n_candidates`` best features of B by J, the
  same from B's side, and every pair with J >= ``threshold``. ``rank`` = rank of b among
  a's candidates (1 = best), ``rank_b`` = rank of a among b's.
- One-to-one matching maximises total J: `scipy.optimize.linear_sum_assignment` on the
  dense J when n1 x n2 <= ``dense_max`` (small SAEs), else a sparse LAPJV
  (`scipy.sparse.csgraph.min_weight_full_bipartite_matching`) restricted to the
  candidates (each feature of A may also stay unmatched). Pairs with J = 0 are dropped.
- One-to-many: every candidate pair with J >= ``threshold``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import scipy.sparse as sp
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import min_weight_full_bipartite_matching

from sae_bilingual.study.layout import FEATURES_FILE
from sae_bilingual.analysis.codes import Codes
from sae_bilingual.errors import ConfigError, DataError

log = logging.getLogger(__name__)

WEIGHTINGS = ("binary", "activation")

__all__ = ["MatchConfig", "MatchResult", "align_rows", "coactivation_matrix", "match_codes", "match_features"]


@dataclass
class MatchConfig:
    """Options of feature matching between two SAEs."""

    weighting: str = "binary"
    """"binary": co-firing counts; "activation": correlation on activation values."""
    n_candidates: int = 5
    """best partners kept per feature (each side) for matching and ancestry."""
    threshold: float = 0.2
    """Jaccard at or above which a pair is a one-to-many edge / a stable ancestor."""
    block: int = 1024
    """features of A per dense block of the co-activation product (memory: block x n2 x 4 B x 2)."""
    dense_max: int = 2048 * 2048
    """n1 x n2 up to which the one-to-one matching runs on the dense Jaccard matrix."""

    def validate(self) -> None:
        """Raise ConfigError naming the valid range."""
        if self.weighting not in WEIGHTINGS:
            raise ConfigError(f"MatchConfig.weighting={self.weighting!r}; choose one of {WEIGHTINGS}.")
        if self.n_candidates < 1:
            raise ConfigError(f"MatchConfig.n_candidates must be >= 1, got {self.n_candidates}.")
        if not 0.0 < self.threshold <= 1.0:
            raise ConfigError(f"MatchConfig.threshold must be in (0, 1], got {self.threshold}.")
        if self.block < 1:
            raise ConfigError(f"MatchConfig.block must be >= 1, got {self.block}.")


@dataclass
class MatchResult:
    """Candidates, one-to-one and one-to-many matches of features of A to features of B."""

    candidates: pd.DataFrame
    """feature_a, feature_b, jaccard, corr, rank, rank_b, coact (all candidate pairs)."""
    one_to_one: pd.DataFrame
    """feature_a, feature_b, jaccard, corr, rank: the maximum-total-Jaccard matching."""
    one_to_many: pd.DataFrame
    """feature_a, feature_b, jaccard, corr, rank: every candidate with jaccard >= threshold."""
    n_a: np.ndarray
    """[n1] rows where each feature of A fires."""
    n_b: np.ndarray
    """[n2] rows where each feature of B fires."""
    n_rows: int
    """aligned rows M."""
    seconds: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------- co-activation
def align_rows(a: Codes, b: Codes) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (ia, ib) such that a[ia] and b[ib] are the same (doc_id, position), sorted.

    Why: two SAEs' codes are only comparable token by token; the encode step may have
    written the rows in another order. Raises when the two sets share no token.
    """
    span = int(max(a.position.max(initial=0), b.position.max(initial=0))) + 1
    ka = a.doc_id.astype(np.int64) * span + a.position
    kb = b.doc_id.astype(np.int64) * span + b.position
    if a.n == b.n and np.array_equal(ka, kb) and (a.n < 2 or np.all(np.diff(ka) > 0)):
        r = np.arange(a.n)
        return r, r
    common, ia, ib = np.intersect1d(ka, kb, assume_unique=False, return_indices=True)
    if common.size == 0:
        raise DataError(
            "the two code sets share no (doc_id, position): they were not encoded on the same "
            "evaluation tokens; encode both SAEs on the same eval windows."
        )
    if common.size < max(a.n, b.n):
        log.warning("aligning codes: %d common rows of %d / %d (rows of only one set dropped)",
                    common.size, a.n, b.n)
    return ia, ib


def _sparse_codes(codes: Codes, rows: np.ndarray, n: int, weighted: bool) -> sp.csr_matrix:
    """[M, n] CSR of the selected rows: 1 (or the activation) where the TopK fired with val > 0."""
    idx = codes.idx[rows]
    val = codes.val[rows]
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise DataError(f"codes hold feature ids {idx.min()}..{idx.max()} but n_latents={n}; "
                        "pass the d_sae of the SAE that produced the codes.")
    m, k = idx.shape
    data = np.where(val > 0, val if weighted else 1.0, 0.0).astype(np.float32).ravel()
    A = sp.csr_matrix((data, idx.ravel().astype(np.int32), np.arange(0, m * k + 1, k, dtype=np.int64)),
                      shape=(m, n))
    A.eliminate_zeros()
    return A


def coactivation_matrix(a: Codes, b: Codes, n1: int, n2: int) -> sp.csr_matrix:
    """Sparse [n1, n2] co-firing counts C = AᵀB over aligned rows (for small n and tests;
    `match_codes` never forms the whole matrix)."""
    ia, ib = align_rows(a, b)
    A = _sparse_codes(a, ia, n1, False)
    B = _sparse_codes(b, ib, n2, False)
    return (A.T.tocsr() @ B).tocsr()


def _pearson(C: np.ndarray, sa: np.ndarray, sa2: np.ndarray, sb: np.ndarray, sb2: np.ndarray, m: int) -> np.ndarray:
    ma, mb = sa / m, sb / m
    cov = C / m - ma * mb
    var = np.clip(sa2 / m - ma * ma, 0, None) * np.clip(sb2 / m - mb * mb, 0, None)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(var > 0, cov / np.sqrt(np.where(var > 0, var, 1.0)), 0.0)
    return np.clip(r, -1.0, 1.0)


def _ranks(key: np.ndarray, score: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Rank (1 = best) of each entry within its ``key`` group by score desc, then other asc."""
    o = np.lexsort((other, -score, key))
    ks = key[o]
    first = np.searchsorted(ks, ks, side="left")
    r = np.empty(key.size, dtype=np.int64)
    r[o] = np.arange(key.size) - first + 1
    return r


def match_codes(a: Codes, b: Codes, n1: int, n2: int, cfg: MatchConfig = MatchConfig()) -> MatchResult:
    """Match the features of SAE A (``n1`` latents) to those of SAE B (``n2``) from their
    codes on the same evaluation tokens (see the module docstring for the definitions)."""
    cfg.validate()
    t0 = time.perf_counter()
    ia, ib = align_rows(a, b)
    weighted = cfg.weighting == "activation"
    A = _sparse_codes(a, ia, n1, False)
    B = _sparse_codes(b, ib, n2, False)
    m = cast("tuple[int, int]", A.shape)[0]  # scipy's untyped .shape is inferred as None
    At = A.T.tocsr()
    na = np.diff(At.indptr).astype(np.float64)
    nb = np.bincount(B.indices, minlength=n2).astype(np.float64)
    if weighted:
        Aw = _sparse_codes(a, ia, n1, True)
        Bw = _sparse_codes(b, ib, n2, True)
        Awt = Aw.T.tocsr()
        sa, sa2 = np.asarray(Aw.sum(0)).ravel(), np.asarray(Aw.multiply(Aw).sum(0)).ravel()
        sb, sb2 = np.asarray(Bw.sum(0)).ravel(), np.asarray(Bw.multiply(Bw).sum(0)).ravel()
    else:
        sa, sa2, sb, sb2 = na, na, nb, nb
    t_build = time.perf_counter() - t0

    k = min(cfg.n_candidates, n2)
    kc = min(cfg.n_candidates, n1)
    dense = n1 * n2 <= cfg.dense_max
    J_full = np.zeros((n1, n2), dtype=np.float32) if dense else None
    parts_i, parts_j, parts_c, parts_cw = [], [], [], []
    # running top-kc per feature of B: (col, J, row, C, Cw) of the best entries seen so far
    col_pool = [np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64), np.zeros(0), np.zeros(0)]
    col_thr = np.zeros(n2)
    t1 = time.perf_counter()
    for s in range(0, n1, cfg.block):
        e = min(s + cfg.block, n1)
        S = At[s:e] @ B  # sparse [block, n2]: only co-firing pairs are stored
        S.sort_indices()
        rows = np.repeat(np.arange(e - s, dtype=np.int64), np.diff(S.indptr))
        cols = S.indices.astype(np.int64)
        C = S.data.astype(np.float64)
        if weighted:
            Sw = Awt[s:e] @ Bw
            Sw.sort_indices()
            if not (np.array_equal(Sw.indptr, S.indptr) and np.array_equal(Sw.indices, S.indices)):
                Sw = (Sw + 0 * S).tocsr()  # align the stored pattern with S
                Sw.sort_indices()
            Cw = Sw.data.astype(np.float64)
        else:
            Cw = C
        J = C / (na[rows + s] + nb[cols] - C)
        if J_full is not None:
            J_full[rows + s, cols] = J
        # best k per row (rows are grouped in CSR order; sort each row by J descending)
        o = np.argsort(rows + (1.0 - J) * 0.5, kind="stable")
        within = np.arange(o.size) - S.indptr[rows[o]]
        sel = np.zeros(o.size, dtype=bool)
        sel[o[within < k]] = True
        sel |= J >= cfg.threshold
        parts_i.append(rows[sel] + s)
        parts_j.append(cols[sel])
        parts_c.append(C[sel])
        parts_cw.append(Cw[sel])
        # best kc per column across blocks: only entries beating the column's current kc-th
        new = J > col_thr[cols]
        if new.any():
            pool = [np.concatenate([p, q]) for p, q in zip(
                col_pool, (cols[new], J[new], rows[new] + s, C[new], Cw[new]))]
            o2 = np.argsort(pool[0] + (1.0 - pool[1]) * 0.5, kind="stable")
            pool = [p[o2] for p in pool]
            first = np.searchsorted(pool[0], pool[0], side="left")
            keep = (np.arange(pool[0].size) - first) < kc
            col_pool = [p[keep] for p in pool]
            cnt = np.bincount(col_pool[0], minlength=n2)
            last = np.searchsorted(col_pool[0], np.arange(n2), side="right") - 1
            col_thr = np.where(cnt >= kc, col_pool[1][np.maximum(last, 0)] if col_pool[1].size else 0.0, 0.0)
    t_prod = time.perf_counter() - t1

    ci = np.concatenate(parts_i + [col_pool[2]])
    cj = np.concatenate(parts_j + [col_pool[0]])
    cc = np.concatenate(parts_c + [col_pool[3]])
    ccw = np.concatenate(parts_cw + [col_pool[4]])
    key, first = np.unique(ci * n2 + cj, return_index=True)
    ci, cj, cc, ccw = key // n2, key % n2, cc[first], ccw[first]
    jac = cc / (na[ci] + nb[cj] - cc)
    corr = _pearson(ccw, sa[ci], sa2[ci], sb[cj], sb2[cj], max(m, 1))
    cand = pd.DataFrame({
        "feature_a": ci.astype(np.int64), "feature_b": cj.astype(np.int64),
        "jaccard": jac, "corr": corr,
        "rank": _ranks(ci, jac, cj), "rank_b": _ranks(cj, jac, ci), "coact": cc.astype(np.int64),
    })

    t2 = time.perf_counter()
    if J_full is not None:
        fa, fb = _dense_assignment(J_full)
    else:
        fa, fb = _sparse_assignment(ci, cj, jac, n1, n2)
    t_match = time.perf_counter() - t2
    lookup = pd.Series(np.arange(len(cand)), index=cand["feature_a"].to_numpy() * n2 + cand["feature_b"].to_numpy())
    pos = lookup.reindex(fa.astype(np.int64) * n2 + fb).to_numpy()
    one: pd.DataFrame
    if J_full is not None:  # a dense optimum may use a pair outside the candidate list: compute it here
        one = pd.DataFrame({"feature_a": fa, "feature_b": fb, "jaccard": J_full[fa, fb].astype(np.float64)})
        one = one.loc[one["jaccard"] > 0].reset_index(drop=True)
        pos = lookup.reindex(one["feature_a"].to_numpy() * n2 + one["feature_b"].to_numpy()).to_numpy()
        have = ~np.isnan(pos)
        corr_1 = np.full(len(one), np.nan)
        rank_1 = np.full(len(one), -1, dtype=np.int64)
        corr_1[have] = cand["corr"].to_numpy()[pos[have].astype(np.int64)]
        rank_1[have] = cand["rank"].to_numpy()[pos[have].astype(np.int64)]
        if (~have).any():
            miss = one.loc[~have]
            cm = (At[miss["feature_a"].to_numpy()].multiply(B.T.tocsr()[miss["feature_b"].to_numpy()])).sum(1)
            cm = np.asarray(cm, dtype=np.float64).ravel()
            if weighted:
                cm = np.asarray((Awt[miss["feature_a"].to_numpy()].multiply(
                    Bw.T.tocsr()[miss["feature_b"].to_numpy()])).sum(1), dtype=np.float64).ravel()
            fa_m, fb_m = miss["feature_a"].to_numpy(), miss["feature_b"].to_numpy()
            corr_1[~have] = _pearson(cm, sa[fa_m], sa2[fa_m], sb[fb_m], sb2[fb_m], max(m, 1))
            rank_1[~have] = k + 1  # outside the kept candidates
        one["corr"], one["rank"] = corr_1, rank_1
    else:
        pos = pos.astype(np.int64)
        one = cand.iloc[pos][["feature_a", "feature_b", "jaccard", "corr", "rank"]].reset_index(drop=True)
        one = one.loc[one["jaccard"] > 0].reset_index(drop=True)
    many: pd.DataFrame = cand.loc[cand["jaccard"] >= cfg.threshold, ["feature_a", "feature_b", "jaccard", "corr", "rank"]]
    many = many.sort_values(["feature_a", "rank"]).reset_index(drop=True)
    secs = {"build": t_build, "product": t_prod, "assignment": t_match, "total": time.perf_counter() - t0}
    log.info("matched %d x %d features over %d rows: %d candidates, %d one-to-one, %d >= %.2f (%.1f s)",
             n1, n2, m, len(cand), len(one), len(many), cfg.threshold, secs["total"])
    return MatchResult(cand, one.sort_values("feature_a").reset_index(drop=True), many,
                       na.astype(np.int64), nb.astype(np.int64), int(m), secs)


def _dense_assignment(J: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r, c = linear_sum_assignment(J, maximize=True)
    return r.astype(np.int64), c.astype(np.int64)


def _sparse_assignment(ci: np.ndarray, cj: np.ndarray, jac: np.ndarray, n1: int, n2: int) -> tuple[np.ndarray, np.ndarray]:
    """Max-total-Jaccard one-to-one matching on the candidate graph (sparse LAPJV).

    Every feature of A also gets a private "unmatched" column (weight 1 vs 1 + J for a real
    pair) so a full matching of A's side always exists and unmatched features cost nothing.
    """
    rows = np.concatenate([ci, np.arange(n1)])
    cols = np.concatenate([cj, n2 + np.arange(n1)])
    w = np.concatenate([1.0 + jac, np.ones(n1)])
    G = sp.csr_matrix((w, (rows, cols)), shape=(n1, n2 + n1))
    r, c = min_weight_full_bipartite_matching(G, maximize=True)
    real = c < n2
    return r[real].astype(np.int64), c[real].astype(np.int64)


def match_features(dir_a: str | Path, dir_b: str | Path, cfg: MatchConfig = MatchConfig()) -> MatchResult:
    """Match two unit dirs (each with ``codes.safetensors`` and ``features.parquet`` or an
    ``sae/cfg.json`` giving the number of latents)."""
    a, b = Codes.load(Path(dir_a) / "codes.safetensors"), Codes.load(Path(dir_b) / "codes.safetensors")
    return match_codes(a, b, _n_latents(Path(dir_a), a), _n_latents(Path(dir_b), b), cfg)


def _n_latents(unit: Path, codes: Codes | None = None) -> int:
    fp = unit / FEATURES_FILE
    if fp.exists():
        return int(pq.ParquetFile(fp).metadata.num_rows)
    cfgp = unit / "sae" / "cfg.json"
    if cfgp.exists():
        return int(json.loads(cfgp.read_text())["d_sae"])
    if codes is not None and codes.n:
        return int(codes.idx.max()) + 1
    raise DataError(f"{unit}: cannot tell the number of latents (no features.parquet or sae/cfg.json).")
