"""Next-token cross-entropy without materialising a whole batch's full-vocabulary logits.

A forward pass that returns logits holds ``batch x positions x vocab`` floats at once (plus
the log-softmax of them): 64 windows x 64 tokens x 99,584 tokens of LLM-jp's vocabulary is
1.6 GB per copy. Here the model runs only up to the residual stream before the final norm
(``stop_at_layer=n_layers``); the final norm, the unembedding, the log-softmax and the
gather then run on chunks of the positions that have a target, each chunk's logits at most
``budget_bytes`` (float32). The losses equal those from the whole logits up to float
rounding (tested).

:func:`sae_bilingual.sae.metrics.ce_metrics_many` (CE loss recovered of SAEs spliced into the
model) and :func:`sae_bilingual.intervention.metrics.perplexity` compute their losses this way;
:func:`token_windows` reads the parts of the windows whose losses they take (tokens, lengths,
language ids).
"""

from __future__ import annotations

import math

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from transformer_lens.model_bridge import TransformerBridge
from transformer_lens.utilities.activation_functions import apply_softcap

from sae_bilingual.defaults import PAPER_LANGUAGES
from sae_bilingual.errors import ConfigError, DataError

DEFAULT_LOGITS_BUDGET_BYTES = 256 * 2**20
"""Bytes of float32 logits one chunk may hold (256 MiB: ~670 positions at a 99,584 vocab)."""


