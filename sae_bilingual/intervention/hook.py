"""Feature injection from a final model into a mid-training model (paper Table 1 / Table 4).

The paper intervenes on the mid-training model's layer-l residual stream:

    X_mid^l  <-  X_mid^l + alpha * D(mask * E(X_full^l))

where E, D are the TopK SAE trained on the *final* model at layer l, X_full^l is the final
model's layer-l residual on the same input, and ``mask`` selects m features of one class.

Decisions the paper leaves open (all configurable, defaults in brackets):

* Scale [``"residual"``]: the SAE was trained on unit-norm vectors, so E sees
  ``X_full / ||X_full||`` and the decoded unit-space vector is multiplied back by
  ``||X_full||`` before alpha is applied. ``scale="unit"`` is the literal unit-space variant.
* b_pre [``add_bias=True``]: D includes the decoder bias b_pre; ``add_bias=False`` drops it
  (then an all-zero mask is an exact no-op).
* BOS [``skip_bos=True``]: the SAE never saw the BOS position (it is dropped from its
  training data), so absolute position 0 gets no injection by default.

Generation. Under ``model.generate`` with a KV cache each forward pass shows the hook only
the new positions and never the token ids; :mod:`sae_bilingual.intervention.capture` supplies
both (a :class:`TokenCapture` on the mid model) and runs the final model on the same prefix in
lockstep with its own KV cache (a :class:`FinalLockstep`). The result equals step-by-step
recomputation without cache (tested).

Call :meth:`FeatureInjection.close` (or use it as a context manager) to remove the
capture hooks.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch

from sae_bilingual.errors import ConfigError, DataError, SAEFileError
from sae_bilingual.intervention.capture import FinalLockstep, TokenCapture
from sae_bilingual.intervention.injection import alphas_tensor, grouped_delta, sae_param
from sae_bilingual.intervention.masks import mask_tensor
from sae_bilingual.layers import hook_for_layer, layer_for_hook
from sae_bilingual.residuals import residuals_at

log = logging.getLogger(__name__)

Scale = Literal["residual", "unit"]


# --------------------------------------------------------------------------------------
# SAE metadata helpers
# --------------------------------------------------------------------------------------


def sae_hook_name(sae: Any) -> str | None:
    """The hook an SAE was trained at (``cfg.metadata.hook_name``; SAELens fallbacks)."""
    cfg = getattr(sae, "cfg", None)
    meta = getattr(cfg, "metadata", None)
    name = getattr(meta, "hook_name", None)
    if name is None and isinstance(meta, dict):
        name = meta.get("hook_name")
    if name is None:
        name = getattr(cfg, "hook_name", None)
    return name


def _resolve_hook(sae: Any, hook_name: str | None, layer: int | None, n_layers: int) -> str:
    """Hook to intervene at; checks it is the SAE's own layer (paper numbering)."""
    trained = sae_hook_name(sae)
    if hook_name is not None and layer is not None:
        if layer_for_hook(hook_name) != layer:
            raise ConfigError(
                f"hook_name={hook_name!r} is paper layer {layer_for_hook(hook_name)} but "
                f"layer={layer} was also given; pass only one of them"
            )
    if hook_name is None and layer is not None:
        hook_name = hook_for_layer(layer, n_layers)
    if hook_name is None:
        if trained is None:
            raise SAEFileError(
                "the SAE does not record its hook (cfg.metadata.hook_name) and no hook_name/"
                "layer was given; pass layer=<paper layer> or fix the SAE's cfg.json"
            )
        hook_name = trained
    if trained is not None and layer_for_hook(trained) != layer_for_hook(hook_name):
        raise SAEFileError(
            f"the SAE was trained at hook {trained!r} (paper layer {layer_for_hook(trained)}) "
            f"but the intervention asks for hook {hook_name!r} (paper layer "
            f"{layer_for_hook(hook_name)}); use the SAE trained at that layer or pass "
            f"layer={layer_for_hook(trained)}"
        )
    return hook_name


def _check_sources(sae: Any, mid_model: Any, final_model: Any | None, x_full: torch.Tensor | None,
                   scale: str) -> None:
    """Refuse an injection whose X_full source, widths or scale cannot work, naming the fix."""
    if scale not in ("residual", "unit"):
        raise ConfigError(f"scale={scale!r} is unknown; choose 'residual' or 'unit'")
    if (final_model is None) == (x_full is None):
        raise ConfigError(
            "FeatureInjection needs exactly one source of X_full: final_model=<final "
            "HookedTransformer> (run on the same tokens) or x_full=<cached [B, T, d] tensor>"
        )
    if final_model is not None and final_model is mid_model:
        raise ConfigError(
            "final_model and mid_model are the same object; load the final checkpoint "
            "separately (or copy.deepcopy the model) so the injection is not re-entered"
        )
    d_in = int(sae.cfg.d_in)
    for role, model in (("mid", mid_model), ("final", final_model)):
        if model is not None and int(model.cfg.d_model) != d_in:
            raise SAEFileError(
                f"SAE d_in={d_in} does not match the {role} model's d_model="
                f"{model.cfg.d_model}; use an SAE trained on this model family"
            )
    if x_full is not None and x_full.shape[-1] != d_in:
        raise SAEFileError(
            f"x_full has width {x_full.shape[-1]} but the SAE d_in is {d_in}; cache the "
            "final model's residuals at the SAE's hook"
        )


# --------------------------------------------------------------------------------------
# The hook
# --------------------------------------------------------------------------------------


