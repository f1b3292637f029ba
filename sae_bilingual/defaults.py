"""Paper constants and defaults shared by a recipe field and the library function that takes the same argument.

Why a module of its own: the recipe (``config.py``) and a function such as
``sae.train.lr_grid`` or ``intervention.metrics.translate`` must not state the same default
twice (they had drifted apart: 24 vs 48 new tokens); both import it from here.
"""

from __future__ import annotations

ADAM_EPS = 6.25e-10
"""Adam epsilon of the original code (SAESpec and the training SAE's config default to it)."""

GEOMETRIC_MEDIAN_SAMPLE = 4096
"""First-batch vectors whose geometric median initialises b_pre."""

DEFAULT_LR_GRID: tuple[float, ...] = (1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3)
"""The learning rates tried when ``sae.lr: grid`` (chosen on the final checkpoint's middle layer)."""

DEFAULT_MAX_NEW_TOKENS = 24
"""Greedy tokens generated per translation in the intervention (``intervention.max_new_tokens``)."""

PAPER_K = 32
"""Active features per token of the paper's TopK SAE (``sae.k``, ``PaperTopKSAEConfig.k``)."""

PAPER_LANGUAGES: tuple[str, ...] = ("en", "ja")
"""The study's languages when none are given (``data.languages``, the toy world's, the corpus's)."""

PAPER_EMBEDDING_DIM = 3072
"""Width of the LLM-jp-3 3.7B input embeddings the paper clusters tokens with (the cosine
threshold is stated for it; ``analysis.cluster_threshold_scaling`` rescales to other widths)."""
