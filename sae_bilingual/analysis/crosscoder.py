"""Per-latent analysis of a crosscoder over checkpoints: when each latent is born, and what it is.

Definitions (decided here; issue 27):

- **decoder-norm share**: latent i's decoder has one slice per checkpoint, W_dec[i, c, :];
  ``share[i, c] = ||W_dec[i, c]|| / sum_c' ||W_dec[i, c']||`` (1/C each for a latent present
  equally everywhere; 0 where the latent writes nothing). A latent whose norms are all 0
  has share 0 everywhere.
- **alive at c**: ``share[i, c] > threshold / C`` with ``threshold`` =
  ``crosscoder.emergence_threshold`` (0.5: half the uniform share; why in
  :data:`sae_bilingual.config_crosscoder.EMERGENCE_THRESHOLD`).
- **emergence**: the first checkpoint at which the latent is alive (-1: never, a dead decoder).
- **exclusive**: alive at exactly one checkpoint.
- **language class per slice**, choice (a): the latent's class is computed once, from its
  activation on the evaluation tokens, with the SAEs' own rules and thresholds
  (:func:`sae_bilingual.analysis.features.analyse_features` on codes of the crosscoder); slice c
  gets that class where the latent is alive at c, "dead" elsewhere. Why not (b), the
  activation from checkpoint c's tokens alone: an acausal crosscoder encodes the
  concatenation of all C slices, so a token has ONE activation per latent; encoding slice c
  alone (the others zeroed) is off the training distribution and the inference threshold was
  never calibrated for it. The slice's decoder contribution z_i x ||W_dec[i, c]|| is the
  same activation scaled by a constant, so it gives the same class wherever the slice is alive.
- **concept-bilingual** (toy world): :func:`sae_bilingual.analysis.ground_truth.score_ground_truth`
  on the same codes (dominant concept active in >= 2 languages).
- **exclusive real or artefact** (toy world): an exclusive latent of checkpoint c with
  dominant concept g and class l is an *artefact* when another spanned checkpoint's own SAE
  has a live feature of concept g and class l (the feature existed there, so a crosscoder
  that shared it would have been right: Minder et al.'s spurious exclusivity), *real* when
  none has, *unknown* when the latent has no dominant concept.
- **lineage comparison**: the latent's slice at the final checkpoint is matched by decoder
  cosine to the final checkpoint's SAE decoder; its best feature's *lineage birth* is the
  first checkpoint from which the lineage stage's ancestry chain is unbroken (best ancestor
  Jaccard >= the match threshold at that and every later checkpoint).

Everything is vectorised over latents (no Python loop over latents or tokens).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from sae_bilingual.analysis.codes import Codes
from sae_bilingual.data.store import Labels
from sae_bilingual.errors import DataError

__all__ = ["alive_mask", "codes_from_dense", "codes_from_sparse", "decoder_shares", "emergence_index", "exclusive_reality",
           "latent_table", "lineage_birth", "lineage_comparison", "best_cosine_match"]


def decoder_shares(norms: torch.Tensor | np.ndarray) -> np.ndarray:
    """[n, C] decoder norms -> [n, C] shares of each latent's total (rows sum to 1, or 0)."""
    a = np.asarray(norms.detach().cpu().numpy() if isinstance(norms, torch.Tensor) else norms, dtype=np.float64)
    if a.ndim != 2:
        raise DataError(f"decoder norms must be [n_latents, n_checkpoints], got shape {a.shape}")
    total = a.sum(axis=1, keepdims=True)
    return np.divide(a, total, out=np.zeros_like(a), where=total > 0)


def alive_mask(shares: np.ndarray, threshold: float) -> np.ndarray:
    """[n, C] bool: share > threshold / C (module docstring)."""
    return shares > threshold / shares.shape[1]


def emergence_index(alive: np.ndarray) -> np.ndarray:
    """[n] first checkpoint index where alive, -1 where never."""
    first = alive.argmax(axis=1)
    return np.where(alive.any(axis=1), first, -1)


