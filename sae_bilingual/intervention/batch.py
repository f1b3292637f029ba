"""Perplexity of the mid model under many feature injections, sharing the work before the hook.

For every (condition, draw) of Table 1 the mid model's forward up to the injection layer and
the final model's X_full are the same; only what comes after the hook differs. Per batch of
evaluation windows this module therefore runs

1. the mid model up to the hook (``stop_at_layer``) and the final model up to the same layer,
   once;
2. the SAE's encoding of X_full, once;
3. for each group of injections, ``x_mid + alpha_g D(mask_g z)`` stacked along the batch and
   the rest of the mid model from the hook (``start_at_layer``), with the loss in chunks
   (:mod:`sae_bilingual.lm_loss`).

The numbers equal those of one :func:`~sae_bilingual.intervention.metrics.perplexity` call per
condition under a :class:`~sae_bilingual.intervention.hook.FeatureInjection` hook, up to float
rounding (tested against that path).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from sae_bilingual.lm_loss import DEFAULT_LOGITS_BUDGET_BYTES, final_residual, nll_rows, ppl_row, token_windows
from sae_bilingual.errors import ConfigError
from sae_bilingual.intervention.injection import decode_groups, encode_unit
from sae_bilingual.layers import hook_for_layer


@dataclass(frozen=True)
class Injection:
    """One condition: ``mask`` [d_sae] (None: the clean model) and ``alpha``."""

    mask: torch.Tensor | None
    alpha: float = 0.0


def _model_kwargs(model: Any) -> dict[str, Any]:
    return {"padding_side": "right"} if getattr(model, "tokenizer", None) is not None else {}


def _check_layer(mid_model: Any, final_model: Any, sae: Any, layer: int) -> None:
    n = int(mid_model.cfg.n_layers)
    hook_for_layer(layer, n)  # raises naming the valid range
    for role, m in (("mid", mid_model), ("final", final_model)):
        if int(m.cfg.d_model) != int(sae.cfg.d_in) or int(m.cfg.n_layers) != n:
            raise ConfigError(f"the {role} model (d_model {m.cfg.d_model}, {m.cfg.n_layers} blocks) does not "
                              f"match the SAE (d_in {sae.cfg.d_in}) or the mid model ({n} blocks)")


@torch.no_grad()
def perplexities_under_injections(
    mid_model: Any,
    final_model: Any,
    sae: Any,
    windows: Any,
    injections: Sequence[Injection],
    layer: int,
    *,
    languages: Sequence[str] | None = None,
    scale: str = "residual",
    add_bias: bool = True,
    skip_bos: bool = True,
    batch_size: int = 8,
    stack: int = 16,
    logits_budget_bytes: int = DEFAULT_LOGITS_BUDGET_BYTES,
) -> list[dict[str, float]]:
    """``perplexity`` results (``ppl_<lang>``, ``ppl_all``, ``tokens_*``) per injection, in order.

    ``layer`` is the paper layer of the hook; ``stack`` injections share one rest-of-model
    forward of ``stack x batch_size`` rows (memory grows with it).
    """
    _check_layer(mid_model, final_model, sae, layer)
    if stack < 1:
        raise ConfigError(f"stack must be >= 1, got {stack}")
    tokens, lengths, langs, languages = token_windows(windows, None, languages, None)
    n_inj, L = len(injections), len(languages)
    nll = torch.zeros(n_inj, L, dtype=torch.float64)
    count = torch.zeros(L, dtype=torch.float64)
    d_sae = int(sae.cfg.d_sae)
    masks = torch.stack([torch.zeros(d_sae) if i.mask is None else i.mask.reshape(d_sae).float().cpu()
                         for i in injections]) if n_inj else torch.zeros(0, d_sae)
    alphas = torch.tensor([0.0 if i.mask is None else float(i.alpha) for i in injections], dtype=torch.float64)
    device = getattr(mid_model.cfg, "device", None) or "cpu"
    kw = _model_kwargs(mid_model)
    for s in range(0, tokens.shape[0], batch_size):
        ln, lg = lengths[s : s + batch_size], langs[s : s + batch_size]
        tok = tokens[s : s + batch_size, : int(ln.max())].to(device)
        count.index_add_(0, lg, (ln - 1).clamp_min(0).double())
        x_mid = mid_model(tok, stop_at_layer=layer, **kw)  # the residual at the hook
        z = norm = None
        if bool((alphas != 0).any()):
            x_full = final_model(tok.to(final_model.cfg.device), stop_at_layer=layer, **_model_kwargs(final_model))
            z, norm = encode_unit(sae, x_full)
        for g0 in range(0, n_inj, stack):
            grp = slice(g0, min(n_inj, g0 + stack))
            G = grp.stop - grp.start
            if z is None or norm is None:
                x = x_mid.repeat(G, 1, 1)
            else:
                d = decode_groups(sae, z[None], norm[None], masks[grp], alphas[grp], scale=scale, add_bias=add_bias)
                d = d.to(device=x_mid.device, dtype=x_mid.dtype)
                if skip_bos:
                    d[:, :, 0] = 0
                x = (x_mid[None] + d).reshape(G * x_mid.shape[0], *x_mid.shape[1:])
            resid = final_residual(mid_model, x, start_at_layer=layer, tokens=tok.repeat(G, 1))
            rows = nll_rows(mid_model, resid, tok.repeat(G, 1), ln.repeat(G), budget_bytes=logits_budget_bytes)
            for g, r in enumerate(rows.cpu().reshape(G, -1)):
                nll[grp.start + g].index_add_(0, lg, r)
    return [ppl_row(nll[i], count, languages) for i in range(n_inj)]