class FeatureInjection:
    """TransformerLens forward hook adding ``alpha * D(mask * E(X_full))`` to a residual.

    Use as ``mid.run_with_hooks(tokens, fwd_hooks=inj.fwd_hooks())`` or
    ``with mid.hooks(fwd_hooks=inj.fwd_hooks()): mid.generate(...)``. Works with
    ``HookedSAETransformer`` too (it is a ``HookedTransformer``).

    Either ``final_model`` (run on the same tokens, the default) or ``x_full`` (a cached
    ``[B, T, d]`` tensor of the final model's layer-l residuals for exactly the tokens the
    mid model will see) supplies X_full.

    Several conditions in one pass: ``mask`` [G, d_sae] (and ``alpha``: one value, or G) applies
    mask g to rows ``g*b .. (g+1)*b - 1`` of a batch stacked G times (``tokens.repeat(G, 1)``).
    When the G blocks of a pass hold the same tokens (a shared prompt), the final model runs on
    one block and its KV cache is tiled.
    """

    def __init__(
        self,
        sae: Any,
        *,
        mid_model: Any,
        final_model: Any | None = None,
        x_full: torch.Tensor | None = None,
        layer: int | None = None,
        hook_name: str | None = None,
        mask: torch.Tensor | np.ndarray | Sequence[int] | None = None,
        alpha: float | Sequence[float] = 0.1,
        scale: Scale = "residual",
        add_bias: bool = True,
        skip_bos: bool = True,
        final_kv_cache: bool = True,
    ) -> None:
        _check_sources(sae, mid_model, final_model, x_full, scale)
        self.sae = sae
        self.x_full = x_full
        self.hook_name = _resolve_hook(sae, hook_name, layer, int(mid_model.cfg.n_layers))
        if self.hook_name not in mid_model.hook_dict:
            raise ConfigError(f"hook {self.hook_name!r} does not exist in the mid model")
        self.layer = layer_for_hook(self.hook_name)
        self.scale: Scale = scale
        self.add_bias = bool(add_bias)
        self.skip_bos = bool(skip_bos)
        d_sae = int(sae.cfg.d_sae) if hasattr(sae.cfg, "d_sae") else int(sae.W_dec.shape[0])
        self.mask = mask_tensor(mask, d_sae).to(sae_param(sae).device)
        self.masks = self.mask.reshape(-1, d_sae)  # [G, d_sae]
        self.alphas = alphas_tensor(alpha, self.masks.shape[0])
        self.alpha = float(self.alphas[0]) if self.alphas.numel() == 1 else self.alphas.tolist()
        self.capture = TokenCapture(mid_model)
        self.final = None if final_model is None else FinalLockstep(
            final_model, self.hook_name, n_groups=self.masks.shape[0], kv_cache=final_kv_cache)

    # -- plumbing ---------------------------------------------------------------------
    def fwd_hooks(self) -> list[tuple[str, FeatureInjection]]:
        """``[(hook_name, self)]`` for ``run_with_hooks`` / ``model.hooks``."""
        return [(self.hook_name, self)]

    def close(self) -> None:
        """Remove the token/position capture hooks from the mid model."""
        self.capture.close()
        self.reset()

    def reset(self) -> None:
        """Forget captured tokens and the final model's lockstep cache."""
        self.capture.reset()
        if self.final is not None:
            self.final.reset()

    def __enter__(self) -> FeatureInjection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- maths ------------------------------------------------------------------------
    def is_noop(self) -> bool:
        """True when the hook cannot change anything (alpha = 0, or empty mask without b_pre)."""
        return bool((self.alphas == 0).all()) or (not self.add_bias and not bool(self.mask.any()))

    def delta(self, x_full: torch.Tensor) -> torch.Tensor:
        """``alpha * D(mask * E(x_full))`` for residual-scale ``x_full`` [B, ..., d] (group g of
        the G masks on the g-th block of B/G rows)."""
        return grouped_delta(self.sae, x_full, self.masks, self.alphas, scale=self.scale, add_bias=self.add_bias)

    def __call__(self, activation: torch.Tensor, hook: Any = None) -> torch.Tensor:
        if self.is_noop():
            return activation
        B, n = activation.shape[0], activation.shape[1]
        cap = self.capture
        off = cap.pos_offset if cap.attached else 0
        if self.x_full is not None:
            if self.x_full.shape[0] != B or self.x_full.shape[1] < off + n:
                raise DataError(
                    f"x_full has shape {tuple(self.x_full.shape)} but the model is at positions "
                    f"{off}..{off + n} with batch {B}; cache X_full for exactly these tokens"
                )
            x_full = self.x_full[:, off : off + n]
        else:
            assert self.final is not None  # _check_sources: exactly one of x_full, final_model
            tokens = cap.tokens
            if tokens is None or tokens.shape[0] != B or tokens.shape[1] != off + n:
                raise DataError(
                    "FeatureInjection could not see the token ids of this forward pass (the "
                    "model was called on embeddings/residuals, or the capture hooks were "
                    "closed); call the mid model on token ids, or pass x_full=<cached residuals>"
                )
            x_full = self.final.residuals(tokens, cap.attention_mask)[:, off : off + n]
        d = self.delta(x_full).to(device=activation.device, dtype=activation.dtype)
        if self.skip_bos and off == 0:
            d = d.clone()
            d[:, 0] = 0
        return activation + d


def final_residuals(final_model: Any, tokens: torch.Tensor, hook_name: str, *, batch_size: int = 8) -> torch.Tensor:
    """Cache the final model's residuals at ``hook_name`` for ``tokens`` [N, T] (stop_at_layer)."""
    return torch.cat([residuals_at(final_model, tokens[i : i + batch_size], [hook_name])[hook_name]
                      for i in range(0, tokens.shape[0], batch_size)], dim=0)
