"""Feature analysis: language and concept selectivity of every SAE feature, in one pass.

Definitions (PAPER.md, "Feature analysis"; decisions noted where the paper is silent):

- ``max_act``: largest activation of the feature over the entries where the TopK selected it.
- threshold = ``act_threshold`` (0.7) x max_act; an entry is *active* when its activation
  is STRICTLY greater (the original code's ``>``). The product is rounded to float32, the
  dtype of the activations, so an activation equal to 0.7 x max is excluded; an activation
  within float32 rounding of 0.7 x max may therefore be classed differently than by a
  float64 computation (accepted: the codes are float32 too).
- ``dead``: no active entry (never selected on the evaluation set, or only with
  activations <= 0). Dead features get cls "dead" and NaN metrics and are left out of the
  class proportions.
- f(v|i): share of the feature's active entries whose token is v (``token_weighting``
  "count", default; "activation" weights each entry by its activation).
- p(lang|i): share (same weighting) of active entries whose language is lang; the language
  is the document label (``language_rule="document"``, default) or the script of the token
  (``"script"``, the released evaluation script: ASCII letters -> en, digits -> the
  previous token's script in the same document, anything else -> ja; supply the
  token-id -> language-index table ``token_script``, built with `script_of_tokens`).
- cls: the language whose p(lang|i) > ``lang_threshold`` (0.9, strict), else "mixed"
  (any number of languages). ``mix``: the languages with p(lang|i) > ``mix_threshold``
  (0.1), joined with "+" in the order of ``languages`` (e.g. "en+xx"), "" for dead features.
- H_tok = -sum_v f log f (natural log); H_sem = -sum_c p(c|i) log p(c|i) over C_i, the
  semantic clusters OF FEATURE i: its own active tokens joined when their embedding cosine
  exceeds the threshold (see :mod:`sae_bilingual.analysis.semantic`), p(c|i) = sum_{v in c} f(v|i);
  R = 1 - H_sem / H_tok, R = 1 when H_tok = 0. Without ``token_clusters`` H_sem and R
  are NaN.
- spans: maximal runs of consecutive positions of ONE document in which the feature is
  selected by the TopK (``span_rule="topk"``, default) or active (``"threshold"``);
  ``span_mean`` = entries / runs, ``span_max`` = longest run. Codes may come in any order;
  they are sorted by (doc_id, position) here. (doc_id, position) pairs must be unique.
  Dead features get NaN spans too.

Everything is computed for all features at once with numpy / scipy.sparse: the
(feature, row) pairs are counting-sorted into a CSR matrix once, and every per-feature
quantity is a segment reduction over it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import scipy.sparse as sp

from sae_bilingual.analysis.codes import Codes
from sae_bilingual.config_analysis import AnalysisSpec
from sae_bilingual.errors import ConfigError, DataError
from sae_bilingual.analysis.semantic import TokenGraph, feature_token_components

log = logging.getLogger(__name__)

@dataclass
class FeatureMajor:
    """Codes sorted by (doc_id, position), and their entries grouped by feature."""

    order: np.ndarray      # row order: sorted row r = original row order[r]
    doc: np.ndarray        # [M] doc_id of sorted rows
    pos: np.ndarray        # [M] position of sorted rows
    tok: np.ndarray        # [M] token id of sorted rows
    lang: np.ndarray       # [M] language index of sorted rows
    newrun: np.ndarray     # [M] bool: sorted row r does not continue row r-1 (new doc or gap)
    indptr: np.ndarray     # [n+1] CSR row pointer over features
    R: np.ndarray          # [nnz] sorted row of each entry (ascending inside each feature)
    V: np.ndarray          # [nnz] activation of each entry
    F: np.ndarray          # [nnz] feature of each entry (non-decreasing)


def feature_major(codes: Codes, n_latents: int) -> FeatureMajor:
    m = codes.n
    if m and (codes.idx.min() < 0 or codes.idx.max() >= n_latents):
        raise DataError(
            f"codes hold feature ids {codes.idx.min()}..{codes.idx.max()} but n_latents={n_latents}; "
            "pass the d_sae of the SAE that produced the codes."
        )
    if m > 1 and np.all((np.diff(codes.doc_id) > 0) | ((np.diff(codes.doc_id) == 0) & (np.diff(codes.position) > 0))):
        order = np.arange(m)
        idx, val = codes.idx, codes.val
    else:
        order = np.lexsort((codes.position, codes.doc_id))
        idx, val = codes.idx[order], codes.val[order]
    doc, pos = codes.doc_id[order], codes.position[order]
    newrun = np.ones(m, dtype=bool)
    if m > 1:
        same_doc = doc[1:] == doc[:-1]
        if np.any(same_doc & (pos[1:] == pos[:-1])):
            log.warning("codes repeat some (doc_id, position) pairs; spans are split there. "
                        "Labels.position should be the position inside the document.")
        newrun[1:] = ~(same_doc & (pos[1:] == pos[:-1] + 1))
    k = idx.shape[1] if idx.ndim == 2 else 0
    rows = np.repeat(np.arange(m, dtype=np.int32), k)
    # Counting sort by feature (stable: rows stay ascending inside each feature). TopK never
    # selects a feature twice in one vector, so no duplicates are summed.
    A = sp.csr_matrix((val.ravel(), (idx.ravel(), rows)), shape=(n_latents, max(m, 1)))
    indptr = A.indptr.astype(np.int64)
    F = np.repeat(np.arange(n_latents, dtype=np.int32), np.diff(indptr))
    return FeatureMajor(order, doc, pos, codes.token_id[order], codes.lang[order], newrun,
                         indptr, A.indices, A.data.astype(np.float32, copy=False), F)


def _segment_max(values: np.ndarray, seg_feat: np.ndarray, n: int, fill: float = np.nan) -> np.ndarray:
    """Max of ``values`` per feature, ``seg_feat`` non-decreasing."""
    out = np.full(n, fill, dtype=np.float64)
    if values.size:
        starts = np.flatnonzero(np.r_[True, seg_feat[1:] != seg_feat[:-1]])
        out[seg_feat[starts]] = np.maximum.reduceat(values, starts)
    return out


def _runs(F: np.ndarray, R: np.ndarray, newrun: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(span_mean, span_max) per feature from entries sorted by (feature, row)."""
    span_mean = np.full(n, np.nan)
    span_max = np.full(n, np.nan)
    if F.size == 0:
        return span_mean, span_max
    start = np.ones(F.size, dtype=bool)
    start[1:] = ~((F[1:] == F[:-1]) & (R[1:] == R[:-1] + 1) & ~newrun[R[1:]])
    starts = np.flatnonzero(start)
    run_len = np.diff(np.r_[starts, F.size])
    run_feat = F[starts]
    n_runs = np.bincount(run_feat, minlength=n)
    n_ent = np.bincount(F, minlength=n)
    has = n_runs > 0
    span_mean[has] = n_ent[has] / n_runs[has]
    span_max = _segment_max(run_len.astype(np.float64), run_feat, n)
    return span_mean, span_max


