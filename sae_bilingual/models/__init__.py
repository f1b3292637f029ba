"""Model loading: HF Llama -> HookedTransformer, LLM-jp-3 sizes, checkpoint catalogues, families."""

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

__all__ = [
    "LLMJP_SIZES",
    "Checkpoint",
    "CheckpointCatalogue",
    "HFLlamaFamily",
    "LlmJpSpec",
    "ModelFamily",
    "get_family",
    "hooked_config_dict_from_hf",
    "hooked_config_from_hf",
    "hooked_from_hf_model",
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
