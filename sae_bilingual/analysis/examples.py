"""Feature examples for the browser: each feature's highest activations with context, and
byte-safe display of tokens (Japanese byte-fallback pieces merged into characters)."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from transformers import PreTrainedTokenizerBase

from sae_bilingual.analysis.features import feature_major
from sae_bilingual.analysis.codes import Codes

_BYTE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def _utf8_len(b: int) -> int:
    if b < 0x80:
        return 1
    if b >> 5 == 0b110:
        return 2
    if b >> 4 == 0b1110:
        return 3
    if b >> 3 == 0b11110:
        return 4
    return 1


def display_tokens(ids: Sequence[int], tokenizer: Any) -> list[str]:  # a tokenizer or a callable
    """One display string per token id; byte-fallback pieces (<0xE3><0x81><0x82>) of one
    multibyte character are merged: the character is shown on the first piece, "" on the rest.

    ``tokenizer``: a HF tokenizer (``convert_ids_to_tokens``) or a callable id -> piece.
    """
    ids = [int(i) for i in ids]
    if hasattr(tokenizer, "convert_ids_to_tokens"):
        pieces = list(tokenizer.convert_ids_to_tokens(ids))
    else:
        pieces = [tokenizer(i) for i in ids]
    out = [""] * len(pieces)
    i = 0
    while i < len(pieces):  # display only (one example window), not a hot path
        m = _BYTE.match(pieces[i] or "")
        if m is None:
            out[i] = (pieces[i] or "").replace("▁", " ")
            i += 1
            continue
        need = _utf8_len(int(m.group(1), 16))
        j, buf = i, bytearray()
        while j < len(pieces) and len(buf) < need and (mj := _BYTE.match(pieces[j] or "")):
            buf.append(int(mj.group(1), 16))
            j += 1
        out[i] = buf.decode("utf-8", errors="replace")
        i = max(j, i + 1)
    return out


def top_examples(
    codes: Codes,
    token_windows: Any = None,
    features: Sequence[int] | np.ndarray = (),
    n_examples: int = 10,
    context: int = 10,
    *,
    decode_token: Callable[[int], str] | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    one_per_document: bool = True,
) -> dict[str, list[dict[str, Any]]]:
    """examples.json structure: for each feature its highest activations with context.

    The context (``context`` tokens each side, inside the same document) and the per-token
    activations of that feature come from the codes themselves (they cover every token of
    the evaluation set), so ``token_windows`` is accepted for API symmetry and unused.
    Tokens are shown with ``tokenizer`` (`display_tokens`) or ``decode_token`` (id -> str).
    With ``one_per_document`` only the best position of each document is kept.
    """
    del token_windows
    feats = np.unique(np.asarray(features, dtype=np.int64))
    if feats.size == 0 or codes.n == 0:
        return {}
    n_latents = max(int(codes.idx.max()) + 1, int(feats.max()) + 1)
    fm = feature_major(codes, n_latents)
    counts = np.diff(fm.indptr)[feats]
    # entries of the requested features (vectorised segment gather)
    seg_start = np.repeat(fm.indptr[feats], counts)
    within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    ent = seg_start + within
    ef, er, ev = fm.F[ent].astype(np.int64), fm.R[ent].astype(np.int64), fm.V[ent]
    o = np.lexsort((er, -ev, ef))
    ef, er, ev = ef[o], er[o], ev[o]
    if one_per_document:
        d = fm.doc[er]
        o2 = np.lexsort((np.arange(ef.size), d, ef))  # stable: best of each (feature, doc) first
        firsts = np.r_[True, (ef[o2][1:] != ef[o2][:-1]) | (d[o2][1:] != d[o2][:-1])]
        keep = np.sort(o2[firsts])
        ef, er, ev = ef[keep], er[keep], ev[keep]
    first = np.searchsorted(ef, ef, side="left")
    keep = (np.arange(ef.size) - first) < n_examples
    ef, er = ef[keep], er[keep]
    # context windows [E, 2c+1] of sorted rows in the same document
    offs = np.arange(-context, context + 1)
    rows = er[:, None] + offs[None, :]
    valid = (rows >= 0) & (rows < codes.n)
    rows_c = np.clip(rows, 0, codes.n - 1)
    valid &= fm.doc[rows_c] == fm.doc[er][:, None]
    # per-token activation of the example's feature, from the codes (sorted-row order)
    idx_s, val_s = codes.idx[fm.order], codes.val[fm.order]
    hit = idx_s[rows_c] == ef[:, None, None]
    acts = np.where(hit, val_s[rows_c], 0.0).sum(axis=2) * valid
    out: dict[str, list[dict[str, Any]]] = {}
    for e in range(ef.size):  # output formatting: one dict per example (<= n_examples x features)
        w = valid[e]
        ids = fm.tok[rows_c[e][w]]
        if tokenizer is not None:
            toks = display_tokens(ids.tolist(), tokenizer)
        elif decode_token is not None:
            toks = [decode_token(int(t)) for t in ids]
        else:
            toks = [str(int(t)) for t in ids]
        out.setdefault(str(int(ef[e])), []).append({
            "tokens": toks,
            "acts": [round(float(x), 4) for x in acts[e][w]],
            "lang": codes.languages[int(fm.lang[er[e]])],
            "doc_id": int(fm.doc[er[e]]),
            "max_pos": int(np.flatnonzero(w).tolist().index(context)),
        })
    return out
