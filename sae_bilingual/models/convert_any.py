"""Any HF causal LM that TransformerLens converts -> an unprocessed ``HookedTransformer``.

Why not ``HookedTransformer.from_pretrained``: it accepts only names in TransformerLens's
official list (a local root of someone's checkpoints is not one), and its default
processing (LayerNorm folding, centring) changes the residual stream the SAEs read. Here the
HookedTransformer config comes from the checkpoint's own ``config.json`` and the weights go
through TransformerLens's own per-architecture converter, loaded *unprocessed*, so
``blocks.{l}.hook_resid_post`` equals HF ``hidden_states[l + 1]``.

Config sources, by architecture:

* ``LlamaForCausalLM``: :func:`sae_bilingual.models.hf.hooked_config_dict_from_hf` (reads an
  explicit ``head_dim``, which TransformerLens's generic Llama branch ignores);
* ``OlmoForCausalLM`` / ``Olmo2ForCausalLM``: TransformerLens 3.x knows these only by the
  official repo names (fixed shapes), so the same fields are read from the config here;
* every other architecture: TransformerLens's ``convert_hf_model_config`` on the config
  alone (GPT-NeoX / Pythia, BLOOM, Mistral, Qwen2, Qwen3, GPT-2, GPT-J, Phi, Gemma, ...).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformer_lens import loading_from_pretrained as tl_loading

from sae_bilingual.errors import ConfigError
from sae_bilingual.models.hf import _rope_theta, hooked_config_dict_from_hf

log = logging.getLogger(__name__)

# Architectures whose HF -> TransformerLens weight converter exists in TransformerLens 3.x
# (loading_from_pretrained.get_pretrained_state_dict) and that are decoder-only causal LMs.
CONVERTIBLE = (
    "LlamaForCausalLM", "MistralForCausalLM", "MixtralForCausalLM", "Qwen2ForCausalLM",
    "Qwen3ForCausalLM", "QWenLMHeadModel", "GPTNeoXForCausalLM", "BloomForCausalLM",
    "OlmoForCausalLM", "Olmo2ForCausalLM", "Olmo3ForCausalLM", "OlmoeForCausalLM",
    "GPT2LMHeadModel", "GPTNeoForCausalLM", "GPTJForCausalLM", "OPTForCausalLM",
    "PhiForCausalLM", "Phi3ForCausalLM", "GemmaForCausalLM", "Gemma2ForCausalLM",
    "Gemma3ForCausalLM", "ApertusForCausalLM", "GptOssForCausalLM",
)


def architecture_of(hf_config: Any) -> str:
    """The HF architecture class name of a config (``architectures[0]``)."""
    archs = list(getattr(hf_config, "architectures", None) or [])
    if archs:
        return str(archs[0])
    model_type = getattr(hf_config, "model_type", "?")
    raise ConfigError(
        f"the checkpoint's config.json names no 'architectures' (model_type {model_type!r}); "
        "add e.g. \"architectures\": [\"LlamaForCausalLM\"] to it"
    )


def check_convertible(hf_config: Any) -> str:
    """The architecture name, or a ConfigError naming it and the ones TransformerLens converts."""
    arch = architecture_of(hf_config)
    if arch not in CONVERTIBLE:
        raise ConfigError(
            f"architecture {arch!r} (model_type {getattr(hf_config, 'model_type', '?')!r}) cannot be "
            f"converted by TransformerLens 3.x, so sae-bilingual cannot hook its residual stream. "
            f"Convertible: {', '.join(CONVERTIBLE)}. Convert the checkpoints to one of these "
            "(e.g. a Llama-style model), or register a custom ModelFamily "
            "(sae_bilingual.models.register_family)"
        )
    return arch


def _olmo_config_dict(hf_config: Any, arch: str) -> dict[str, Any]:
    """TransformerLens fields for OLMo / OLMo-2 read from the config (TL knows them by name only)."""
    n_heads = int(hf_config.num_attention_heads)
    n_kv = int(getattr(hf_config, "num_key_value_heads", None) or n_heads)
    if n_kv != n_heads:
        raise ConfigError(
            f"{arch} with num_key_value_heads={n_kv} != num_attention_heads={n_heads}: "
            "TransformerLens's OLMo converters assume no grouped-query attention"
        )
    d_model = int(hf_config.hidden_size)
    d = {
        "d_model": d_model,
        "d_head": d_model // n_heads,
        "n_heads": n_heads,
        "d_mlp": int(hf_config.intermediate_size),
        "n_layers": int(hf_config.num_hidden_layers),
        "n_ctx": int(hf_config.max_position_embeddings),
        "d_vocab": int(hf_config.vocab_size),
        "act_fn": str(hf_config.hidden_act),
        "initializer_range": float(getattr(hf_config, "initializer_range", 0.02)),
        "rotary_base": _rope_theta(hf_config),
        "attn_types": ["global"] * int(hf_config.num_hidden_layers),
        "positional_embedding_type": "rotary",
        "gated_mlp": True,
        "original_architecture": arch,
    }
    if arch == "OlmoForCausalLM":  # non-parametric LayerNorm, eps fixed at 1e-5 in HF's OlmoLayerNorm
        d.update(normalization_type="LN", eps=1e-5, clip_qkv=getattr(hf_config, "clip_qkv", None))
    else:
        d.update(normalization_type="RMS", eps=float(hf_config.rms_norm_eps))
    return d


def tl_config_dict(hf_config: Any, *, workdir: str | Path) -> dict[str, Any]:
    """``HookedTransformerConfig`` fields for any convertible HF config.

    ``workdir``: an empty directory the config is written to for TransformerLens (its config
    reader takes a path, and guesses the architecture from path names containing "llama" or
    "gemma", so a neutral directory name matters).
    """
    arch = check_convertible(hf_config)
    if arch == "LlamaForCausalLM":
        return hooked_config_dict_from_hf(hf_config)
    if arch in ("OlmoForCausalLM", "Olmo2ForCausalLM"):
        return _olmo_config_dict(hf_config, arch)
    hf_config.save_pretrained(str(workdir))
    try:
        d = tl_loading.convert_hf_model_config(str(workdir))
    except NotImplementedError as e:  # TL's own "not currently supported"
        raise ConfigError(f"TransformerLens cannot convert {arch}: {e}") from e
    d.pop("tokenizer_name", None)
    return d


def hooked_from_hf_any(
    hf_model: Any,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    tokenizer: Any = None,
    model_name: str | None = None,
) -> HookedTransformer:
    """Wrap a loaded HF causal LM of any convertible architecture as an unprocessed HookedTransformer."""
    with tempfile.TemporaryDirectory(prefix="sae_bilingual_cfg_") as tmp:
        workdir = Path(tmp) / "model"
        workdir.mkdir()
        d = tl_config_dict(hf_model.config, workdir=workdir)
        d.update(dtype=dtype, device=str(device), init_weights=False)
        d["model_name"] = model_name or d.get("model_name") or "model"
        d.pop("quantization_method", None)
        cfg = HookedTransformerConfig.from_dict(d)
        if not (workdir / "config.json").exists():
            hf_model.config.save_pretrained(str(workdir))
        with torch.no_grad():  # TL dispatches on cfg.original_architecture; hf_model means no download
            sd = tl_loading.get_pretrained_state_dict(str(workdir), cfg, hf_model=hf_model, dtype=dtype)
    state_dict = {k: v.detach().to(dtype) for k, v in sd.items()}
    model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    model.load_and_process_state_dict(
        state_dict, fold_ln=False, center_writing_weights=False, center_unembed=False,
        fold_value_biases=False, refactor_factored_attn_matrices=False,
    )
    model.to(device)
    model.eval()
    return model
