"""Feature lineage across checkpoints: which feature of one SAE is which feature of another.

Why: the paper sees the share of bilingual ("mixed") features grow during pre-training.
Whether they come from an English and a Japanese feature that *merged*, from one
monolingual feature that *widened*, or appear from nothing is a question about individual
features across checkpoints. Two SAEs of one layer, evaluated on the SAME tokens, are
compared by how their features co-fire.

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

Lineage of one layer over checkpoints c_0 < ... < c_T (`lineage_over_checkpoints`):

- ancestors: every final feature's best match (highest J) at each earlier checkpoint
  (matched directly against the final SAE on the same tokens), with its class.
- origin of each feature of c_{t+1} from c_t, from its ancestors S = features of c_t with
  J >= ``threshold`` ("stable ancestors"): ``none`` (S empty); ``merge`` (S holds
  features of >= 2 different languages); otherwise from the class of the best ancestor:
  ``persist`` (same class), ``widen`` (a language -> mixed), ``narrow`` (mixed -> a
  language), ``switch`` (one language -> another).
- flows: one-to-one pairs (J >= threshold) counted per (class at c_t, class at c_{t+1}).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from sae_bilingual.analysis.codes import Codes
from sae_bilingual.errors import ConfigError, DataError
from sae_bilingual.study.unit import layer_dirs

log = logging.getLogger(__name__)

WEIGHTINGS = ("binary", "activation")
ORIGINS = ("merge", "widen", "persist", "narrow", "switch", "none")
NON_LANGUAGE_CLASSES = ("mixed", "dead")

__all__ = [
    "MatchConfig", "MatchResult", "align_rows", "coactivation_matrix", "match_codes",
    "match_features", "classify_origins", "lineage_over_checkpoints", "run_lineage",
    "fig_lineage_flows", "edge_precision",
]


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
def _row_keys(doc: np.ndarray, pos: np.ndarray) -> np.ndarray:
    d = np.asarray(doc, dtype=np.int64)
    p = np.asarray(pos, dtype=np.int64)
    if p.size and p.min() < 0:
        raise DataError("codes hold negative positions; positions must be >= 0 inside each document.")
    span = int(p.max(initial=0)) + 1
    return d * span + p


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


def _topk_rows(S: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the k largest entries of every row (unordered)."""
    k = min(k, S.shape[1])
    if k == S.shape[1]:
        return np.broadcast_to(np.arange(k), (S.shape[0], k))
    return np.argpartition(-S, k - 1, axis=1)[:, :k]


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
    m = A.shape[0]
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
        if dense:
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
    if dense:
        fa, fb = _dense_assignment(J_full)
    else:
        fa, fb = _sparse_assignment(ci, cj, jac, n1, n2)
    t_match = time.perf_counter() - t2
    lookup = pd.Series(np.arange(len(cand)), index=cand["feature_a"].to_numpy() * n2 + cand["feature_b"].to_numpy())
    pos = lookup.reindex(fa.astype(np.int64) * n2 + fb).to_numpy()
    if dense:  # a dense optimum may use a pair outside the candidate list: compute it here
        one = pd.DataFrame({"feature_a": fa, "feature_b": fb, "jaccard": J_full[fa, fb].astype(np.float64)})
        one = one[one["jaccard"] > 0].reset_index(drop=True)
        pos = lookup.reindex(one["feature_a"].to_numpy() * n2 + one["feature_b"].to_numpy()).to_numpy()
        have = ~np.isnan(pos)
        corr_1 = np.full(len(one), np.nan)
        rank_1 = np.full(len(one), -1, dtype=np.int64)
        corr_1[have] = cand["corr"].to_numpy()[pos[have].astype(np.int64)]
        rank_1[have] = cand["rank"].to_numpy()[pos[have].astype(np.int64)]
        if (~have).any():
            miss = one[~have]
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
        one = one[one["jaccard"] > 0].reset_index(drop=True)
    many = cand[cand["jaccard"] >= cfg.threshold][["feature_a", "feature_b", "jaccard", "corr", "rank"]]
    many = many.sort_values(["feature_a", "rank"]).reset_index(drop=True)
    secs = {"build": t_build, "product": t_prod, "assignment": t_match, "total": time.perf_counter() - t0}
    log.info("matched %d x %d features over %d rows: %d candidates, %d one-to-one, %d >= %.2f (%.1f s)",
             n1, n2, m, len(cand), len(one), len(many), cfg.threshold, secs["total"])
    return MatchResult(cand, one.sort_values("feature_a").reset_index(drop=True), many,
                       na.astype(np.int64), nb.astype(np.int64), int(m), secs)


