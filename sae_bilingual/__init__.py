"""sae-bilingual: trace how a bilingual LM becomes bilingual with TopK SAEs.

A plugin for SAELens and TransformerLens: importing this package registers the paper's
TopK SAE architecture ("paper_topk") and the BatchTopK crosscoder ("paper_crosscoder") with
SAELens and the LLM-jp-3 model names with TransformerLens (and the release folders in $SAE_BILINGUAL_RELEASES, see sae_bilingual.report.release).
"""

from __future__ import annotations

import os

__version__ = "0.1.0"

from sae_bilingual.models.hooked_sae import load_hooked_sae_transformer  # noqa: E402,F401
from sae_bilingual.models.llmjp import register_with_transformer_lens  # noqa: E402
from sae_bilingual.report.release import register_env_releases  # noqa: E402
from sae_bilingual.sae.crosscoder import register as register_crosscoder  # noqa: E402
from sae_bilingual.sae.model import register  # noqa: E402

register()
register_crosscoder()
register_with_transformer_lens()
if os.environ.get("SAE_BILINGUAL_RELEASES"):  # exported release folders for SAE.from_pretrained
    register_env_releases()