def codes_from_dense(z: torch.Tensor, labels: Labels, languages: Sequence[str]) -> Codes:
    """Dense crosscoder codes [M, n] -> :class:`Codes` of the nonzero entries.

    A BatchTopK crosscoder at inference keeps a varying number of latents per row, and
    ``Codes`` is [M, K]: K is the most any row keeps, and a row's unused entries point at
    the sentinel latent n (value 0), which the caller analyses as latent n and drops, so no
    real latent is counted as selected where it was not. Returns codes over n + 1 latents.
    """
    M, n = z.shape
    nnz = (z != 0).sum(dim=1)
    K = max(1, int(nnz.max()) if M else 1)
    val, idx = torch.topk(z.abs(), K, dim=1)
    val = torch.gather(z, 1, idx)
    pad = torch.arange(K)[None, :] >= nnz[:, None]
    idx = torch.where(pad, torch.full_like(idx, n), idx)
    val = torch.where(pad, torch.zeros_like(val), val)
    return Codes.of(idx, val, labels, tuple(languages))


def codes_from_sparse(val: torch.Tensor, idx: torch.Tensor, n: int, labels: Labels,
                      languages: Sequence[str]) -> Codes:
    """The crosscoder's ``encode_sparse`` output (values [M, cap] descending, zeros past a row's
    active latents) -> :class:`Codes` over n + 1 latents, the zero slots pointing at the
    sentinel latent n (as :func:`codes_from_dense`, its reference)."""
    pad = val == 0
    idx = torch.where(pad, torch.full_like(idx, n), idx)
    return Codes.of(idx, val, labels, tuple(languages))


def latent_table(norms: torch.Tensor | np.ndarray, features: pd.DataFrame, iterations: Sequence[int],
                 tokens: Sequence[int], threshold: float) -> pd.DataFrame:
    """One row per latent: shares, alive slices, emergence, class per slice, exclusivity.

    ``features``: :func:`analyse_features` (+ ground-truth columns on the toy) of the
    crosscoder's codes, one row per latent (the sentinel dropped). Columns: every column of
    ``features``, ``share_<it>`` and ``cls_<it>`` per checkpoint iteration, ``n_alive``,
    ``exclusive``, ``emergence_index``, ``emergence_iteration``, ``emergence_tokens`` (-1: never).
    """
    sh = decoder_shares(norms)
    n, C = sh.shape
    if len(features) != n or len(iterations) != C or len(tokens) != C:
        raise DataError(f"latent_table: {n} latents x {C} checkpoints, but {len(features)} feature rows, "
                        f"{len(iterations)} iterations and {len(tokens)} token counts")
    alive = alive_mask(sh, threshold) & ~features["dead"].to_numpy(dtype=bool)[:, None]
    em = emergence_index(alive)
    it, tk = np.asarray(iterations, dtype=np.int64), np.asarray(tokens, dtype=np.int64)
    cls = features["cls"].astype(str).to_numpy()
    per = np.where(alive, cls[:, None], "dead")
    df = features.copy()
    for c in range(C):  # a loop over checkpoints, not latents
        df[f"share_{it[c]}"] = sh[:, c]
        df[f"cls_{it[c]}"] = per[:, c]
    df["n_alive"] = alive.sum(axis=1)
    df["exclusive"] = df["n_alive"] == 1
    df["emergence_index"] = em
    df["emergence_iteration"] = np.where(em >= 0, it[np.maximum(em, 0)], -1)
    df["emergence_tokens"] = np.where(em >= 0, tk[np.maximum(em, 0)], -1)
    return df


def exclusive_reality(table: pd.DataFrame, sae_features: Sequence[pd.DataFrame]) -> np.ndarray:
    """[n] "real" / "artefact" / "unknown" for exclusive latents ("" for the others).

    ``sae_features[c]``: the features.parquet of checkpoint c's own SAE (with
    ``dominant_concept``, ``cls``, ``dead``). See the module docstring for the rule.
    """
    n, C = len(table), len(sae_features)
    concepts = [f.loc[~f["dead"].to_numpy(dtype=bool)] for f in sae_features]
    width = 1 + max([int(table["dominant_concept"].to_numpy().max(initial=-1))]
                    + [int(f["dominant_concept"].to_numpy().max(initial=-1)) for f in concepts])
    classes = sorted(set(table["cls"].astype(str)) | {x for f in concepts for x in f["cls"].astype(str)})
    code = {c: i for i, c in enumerate(classes)}
    # has[c, key]: checkpoint c's SAE has a live feature of (concept, class) key
    has = np.zeros((C, max(1, width * len(classes))), dtype=bool)
    for c, f in enumerate(concepts):  # a loop over checkpoints
        g = f["dominant_concept"].to_numpy(dtype=np.int64)
        ok = g >= 0
        has[c, g[ok] * len(classes) + f["cls"].astype(str).map(code).to_numpy()[ok]] = True
    g = table["dominant_concept"].to_numpy(dtype=np.int64)
    key = np.maximum(g, 0) * len(classes) + table["cls"].astype(str).map(code).to_numpy()
    home = table["emergence_index"].to_numpy(dtype=np.int64)
    elsewhere = has[:, key].T.copy()  # [n, C]
    elsewhere[np.arange(n), np.maximum(home, 0)] = False
    excl = table["exclusive"].to_numpy(dtype=bool)
    out = np.where(elsewhere.any(axis=1), "artefact", "real").astype(object)
    out = np.where(g < 0, "unknown", out)
    return np.where(excl, out, "").astype(str)


