"""The recipe's ``analysis.alignment`` section: translation alignment per feature (issue 26).

Why its own module: config.py is at the 400-line limit; this section is read by
:mod:`sae_bilingual.analysis.alignment` and :mod:`sae_bilingual.study.alignment_stage`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from sae_bilingual.errors import ConfigError

FIRE_RULES = ("selected", "threshold")


@dataclass
class AlignmentSpec:
    """Does a feature fire on both sides of translation pairs more often than chance?

    Each pair's two sentences are encoded (one document each) through the LM and the SAE; a
    feature *fires on a side* by ``fire_rule``; ``align_both`` counts the pairs on which it
    fires on both sides, ``align_expected`` the count expected when the pairing is random
    (a*b/N from the per-side counts a, b over N pairs: the mean of the shuffled-pair
    baseline), ``align_score`` = both / expected. Class "aligned": Mixed, with
    ``align_score >= min_score`` and ``align_both >= min_both``.
    """

    enabled: bool = False
    """Encode the translation pairs and add the align_* columns (off by default: one more LM pass
    per unit, and the positive control does not yet reach its target; docs/toy-world.md)."""
    fire_rule: Literal["selected", "threshold"] = "threshold"
    """'selected': the TopK selected the feature at some token of the sentence; 'threshold':
    some activation in the sentence exceeds ``fire_ratio`` x the feature's max over the
    evaluation set (the paper's active set; every such entry is also selected, so "either" would be
    'selected')."""
    fire_ratio: float = 0.7
    """The fraction of the feature's evaluation max that 'threshold' asks for (strict >)."""
    min_score: float = 4.0
    """A Mixed feature is "aligned" when observed / expected >= this (chosen on the toy controls,
    docs/toy-world.md)."""
    min_both: int = 3
    """... and it fired on both sides of at least this many pairs (a ratio over 1-2 pairs is noise)."""
    max_pairs: int = 2000
    """Pairs encoded per unit (the first ones of the source)."""
    pairs_paths: dict[str, str] = field(default_factory=dict)
    """Line-aligned parallel files per language (e.g. ../shared/data/small_parallel_enja/dev.{en,ja});
    empty: ``intervention.pairs_paths``, else the toy world's held-out pairs, else none."""
    unspace_languages: list[str] = field(default_factory=lambda: ["ja"])
    """Languages whose word-separating spaces are removed from ``pairs_paths`` text."""

    def check(self, where: str = "analysis.alignment") -> None:
        """Raise ConfigError naming the field for an out-of-range value."""
        if self.fire_rule not in FIRE_RULES:
            raise ConfigError(f"{where}.fire_rule = {self.fire_rule!r}; choose one of {list(FIRE_RULES)}")
        if not (isinstance(self.fire_ratio, (int, float)) and 0.0 <= self.fire_ratio < 1.0):
            raise ConfigError(f"{where}.fire_ratio must be in [0, 1), got {self.fire_ratio!r}; e.g. fire_ratio: 0.7")
        if not (isinstance(self.min_score, (int, float)) and math.isfinite(self.min_score) and self.min_score > 0):
            raise ConfigError(f"{where}.min_score must be a finite number > 0, got {self.min_score!r}; e.g. min_score: 4")
        for name, example in (("min_both", "3"), ("max_pairs", "2000")):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{where}.{name} must be a whole number >= 1, got {v!r}; e.g. {name}: {example}")
        if self.pairs_paths and len(self.pairs_paths) < 2:
            raise ConfigError(f"{where}.pairs_paths names {len(self.pairs_paths)} language; give one file per "
                              "language, e.g. {en: dev.en, ja: dev.ja}")