def _dense_assignment(J: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from scipy.optimize import linear_sum_assignment

    r, c = linear_sum_assignment(J, maximize=True)
    return r.astype(np.int64), c.astype(np.int64)


def _sparse_assignment(ci: np.ndarray, cj: np.ndarray, jac: np.ndarray, n1: int, n2: int) -> tuple[np.ndarray, np.ndarray]:
    """Max-total-Jaccard one-to-one matching on the candidate graph (sparse LAPJV).

    Every feature of A also gets a private "unmatched" column (weight 1 vs 1 + J for a real
    pair) so a full matching of A's side always exists and unmatched features cost nothing.
    """
    from scipy.sparse.csgraph import min_weight_full_bipartite_matching

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
    fp = unit / "features.parquet"
    if fp.exists():
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(fp).metadata.num_rows)
    cfgp = unit / "sae" / "cfg.json"
    if cfgp.exists():
        return int(json.loads(cfgp.read_text())["d_sae"])
    if codes is not None and codes.n:
        return int(codes.idx.max()) + 1
    raise DataError(f"{unit}: cannot tell the number of latents (no features.parquet or sae/cfg.json).")


# --------------------------------------------------------------------------- lineage
def _language_classes(classes: np.ndarray) -> np.ndarray:
    return ~np.isin(classes.astype(str), NON_LANGUAGE_CLASSES)


def classify_origins(cand: pd.DataFrame, cls_prev: np.ndarray, cls_next: np.ndarray,
                     threshold: float) -> pd.DataFrame:
    """Origin of every feature of the later SAE from the earlier one (module docstring).

    ``cand``: candidates of a `match_codes` (earlier = A, later = B); ``cls_prev`` /
    ``cls_next``: class per feature (language code, "mixed", "dead"). Returns a DataFrame
    indexed by the later feature: cls, origin, ancestor (best, -1 none), ancestor_cls,
    jaccard, n_ancestors, ancestor_langs ("en+ja" style, languages among stable ancestors).
    """
    cls_prev = np.asarray(cls_prev).astype(str)
    cls_next = np.asarray(cls_next).astype(str)
    n2 = cls_next.size
    st = cand[cand["jaccard"] >= threshold]
    fb, fa, jac = st["feature_b"].to_numpy(), st["feature_a"].to_numpy(), st["jaccard"].to_numpy()
    n_anc = np.bincount(fb, minlength=n2)
    # best stable ancestor per later feature
    o = np.lexsort((fa, -jac, fb))
    firsts = o[np.r_[True, fb[o][1:] != fb[o][:-1]]] if o.size else o
    best = np.full(n2, -1, dtype=np.int64)
    best_j = np.zeros(n2)
    best[fb[firsts]] = fa[firsts]
    best_j[fb[firsts]] = jac[firsts]
    # distinct languages among stable ancestors
    acls = cls_prev[fa] if fa.size else np.array([], dtype=str)
    is_lang = _language_classes(acls)
    pairs = pd.DataFrame({"fb": fb[is_lang], "lang": acls[is_lang]}).drop_duplicates()
    langs_per = pairs.sort_values(["fb", "lang"]).groupby("fb")["lang"].agg("+".join)
    n_langs = np.bincount(pairs["fb"].to_numpy(dtype=np.int64), minlength=n2)
    bcls = np.where(best >= 0, cls_prev[np.maximum(best, 0)], "")
    next_lang = _language_classes(cls_next)
    best_lang = _language_classes(bcls) & (best >= 0)
    origin = np.select(
        [best < 0, n_langs >= 2, bcls == cls_next, best_lang & (cls_next == "mixed"),
         (bcls == "mixed") & next_lang, best_lang & next_lang],
        ["none", "merge", "persist", "widen", "narrow", "switch"], default="none")
    return pd.DataFrame({
        "cls": cls_next, "origin": origin, "ancestor": best, "ancestor_cls": bcls,
        "jaccard": best_j, "n_ancestors": n_anc,
        "ancestor_langs": langs_per.reindex(np.arange(n2)).fillna("").to_numpy(),
    }, index=pd.RangeIndex(n2, name="feature"))


