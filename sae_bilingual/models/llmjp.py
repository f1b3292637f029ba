"""LLM-jp-3: size table, HF configs, TransformerLens registration, and loading.

Source of every number in :data:`LLMJP_SIZES`: ``../shared/LLMJP.md`` of the project ("LLM-jp-3 facts"),
which restates the public Hub configs ``llm-jp/llm-jp-3-<size>/config.json`` (hidden_size,
num_hidden_layers, num_attention_heads = num_key_value_heads, head_dim, intermediate_size;
vocab_size 99,584; max_position_embeddings 4096; rope_theta 10000; rms_norm_eps 1e-5;
untied embeddings; no biases) and the LLM-jp training scripts (global batch 512 x 4096
tokens = 2,097,152 tokens/iteration for 150m-1.8b, 1024 x 4096 = 4,194,304 for 3.7b-13b;
final iteration 988,240 / 494,120). The 440m tokens/iteration is inferred there (same
recipe as the other small sizes).
"""

from __future__ import annotations

import contextvars
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sae_bilingual.errors import CheckpointError

log = logging.getLogger(__name__)

HUB_ORG = "llm-jp"
VOCAB_SIZE = 99_584
MAX_POSITION_EMBEDDINGS = 4096
ROPE_THETA = 10_000.0
RMS_NORM_EPS = 1e-5
BOS_ID, EOS_ID, PAD_ID = 1, 2, 4


@dataclass(frozen=True)
class LlmJpSpec:
    """Shape and schedule of one LLM-jp-3 size (see module docstring for sources)."""

    size: str
    """Size label as in the Hub repo name, e.g. "1.8b"."""
    d_model: int
    """hidden_size."""
    n_layers: int
    """num_hidden_layers."""
    n_heads: int
    """num_attention_heads (= num_key_value_heads: no GQA in LLM-jp-3)."""
    d_head: int
    """head_dim."""
    d_mlp: int
    """intermediate_size (SwiGLU)."""
    tokens_per_iteration: int
    """Global batch x sequence length: training tokens per Megatron iteration."""
    final_iteration: int
    """Iteration of the released (final) checkpoint."""

    @property
    def repo_id(self) -> str:
        """Hub repo of the final weights."""
        return f"{HUB_ORG}/llm-jp-3-{self.size}"

    @property
    def name(self) -> str:
        """Family name, e.g. "llm-jp-3-1.8b"."""
        return f"llm-jp-3-{self.size}"


# From ../shared/LLMJP.md (= public HF config.json of llm-jp/llm-jp-3-<size> + training scripts).
LLMJP_SIZES: dict[str, LlmJpSpec] = {
    s.size: s
    for s in (
        LlmJpSpec("150m", 512, 12, 8, 64, 2048, 2_097_152, 988_240),
        LlmJpSpec("440m", 1024, 16, 8, 128, 3584, 2_097_152, 988_240),  # tokens/iter inferred
        LlmJpSpec("980m", 1536, 20, 8, 192, 5376, 2_097_152, 988_240),
        LlmJpSpec("1.8b", 2048, 24, 16, 128, 7168, 2_097_152, 988_240),
        LlmJpSpec("3.7b", 3072, 28, 24, 128, 8192, 4_194_304, 494_120),
        LlmJpSpec("7.2b", 4096, 32, 32, 128, 11008, 4_194_304, 494_120),
        LlmJpSpec("13b", 5120, 40, 40, 128, 13824, 4_194_304, 494_120),
    )
}


def normalise_size(size: str) -> str:
    """Accept "1.8b", "1.8B", "llm-jp-3-1.8b" or "llm-jp/llm-jp-3-1.8b"; return "1.8b"."""
    s = str(size).strip().lower()
    for prefix in (f"{HUB_ORG}/", "llm-jp-3-"):
        if s.startswith(prefix):
            s = s[len(prefix) :]
    if s not in LLMJP_SIZES:
        raise CheckpointError(
            f"unknown LLM-jp-3 size {size!r}; valid sizes: {', '.join(LLMJP_SIZES)}"
        )
    return s


def llmjp_spec(size: str) -> LlmJpSpec:
    """The :class:`LlmJpSpec` of a size (any spelling accepted by :func:`normalise_size`)."""
    return LLMJP_SIZES[normalise_size(size)]


def tokens_per_iteration(size: str) -> int:
    """Training tokens per Megatron iteration for a size (2,097,152 or 4,194,304)."""
    return llmjp_spec(size).tokens_per_iteration


def llmjp_structure_config(*, vocab_size: int, d_model: int, d_mlp: int, n_layers: int, n_heads: int,
                           d_head: int | None = None, max_position_embeddings: int = MAX_POSITION_EMBEDDINGS,
                           bos_token_id: int = BOS_ID, eos_token_id: int = EOS_ID, pad_token_id: int = PAD_ID,
                           **extra: Any) -> Any:
    """A ``LlamaConfig`` with LLM-jp-3's structural choices at any size: SwiGLU, RMSNorm
    (eps 1e-5), RoPE (theta 1e4), no biases, untied embeddings, as many KV heads as heads.
    Used for the real sizes and for the toy world's tiny model alike."""
    from transformers import LlamaConfig

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
        rope_theta=ROPE_THETA,
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        architectures=["LlamaForCausalLM"],
        **extra,
    )


def llmjp_llama_config(size: str) -> Any:
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
    import transformer_lens.loading_from_pretrained as tl_loading
    from transformer_lens import supported_models

    from sae_bilingual.models.hf import hooked_config_dict_from_hf

    for official, aliases in transformer_lens_names().items():
        if official not in supported_models.OFFICIAL_MODEL_NAMES:
            supported_models.OFFICIAL_MODEL_NAMES.append(official)
        known = supported_models.MODEL_ALIASES.setdefault(official, [])
        for a in aliases:
            if a not in known:
                known.append(a)
    # loading_from_pretrained imported the same list/dict objects; guard against a copy.
    if tl_loading.OFFICIAL_MODEL_NAMES is not supported_models.OFFICIAL_MODEL_NAMES:
        for official in transformer_lens_names():
            if official not in tl_loading.OFFICIAL_MODEL_NAMES:
                tl_loading.OFFICIAL_MODEL_NAMES.append(official)
        tl_loading.MODEL_ALIASES.update(
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
            from transformers import LlamaConfig

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


# --------------------------------------------------------------------------- loading
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
    from sae_bilingual.models.registry import get_family

    fam = get_family(f"llm-jp-3-{normalise_size(size)}", source=source, revision=revision, tokenizer=tokenizer)
    ck = fam.catalogue().select(iteration=checkpoint, tokens=tokens)
    return fam.load(ck, device=device, dtype=dtype)
