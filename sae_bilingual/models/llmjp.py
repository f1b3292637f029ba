"""LLM-jp-3: HF configs, TransformerLens registration, the model families and loading.

The size table (shapes, tokens per iteration, final iterations, with sources) lives in
:mod:`sae_bilingual.models.sizes`; this module turns it into ``transformers`` configs, makes
``HookedTransformer.from_pretrained("llm-jp/llm-jp-3-<size>")`` work offline and registers
one model family per size (:func:`register_llmjp_families`, called by ``sae_bilingual.models``).
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import transformer_lens.loading_from_pretrained as tl_loading
from transformer_lens import supported_models
from transformers import LlamaConfig

from sae_bilingual.models.hf import hooked_config_dict_from_hf
from sae_bilingual.models.registry import FamilyFactory, HFLlamaFamily, ModelFamily, get_family
from sae_bilingual.models.sizes import (
    BOS_ID,
    EOS_ID,
    LLMJP_SIZES,
    MAX_POSITION_EMBEDDINGS,
    PAD_ID,
    RMS_NORM_EPS,
    ROPE_THETA,
    VOCAB_SIZE,
    llmjp_spec,
    normalise_size,
)

log = logging.getLogger(__name__)

__all__ = [
    "llmjp_llama_config", "llmjp_structure_config", "load_llmjp", "register_llmjp_families",
    "register_with_transformer_lens", "transformer_lens_names",
]


def llmjp_structure_config(*, vocab_size: int, d_model: int, d_mlp: int, n_layers: int, n_heads: int,
                           d_head: int | None = None, max_position_embeddings: int = MAX_POSITION_EMBEDDINGS,
                           bos_token_id: int = BOS_ID, eos_token_id: int = EOS_ID, pad_token_id: int = PAD_ID,
                           **extra: Any) -> LlamaConfig:
    """A ``LlamaConfig`` with LLM-jp-3's structural choices at any size: SwiGLU, RMSNorm
    (eps 1e-5), RoPE (theta 1e4), no biases, untied embeddings, as many KV heads as heads.
    Used for the real sizes and for the toy world's tiny model alike."""
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=d_model,
        intermediate_size=d_mlp,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_heads,
        **({"head_dim": d_head} if d_head is not None else {}),
        hidden_act="silu",
        max_position_embeddings=max_position_embeddings,
        rms_norm_eps=RMS_NORM_EPS,
        # transformers 5 moves rope_theta into rope_parameters itself; 4.x knows only this spelling
        rope_theta=ROPE_THETA,  # pyright: ignore[reportCallIssue]
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        architectures=["LlamaForCausalLM"],
        **extra,
    )


def llmjp_llama_config(size: str) -> LlamaConfig:
    """The ``transformers.LlamaConfig`` of an LLM-jp-3 size, built offline from the table."""
    s = llmjp_spec(size)
    return llmjp_structure_config(vocab_size=VOCAB_SIZE, d_model=s.d_model, d_mlp=s.d_mlp, n_layers=s.n_layers,
                                  n_heads=s.n_heads, d_head=s.d_head)


# --------------------------------------------------------------------------- TransformerLens
_REGISTERED = False
_HF_CFG_OVERRIDE: contextvars.ContextVar[dict | None] = contextvars.ContextVar(
    "sae_bilingual_llmjp_hf_cfg", default=None
)


def transformer_lens_names() -> dict[str, list[str]]:
    """Official TransformerLens names ("llm-jp/llm-jp-3-<size>") -> aliases ("llm-jp-3-<size>")."""
    return {s.repo_id: [s.name] for s in LLMJP_SIZES.values()}


