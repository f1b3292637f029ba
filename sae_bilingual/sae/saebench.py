"""SAEBench's core metrics that :mod:`sae_bilingual.sae.metrics` did not have: the KL-divergence
score and the latents' firing densities (issue 28, part 5).

Definitions follow ``sae_lens.evals`` (SAELens 6.54; ``tests/test_saebench.py`` checks them
against its ``get_recons_loss`` and ``get_sparsity_and_variance_metrics`` on one SAE):

* ``kl_div_with_sae`` / ``kl_div_with_ablation``: mean over non-BOS, non-pad positions of
  KL(p_clean || p_spliced) of the next-token distributions; ``kl_div_score`` =
  (KL_ablation - KL_sae) / KL_ablation.
* ``ce_loss_score`` = (CE_ablation - CE_sae) / (CE_ablation - CE_clean): the CE recovered.
* ``frac_alive``: share of latents selected at least once on the evaluation tokens;
  ``frac_firing_gt_1pct`` / ``frac_firing_gt_10pct``: share whose density (tokens where the
  latent is selected / tokens) is above 0.01 / 0.1 (SAELens's ``feature_density``).

Where ours differ from SAELens's, on purpose: the zero-ablation replaces only non-BOS positions
(the SAE never sees BOS; SAELens zeroes BOS too), and the reconstruction metrics (MSE,
explained variance) are taken in the SAE's unit-norm space, the paper's (SAELens takes them on
the residual itself; cosine, L2 ratio, L0 and densities are the same in both, per-token scale
cancels).
"""

from __future__ import annotations

from typing import Any

import torch

from sae_bilingual.lm_loss import DEFAULT_LOGITS_BUDGET_BYTES, chunk_positions, logits_of

FIRING_THRESHOLDS = {"frac_firing_gt_1pct": 0.01, "frac_firing_gt_10pct": 0.1}
"""Density thresholds of SAEBench's "latents firing on > 1 % / > 10 % of tokens"."""


def density_fractions(counts: torch.Tensor, n_tokens: int) -> dict[str, float]:
    """Shares of latents alive and firing above each :data:`FIRING_THRESHOLDS` density, from
    per-latent selection counts over ``n_tokens`` tokens (why: SAEBench's sparsity health)."""
    d = max(1, int(counts.numel()))
    dens = counts.double() / max(1, int(n_tokens))
    out = {"frac_alive": float((counts > 0).sum()) / d}
    out.update({name: float((dens > t).sum()) / d for name, t in FIRING_THRESHOLDS.items()})
    return out


def kl_rows(model: Any, resid_ref: torch.Tensor, resid_new: torch.Tensor, lengths: torch.Tensor, *,
            budget_bytes: int = DEFAULT_LOGITS_BUDGET_BYTES) -> torch.Tensor:
    """Summed KL(p_ref || p_new) per row (float64 ``[B]``) over positions 1..length-1.

    ``resid_*`` are final residuals ``[B, T, d]`` (:func:`lm_loss.final_residual`) of the clean
    and the spliced model; BOS (position 0) and right padding are left out, as SAELens's mask
    of ignored tokens leaves them. Why chunked: both logits of a chunk together stay within
    ``budget_bytes`` (float32), so a 99k vocabulary never holds a batch's logits at once.
    """
    B, T, _ = resid_ref.shape
    pos = torch.arange(T, device=resid_ref.device)
    valid = (pos[None, :] >= 1) & (pos[None, :] < lengths.to(resid_ref.device)[:, None])
    rows = valid.nonzero()[:, 0]
    ref, new = resid_ref[valid], resid_new[valid]  # [M, d]
    out = torch.zeros(B, dtype=torch.float64, device=resid_ref.device)
    step = max(1, chunk_positions(int(model.unembed.W_U.shape[-1]), budget_bytes) // 2)
    for s in range(0, ref.shape[0], step):
        lp_ref = torch.log_softmax(logits_of(model, ref[None, s:s + step])[0].float(), dim=-1)
        lp_new = torch.log_softmax(logits_of(model, new[None, s:s + step])[0].float(), dim=-1)
        kl = (lp_ref.exp() * (lp_ref - lp_new)).sum(-1)
        out.index_add_(0, rows[s:s + step], kl.double())
    return out


def kl_div_score(kl_sae: float, kl_zero: float) -> tuple[float, str]:
    """(KL-divergence score, why it is undefined or ""): ``(KL_zero - KL_sae) / KL_zero``,
    NaN when zero-ablating the layer does not move the next-token distribution."""
    if not kl_zero > 1e-12:
        return float("nan"), f"zero-ablation KL {kl_zero:.3g} is 0: ablating the layer changes nothing"
    return (kl_zero - kl_sae) / kl_zero, ""