def _entry_lang(fm: FeatureMajor, token_script: np.ndarray | None) -> np.ndarray:
    """Language index of every sorted row: its document's, or (with a token_script) its token's script."""
    if token_script is None:
        return fm.lang
    table = np.asarray(token_script, dtype=np.int64)
    if fm.tok.size and fm.tok.max() >= table.size:
        raise DataError(
            f"token_script covers {table.size} token ids but the codes hold id {fm.tok.max()}; "
            "build it from the full tokenizer vocabulary."
        )
    s = table[fm.tok]
    m = s.size
    last = np.where(s >= 0, np.arange(m), -1)
    np.maximum.accumulate(last, out=last)
    ok = (last >= 0) & (fm.doc[np.maximum(last, 0)] == fm.doc)
    # digits with no scripted token before them in the document fall back to the document label
    return np.where(ok, s[np.maximum(last, 0)], fm.lang)


def _entropy(group: np.ndarray, weight: np.ndarray, total: np.ndarray, n: int) -> np.ndarray:
    p = weight / total[group]
    return np.bincount(group, weights=-p * np.log(p), minlength=n)


class ActivePairs(NamedTuple):
    """A feature's active entries (``*a``), and their weights summed per (feature, token) pair."""

    n_fired: np.ndarray   # [n] entries where the TopK selected the feature
    max_act: np.ndarray   # [n] largest activation (NaN when never selected)
    Fa: np.ndarray        # [A] feature of each active entry
    Ra: np.ndarray        # [A] sorted row of each active entry
    Va: np.ndarray        # [A] activation of each active entry
    wa: np.ndarray        # [A] weight of each active entry (1, or its activation)
    pf: np.ndarray        # [P] feature of each (feature, token) pair
    pt: np.ndarray        # [P] token of each pair
    w_pair: np.ndarray    # [P] summed weight of each pair
    vocab: int            # token ids are < vocab


