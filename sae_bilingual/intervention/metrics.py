"""Evaluation of the intervened mid model: perplexity, few-shot translation (chrF; COMET-22 in
:mod:`~sae_bilingual.intervention.comet_bridge`).

Everything here takes TransformerLens ``fwd_hooks`` so that the same code scores the clean
mid model (``fwd_hooks=None``) and the mid model with a :class:`FeatureInjection`; the
same token windows / sentence pairs serve every condition.

:func:`sae_bilingual.intervention.experiment.run_intervention_table` produces one row per
(condition, alpha, m, draw); :mod:`sae_bilingual.intervention.tables` turns them into the
paper's Table 1 and Table 4.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import sacrebleu
import torch
from transformers import PreTrainedTokenizerBase

from sae_bilingual.lm_loss import DEFAULT_LOGITS_BUDGET_BYTES, final_residual, nll_rows, ppl_row
from sae_bilingual.lm_loss import token_windows as window_parts  # the parameter is named token_windows
from sae_bilingual.defaults import DEFAULT_MAX_NEW_TOKENS
from sae_bilingual.errors import ConfigError, DataError

log = logging.getLogger(__name__)

LANG_NAMES = {"en": "English", "ja": "Japanese", "zh": "Chinese", "ko": "Korean", "fr": "French", "de": "German"}


# --------------------------------------------------------------------------------------
# Perplexity
# --------------------------------------------------------------------------------------


@torch.no_grad()
def perplexity(
    model: Any,
    token_windows: Any,
    langs: torch.Tensor | None = None,
    languages: Sequence[str] | None = None,
    fwd_hooks: list | None = None,
    batch_size: int = 8,
    *,
    lengths: torch.Tensor | None = None,
    logits_budget_bytes: int = DEFAULT_LOGITS_BUDGET_BYTES,
) -> dict[str, float]:
    """Token-weighted perplexity per language and overall, BOS never a target, padding masked.

    ``token_windows`` is a ``corpus.Windows`` (tokens/lengths/lang/languages) or a LongTensor
    [N, T] (BOS at column 0, right-padded; then pass ``langs`` and ``lengths``). Returns
    ``{"ppl_<lang>": ..., "ppl_all": ..., "tokens_<lang>": ..., "tokens_all": ...}``. Logits
    are formed in chunks of at most ``logits_budget_bytes`` (see :mod:`sae_bilingual.lm_loss`).
    """
    tokens, lengths, langs, languages = window_parts(token_windows, langs, languages, lengths)
    nll_sum = torch.zeros(len(languages), dtype=torch.float64)
    count = torch.zeros(len(languages), dtype=torch.float64)
    device = getattr(getattr(model, "cfg", None), "device", None) or "cpu"
    kwargs: dict[str, Any] = {"padding_side": "right"} if getattr(model, "tokenizer", None) is not None else {}
    for i in range(0, tokens.shape[0], batch_size):
        ln, lg = lengths[i : i + batch_size], langs[i : i + batch_size]
        tok = tokens[i : i + batch_size, : int(ln.max())].to(device)  # drop all-padding columns
        with model.hooks(fwd_hooks=list(fwd_hooks or [])):
            nll = nll_rows(model, final_residual(model, tok, **kwargs), tok, ln, budget_bytes=logits_budget_bytes)
        nll_sum.index_add_(0, lg, nll.cpu())
        count.index_add_(0, lg, (ln - 1).clamp_min(0).double())
    return ppl_row(nll_sum, count, languages)


# --------------------------------------------------------------------------------------
# Translation
# --------------------------------------------------------------------------------------


@dataclass
class PromptTemplate:
    """Few-shot translation prompt; ``{src_name}``/``{tgt_name}`` are language names."""

    shot: str = "{src_name}: {src}\n{tgt_name}: {tgt}\n\n"
    """One worked example."""
    query: str = "{src_name}: {src}\n{tgt_name}:"
    """The sentence to translate; generation continues after it."""
    stops: tuple[str, ...] = ("\n",)
    """The hypothesis is cut at the first of these strings."""
    names: dict[str, str] = field(default_factory=lambda: dict(LANG_NAMES))
    """Language code -> name shown in the prompt (the code itself when absent)."""

    def build(self, shots: Iterable[tuple[str, str]], src_text: str, src: str, tgt: str) -> str:
        """The prompt for ``src_text`` after the worked ``shots`` (src, tgt) pairs."""
        sn, tn = self.names.get(src, src), self.names.get(tgt, tgt)
        head = "".join(self.shot.format(src_name=sn, tgt_name=tn, src=s, tgt=t) for s, t in shots)
        return head + self.query.format(src_name=sn, tgt_name=tn, src=src_text)

    def cut(self, text: str) -> str:
        """The hypothesis: generated text up to the first stop string, stripped."""
        text = text.lstrip(" ")
        ends = [text.find(s) for s in self.stops if s and s in text]
        return (text[: min(ends)] if ends else text).strip()


def split_pairs(pairs_df: pd.DataFrame, few_shot: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The first ``few_shot`` rows are the worked examples; the rest are translated."""
    if few_shot < 0 or few_shot >= len(pairs_df):
        raise DataError(f"few_shot={few_shot} needs at least {few_shot + 1} sentence pairs; got {len(pairs_df)}")
    return pairs_df.iloc[:few_shot], pairs_df.iloc[few_shot:]


