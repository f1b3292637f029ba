"""One forward pass that returns a model's residuals at some hook points, and runs no further.

Why one function: the activation store, the injection's final-model pass and the cached X_full
each read residuals the same way (hooks that keep the tensor, ``stop_at_layer`` after the
deepest one, no autograd); a fix to one (e.g. a TransformerBridge naming its hooks canonically)
now reaches all three.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from sae_bilingual.errors import DataError
from sae_bilingual.layers import stop_at_layer_for


def residuals_at(model: Any, tokens: torch.Tensor, hooks: Sequence[str], **forward_kwargs: Any) -> dict[str, torch.Tensor]:
    """{hook: residual [batch, pos, d]} of ``model`` on ``tokens`` (already on the model's device).

    The forward stops after the deepest hook's block, runs without autograd and returns no
    logits; ``forward_kwargs`` go to ``run_with_hooks`` (``attention_mask``, ``past_kv_cache``).
    Keys are the names asked for (a TransformerBridge's ``hook.name`` is its canonical one).
    """
    hooks = list(hooks)
    store: dict[str, torch.Tensor] = {}

    def keeper(name: str) -> Any:
        def keep(act: torch.Tensor, hook: Any) -> None:
            store[name] = act.detach()

        return keep

    with torch.no_grad():
        model.run_with_hooks(tokens, return_type=None,
                             stop_at_layer=stop_at_layer_for(hooks), fwd_hooks=[(h, keeper(h)) for h in hooks],
                             **forward_kwargs)
    missing = [h for h in hooks if h not in store]
    if missing:
        raise DataError(f"hook {missing[0]} did not fire; is it a residual hook of this model?")
    return store