def edge_precision(edges: pd.DataFrame, concept_a: np.ndarray, concept_b: np.ndarray) -> dict[str, float]:
    """Share of matched pairs whose ``dominant_concept`` is equal at both ends (both >= 0),
    and the share expected for a random pairing of the same features (chance level)."""
    ca = np.asarray(concept_a)[edges["feature_a"].to_numpy(dtype=np.int64)]
    cb = np.asarray(concept_b)[edges["feature_b"].to_numpy(dtype=np.int64)]
    ok = (ca >= 0) & (cb >= 0)
    if not ok.any():
        return {"precision": float("nan"), "chance": float("nan"), "n": 0}
    prec = float(np.mean(ca[ok] == cb[ok]))
    pa = pd.Series(ca[ok]).value_counts(normalize=True)
    pb = pd.Series(cb[ok]).value_counts(normalize=True)
    chance = float((pa * pb.reindex(pa.index).fillna(0)).sum())
    return {"precision": prec, "chance": chance, "n": int(ok.sum())}


@dataclass
class Checkpoint:
    """One analysed SAE of the sequence: iteration, tokens, codes, per-feature classes."""

    iteration: int
    tokens: int
    unit: Path | None
    codes: Codes | None
    features: pd.DataFrame


def _load_checkpoint(unit: Path, iteration: int, tokens: int | None) -> Checkpoint:
    feats = pd.read_parquet(unit / "features.parquet")
    if "cls" not in feats.columns:
        raise DataError(f"{unit}/features.parquet has no 'cls' column; rerun the analysis step of this unit.")
    if tokens is None:
        s = unit / "summary.json"
        tokens = int(json.loads(s.read_text()).get("tokens", -1)) if s.exists() else -1
    return Checkpoint(iteration, int(tokens), unit, None, feats)


