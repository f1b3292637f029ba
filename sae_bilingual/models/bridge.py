"""The ``bridge`` model backend: a checkpoint as TransformerLens 3's ``TransformerBridge``.

Why: TransformerLens 3.9 deprecates ``HookedTransformer.from_pretrained`` in favour of
``TransformerBridge.boot_transformers``, which wraps the HF model itself, so any supported
architecture at any revision loads without a weight conversion of ours. The study's default
stays ``hooked`` (our unprocessed ``HookedTransformer``) while SAELens's training runner and
``HookedSAETransformer`` need a ``HookedTransformer``.

The bridge is booted from the already-loaded HF model (no download) and put in compatibility
mode *without* weight processing, so its hook names are HookedTransformer's
(``blocks.{l}.hook_resid_post``) and its activations are the unprocessed ones our
``HookedTransformer`` gives (tests/test_bridge.py: equal logits and residuals on a tiny Llama
and a tiny GPT-NeoX).
"""

from __future__ import annotations

from typing import Any

import torch
from transformer_lens.model_bridge import TransformerBridge

from sae_bilingual.errors import CheckpointError, ConfigError

MODEL_BACKENDS = ("hooked", "bridge")
"""``models[].model_backend`` values: our HookedTransformer (default) or TransformerBridge."""


def check_backend(name: str, where: str = "model_backend") -> str:
    """The backend name, or a ConfigError listing the valid ones."""
    if name not in MODEL_BACKENDS:
        raise ConfigError(f"{where} = {name!r}; choose one of {list(MODEL_BACKENDS)}")
    return name


def bridge_from_hf_model(hf_model: Any, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                         tokenizer: Any = None, model_name: str | None = None) -> TransformerBridge:
    """Wrap a loaded HF causal LM as a ``TransformerBridge`` with HookedTransformer hook names.

    ``tokenizer`` is required: without one the bridge would fetch a tokenizer from the Hub by
    ``model_name``.
    """
    if tokenizer is None:
        raise CheckpointError(
            f"{model_name or 'the model'}: the bridge backend needs a tokenizer (TransformerBridge would "
            "otherwise download one by name); set models[].tokenizer, or use model_backend: hooked")
    bridge = TransformerBridge.boot_transformers(model_name or "model", hf_model=hf_model, tokenizer=tokenizer,
                                                 device=device, dtype=dtype)
    bridge.enable_compatibility_mode(no_processing=True, disable_warnings=True)
    bridge.eval()
    for p in bridge.parameters():
        p.requires_grad_(False)
    return bridge