def _active_pairs(fm: FeatureMajor, n: int, cfg: AnalysisSpec) -> ActivePairs:
    """Active entries and their (feature, token) aggregation."""
    n_fired = np.diff(fm.indptr)
    max_act = _segment_max(fm.V, fm.F, n)
    thr = (cfg.act_threshold * max_act).astype(np.float32)
    active = fm.V > thr[fm.F]
    Fa, Ra, Va = fm.F[active], fm.R[active], fm.V[active]
    wa = np.ones(Fa.size) if cfg.token_weighting == "count" else Va.astype(np.float64)
    Ta = fm.tok[Ra]
    vocab = int(fm.tok.max(initial=0)) + 1
    key = Fa.astype(np.int64) * vocab + Ta
    uniq, inv = np.unique(key, return_inverse=True)
    w_pair = np.bincount(inv.ravel(), weights=wa, minlength=uniq.size)
    return ActivePairs(n_fired, max_act, Fa, Ra, Va, wa, uniq // vocab, uniq % vocab, w_pair, vocab)


def _semantic_entropy(pf: np.ndarray, pt: np.ndarray, w_pair: np.ndarray, total: np.ndarray, n: int,
                      clusters: np.ndarray | TokenGraph) -> np.ndarray:
    """H_sem per feature from its active (feature, token) pairs and their weights.

    A :class:`TokenGraph` gives the paper's per-feature clusters (components of the
    feature's own tokens); an array token id -> cluster id is a fixed partition (ground
    truth, or the "global" scope).
    """
    if isinstance(clusters, TokenGraph):
        group = feature_token_components(pf, pt, clusters)
        w = np.bincount(group, weights=w_pair)
        feat = np.zeros(w.size, dtype=np.int64)
        feat[group] = pf  # every pair of a component belongs to the same feature
        return _entropy(feat, w, total, n)
    tc = np.asarray(clusters, dtype=np.int64)
    if pt.size and tc.size <= int(pt.max()):
        raise DataError(
            f"token_clusters covers {tc.size} token ids but the codes hold id {int(pt.max())}; "
            "build the clusters over the full vocabulary (one entry per token id)."
        )
    C = int(tc.max(initial=0)) + 1
    uniq, inv = np.unique(pf * C + tc[pt], return_inverse=True)
    w = np.bincount(inv.ravel(), weights=w_pair, minlength=uniq.size)
    return _entropy(uniq // C, w, total, n)


def active_token_matrix(codes: Codes, n_latents: int, cfg: AnalysisSpec | None = None) -> sp.csr_matrix:
    """Sparse [n_latents, vocab] weight of each token among each feature's active entries."""
    cfg = (cfg or AnalysisSpec()).validate()
    a = _active_pairs(feature_major(codes, n_latents), n_latents, cfg)
    return sp.csr_matrix((a.w_pair, (a.pf, a.pt)), shape=(n_latents, a.vocab))


def analyse_features(
    codes: Codes,
    n_latents: int,
    *,
    token_clusters: np.ndarray | TokenGraph | None = None,
    cfg: AnalysisSpec | None = None,
    token_script: np.ndarray | None = None,
    more_clusters: Mapping[str, np.ndarray | TokenGraph] | None = None,
) -> pd.DataFrame:
    """One row per feature (index ``feature``) with the contract's per-feature columns.

    ``token_clusters`` (needed for H_sem and R): a :class:`~sae_bilingual.analysis.semantic.TokenGraph`
    of token similarities (`token_graph_from_embeddings`; the paper's per-feature clusters),
    or a token id -> cluster id array (`clusters_from_ground_truth`, or the global
    `token_clusters_from_embeddings`). ``cfg`` is the recipe's ``analysis:`` section (default: the
    paper's settings). ``token_script`` (token id -> language index, `script_of_tokens`) is needed
    exactly when ``cfg.language_rule == "script"``. ``more_clusters`` {name: clusters} adds a
    column ``R_<name>`` per entry, R under that clustering (e.g. the ground truth's beside the
    embeddings'), from the same pass.
    """
    cfg = (cfg or AnalysisSpec()).validate()
    _check_language_rule(cfg, token_script)
    n = int(n_latents)
    langs = tuple(codes.languages)
    fm = feature_major(codes, n)
    a = _active_pairs(fm, n, cfg)
    Fa, Ra, pf, w_pair = a.Fa, a.Ra, a.pf, a.w_pair
    n_active = np.bincount(Fa, minlength=n)
    dead = n_active == 0
    total = np.bincount(pf, weights=w_pair, minlength=n)
    safe_total = np.where(total > 0, total, 1.0)
    p_lang, cls, mix = _language_labels(_entry_lang(fm, token_script)[Ra], a, safe_total, dead, langs, cfg)
    H_tok = _entropy(pf, w_pair, safe_total, n)
    H_tok[dead] = np.nan
    if token_clusters is not None:
        H_sem, R = _monosemanticity(a, safe_total, H_tok, dead, token_clusters)
    else:
        H_sem, R = np.full(n, np.nan), np.full(n, np.nan)
    R_more = {f"R_{name}": _monosemanticity(a, safe_total, H_tok, dead, c)[1]
              for name, c in (more_clusters or {}).items()}

    span_mean, span_max = _spans(fm, a, dead, cfg.span_rule)
    df = pd.DataFrame(
        {
            "max_act": a.max_act,
            "n_fired": a.n_fired.astype(np.int64),
            "n_active": n_active.astype(np.int64),
            "dead": dead,
            **{f"p_{lg}": p_lang[:, j] for j, lg in enumerate(langs)},
            "cls": cls,
            "mix": mix,
            "H_tok": H_tok, "H_sem": H_sem, "R": R,
            "span_mean": span_mean, "span_max": span_max,
            "top_token_ids": _top_tokens(a, n, cfg.n_top_tokens),
            **R_more,
        },
        index=pd.RangeIndex(n, name="feature"),
    )
    log.info("analysed %d features over %d codes: %d dead", n, codes.n, int(dead.sum()))
    return df


def _check_language_rule(cfg: AnalysisSpec, token_script: np.ndarray | None) -> None:
    if (cfg.language_rule == "script") != (token_script is not None):
        raise ConfigError(
            "language_rule='script' goes with token_script (token id -> language index, built with "
            "sae_bilingual.analysis.token_script.script_of_tokens(tokenizer pieces)), and 'document' without it; "
            f"got language_rule={cfg.language_rule!r} and token_script={'given' if token_script is not None else None}."
        )


def _spans(fm: FeatureMajor, a: ActivePairs, dead: np.ndarray, span_rule: str) -> tuple[np.ndarray, np.ndarray]:
    """(span_mean, span_max) per feature over its selected ("topk") or active ("threshold") entries."""
    if span_rule == "topk":
        span_mean, span_max = _runs(fm.F, fm.R, fm.newrun, dead.size)
    else:
        span_mean, span_max = _runs(a.Fa, a.Ra, fm.newrun, dead.size)
    span_mean[dead] = np.nan  # selected only with activations <= 0: dead, like every metric
    span_max[dead] = np.nan
    return span_mean, span_max


def _language_labels(lang: np.ndarray, a: ActivePairs, total: np.ndarray, dead: np.ndarray,
                     langs: tuple[str, ...], cfg: AnalysisSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(p_lang [n, L], cls, mix) per feature from the language index of each active entry."""
    n, L = dead.size, len(langs)
    p_lang = np.bincount(a.Fa.astype(np.int64) * L + lang, weights=a.wa, minlength=n * L).reshape(n, L)
    p_lang = p_lang / total[:, None]
    p_lang[dead] = np.nan
    best = np.nan_to_num(p_lang, nan=-1.0).argmax(axis=1)
    is_lang = np.nan_to_num(p_lang, nan=-1.0).max(axis=1) > cfg.lang_threshold
    cls = np.where(dead, "dead", np.where(is_lang, np.asarray(langs, dtype=object)[best], "mixed")).astype(object)
    mix = np.full(n, "", dtype=object)
    for j, lg in enumerate(langs):  # loop over languages, not features
        hit = np.nan_to_num(p_lang[:, j], nan=0.0) > cfg.mix_threshold
        mix = np.where(hit, np.where(mix == "", lg, mix + "+" + lg), mix)
    return p_lang, cls, mix


def _top_tokens(a: ActivePairs, n: int, n_top: int) -> np.ndarray:
    """Per feature its ``n_top`` most frequent active tokens (weight desc, then token id), as int lists."""
    o = np.lexsort((a.pt, -a.w_pair, a.pf))
    pf_s, pt_s = a.pf[o], a.pt[o]
    first = np.searchsorted(pf_s, pf_s, side="left")
    keep = (np.arange(pf_s.size) - first) < n_top
    offsets = np.r_[0, np.cumsum(np.bincount(pf_s[keep], minlength=n))]
    return _list_column(offsets, pt_s[keep].astype(np.int64))


def _monosemanticity(a: ActivePairs, total: np.ndarray, H_tok: np.ndarray, dead: np.ndarray,
                     clusters: np.ndarray | TokenGraph) -> tuple[np.ndarray, np.ndarray]:
    """(H_sem, R) per feature under one clustering of the tokens; NaN for dead features."""
    H_sem = _semantic_entropy(a.pf, a.pt, a.w_pair, total, dead.size, clusters)
    H_sem[dead] = np.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        R = np.where(H_tok > 0, 1.0 - H_sem / np.where(H_tok > 0, H_tok, 1.0), 1.0)
    R = np.clip(R, 0.0, 1.0)
    R[dead] = np.nan
    return H_sem, R


def _list_column(offsets: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Object array of int lists from CSR-style offsets, without a Python loop over features."""
    arr = pa.ListArray.from_arrays(pa.array(offsets, type=pa.int64()), pa.array(values, type=pa.int64()))
    return arr.to_numpy(zero_copy_only=False)


def summarise(df: pd.DataFrame, languages: Sequence[str] | None = None) -> dict[str, float]:
    """Summary-row numbers of one (checkpoint, layer): class shares over live features and means."""
    if languages is None:
        languages = [c[2:] for c in df.columns if c.startswith("p_")]
    live = df.loc[~df["dead"].astype(bool)]
    n_live = len(live)

    def share(mask: pd.Series) -> float:
        return float(mask.sum()) / n_live if n_live else float("nan")

    def mean(col: str) -> float:
        v = live[col].to_numpy(dtype=np.float64)
        return float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")

    out: dict[str, float] = {"n_features": int(len(df)), "n_dead": int(len(df) - n_live), "n_live": int(n_live)}
    for lg in languages:
        out[f"frac_{lg}"] = share(live["cls"] == lg)
    out["frac_mixed"] = share(live["cls"] == "mixed")
    for key, col in (("mean_R", "R"), ("mean_H_tok", "H_tok"), ("mean_H_sem", "H_sem"), ("mean_span", "span_mean")):
        out[key] = mean(col)
    return out