def best_cosine_match(a: torch.Tensor, b: torch.Tensor, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """For every row of ``a`` [n, d], the row of ``b`` [m, d] of highest cosine, and that cosine.

    In chunks of ``chunk`` rows of ``a`` (an n x m matrix is never held at once); a zero row
    has cosine 0 with everything."""
    an = a.float() / a.float().norm(dim=1, keepdim=True).clamp_min(1e-12)
    bn = b.float() / b.float().norm(dim=1, keepdim=True).clamp_min(1e-12)
    best, cos = [], []
    for s in range(0, an.shape[0], chunk):
        v, i = (an[s:s + chunk] @ bn.T).max(dim=1)
        best.append(i)
        cos.append(v)
    return torch.cat(best).numpy(), torch.cat(cos).numpy()


def lineage_birth(ancestry: pd.DataFrame, iterations: Sequence[int], threshold: float) -> np.ndarray:
    """[n_final] the iteration from which each final feature's ancestry is unbroken.

    ``ancestry``: the lineage stage's table (feature, iteration, jaccard) over the earlier
    checkpoints ``iterations[:-1]``; ``iterations[-1]`` is the final one (every feature's
    birth at the latest). A feature whose best ancestor at t and at every later checkpoint
    has Jaccard >= ``threshold`` was born at t or before."""
    its = list(iterations)
    nf = int(ancestry["feature"].max()) + 1 if len(ancestry) else 0
    J = np.zeros((nf, len(its)))
    J[:, -1] = 1.0
    col = pd.Index(its).get_indexer(ancestry["iteration"])
    ok = col >= 0
    J[ancestry["feature"].to_numpy()[ok], col[ok]] = ancestry["jaccard"].to_numpy()[ok]
    held = J >= threshold
    run = np.cumprod(held[:, ::-1], axis=1).sum(axis=1)  # trailing unbroken checkpoints (final included)
    return np.asarray(its, dtype=np.int64)[len(its) - run]


def lineage_comparison(table: pd.DataFrame, final_slice: torch.Tensor, sae_dec: torch.Tensor,
                       birth: np.ndarray, origin: np.ndarray | None, iterations: Sequence[int]) -> pd.DataFrame:
    """Per live latent: its emergence vs the lineage birth of its best-matching final SAE feature.

    ``final_slice`` [n, d]: the crosscoder's decoder at the final checkpoint; ``sae_dec``
    [m, d]: the final SAE's decoder; ``birth`` [m] from :func:`lineage_birth`; ``origin`` [m]
    the lineage origin of each final feature (or None); ``iterations`` the study's analysed
    checkpoints (to compare positions). ``relation``: "same", "earlier" (the crosscoder
    latent is born before the SAE feature's lineage) or "later"."""
    live = table["emergence_index"].to_numpy() >= 0
    f, cos = best_cosine_match(final_slice, sae_dec)
    em_it = table["emergence_iteration"].to_numpy(dtype=np.int64)
    b = birth[f]
    index = pd.Index(np.asarray(iterations, dtype=np.int64))
    em_pos, b_pos = index.get_indexer(em_it), index.get_indexer(b)
    rel = np.where(em_pos == b_pos, "same", np.where(em_pos < b_pos, "earlier", "later"))
    out = pd.DataFrame({"latent": np.arange(len(table)), "cls": table["cls"].astype(str).to_numpy(),
                        "emergence_iteration": em_it, "sae_feature": f, "cosine": cos,
                        "lineage_birth_iteration": b, "relation": rel})
    if origin is not None:
        out["lineage_origin"] = np.asarray(origin)[f]
    return out.loc[live].reset_index(drop=True)