def lineage_over_checkpoints(checkpoints: list[Checkpoint], cfg: MatchConfig = MatchConfig(),
                             load: Any = None) -> dict[str, Any]:
    """Lineage of one layer over checkpoints (sorted by iteration; the last is the final SAE).

    ``load(ck) -> Codes`` supplies a checkpoint's codes when ``ck.codes`` is None (so only
    three code sets are in memory at once). Returns {"ancestry": long DataFrame (one row
    per final feature x earlier checkpoint), "origins": DataFrame per (iteration, feature)
    of every later checkpoint, "flows": DataFrame (iteration_a, iteration_b, cls_a, cls_b,
    count), "precision": list of dicts, "summary": dict}.
    """
    if len(checkpoints) < 2:
        raise DataError(f"lineage needs at least 2 checkpoints of the layer, got {len(checkpoints)}.")
    cks = sorted(checkpoints, key=lambda c: c.iteration)

    def codes_of(c: Checkpoint) -> Codes:
        return c.codes if c.codes is not None else load(c)

    final = cks[-1]
    cf = codes_of(final)
    nf = len(final.features)
    cls_f = final.features["cls"].astype(str).to_numpy()
    has_concept = all("dominant_concept" in c.features.columns for c in cks)
    anc_rows, origin_rows, flow_rows, prec_rows = [], [], [], []
    carried = None  # codes of cks[t], loaded as the later side of the previous transition
    for t in range(len(cks) - 1):
        a, b = cks[t], cks[t + 1]
        ca = carried if carried is not None else codes_of(a)
        cb = cf if b is final else codes_of(b)
        n1, n2 = len(a.features), len(b.features)
        cls_a = a.features["cls"].astype(str).to_numpy()
        cls_b = b.features["cls"].astype(str).to_numpy()
        # consecutive: origins and flows
        res = match_codes(ca, cb, n1, n2, cfg)
        org = classify_origins(res.candidates, cls_a, cls_b, cfg.threshold)
        org.insert(0, "iteration", b.iteration)
        org.insert(1, "iteration_prev", a.iteration)
        origin_rows.append(org.reset_index())
        st = res.one_to_one[res.one_to_one["jaccard"] >= cfg.threshold]
        fl = pd.DataFrame({"cls_a": cls_a[st["feature_a"].to_numpy(dtype=np.int64)],
                           "cls_b": cls_b[st["feature_b"].to_numpy(dtype=np.int64)]})
        fl = fl.value_counts().rename("count").reset_index()
        fl.insert(0, "iteration_a", a.iteration)
        fl.insert(1, "iteration_b", b.iteration)
        fl.insert(2, "tokens_a", a.tokens)
        fl.insert(3, "tokens_b", b.tokens)
        flow_rows.append(fl)
        if has_concept:
            p = edge_precision(st, a.features["dominant_concept"].to_numpy(), b.features["dominant_concept"].to_numpy())
            prec_rows.append({"kind": "consecutive", "iteration_a": a.iteration, "iteration_b": b.iteration, **p})
        # direct ancestry of the final features at checkpoint t
        if b is final:
            resf = res
        else:
            resf = match_codes(ca, cf, n1, nf, cfg)
        c = resf.candidates
        bestc = c[c["rank_b"] == 1].set_index("feature_b")
        anc = pd.DataFrame({"feature": np.arange(nf), "cls": cls_f, "iteration": a.iteration, "tokens": a.tokens})
        anc["ancestor"] = bestc["feature_a"].reindex(np.arange(nf)).fillna(-1).to_numpy(dtype=np.int64)
        anc["jaccard"] = bestc["jaccard"].reindex(np.arange(nf)).fillna(0.0).to_numpy()
        anc["corr"] = bestc["corr"].reindex(np.arange(nf)).to_numpy()
        has = anc["ancestor"].to_numpy() >= 0
        anc["ancestor_cls"] = np.where(has, cls_a[np.maximum(anc["ancestor"].to_numpy(), 0)], "")
        if has_concept:
            dc_a = a.features["dominant_concept"].to_numpy()
            dc_f = final.features["dominant_concept"].to_numpy()
            anc["concept"] = dc_f
            anc["ancestor_concept"] = np.where(has, dc_a[np.maximum(anc["ancestor"].to_numpy(), 0)], -1)
            stf = resf.one_to_one[resf.one_to_one["jaccard"] >= cfg.threshold]
            p = edge_precision(stf, dc_a, dc_f)
            prec_rows.append({"kind": "to_final", "iteration_a": a.iteration, "iteration_b": final.iteration, **p})
        anc_rows.append(anc)
        carried = cb
        del ca
    ancestry = pd.concat(anc_rows, ignore_index=True)
    origins = pd.concat(origin_rows, ignore_index=True)
    flows = pd.concat(flow_rows, ignore_index=True)
    last = origins[origins["iteration"] == final.iteration]
    live = last[last["cls"] != "dead"]
    counts = {cl: {o: int(((live["cls"] == cl) & (live["origin"] == o)).sum()) for o in ORIGINS}
              for cl in sorted(live["cls"].unique(), key=lambda s: (s == "mixed", s))}
    summary: dict[str, Any] = {
        "final_iteration": final.iteration, "previous_iteration": cks[-2].iteration,
        "iterations": [c.iteration for c in cks], "threshold": cfg.threshold,
        "n_features": int(nf), "n_live": int(len(live)), "origins_final": counts,
        "mixed_from_merge": counts.get("mixed", {}).get("merge", 0),
        "mixed_from_widen": counts.get("mixed", {}).get("widen", 0),
        "mixed_from_none": counts.get("mixed", {}).get("none", 0),
        "mixed_persist": counts.get("mixed", {}).get("persist", 0),
        "transitions": [
            {"iteration": int(it), **{o: int((g["origin"] == o).sum()) for o in ORIGINS},
             "mixed_merge": int(((g["cls"] == "mixed") & (g["origin"] == "merge")).sum()),
             "mixed_widen": int(((g["cls"] == "mixed") & (g["origin"] == "widen")).sum()),
             "mixed_none": int(((g["cls"] == "mixed") & (g["origin"] == "none")).sum())}
            for it, g in origins[origins["cls"] != "dead"].groupby("iteration")
        ],
    }
    if prec_rows:
        pr = pd.DataFrame(prec_rows)
        ok = pr[pr["n"] > 0]
        summary["edge_precision"] = prec_rows
        for kind in ("consecutive", "to_final"):
            sub = ok[ok["kind"] == kind]
            if len(sub):
                summary[f"precision_{kind}"] = float(np.average(sub["precision"], weights=sub["n"]))
                summary[f"chance_{kind}"] = float(np.average(sub["chance"], weights=sub["n"]))
    return {"ancestry": ancestry, "origins": origins, "flows": flows, "precision": prec_rows,
            "summary": summary}


