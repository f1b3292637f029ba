"""HF ``LlamaForCausalLM`` -> TransformerLens ``HookedTransformer``, with residual-stream parity.

Why not ``HookedTransformer.from_pretrained`` directly: its generic Llama branch derives
``d_head`` as ``d_model // n_heads`` and ignores an explicit ``head_dim``; it needs the model name in TransformerLens's official list, and its default processing
(``fold_ln``, ``center_writing_weights``) changes the residual stream. Here we build the
config from the HF config ourselves, reuse TransformerLens's own Llama weight converter,
and load the weights *unprocessed*, so ``blocks.{l}.hook_resid_post`` equals HF
``hidden_states[l + 1]`` for every layer but the last (HF applies the final RMSNorm to its
last hidden state; TransformerLens applies it in ``ln_final`` after the hook).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformer_lens.pretrained.weight_conversions.llama import convert_llama_weights
from transformers import AutoModelForCausalLM

from sae_bilingual.errors import CheckpointError, ConfigError
from sae_bilingual.models.tokenizer import load_tokenizer

log = logging.getLogger(__name__)

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM",)


def _rope_theta(hf_config: Any) -> float:
    """rope_theta from a transformers 4.x (top-level) or 5.x (``rope_parameters``) config."""
    theta = getattr(hf_config, "rope_theta", None)
    if theta is None:
        params = getattr(hf_config, "rope_parameters", None) or {}
        theta = params.get("rope_theta") if isinstance(params, dict) else None
    return float(theta if theta is not None else 10000.0)


def _rope_type(hf_config: Any) -> str:
    scaling = getattr(hf_config, "rope_scaling", None)
    params = getattr(hf_config, "rope_parameters", None)
    for d in (scaling, params):
        if isinstance(d, dict):
            t = d.get("rope_type") or d.get("type")
            if t:
                return str(t)
    return "default"


def hooked_config_dict_from_hf(hf_config: Any, *, model_name: str | None = None) -> dict[str, Any]:
    """The ``HookedTransformerConfig`` fields for an HF Llama config, as a plain dict.

    A dict (rather than the config object) because TransformerLens's own
    ``convert_hf_model_config`` hook expects one; see :mod:`sae_bilingual.models.llmjp`.
    """
    archs = list(getattr(hf_config, "architectures", None) or ["LlamaForCausalLM"])
    model_type = getattr(hf_config, "model_type", "llama")
    if archs[0] not in SUPPORTED_ARCHITECTURES and model_type != "llama":
        raise ConfigError(
            f"architecture {archs[0]!r} (model_type {model_type!r}) is not supported; "
            f"this Llama path loads {', '.join(SUPPORTED_ARCHITECTURES)} only; for other architectures use "
            "family: hf in the recipe (sae_bilingual.models.convert_any.hooked_from_hf_any)."
        )
    if getattr(hf_config, "attention_bias", False) or getattr(hf_config, "mlp_bias", False):
        raise ConfigError(
            "this Llama config has attention_bias/mlp_bias=True, but TransformerLens's Llama "
            "converter assumes no biases (as in LLM-jp-3); convert the checkpoint without biases"
        )
    rope_type = _rope_type(hf_config)
    if rope_type not in ("default", "llama3"):
        raise ConfigError(
            f"rope type {rope_type!r} is not supported (only 'default' and 'llama3'); "
            "LLM-jp-3 uses plain RoPE"
        )
    n_heads = int(hf_config.num_attention_heads)
    d_model = int(hf_config.hidden_size)
    # Prefer the explicit head_dim: Llama variants exist whose head_dim != d_model / n_heads.
    # (LLM-jp-3 980m has head_dim 192 = 1536 / 8, unusual but consistent with d_model/heads.)
    d_head = getattr(hf_config, "head_dim", None) or d_model // n_heads
    n_kv = getattr(hf_config, "num_key_value_heads", None) or n_heads
    cfg: dict[str, Any] = {
        "d_model": d_model,
        "d_head": int(d_head),
        "n_heads": n_heads,
        "d_mlp": int(hf_config.intermediate_size),
        "n_layers": int(hf_config.num_hidden_layers),
        "n_ctx": int(getattr(hf_config, "max_position_embeddings", 2048)),
        "eps": float(hf_config.rms_norm_eps),
        "d_vocab": int(hf_config.vocab_size),
        "act_fn": str(getattr(hf_config, "hidden_act", "silu")),
        # TransformerLens switches to grouped-query attention whenever this is not None.
        "n_key_value_heads": int(n_kv) if int(n_kv) != n_heads else None,
        "normalization_type": "RMS",
        "positional_embedding_type": "rotary",
        "rotary_adjacent_pairs": False,
        "rotary_dim": int(d_head),
        "rotary_base": _rope_theta(hf_config),
        "final_rms": True,
        "gated_mlp": True,
        "original_architecture": "LlamaForCausalLM",
        "default_prepend_bos": True,
        "tokenizer_prepends_bos": True,
    }
    if rope_type == "llama3":
        rs = getattr(hf_config, "rope_scaling", None) or getattr(hf_config, "rope_parameters", {})
        cfg.update(
            use_NTK_by_parts_rope=True,
            NTK_original_ctx_len=rs.get("original_max_position_embeddings", cfg["n_ctx"]),
            NTK_by_parts_low_freq_factor=rs.get("low_freq_factor", 1.0),
            NTK_by_parts_high_freq_factor=rs.get("high_freq_factor", 4.0),
            NTK_by_parts_factor=rs.get("factor", 1.0),
        )
    if model_name is not None:
        cfg["model_name"] = model_name
    return cfg


def hooked_config_from_hf(
    hf_config: Any,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    model_name: str | None = None,
) -> HookedTransformerConfig:
    """``HookedTransformerConfig`` for an HF Llama config (GQA, explicit head_dim, RoPE theta).

    Reads ``head_dim`` from the config when present (LLM-jp-3 980m), ``num_key_value_heads``
    (GQA), ``rope_theta`` (4.x top-level or 5.x ``rope_parameters``), ``rms_norm_eps``.
    """
    d = hooked_config_dict_from_hf(hf_config, model_name=model_name)
    d.update(dtype=dtype, device=str(device), init_weights=False)
    return HookedTransformerConfig.from_dict(d)


def hooked_from_hf_model(
    hf_model: Any,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    tokenizer: Any = None,
    model_name: str | None = None,
) -> HookedTransformer:
    """Wrap an already-loaded HF Llama model as an unprocessed ``HookedTransformer``.

    Weights go through TransformerLens's ``convert_llama_weights``; no LayerNorm folding or
    centring, so hook activations equal HF hidden states.
    """
    cfg = hooked_config_from_hf(hf_model.config, dtype=dtype, device=device, model_name=model_name)
    with torch.no_grad():  # cast copies only; the caller's hf_model is left as it was
        state_dict = {k: v.detach().to(dtype) for k, v in convert_llama_weights(hf_model, cfg).items()}
    model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    model.load_and_process_state_dict(
        state_dict,
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
        refactor_factored_attn_matrices=False,
    )
    model.to(device)
    model.eval()
    return model


def has_tokenizer_files(path: Path) -> bool:
    """Whether ``path`` holds tokenizer files (tokenizer.json, tokenizer_config.json or tokenizer.model)."""
    names = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
    return any((path / n).exists() for n in names)


def load_hf_llama(
    path_or_repo: str | Path,
    *,
    revision: str | None = None,
    dtype: torch.dtype = torch.float32,
    trust_remote_code: bool = False,
) -> Any:
    """Load an HF causal LM from a local directory or a Hub repo id (+ revision), on CPU."""
    local = Path(path_or_repo).expanduser()
    if local.exists():
        if not (local / "config.json").exists():
            raise CheckpointError(
                f"{local} exists but has no config.json, so it is not an HF model directory; "
                "point at a directory written by save_pretrained (or a root of iter_NNNNNNN dirs "
                "via CheckpointCatalogue.from_root)"
            )
        src: str = str(local)
    elif str(path_or_repo).startswith((".", "/", "~")) or str(path_or_repo).count("/") != 1:
        raise CheckpointError(
            f"model source {str(path_or_repo)!r} is neither an existing directory nor a Hub repo id "
            "of the form 'owner/name'; check the path"
        )
    else:
        src = str(path_or_repo)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            src, revision=revision, dtype=dtype, trust_remote_code=trust_remote_code
        )
    except OSError as e:
        raise CheckpointError(
            f"cannot load HF model {src!r} (revision {revision!r}): {e}. For a Hub repo, check the "
            "network / HF_TOKEN / revision; for a local dir, check its files"
        ) from e
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def load_hooked(
    path_or_repo: str | Path,
    *,
    revision: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    tokenizer: Any = None,
    trust_remote_code: bool = False,
    model_name: str | None = None,
) -> HookedTransformer:
    """Load an HF Llama checkpoint (local dir, or Hub repo id + revision) as a HookedTransformer.

    ``tokenizer``: a tokenizer object, a path/repo for :func:`load_tokenizer`, or None to use
    the tokenizer files next to the weights when there are any (else the model has none).
    """
    hf_model = load_hf_llama(
        path_or_repo, revision=revision, dtype=dtype, trust_remote_code=trust_remote_code
    )
    if isinstance(tokenizer, (str, Path)):
        tokenizer = load_tokenizer(tokenizer)
    elif tokenizer is None:
        local = Path(path_or_repo).expanduser()
        if local.exists() and has_tokenizer_files(local):
            tokenizer = load_tokenizer(local)
        elif not local.exists():
            try:
                tokenizer = load_tokenizer(str(path_or_repo), revision=revision)
            except Exception as e:  # the model is still usable with token ids
                log.warning("no tokenizer loaded for %s: %s", path_or_repo, e)
    name = model_name or Path(str(path_or_repo)).name
    model = hooked_from_hf_model(hf_model, device=device, dtype=dtype, tokenizer=tokenizer, model_name=name)
    del hf_model
    return model