def register_with_transformer_lens() -> None:
    """Make ``HookedTransformer.from_pretrained("llm-jp/llm-jp-3-<size>", ...)`` work. Idempotent.

    TransformerLens 3.9 accepts only names in ``supported_models.OFFICIAL_MODEL_NAMES`` (aliases
    in ``MODEL_ALIASES``), and its ``convert_hf_model_config`` fetches the config from the Hub.
    We add the names, and wrap ``convert_hf_model_config`` so that for LLM-jp names it returns
    our config dict offline: from the ``hf_model`` passed to ``from_pretrained`` when there is
    one (so a tiny stand-in model works), else from :data:`LLMJP_SIZES`. Weights still go
    through TransformerLens's own ``convert_llama_weights``.
    """
    global _REGISTERED
    if _REGISTERED:
        return
    for official, aliases in transformer_lens_names().items():
        if official not in supported_models.OFFICIAL_MODEL_NAMES:
            supported_models.OFFICIAL_MODEL_NAMES.append(official)
        known = supported_models.MODEL_ALIASES.setdefault(official, [])
        for a in aliases:
            if a not in known:
                known.append(a)
    # loading_from_pretrained imported the same list/dict objects; guard against a copy.
    # (its own bindings of the two names, which it does not re-export: read them with getattr)
    tl_names: list[str] = getattr(tl_loading, "OFFICIAL_MODEL_NAMES")
    if tl_names is not supported_models.OFFICIAL_MODEL_NAMES:
        for official in transformer_lens_names():
            if official not in tl_names:
                tl_names.append(official)
        getattr(tl_loading, "MODEL_ALIASES").update(
            {k: v for k, v in supported_models.MODEL_ALIASES.items() if k in transformer_lens_names()}
        )

    original_convert = tl_loading.convert_hf_model_config
    original_get_cfg = tl_loading.get_pretrained_model_config
    names = {k.lower(): k for k in transformer_lens_names()}

    def convert_hf_model_config(model_name: str, **kwargs: Any) -> dict[str, Any]:
        official = names.get(str(model_name).lower())
        if official is None:
            return original_convert(model_name, **kwargs)
        override = _HF_CFG_OVERRIDE.get()
        if override and "hidden_size" in override:
            hf_config = LlamaConfig.from_dict(
                {k: v for k, v in override.items() if k not in ("transformers_version",)}
            )
        else:
            hf_config = llmjp_llama_config(official)
        d = hooked_config_dict_from_hf(hf_config)
        d["tokenizer_name"] = official
        d["quantization_method"] = None
        return d

    def get_pretrained_model_config(model_name: str, hf_cfg: dict | None = None, *a: Any, **kw: Any):
        token = _HF_CFG_OVERRIDE.set(hf_cfg or None)
        try:
            return original_get_cfg(model_name, hf_cfg, *a, **kw)
        finally:
            _HF_CFG_OVERRIDE.reset(token)

    convert_hf_model_config.__wrapped__ = original_convert  # type: ignore[attr-defined]
    get_pretrained_model_config.__wrapped__ = original_get_cfg  # type: ignore[attr-defined]
    tl_loading.convert_hf_model_config = convert_hf_model_config
    tl_loading.get_pretrained_model_config = get_pretrained_model_config
    _REGISTERED = True
    log.debug("registered %d LLM-jp-3 names with TransformerLens", len(names))


# --------------------------------------------------------------------------- families and loading
def _llmjp_factory(size: str) -> FamilyFactory:
    def make(source: Any = None, revision: str | None = None, tokenizer: Any = None,
             tokens_per_step: int | None = None, name: str | None = None) -> ModelFamily:
        spec = llmjp_spec(size)
        root = Path(str(source)).expanduser() if source is not None else None
        if (tokens_per_step is None and root is not None and root.is_dir() and not (root / "config.json").exists()
                and not (root / "catalogue.json").exists()):
            log.warning("%s: token counts of the checkpoints in %s come from the LLM-jp-3 %s schedule (%d tokens "
                        "per iteration). If they were trained with another batch, set models[].tokens_per_step, "
                        "write %s/catalogue.json, or use family: hf", spec.name, root, size,
                        spec.tokens_per_iteration, root)
        return HFLlamaFamily(
            name=spec.name,
            source=source,
            hub_repo=spec.repo_id,
            revision=revision,
            tokens_per_iteration=tokens_per_step or spec.tokens_per_iteration,
            final_iteration=spec.final_iteration,
            tokenizer_source=tokenizer,
            default_config=llmjp_llama_config(size),
        )

    return make


def register_llmjp_families(register: Callable[..., None]) -> None:
    """Register the family "llm-jp-3-<size>" of every size (``register`` = ``register_family``)."""
    for size in LLMJP_SIZES:
        register(f"llm-jp-3-{size}", _llmjp_factory(size), overwrite=True)


def load_llmjp(
    size: str,
    checkpoint: int | None = None,
    tokens: int | float | None = None,
    source: str | Path | None = None,
    revision: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    tokenizer: Any = None,
):
    """Load an LLM-jp-3 checkpoint as a HookedTransformer.

    ``source``: None (the Hub repo ``llm-jp/llm-jp-3-<size>``, final checkpoint only), a Hub
    repo id (+ ``revision``), a single local HF directory, or a local root of
    ``iter_NNNNNNN`` directories. ``checkpoint`` (iteration) or ``tokens`` selects one from
    the catalogue (see :meth:`CheckpointCatalogue.select`); neither = final.
    """
    fam = get_family(f"llm-jp-3-{normalise_size(size)}", source=source, revision=revision, tokenizer=tokenizer)
    ck = fam.catalogue().select(iteration=checkpoint, tokens=tokens)
    return fam.load(ck, device=device, dtype=dtype)
