"""A family's checkpoint as SAELens's ``HookedSAETransformer`` (issue 28, part 4).

Why: ``HookedSAETransformer.from_pretrained`` knows only TransformerLens's own model names, so
splicing our SAEs into an LLM-jp (or toy, or ``family: hf``) checkpoint meant assembling a cfg
and a state_dict by hand. Here the family loads the checkpoint as usual (the same
HookedTransformer the study uses) and its weights move into a ``HookedSAETransformer`` built on
the meta device: no second copy of the weights is ever allocated, and the logits are the
HookedTransformer's exactly (tested).
"""

from __future__ import annotations

from typing import Any

import torch
from sae_lens import HookedSAETransformer
from transformer_lens import HookedTransformer

from sae_bilingual.errors import ConfigError
from sae_bilingual.models.catalogue import Checkpoint
from sae_bilingual.models.registry import get_family


def to_hooked_sae_transformer(model: HookedTransformer) -> HookedSAETransformer:
    """``model`` as a ``HookedSAETransformer`` holding the same tensors (shared, not copied).

    Use the result instead of ``model`` afterwards: both refer to one set of weights.
    """
    if isinstance(model, HookedSAETransformer):
        return model
    if not isinstance(model, HookedTransformer):
        raise ConfigError(f"HookedSAETransformer needs a HookedTransformer, got {type(model).__name__} "
                          "(a TransformerBridge? load the family with model_backend: hooked)")
    with torch.device("meta"):
        out = HookedSAETransformer(model.cfg, tokenizer=model.tokenizer, move_to_device=False)
    out.load_state_dict(model.state_dict(), strict=True, assign=True)
    left = [n for n, t in [*out.named_parameters(), *out.named_buffers()] if t.is_meta]
    if left:
        raise ConfigError(f"cannot move {left[:3]} into a HookedSAETransformer (not in the model's state_dict)")
    return out.train(model.training)


def load_hooked_sae_transformer(family: str | Any, checkpoint: Checkpoint | int | None = None, *,
                                device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                                **family_kw: Any) -> HookedSAETransformer:
    """One checkpoint of a model family as a ``HookedSAETransformer`` (``run_with_saes``, ``add_sae``).

    ``family``: a registered name (``"toy"``, ``"1.8b"``, ``"hf"``, ``"pythia-160m"``, ...; with
    ``family_kw`` such as ``source=``, as :func:`get_family` takes them) or a family object.
    ``checkpoint``: a :class:`Checkpoint`, a training iteration, or None for the final one.
    """
    fam = get_family(family, **family_kw) if isinstance(family, str) else family
    cat = fam.catalogue()
    if checkpoint is None:
        ck = cat.final
    elif isinstance(checkpoint, Checkpoint):
        ck = checkpoint
    else:
        ck = cat.select(iteration=int(checkpoint))
    return to_hooked_sae_transformer(fam.load(ck, device=device, dtype=dtype))
