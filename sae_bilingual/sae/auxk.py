"""Auxiliary-K loss (Gao et al. 2024): a named DEVIATION from the paper, off by default.

The paper trains its TopK SAE on the squared error alone. On a small world many latents stop
being selected ("dead") and class shares are then computed over half a dictionary. The
auxiliary loss lets the latents that have not fired for ``dead_feature_window`` steps
reconstruct what the live ones missed: their own top-``k_aux`` pre-activations decode the
residual error ``u - u_hat`` (detached), and the squared error of that reconstruction,
scaled by ``min(n_dead / k_aux, 1)`` and a coefficient, is added to the loss. This mirrors
SAELens's ``TopKTrainingSAE.calculate_topk_aux_loss`` on the paper's unit-norm inputs,
computed over the dead latents' columns only (our training step never materialises the
dense (B, n) pre-activations).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def auxk_loss(xc: torch.Tensor, residual: torch.Tensor, W_enc: torch.Tensor, W_dec: torch.Tensor,
              dead: torch.Tensor, k_aux: int) -> torch.Tensor:
    """Scaled auxiliary reconstruction loss of the dead latents (0 when none is dead).

    xc: (B, d) centred unit inputs ``u - b_pre``; residual: (B, d) ``u - u_hat`` (detached
    here); W_enc: (d, n); W_dec: (n, d); dead: (n,) bool mask; k_aux: latents per row.
    """
    idx = torch.nonzero(dead, as_tuple=True)[0]
    n_dead = int(idx.numel())
    if n_dead == 0 or k_aux < 1:
        return xc.new_zeros(())
    k = min(k_aux, n_dead)
    pre = xc @ W_enc[:, idx]  # (B, n_dead)
    vals, pos = torch.topk(pre, k, dim=-1, sorted=False)
    recon = F.embedding_bag(pos, W_dec[idx], per_sample_weights=vals, mode="sum")  # (B, d), no (B, k, d) gather
    scale = min(n_dead / k_aux, 1.0)
    return scale * (recon - residual.detach()).pow(2).sum(-1).mean()
