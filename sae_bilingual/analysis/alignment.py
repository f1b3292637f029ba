"""Translation alignment per feature: does it fire on both sides of a translation pair more
often than a random pairing would make it?

Why: the paper's label (no language has p(lang | feature) > 0.9) cannot tell a bilingual
concept from a function word or punctuation shared by both languages, nor from a feature made
unselective by a poor SAE fit (issue 26). A concept feature fires on the pairs whose sentences
carry its concept, on both sides; a function word fires on nearly every sentence of both
languages, so its both-sides count is what chance gives.

Definitions. N pairs; feature i fires on side s of pair p (``fire_rule`` of
:class:`~sae_bilingual.config_alignment.AlignmentSpec`: selected by the TopK somewhere in the
sentence, or some activation > ``fire_ratio`` x its evaluation max). a_i, b_i: the
pairs on whose first / second side it fires; ``align_both`` = |pairs fired on both sides|.
Under a random pairing (the second sides permuted), both ~ Hypergeometric(N, a, b):
``align_expected`` = a b / N (the exact mean of the shuffled-pair baseline, which
:func:`shuffled_both` samples), variance a b (N-a)(N-b) / (N^2 (N-1)); ``align_score`` =
both / expected (NaN when expected = 0); ``align_z`` = (both - expected) / sd (NaN when sd = 0).

Everything is sparse matrix algebra over the (pair, feature) firing matrices ([N, n] CSR, one
per side; nnz <= tokens x K): no loop over features or pairs. :func:`alignment_reference` is the
plain per-feature loop the tests compare against.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from sae_bilingual.analysis.codes import Codes
from sae_bilingual.config_alignment import FIRE_RULES, AlignmentSpec
from sae_bilingual.errors import DataError

log = logging.getLogger(__name__)

ALIGN_COLUMNS = ("align_n_first", "align_n_second", "align_both", "align_expected", "align_score", "align_z",
                 "aligned")
"""Columns :func:`add_alignment` writes into the feature table."""


def fired_entries(codes: Codes, max_act: np.ndarray, rule: str, ratio: float) -> np.ndarray:
    """bool [M, K]: which (vector, slot) entries count as the feature firing under ``rule``."""
    if rule not in FIRE_RULES:
        raise DataError(f"fire_rule {rule!r}: choose one of {FIRE_RULES}")
    selected = np.ones(codes.idx.shape, dtype=bool)
    if rule == "selected":
        return selected
    mx = np.asarray(max_act, dtype=np.float64)[codes.idx]
    thr = (ratio * np.nan_to_num(mx, nan=np.inf)).astype(np.float32)  # float32, as features.py compares
    return codes.val > thr


def firing_matrices(codes: Codes, n_latents: int, n_pairs: int, sides: Sequence[int], max_act: np.ndarray,
                    rule: str = "threshold", ratio: float = 0.7) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """The two [n_pairs, n_latents] 0/1 CSR matrices: feature fires on side 0 / side 1 of pair p.

    ``codes.doc_id`` is the pair index, ``codes.lang`` the language index; ``sides`` = the two
    language indices (first, second). Vectors of other languages are ignored.
    """
    if len(sides) != 2:
        raise DataError(f"alignment needs two sides (language indices), got {list(sides)}")
    hit = fired_entries(codes, max_act, rule, ratio)
    k = codes.k
    rows = np.repeat(codes.doc_id, k)
    lang = np.repeat(codes.lang, k)
    feat = codes.idx.reshape(-1).astype(np.int64)
    keep = hit.reshape(-1)
    if rows.size and (rows.min() < 0 or rows.max() >= n_pairs):
        raise DataError(f"pair ids (doc_id) must be in 0..{n_pairs - 1}, got {rows.min()}..{rows.max()}")
    out = []
    for s in sides:  # two sides, not a loop over features
        m = keep & (lang == s)
        mat = sp.csr_matrix((np.ones(int(m.sum()), dtype=np.int32), (rows[m], feat[m])), shape=(n_pairs, n_latents))
        mat.sum_duplicates()
        mat.data[:] = 1  # fired at least once in the sentence
        out.append(mat)
    return out[0], out[1]


def alignment_stats(A: sp.csr_matrix, B: sp.csr_matrix) -> pd.DataFrame:
    """Per feature: a, b, both, expected, score, z from the two firing matrices (same shape)."""
    n_pairs = int(A.shape[0])  # pyright: ignore[reportOptionalSubscript]  (scipy's stubs type .shape as None)
    a = np.asarray(A.sum(axis=0)).ravel().astype(np.float64)
    b = np.asarray(B.sum(axis=0)).ravel().astype(np.float64)
    both = np.asarray(A.multiply(B).sum(axis=0)).ravel().astype(np.float64)  # elementwise AND, summed over pairs
    N = float(n_pairs)
    expected = a * b / N if n_pairs else np.full_like(a, np.nan)
    var = a * b * (N - a) * (N - b) / (N * N * (N - 1.0)) if n_pairs > 1 else np.zeros_like(a)
    with np.errstate(divide="ignore", invalid="ignore"):
        score = np.where(expected > 0, both / np.where(expected > 0, expected, 1.0), np.nan)
        z = np.where(var > 0, (both - expected) / np.sqrt(np.where(var > 0, var, 1.0)), np.nan)
    return pd.DataFrame({"align_n_first": a.astype(np.int64), "align_n_second": b.astype(np.int64),
                         "align_both": both.astype(np.int64), "align_expected": expected,
                         "align_score": score, "align_z": z})


def shuffled_both(A: sp.csr_matrix, B: sp.csr_matrix, n_perm: int = 20, seed: int = 0) -> np.ndarray:
    """[n_perm, n] both-sides counts with the second sides randomly re-paired: the empirical
    shuffled-pair baseline whose mean ``align_expected`` gives exactly (tests, diagnostics)."""
    rng = np.random.default_rng(seed)
    out = np.empty((int(n_perm), A.shape[1]), dtype=np.int64)  # pyright: ignore[reportOptionalSubscript]  (scipy's stubs type .shape as None)
    for t in range(int(n_perm)):  # a few permutations, each one sparse product
        out[t] = np.asarray(A.multiply(B[rng.permutation(B.shape[0])]).sum(axis=0)).ravel()  # pyright: ignore[reportOptionalSubscript]  (scipy's stubs type .shape as None)
    return out


def alignment_reference(codes: Codes, n_latents: int, n_pairs: int, sides: Sequence[int], max_act: np.ndarray,
                        rule: str = "threshold", ratio: float = 0.7) -> pd.DataFrame:
    """Plain per-feature, per-pair loop (the reference the vectorised path is tested against)."""
    fired: list[list[set[int]]] = [[set() for _ in range(n_pairs)] for _ in sides]
    for r in range(codes.n):
        for j in range(codes.k):
            f, v = int(codes.idx[r, j]), float(codes.val[r, j])
            thr = np.float32(ratio * float(max_act[f])) if np.isfinite(max_act[f]) else np.float32(np.inf)
            ok = rule == "selected" or np.float32(v) > thr
            lang = int(codes.lang[r])
            if ok and lang in sides:
                fired[list(sides).index(lang)][int(codes.doc_id[r])].add(f)
    rows = []
    for f in range(n_latents):
        a = sum(f in s for s in fired[0])
        b = sum(f in s for s in fired[1])
        both = sum(f in s0 and f in s1 for s0, s1 in zip(fired[0], fired[1]))
        exp = a * b / n_pairs
        var = a * b * (n_pairs - a) * (n_pairs - b) / (n_pairs ** 2 * (n_pairs - 1))
        rows.append({"align_n_first": a, "align_n_second": b, "align_both": both, "align_expected": exp,
                     "align_score": both / exp if exp > 0 else np.nan,
                     "align_z": (both - exp) / var ** 0.5 if var > 0 else np.nan})
    return pd.DataFrame(rows)


def add_alignment(df: pd.DataFrame, pair_codes: Codes | None, n_pairs: int, spec: AlignmentSpec,
                  languages: Sequence[str]) -> dict[str, Any]:
    """Write the align_* columns and the ``aligned`` flag into ``df`` (the feature table, which
    must hold ``max_act``, ``dead`` and ``cls``); return the summary-row numbers.

    ``pair_codes``: the pairs' codes (doc_id = pair index, lang = index into ``languages``),
    None when the unit has no pairs (columns NaN / False, shares NaN).
    """
    n = len(df)
    if pair_codes is None or n_pairs < 2:
        for c in ALIGN_COLUMNS:
            df[c] = False if c == "aligned" else np.nan
        return {"n_align_pairs": 0, "n_aligned": 0, "frac_aligned": float("nan"),
                "aligned_share_of_mixed": float("nan")}
    sides = [list(pair_codes.languages).index(lg) for lg in languages[:2]]
    A, B = firing_matrices(pair_codes, n, n_pairs, sides, df["max_act"].to_numpy(), spec.fire_rule, spec.fire_ratio)
    st = alignment_stats(A, B)
    dead = df["dead"].to_numpy(dtype=bool)
    for c in st.columns:
        v = st[c].to_numpy(dtype=np.float64, copy=True)
        v[dead] = np.nan
        df[c] = v
    score = np.nan_to_num(df["align_score"].to_numpy(dtype=np.float64), nan=0.0)
    both = np.nan_to_num(df["align_both"].to_numpy(dtype=np.float64), nan=0.0)
    mixed = (df["cls"] == "mixed").to_numpy()
    df["aligned"] = mixed & (score >= spec.min_score) & (both >= spec.min_both)
    n_live, n_mixed, n_al = int((~dead).sum()), int(mixed.sum()), int(df["aligned"].sum())
    log.info("alignment over %d pairs: %d of %d Mixed features aligned", n_pairs, n_al, n_mixed)
    return {"n_align_pairs": int(n_pairs), "n_aligned": n_al,
            "frac_aligned": n_al / n_live if n_live else float("nan"),
            "aligned_share_of_mixed": n_al / n_mixed if n_mixed else float("nan")}