# --------------------------------------------------------------------------- figure
def fig_lineage_flows(flows: pd.DataFrame, class_counts: pd.DataFrame, title: str, out_dir: str | Path,
                      name: str) -> list[Path]:
    """Alluvial plot: a stacked bar of feature classes per checkpoint and bands for the
    one-to-one matched features flowing between classes of consecutive checkpoints.

    ``class_counts``: rows = iterations (sorted), columns = classes, values = counts;
    optional column ``tokens`` used for the x labels.
    """
    from matplotlib.patches import Rectangle

    from sae_bilingual.report.figures import _class_colour, _save, format_tokens, plt

    cc = class_counts.copy()
    tokens = cc.pop("tokens") if "tokens" in cc.columns else None
    classes = [c for c in cc.columns if c not in ("mixed", "dead")] + [c for c in ("mixed", "dead") if c in cc.columns]
    cc = cc[classes].fillna(0)
    iters = list(cc.index)
    total = float(cc.sum(axis=1).max()) or 1.0
    gap = 0.015 * total
    colour = {c: ("#DDDDDD" if c == "dead" else _class_colour(c, i)) for i, c in enumerate(classes)}
    fig, ax = plt.subplots(figsize=(max(7.0, 1.3 * len(iters) + 2), 5.0))
    w = 0.18
    bottoms: dict[tuple[int, str], float] = {}
    for x, it in enumerate(iters):
        y = 0.0
        for c in classes:
            h = float(cc.loc[it, c])
            bottoms[(x, c)] = y
            if h > 0:
                ax.add_patch(Rectangle((x - w / 2, y), w, h, color=colour[c], ec="white", lw=0.5, zorder=3))
                if h > 0.06 * total:
                    ax.text(x, y + h / 2, f"{int(h)}", ha="center", va="center", fontsize=7, zorder=4,
                            color="black" if c == "dead" else "white")
            y += h + gap
    s = np.linspace(0, 1, 40)
    smooth = 3 * s**2 - 2 * s**3
    for x in range(len(iters) - 1):
        f = flows[(flows["iteration_a"] == iters[x]) & (flows["iteration_b"] == iters[x + 1])]
        out_off = {c: bottoms[(x, c)] for c in classes}
        in_off = {c: bottoms[(x + 1, c)] for c in classes}
        order_src = {c: i for i, c in enumerate(classes)}
        f = f[f["cls_a"].isin(classes) & f["cls_b"].isin(classes)]
        f = f.assign(oa=f["cls_a"].map(order_src), ob=f["cls_b"].map(order_src))
        # outgoing bands ordered by target class; incoming ordered by source class
        starts = {}
        for _, r in f.sort_values(["oa", "ob"]).iterrows():  # <= n_classes² bands, drawing only
            starts[(r["cls_a"], r["cls_b"])] = out_off[r["cls_a"]]
            out_off[r["cls_a"]] += r["count"]
        for _, r in f.sort_values(["ob", "oa"]).iterrows():
            y0 = starts[(r["cls_a"], r["cls_b"])]
            y1 = in_off[r["cls_b"]]
            in_off[r["cls_b"]] += r["count"]
            xs = x + w / 2 + s * (1 - w)
            lo = y0 + (y1 - y0) * smooth
            ax.fill_between(xs, lo, lo + r["count"], color=colour[r["cls_a"]], alpha=0.35, lw=0, zorder=2)
    ax.set_xlim(-0.5, len(iters) - 0.5)
    ax.set_ylim(0, total + gap * len(classes))
    ax.set_xticks(range(len(iters)))
    labels = [f"iter {it}" + (f"\n{format_tokens(tokens.loc[it])}" if tokens is not None and tokens.loc[it] >= 0 else "")
              for it in iters]
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_ylabel("features (stacked by class)")
    ax.set_title(title, fontsize=10)
    handles = [Rectangle((0, 0), 1, 1, color=colour[c]) for c in classes]
    ax.legend(handles, [("Mixed" if c == "mixed" else c) for c in classes], loc="upper left",
              bbox_to_anchor=(1.01, 1.0), fontsize=8)
    for sp_ in ("top", "right"):
        ax.spines[sp_].set_visible(False)
    return _save(fig, out_dir, name)


