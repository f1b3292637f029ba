"""The injected vector ``alpha * D(mask * E(X_full))`` for one or many (mask, alpha) at once.

Why apart from the hook: the batched intervention (:mod:`sae_bilingual.intervention.batch`)
evaluates every condition and draw from one encoding of X_full, and the hook
(:class:`sae_bilingual.intervention.hook.FeatureInjection`) uses the same two functions, so both
paths compute the same numbers.

Groups. ``G`` (mask, alpha) pairs are applied to a batch laid out group-major: rows
``g * b .. (g + 1) * b - 1`` belong to group ``g`` (``torch.Tensor.repeat(G, 1)`` of a
``b``-row batch gives this layout).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from sae_bilingual.errors import ConfigError, SAEFileError


def sae_param(sae: Any) -> torch.Tensor:
    """One parameter of the SAE (its device and dtype)."""
    for p in sae.parameters():
        return p
    raise SAEFileError("the SAE has no parameters; load it with SAE.load_from_disk(path)")


def alphas_tensor(alpha: float | Sequence[float] | torch.Tensor, n_groups: int) -> torch.Tensor:
    """Alpha per group, float64 ``[n_groups]``, from a number or one value per group."""
    a = torch.as_tensor(alpha, dtype=torch.float64).reshape(-1)
    if a.numel() == 1:
        return a.expand(n_groups).clone()
    if a.numel() != n_groups:
        raise ConfigError(f"{a.numel()} alphas for {n_groups} masks; give one alpha, or one per mask")
    return a


def encode_unit(sae: Any, x_full: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(dense code ``E(x / ||x||)`` [..., d_sae], ``||x||`` [..., 1]) of residual-scale ``x_full``."""
    p = sae_param(sae)
    x = x_full.to(device=p.device, dtype=p.dtype)
    norm = x.norm(dim=-1, keepdim=True)
    return sae.encode_normalized(x / norm.clamp_min(torch.finfo(x.dtype).tiny)), norm


def decode_groups(sae: Any, z: torch.Tensor, norm: torch.Tensor, masks: torch.Tensor, alphas: torch.Tensor,
                  *, scale: str = "residual", add_bias: bool = True) -> torch.Tensor:
    """``alpha_g * D(mask_g * z)`` (times ``||x||`` for ``scale="residual"``) per group: ``[G, ...]``.

    ``z`` [G or 1, b, n, d_sae] and ``norm`` [G or 1, b, n, 1] come from :func:`encode_unit`
    (a leading 1 is shared by every group); ``masks`` [G, d_sae]; ``alphas`` [G].
    """
    G = masks.shape[0]
    extra = (1,) * (z.ndim - 2)
    zm = z * masks.to(device=z.device, dtype=z.dtype).reshape(G, *extra, -1)
    x_hat = sae.decode_normalized(zm, add_bias=add_bias)
    if scale == "residual":
        x_hat = x_hat * norm
    return torch.stack([float(a) * x_hat[g] for g, a in enumerate(alphas.tolist())])  # as ``alpha * x``


def grouped_delta(sae: Any, x_full: torch.Tensor, masks: torch.Tensor, alphas: torch.Tensor,
                  *, scale: str = "residual", add_bias: bool = True) -> torch.Tensor:
    """The injected vector for a group-major batch ``x_full`` [G * b, n, d]: same shape."""
    G, R = masks.shape[0], x_full.shape[0]
    if R % G:
        raise ConfigError(f"a batch of {R} rows cannot be split into {G} equal groups (one per mask); "
                          f"stack the batch G times (tokens.repeat({G}, 1))")
    z, norm = encode_unit(sae, x_full)
    d = decode_groups(sae, z.reshape(G, R // G, *z.shape[1:]), norm.reshape(G, R // G, *norm.shape[1:]),
                      masks, alphas, scale=scale, add_bias=add_bias)
    return d.reshape(R, *d.shape[2:])