def chunk_positions(d_vocab: int, budget_bytes: int) -> int:
    """Positions per chunk so that one chunk's float32 logits fit ``budget_bytes`` (>= 1)."""
    if budget_bytes <= 0:
        raise ConfigError(f"the logits budget must be > 0 bytes, got {budget_bytes}")
    return max(1, int(budget_bytes) // (4 * int(d_vocab)))


def final_residual(model: Any, x: torch.Tensor, *, start_at_layer: int | None = None,
                   tokens: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
    """The residual stream after the last block, before the final norm: ``[B, T, d]``.

    ``x`` is token ids (``start_at_layer=None``) or the residual before block ``start_at_layer``.
    A TransformerBridge can neither start at a layer nor stop before its final norm: it runs
    ``tokens`` (the ids ``x`` came from) through the whole model, with ``x`` put in place at
    ``blocks.{start_at_layer}.hook_resid_pre``, and the last block's output is taken by a hook
    (so it costs a full forward with logits).
    """
    n = int(model.cfg.n_layers)
    if not isinstance(model, TransformerBridge):
        return model(x, start_at_layer=start_at_layer, stop_at_layer=n, **kwargs)
    if start_at_layer is not None and start_at_layer >= n:
        return x
    if start_at_layer is not None and tokens is None:
        raise ConfigError("a TransformerBridge cannot start at a layer: pass tokens= to final_residual "
                          "(or load the model with model_backend: hooked)")
    grab: dict[str, torch.Tensor] = {}
    hooks: list[tuple[str | Callable[..., Any], Callable[..., Any]]] = [(f"blocks.{n - 1}.hook_resid_post", lambda act, hook: grab.setdefault("r", act))]
    if start_at_layer is not None:
        hooks.insert(0, (f"blocks.{start_at_layer}.hook_resid_pre", lambda act, hook: x))
    inputs = x if start_at_layer is None else tokens
    assert inputs is not None  # checked above: a start layer comes with tokens
    model.run_with_hooks(inputs, fwd_hooks=hooks, **kwargs)
    return grab["r"]


def cache_and_final_residual(model: Any, tokens: torch.Tensor, names: set[str]) -> tuple[torch.Tensor, Any]:
    """(:func:`final_residual` of ``tokens``, the activations at ``names``) from one forward."""
    n = int(model.cfg.n_layers)
    if not isinstance(model, TransformerBridge):
        return model.run_with_cache(tokens, names_filter=lambda k: k in names, stop_at_layer=n)
    last = f"blocks.{n - 1}.hook_resid_post"
    _, cache = model.run_with_cache(tokens, names_filter=lambda k: k in names or k == last)
    return cache[last], cache


def logits_of(model: Any, resid: torch.Tensor) -> torch.Tensor:
    """Final norm + unembedding (+ logit soft-cap) of residuals ``[B, T, d]``, as the model's
    own forward computes them after its last block."""
    x = model.ln_final(resid) if model.cfg.normalization_type is not None else resid
    return apply_softcap(model.unembed(x), model.cfg.output_logits_soft_cap)


def nll_rows(model: Any, resid: torch.Tensor, tokens: torch.Tensor, lengths: torch.Tensor, *,
             budget_bytes: int = DEFAULT_LOGITS_BUDGET_BYTES) -> torch.Tensor:
    """Summed next-token NLL per row (float64 ``[B]``): position t predicts token t+1 for
    t + 1 < length, so BOS is never a target and right padding is masked.

    ``resid`` is :func:`final_residual` of ``tokens`` ``[B, T]``; only positions with a target
    are unembedded, in chunks of at most ``budget_bytes`` of logits.
    """
    B, T = tokens.shape
    pos = torch.arange(1, T, device=tokens.device)
    valid = pos[None, :] < lengths.to(tokens.device)[:, None]  # [B, T-1]: target t+1 exists
    rows = valid.nonzero()[:, 0]
    src = resid[:, :-1][valid]  # [M, d]
    tgt = tokens[:, 1:][valid]  # [M]
    out = torch.zeros(B, dtype=torch.float64, device=resid.device)
    step = chunk_positions(int(model.unembed.W_U.shape[-1]), budget_bytes)
    for s in range(0, src.shape[0], step):
        logp = torch.log_softmax(logits_of(model, src[None, s : s + step])[0].float(), dim=-1)
        nll = -logp.gather(-1, tgt[s : s + step, None].to(logp.device))[:, 0]
        out.index_add_(0, rows[s : s + step].to(out.device), nll.double().to(out.device))
    return out


class WindowParts(NamedTuple):
    tokens: torch.Tensor       # [N, T] token ids
    lengths: torch.Tensor      # [N] tokens that are not padding
    langs: torch.Tensor        # [N] index into languages
    languages: tuple[str, ...]


def token_windows(windows: Any, langs: Any, languages: Sequence[str] | None, lengths: Any) -> WindowParts:
    """The parts of a ``corpus.Windows``, or of a LongTensor [N, T] given with ``langs`` (and
    optionally ``lengths``); checked."""
    if hasattr(windows, "tokens"):
        tokens = windows.tokens
        lengths = windows.lengths if lengths is None else lengths
        langs = windows.lang if langs is None else langs
        languages = tuple(windows.languages) if languages is None else tuple(languages)
    else:
        tokens = windows
    tokens = torch.as_tensor(tokens, dtype=torch.long)
    if tokens.ndim != 2:
        raise DataError(f"token windows must be [N, T]; got shape {tuple(tokens.shape)}")
    N, T = tokens.shape
    lengths = torch.full((N,), T, dtype=torch.long) if lengths is None else torch.as_tensor(lengths, dtype=torch.long)
    if langs is None:
        raise DataError("perplexity needs a language index per window (langs=LongTensor[N])")
    langs = torch.as_tensor(langs, dtype=torch.long)
    languages = tuple(languages or PAPER_LANGUAGES)
    if langs.shape != (N,) or lengths.shape != (N,):
        raise DataError(f"langs/lengths must have shape ({N},); got {tuple(langs.shape)}/{tuple(lengths.shape)}")
    if N and (int(langs.min()) < 0 or int(langs.max()) >= len(languages)):
        raise DataError(f"lang indices must lie in 0..{len(languages) - 1} for languages {languages}")
    return WindowParts(tokens, lengths, langs, languages)


def ppl_row(nll_sum: torch.Tensor, count: torch.Tensor, languages: Sequence[str]) -> dict[str, float]:
    """Perplexity and token count per language and over all, from summed NLL and predicted-token
    counts indexed like ``languages`` (NaN where a language has no tokens)."""
    out: dict[str, float] = {}
    for j, code in enumerate(languages):
        out[f"ppl_{code}"] = math.exp(nll_sum[j] / count[j]) if count[j] > 0 else float("nan")
        out[f"tokens_{code}"] = int(count[j])
    tot = count.sum()
    out["ppl_all"] = math.exp(nll_sum.sum() / tot) if tot > 0 else float("nan")
    out["tokens_all"] = int(tot)
    return out