def _encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    ids = list(tokenizer.encode(text))
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None and (not ids or ids[0] != bos):
        ids = [bos] + ids
    return ids


@torch.no_grad()
def translate(
    model: Any,
    pairs_df: pd.DataFrame,
    src: str,
    tgt: str,
    few_shot: int = 3,
    fwd_hooks: list | None = None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    *,
    shots_df: pd.DataFrame | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    template: PromptTemplate | None = None,
    batch_size: int = 8,
    stack: int = 1,
) -> list[str]:
    """Greedy few-shot translation ``src`` -> ``tgt`` of every row of ``pairs_df``.

    Worked examples come from ``shots_df`` (first ``few_shot`` rows); when it is None they
    are the first ``few_shot`` rows of ``pairs_df`` and only the remaining rows are
    translated (see :func:`split_pairs`). Returns hypotheses aligned with the translated
    rows. Prompts of equal token length are batched together (no padding), generation is
    ``model.generate`` (KV cache) under ``model.hooks(fwd_hooks)``. ``stack=G`` repeats each
    batch G times (``repeat(G, 1)``) for a hook that applies one condition per copy (a
    FeatureInjection with G masks) and returns G blocks of hypotheses, copy after copy.
    """
    for c in (src, tgt):
        if c not in pairs_df.columns:
            raise DataError(f"pairs table has no column {c!r}; columns are {list(pairs_df.columns)}")
    if shots_df is None:
        shots_df, pairs_df = split_pairs(pairs_df, few_shot)
    shots = list(zip(shots_df[src].astype(str), shots_df[tgt].astype(str)))[:few_shot]
    tok = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if tok is None:
        raise ConfigError("translate needs a tokenizer: pass tokenizer= or load the model with one")
    template = template or PromptTemplate()
    prompts = [_encode(tok, template.build(shots, s, src, tgt)) for s in pairs_df[src].astype(str)]
    eos = getattr(tok, "eos_token_id", None)
    device = getattr(model.cfg, "device", "cpu")
    hyps: list[str | None] = [None] * (len(prompts) * stack)
    by_len: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_len.setdefault(len(p), []).append(i)
    with model.hooks(fwd_hooks=list(fwd_hooks or [])):
        for n, idxs in sorted(by_len.items()):
            if n + max_new_tokens > model.cfg.n_ctx:
                raise DataError(
                    f"a prompt of {n} tokens + {max_new_tokens} new tokens exceeds the model context "
                    f"{model.cfg.n_ctx}; use fewer shots or a smaller max_new_tokens"
                )
            for j in range(0, len(idxs), batch_size):
                chunk = idxs[j : j + batch_size]
                inp = torch.tensor([prompts[i] for i in chunk], dtype=torch.long, device=device).repeat(stack, 1)
                out = model.generate(
                    inp, max_new_tokens=max_new_tokens, do_sample=False, use_past_kv_cache=True,
                    stop_at_eos=eos is not None, eos_token_id=eos, verbose=False, return_type="tokens",
                )
                at = [g * len(prompts) + i for g in range(stack) for i in chunk]
                for row, i in zip(out[:, n:].tolist(), at):
                    if eos is not None and eos in row:
                        row = row[: row.index(eos)]
                    hyps[i] = template.cut(str(tok.decode(row)))  # one sequence of ids decodes to one str
    return [h or "" for h in hyps]


def chrf(hyps: Sequence[str], refs: Sequence[str]) -> float:
    """Corpus chrF (sacrebleu defaults, 0..100)."""
    if len(hyps) != len(refs):
        raise DataError(f"{len(hyps)} hypotheses but {len(refs)} references")
    return float(sacrebleu.corpus_chrf(list(hyps), [list(refs)]).score)
