"""Model loading: HF -> HookedTransformer, LLM-jp-3 sizes, public families, checkpoint catalogues."""

from __future__ import annotations

from sae_bilingual.models.catalogue import Checkpoint, CheckpointCatalogue, iter_dirname
from sae_bilingual.models.hf import (
    hooked_config_dict_from_hf,
    hooked_config_from_hf,
    hooked_from_hf_model,
    load_hf_llama,
    load_hooked,
)
from sae_bilingual.models.llmjp import (
    LLMJP_SIZES,
    LlmJpSpec,
    llmjp_llama_config,
    llmjp_spec,
    load_llmjp,
    register_with_transformer_lens,
    tokens_per_iteration,
)
from sae_bilingual.models.registry import (
    HFLlamaFamily,
    ModelFamily,
    get_family,
    register_family,
    registered_families,
)
from sae_bilingual.models.tokenizer import load_tokenizer, sentencepiece_tokenizer
from sae_bilingual.models.generic import HFFamily, hf_factory, is_paper_model  # noqa: E402 (after registry)
from sae_bilingual.models.public import PUBLIC_FAMILIES, register_public_families

register_family("hf", hf_factory, overwrite=True)
register_public_families(register_family)

__all__ = [
    "LLMJP_SIZES",
    "Checkpoint",
    "CheckpointCatalogue",
    "HFFamily",
    "HFLlamaFamily",
    "LlmJpSpec",
    "PUBLIC_FAMILIES",
    "ModelFamily",
    "get_family",
    "hooked_config_dict_from_hf",
    "hooked_config_from_hf",
    "hooked_from_hf_model",
    "is_paper_model",
    "iter_dirname",
    "llmjp_llama_config",
    "llmjp_spec",
    "load_hf_llama",
    "load_hooked",
    "load_llmjp",
    "load_tokenizer",
    "register_family",
    "register_with_transformer_lens",
    "registered_families",
    "sentencepiece_tokenizer",
    "tokens_per_iteration",
]
