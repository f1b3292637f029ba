"""Next-token cross-entropy without materialising a whole batch's full-vocabulary logits.

A forward pass that returns logits holds ``batch x positions x vocab`` floats at once (plus
the log-softmax of them): 64 windows x 64 tokens x 99,584 tokens of LLM-jp's vocabulary is
1.6 GB per copy. Here the model runs only up to the residual stream before the final norm
(``stop_at_layer=n_layers``); the final norm, the unembedding, the log-softmax and the
gather then run on chunks of the positions that have a target, each chunk's logits at most
``budget_bytes`` (float32). The losses equal those from the whole logits up to float
rounding (tested).

:func:`ce_metrics_many` (CE loss recovered of SAEs spliced into the model) and
:func:`sae_bilingual.intervention.metrics.perplexity` compute their losses this way;
:func:`token_windows` reads the evaluation windows' parts (tokens, lengths, language ids).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from transformer_lens.utilities import apply_softcap

from sae_bilingual.errors import ConfigError, DataError, SAEFileError
from sae_bilingual.layers import layer_for_hook

log = logging.getLogger(__name__)

DEFAULT_LOGITS_BUDGET_BYTES = 256 * 2**20
"""Bytes of float32 logits one chunk may hold (256 MiB: ~670 positions at a 99,584 vocab)."""


def chunk_positions(d_vocab: int, budget_bytes: int) -> int:
    """Positions per chunk so that one chunk's float32 logits fit ``budget_bytes`` (>= 1)."""
    if budget_bytes <= 0:
        raise ConfigError(f"the logits budget must be > 0 bytes, got {budget_bytes}")
    return max(1, int(budget_bytes) // (4 * int(d_vocab)))


def final_residual(model: Any, x: torch.Tensor, *, start_at_layer: int | None = None, **kwargs: Any) -> torch.Tensor:
    """The residual stream after the last block, before the final norm: ``[B, T, d]``.

    ``x`` is token ids (``start_at_layer=None``) or the residual before block ``start_at_layer``.
    """
    return model(x, start_at_layer=start_at_layer, stop_at_layer=int(model.cfg.n_layers), **kwargs)


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


def token_windows(windows: Any, langs: Any, languages: Sequence[str] | None, lengths: Any):
    """(tokens [N, T], lengths [N], lang ids [N], language codes) of a ``corpus.Windows`` or a
    LongTensor [N, T] given with ``langs`` (and optionally ``lengths``); checked."""
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
    languages = tuple(languages or ("en", "ja"))
    if langs.shape != (N,) or lengths.shape != (N,):
        raise DataError(f"langs/lengths must have shape ({N},); got {tuple(langs.shape)}/{tuple(lengths.shape)}")
    if N and (int(langs.min()) < 0 or int(langs.max()) >= len(languages)):
        raise DataError(f"lang indices must lie in 0..{len(languages) - 1} for languages {languages}")
    return tokens, lengths, langs, languages


def _check_splice(model: Any, sae: Any) -> str:
    """The SAE's hook, after checking that it fits this model (width and hook)."""
    hook = sae.cfg.metadata.hook_name
    if int(sae.cfg.d_in) != int(model.cfg.d_model):
        raise SAEFileError(f"the SAE reads d_in={sae.cfg.d_in} but the model's d_model is "
                           f"{model.cfg.d_model}; splice an SAE trained on this model")
    if hook not in model.hook_dict:
        raise SAEFileError(f"the SAE was trained at hook {hook!r}, which this model does not have "
                           f"({model.cfg.n_layers} blocks); use an SAE trained on this model")
    return hook


def ce_recovered(ce_clean: float, ce_sae: float, ce_zero: float) -> tuple[float, str]:
    """(CE recovered, why it is undefined or ""): ``(CE_zero - CE_sae) / (CE_zero - CE_clean)``.

    The ratio measures how much of the loss that ablating the layer costs the SAE wins back; it
    is undefined (NaN) when zero-ablation costs nothing, i.e. CE_zero is not above CE_clean (an
    untrained early checkpoint can even do better without the layer's residual), where the
    ratio would be meaningless (e.g. 1.27).
    """
    if not ce_zero - ce_clean > 1e-12:
        return float("nan"), (f"zero-ablation loss {ce_zero:.4f} is not above the clean loss {ce_clean:.4f}: "
                              "ablating the layer costs nothing to recover")
    return (ce_zero - ce_sae) / (ce_zero - ce_clean), ""


@torch.no_grad()
def ce_metrics_many(model: Any, saes: Sequence[Any], windows: Any, *, batch_size: int = 64,
                    device: str | None = None, budget_bytes: int = DEFAULT_LOGITS_BUDGET_BYTES
                    ) -> dict[str, dict[str, Any]]:
    """Next-token CE of every SAE's splice, from one clean forward per batch: {hook: metrics}.

    Metrics: ``ce_loss_clean``, ``ce_loss_sae`` (non-BOS positions replaced by the SAE's
    reconstruction), ``ce_loss_zero`` (replaced by zeros), ``ce_recovered`` (NaN when undefined,
    see :func:`ce_recovered`) and ``ce_recovered_note`` (why it is NaN, else ""). Why one call
    for all layers: the clean pass caches every hook's residual, and each spliced /
    zero-ablated pass restarts from that residual at the hook (``start_at_layer``), so the
    blocks below a layer are never recomputed; the losses are taken in chunks of at most
    ``budget_bytes`` of logits.
    """
    hooks = [_check_splice(model, sae) for sae in saes]
    names = set(hooks)
    if len(names) < len(hooks):
        raise ConfigError(f"ce_metrics_many takes one SAE per hook; got hooks {hooks}")
    device = device or str(getattr(model.cfg, "device", "cpu"))
    totals = {h: {"sae": 0.0, "zero": 0.0} for h in hooks}
    clean_total, n_tok = 0.0, 0
    pos = torch.arange(windows.tokens.shape[1])
    for s in range(0, len(windows), batch_size):
        w = windows.subset(slice(s, s + batch_size))
        toks, ln = w.tokens.to(device), w.lengths
        splice_mask = (pos[None, :] < ln[:, None]).to(device)[..., None]
        splice_mask[:, 0] = False  # only non-BOS positions: the SAE never saw BOS
        resid, cache = model.run_with_cache(toks, names_filter=lambda n: n in names,
                                            stop_at_layer=int(model.cfg.n_layers))
        clean_total += float(nll_rows(model, resid, toks, ln, budget_bytes=budget_bytes).sum())
        n_tok += int((ln - 1).clamp_min(0).sum())
        for sae, hook in zip(saes, hooks):
            act = cache[hook]
            rec = sae(act.to(sae.W_enc.dtype)).to(act.dtype)
            for name, x in (("sae", torch.where(splice_mask, rec, act)),
                            ("zero", torch.where(splice_mask, torch.zeros_like(act), act))):
                out = final_residual(model, x, start_at_layer=layer_for_hook(hook))
                totals[hook][name] += float(nll_rows(model, out, toks, ln, budget_bytes=budget_bytes).sum())
    clean = clean_total / max(1, n_tok)
    result: dict[str, dict[str, Any]] = {}
    for hook in hooks:
        ce_sae, ce_zero = (totals[hook][k] / max(1, n_tok) for k in ("sae", "zero"))
        rec, why = ce_recovered(clean, ce_sae, ce_zero)
        if why:
            log.info("CE recovered at %s is undefined (NaN): %s", hook, why)
        result[hook] = {"ce_loss_clean": clean, "ce_loss_sae": ce_sae, "ce_loss_zero": ce_zero,
                        "ce_recovered": rec, "ce_recovered_note": why}
    return result


def ce_metrics(model: Any, sae: Any, windows: Any, *, batch_size: int = 64, device: str | None = None,
               budget_bytes: int = DEFAULT_LOGITS_BUDGET_BYTES) -> dict[str, Any]:
    """Next-token CE: clean, with the SAE spliced at its hook, and with that hook zero-ablated.

    Only non-BOS positions are replaced (the SAE never saw BOS). CE recovered =
    (CE_zero - CE_sae) / (CE_zero - CE_clean), NaN when CE_zero <= CE_clean. For several SAEs
    of one model use :func:`ce_metrics_many` (one clean pass for all).
    """
    (metrics,) = ce_metrics_many(model, [sae], windows, batch_size=batch_size, device=device,
                                 budget_bytes=budget_bytes).values()
    return metrics
