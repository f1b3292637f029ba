"""Score features against the toy world's ground truth (which token means which concept).

Definitions (decided here; the paper has no ground truth):

- For every live feature, its active tokens (above 0.7 x max, token-weighted as in
  `analyse_features`) are grouped by ground-truth concept. ``dominant_concept`` is the
  concept with the largest weight, ``concept_purity`` its share of ALL active weight
  (tokens without a concept count in the denominator). ``concept_langs`` counts the
  distinct languages (ground-truth token language, shared tokens "" excluded) among the
  active tokens of the dominant concept.
- A feature is a *bilingual concept feature* when its dominant concept is active in at
  least two languages: the feature fires on translations of its top concept (the definition
  the controls are judged by). It is a *pure* one when, in addition, that concept carries a
  strict majority of its activation (purity > ``purity_threshold``, 0.5) — a stricter
  reading that a small SAE on a toy LM rarely meets in any world (docs/toy-world.md).
- ``gt_mixed_precision``: share of features classed "mixed" that are bilingual concept
  features (``gt_mixed_precision_pure``: pure ones). ``gt_concept_recall``: share of concepts
  that exist in >= 2 languages in the ground truth and are the dominant concept of at least
  one mixed bilingual concept feature.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from sae_bilingual.analysis.features import active_token_matrix
from sae_bilingual.config_analysis import AnalysisSpec
from sae_bilingual.analysis.codes import Codes
from sae_bilingual.errors import DataError

log = logging.getLogger(__name__)


def _gt_arrays(ground_truth: pd.DataFrame, vocab: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    for col in ("lang", "concept"):
        if col not in ground_truth.columns:
            raise DataError(
                f"ground truth has no column {col!r} (has {list(ground_truth.columns)}); "
                "pass World.ground_truth (indexed by token_id, columns lang, concept)."
            )
    ids = np.asarray(ground_truth.index, dtype=np.int64)
    size = max(vocab, int(ids.max(initial=-1)) + 1)
    concept = np.full(size, -1, dtype=np.int64)
    concept[ids] = ground_truth["concept"].to_numpy(dtype=np.int64)
    names = sorted({str(x) for x in ground_truth["lang"].fillna("") if str(x)})
    lang = np.full(size, -1, dtype=np.int64)
    # shared tokens ("") are not among the categories -> code -1
    lookup = {name: i for i, name in enumerate(names)}
    lang[ids] = ground_truth["lang"].fillna("").astype(str).map(lookup).fillna(-1).to_numpy(dtype=np.int64)
    return concept, lang, names


def score_ground_truth(
    codes: Codes,
    features: pd.DataFrame,
    ground_truth: pd.DataFrame,
    *,
    cfg: AnalysisSpec | None = None,
    purity_threshold: float = 0.5,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Per-feature concept columns and the precision/recall of mixed features as concept features.

    ``features`` is the output of `analyse_features` on the same codes and cfg.
    Returns (DataFrame indexed by feature with dominant_concept, concept_purity,
    concept_langs, bilingual_concept, pure_bilingual_concept; summary dict with
    gt_mixed_precision, gt_mixed_precision_pure, gt_concept_recall, gt_n_mixed,
    gt_n_bilingual_concept, gt_n_concepts).
    """
    n = len(features)
    W = active_token_matrix(codes, n, cfg).tocoo()
    concept, tlang, _ = _gt_arrays(ground_truth, W.shape[1])  # pyright: ignore[reportOptionalSubscript]  (scipy's stubs type .shape as None)
    f, t, w = W.row.astype(np.int64), W.col.astype(np.int64), W.data
    c = concept[t]
    total = np.bincount(f, weights=w, minlength=n)
    has = c >= 0
    C = int(concept.max(initial=-1)) + 1
    dom = np.full(n, -1, dtype=np.int64)
    purity = np.zeros(n)
    n_langs = np.zeros(n, dtype=np.int64)
    if C > 0 and has.any():
        key = f[has] * C + c[has]
        uk, inv = np.unique(key, return_inverse=True)
        wk = np.bincount(inv.ravel(), weights=w[has])
        kf, kc = uk // C, uk % C
        o = np.lexsort((kc, -wk, kf))  # best concept first per feature (ties: lower id)
        first = np.r_[True, kf[o][1:] != kf[o][:-1]]
        bf, bc, bw = kf[o][first], kc[o][first], wk[o][first]
        dom[bf] = bc
        purity[bf] = bw / total[bf]
        # languages of the dominant concept's active tokens
        sel = has & (tlang[t] >= 0)
        sel &= c == dom[f]
        L = int(tlang.max(initial=-1)) + 1
        if sel.any():
            pairs = np.unique(f[sel] * L + tlang[t[sel]])
            n_langs = np.bincount(pairs // L, minlength=n)
    live = ~features["dead"].to_numpy(dtype=bool)
    bilingual = live & (n_langs >= 2)
    pure = bilingual & (purity > purity_threshold)
    mixed = (features["cls"] == "mixed").to_numpy()
    # concepts present in >= 2 languages in the ground truth
    ok = (concept >= 0) & (tlang >= 0)
    L = int(tlang.max(initial=-1)) + 1
    cl = np.unique(concept[ok] * max(L, 1) + tlang[ok])
    per_concept = np.bincount(cl // max(L, 1), minlength=C) if C else np.zeros(0, dtype=np.int64)
    eligible = np.flatnonzero(per_concept >= 2)
    found = np.intersect1d(eligible, dom[mixed & bilingual])
    n_mixed = int(mixed.sum())
    summary = {
        "gt_mixed_precision": float((mixed & bilingual).sum() / n_mixed) if n_mixed else float("nan"),
        "gt_mixed_precision_pure": float((mixed & pure).sum() / n_mixed) if n_mixed else float("nan"),
        "gt_concept_recall": float(found.size / eligible.size) if eligible.size else float("nan"),
        "gt_n_mixed": n_mixed,
        "gt_n_bilingual_concept": int((mixed & bilingual).sum()),
        "gt_n_concepts": int(eligible.size),
    }
    out = pd.DataFrame(
        {"dominant_concept": np.where(live, dom, -1), "concept_purity": np.where(live, purity, np.nan),
         "concept_langs": np.where(live, n_langs, 0), "bilingual_concept": bilingual,
         "pure_bilingual_concept": pure},
        index=features.index,
    )
    return out, summary
