"""What determines a toy world: :class:`WorldConfig`, its presets and its cache key.

Why its own module: the builder (world/build.py) and the pre-training loop
(world/pretrain.py) both read the config; keeping it below both lets each import it at
module level.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from sae_bilingual.defaults import PAPER_LANGUAGES
from sae_bilingual.errors import ConfigError
from sae_bilingual.world.generator import GeneratorConfig

WORLD_VERSION = 1
"""Bumped when the generator/training code changes results: part of the cache key."""


@dataclass
class WorldConfig:
    """Everything that determines a toy world (the cache key is a hash of these fields)."""

    seed: int = 0
    """Seed for the corpus generator, model initialisation and batch order."""
    languages: tuple[str, ...] = PAPER_LANGUAGES
    """Language codes; each needs forms in world/lexicon.py and a realizer in world/grammar.py."""
    n_concepts: int | None = None
    """Concepts drawn from the lexicon (None = all 330; a share of every category is kept)."""
    bilingual_share: float = 0.2
    """Share of training documents made of translation pairs (TOY-FINDINGS: >= 20%)."""
    zipf: float = 0.5
    """Zipf exponent of concept frequency within a category (0 = uniform; higher = rarer tail)."""
    cast_reuse: float = 0.5
    """Probability a person/place slot reuses the document's small cast (topic recurrence)."""
    codeswitch_rate: float = 0.0
    """Probability that a content word of a training sentence is realised in another language's
    form (the positive control: the two forms of a concept share contexts)."""
    disjoint: bool = False
    """Each language's documents talk about its own share of the concepts (the negative
    control: no concept is bilingual). Needs bilingual_share = 0."""
    n_train_docs: int = 20000
    """Training documents (each <= context tokens, BOS first)."""
    n_eval_docs: int = 2000
    """Held-out documents (monolingual only, so a document's label is each token's language)."""
    n_translation_pairs: int = 500
    """Held-out parallel sentence pairs for translation tests."""
    context: int = 64
    """Tokens per document/window, BOS included (the paper's 64)."""
    d_model: int = 128
    """Residual width."""
    n_layers: int = 6
    """Transformer blocks (>= 6 so there are real middle layers)."""
    n_heads: int = 4
    """Attention heads."""
    d_mlp: int = 512
    """SwiGLU hidden width."""
    steps: int = 600
    """Optimizer steps (= checkpoint iterations)."""
    batch_size: int = 32
    """Windows per step; tokens per iteration = batch_size * context."""
    lr: float = 3e-3
    """Peak AdamW learning rate."""
    warmup_frac: float = 0.05
    """Share of steps spent in linear warm-up."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a share of the peak (cosine decay)."""
    weight_decay: float = 0.1
    """AdamW weight decay on matrices."""
    grad_clip: float = 1.0
    """Gradient-norm clip."""
    n_checkpoints: int = 10
    """Log-spaced checkpoints saved, step 0 and the final step included (>= 9 for the study)."""
    threads: int = 2
    """torch threads while training (not part of the cache key)."""

    def __post_init__(self) -> None:
        self.languages = tuple(self.languages)
        if len(self.languages) < 2:
            raise ConfigError(f"languages={self.languages}: a bilingual world needs >= 2 languages, e.g. ('en', 'ja').")
        if not 0.0 <= self.bilingual_share <= 1.0:
            raise ConfigError(f"bilingual_share={self.bilingual_share} must be within [0, 1].")
        if not 0.0 <= self.codeswitch_rate <= 1.0:
            raise ConfigError(f"codeswitch_rate={self.codeswitch_rate} must be within [0, 1].")
        if self.disjoint and self.bilingual_share > 0:
            raise ConfigError("disjoint=True leaves nothing to translate: set bilingual_share to 0 "
                              "(the 'disjoint' preset does)")
        if self.d_model % self.n_heads:
            raise ConfigError(f"d_model={self.d_model} must be a multiple of n_heads={self.n_heads}.")
        if self.context < 16:
            raise ConfigError(f"context={self.context} is too short for a sentence: use >= 16 (default 64).")
        for name in ("n_train_docs", "n_eval_docs", "steps", "batch_size", "n_checkpoints", "n_layers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 1.")

    @classmethod
    def tiny(cls, **overrides: Any) -> WorldConfig:
        """A world small enough for unit tests (tens of seconds on 2 shared cores)."""
        return cls.from_preset("tiny", **overrides)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> WorldConfig:
        """A named preset (``PRESETS``) with ``overrides`` on top."""
        if name not in PRESETS:
            raise ConfigError(f"unknown world preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def key(self) -> str:
        """Stable hash of the fields that change the result (cache directory name)."""
        d = dataclasses.asdict(self)
        d.pop("threads")
        for name, default in _KEY_IF_SET.items():  # worlds built before these fields keep their key
            if d[name] == default:
                d.pop(name)
        d["languages"] = list(self.languages)
        d["_version"] = WORLD_VERSION
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def generator_config(self) -> GeneratorConfig:
        """The corpus generator's share of this config."""
        return GeneratorConfig(
            seed=self.seed, n_concepts=self.n_concepts, languages=self.languages,
            bilingual_share=self.bilingual_share, max_doc_tokens=self.context, zipf=self.zipf,
            cast_reuse=self.cast_reuse, codeswitch_rate=self.codeswitch_rate, disjoint=self.disjoint,
        )


_TINY = dict(n_concepts=90, n_train_docs=2000, n_eval_docs=200, n_translation_pairs=50, d_model=64, n_layers=2,
             n_heads=2, d_mlp=256, steps=120, batch_size=16, lr=1e-2, n_checkpoints=9)

PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "tiny": _TINY,
    "codeswitch": {"codeswitch_rate": 0.5},
    "disjoint": {"disjoint": True, "bilingual_share": 0.0},
}
"""Named starting points: the study's world, the unit-test world, and the two controls
(code-switched content words: bilingual concepts certainly exist; disjoint concept sets:
they cannot)."""

_KEY_IF_SET = {"codeswitch_rate": 0.0, "disjoint": False}
"""Fields added after WORLD_VERSION 1: part of the cache key only when not at their default."""