# --------------------------------------------------------------------------- study entry point
_UNIT_FILES = ("codes.safetensors", "features.parquet")


def run_lineage(study_dir: Path, model: str, layer: int, cfg: MatchConfig | None = None) -> dict[str, Any]:
    """Lineage of one layer of one model over all its analysed checkpoints in a study.

    Reads ``units/<model>/iter_*/L<layer:02d>/{codes.safetensors,features.parquet}``, writes
    ``tables/lineage_<model>_L<layer:02d>.csv`` (ancestry: one row per final feature x
    earlier checkpoint, with the final feature's origin), ``..._origins.csv`` (every
    transition), ``..._flows.csv``, ``..._summary.json`` and
    ``figures/lineage_<model>_L<layer:02d>.{png,svg}``; returns the summary dict.
    """
    from sae_bilingual.report.figures import _slug
    from sae_bilingual.io import atomic_write_json, atomic_write_text

    cfg = cfg or MatchConfig()
    study_dir = Path(study_dir)
    units = [(d.iteration, d.path) for d in layer_dirs(study_dir, family=model, layer=int(layer), having=_UNIT_FILES)]
    if len(units) < 2:
        raise DataError(
            f"lineage of {model} layer {layer} needs >= 2 analysed checkpoints with codes.safetensors "
            f"and features.parquet under {study_dir}/units/{model}/iter_*/L{int(layer):02d}; found {len(units)}."
        )
    cks = [_load_checkpoint(d, it, None) for it, d in units]
    t0 = time.perf_counter()
    res = lineage_over_checkpoints(cks, cfg, load=lambda c: Codes.load(c.unit / "codes.safetensors"))
    stem = f"lineage_{_slug(model)}_L{int(layer):02d}"
    tables = study_dir / "tables"
    final_org = res["origins"][res["origins"]["iteration"] == cks[-1].iteration].set_index("feature")
    anc = res["ancestry"].merge(final_org[["origin", "ancestor_langs", "n_ancestors"]],
                                left_on="feature", right_index=True, how="left")
    anc.insert(0, "model", model)
    anc.insert(1, "layer", int(layer))
    atomic_write_text(tables / f"{stem}.csv", anc.to_csv(index=False))
    atomic_write_text(tables / f"{stem}_origins.csv", res["origins"].to_csv(index=False))
    atomic_write_text(tables / f"{stem}_flows.csv", res["flows"].to_csv(index=False))
    summary = {"model": model, "layer": int(layer), **res["summary"],
               "seconds": round(time.perf_counter() - t0, 2)}
    atomic_write_json(tables / f"{stem}_summary.json", summary)
    counts = pd.DataFrame({c.iteration: c.features["cls"].astype(str).value_counts() for c in cks}).T.fillna(0)
    counts["tokens"] = [c.tokens for c in cks]
    fig_lineage_flows(res["flows"], counts, f"{model}, layer {layer}: feature classes and matched features "
                      f"(Jaccard >= {cfg.threshold:g}) across checkpoints", study_dir / "figures", stem)
    log.info("lineage %s L%02d: final mixed from merge %d, widen %d, none %d, persist %d", model, layer,
             summary["mixed_from_merge"], summary["mixed_from_widen"], summary["mixed_from_none"],
             summary["mixed_persist"])
    return summary


def run_all_lineage(study_dir: Path, cfg: MatchConfig | None = None) -> list[dict[str, Any]]:
    """`run_lineage` for every (model, layer) of a study with >= 2 analysed checkpoints."""
    study_dir = Path(study_dir)
    seen: dict[tuple[str, int], int] = {}
    for d in layer_dirs(study_dir, having=_UNIT_FILES):
        seen[(d.family, d.layer)] = seen.get((d.family, d.layer), 0) + 1
    return [run_lineage(study_dir, m, l, cfg) for (m, l), n in sorted(seen.items()) if n >= 2]
