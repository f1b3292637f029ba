"""Model loading: HF -> HookedTransformer, LLM-jp-3 sizes, public families, checkpoint catalogues.

Importing this package registers the built-in model families: one per LLM-jp-3 size, "toy"
(the toy world's checkpoints), "hf" (any TransformerLens-convertible model) and the public
families (Pythia, OLMo, ...).
"""

from __future__ import annotations

from sae_bilingual.models.catalogue import Checkpoint, CheckpointCatalogue, iter_dirname
from sae_bilingual.models.generic import HFFamily, hf_factory, is_paper_model
from sae_bilingual.models.hf import (
    hooked_config_dict_from_hf,
    hooked_config_from_hf,
    hooked_from_hf_model,
    load_hf_llama,
    load_hooked,
)
from sae_bilingual.models.llmjp import (
    llmjp_llama_config,
    load_llmjp,
    register_llmjp_families,
    register_with_transformer_lens,
)
from sae_bilingual.models.public import PUBLIC_FAMILIES, register_public_families
from sae_bilingual.models.registry import (
    HFLlamaFamily,
    ModelFamily,
    get_family,
    register_family,
    registered_families,
    toy_factory,
)
from sae_bilingual.models.sizes import LLMJP_SIZES, LlmJpSpec, llmjp_spec, tokens_per_iteration
from sae_bilingual.models.tokenizer import load_tokenizer, sentencepiece_tokenizer
from sae_bilingual.models.hooked_sae import load_hooked_sae_transformer, to_hooked_sae_transformer  # noqa: E402

register_llmjp_families(register_family)
register_family("toy", toy_factory, overwrite=True)
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
    "load_hooked_sae_transformer",
    "load_llmjp",
    "load_tokenizer",
    "register_family",
    "register_with_transformer_lens",
    "registered_families",
    "sentencepiece_tokenizer",
    "to_hooked_sae_transformer",
    "tokens_per_iteration",
]
