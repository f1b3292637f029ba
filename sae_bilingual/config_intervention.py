"""The recipe's ``intervention:`` section (paper Tables 1 and 4), which is also the config
:func:`sae_bilingual.intervention.experiment.run_intervention_table` takes, and its own checks."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Union

from sae_bilingual.config_checks import at_least, positive
from sae_bilingual.defaults import DEFAULT_MAX_NEW_TOKENS
from sae_bilingual.errors import ConfigError


@dataclass
class InterventionSpec:
    """Inject final-model features into a mid checkpoint (Tables 1 and 4)."""

    enabled: bool = False
    model: int = 0
    """Index into `models` of the model to intervene on."""
    mid_checkpoint: int | None = None
    """Iteration of the mid-training checkpoint (None: the middle of the analysed ones)."""
    layer: Union[int, str] = "mid"
    alphas: list[float] = field(default_factory=lambda: [0.1])
    ms: list[int] = field(default_factory=lambda: [5000])
    """Features per mask at the paper's n = 32,768; scaled to the SAE's n when `scale_m`."""
    scale_m: bool = True
    draws: int = 5
    conditions: list[str] = field(default_factory=lambda: ["none", "en", "ja", "mixed"])
    scale: Literal["residual", "unit"] = "residual"
    """'residual': the SAE encodes X_full / ||X_full|| and the decoded vector is multiplied back
    by ||X_full|| before alpha (the SAE saw unit-norm vectors); 'unit': the literal unit-space sum."""
    add_bias: bool = True
    """The decoder D includes b_pre: D(z) = W_dec z + b_pre, the paper's decoder (true). False
    drops b_pre (then an empty mask is an exact no-op); the report names the variant."""
    eval_docs_per_lang: int = 200
    translation_pairs: int = 50
    """Parallel test pairs translated per direction (after the few-shot examples)."""
    pairs_paths: dict[str, str] = field(default_factory=dict)
    """Line-aligned parallel files per language for translation, e.g. the shared
    small_parallel_enja test.{en,ja} (default for the toy world: its own held-out pairs)."""
    unspace_languages: list[str] = field(default_factory=lambda: ["ja"])
    """Languages whose word-separating spaces are removed from `pairs_paths` text."""
    few_shot: int = 3
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    stack: int = 16
    """Conditions x draws evaluated together in one batched pass (more memory, same results)."""
    comet_python: str | None = None
    comet_model: str | None = None


    def validate(self, languages: Sequence[str]) -> InterventionSpec:
        """Raise ConfigError naming the ``intervention.`` field that is out of range. Nothing but
        ``stack`` is checked while it is disabled (its defaults name en/ja conditions, irrelevant
        to an [en, fr] study without it)."""
        positive(self.stack, "intervention.stack")
        if not self.enabled:
            return self
        at_least(self.draws, 1, "intervention.draws", "5")
        if not self.ms:
            raise ConfigError("intervention.ms is empty; list mask sizes, e.g. ms: [5000]")
        for i, m in enumerate(self.ms):
            at_least(m, 1, f"intervention.ms[{i}]", "5000")
        if not self.alphas:
            raise ConfigError("intervention.alphas is empty; list injection scales, e.g. alphas: [0.1]")
        for i, alpha in enumerate(self.alphas):
            if not math.isfinite(alpha):
                raise ConfigError(f"intervention.alphas[{i}] must be a finite number, got {alpha!r}; e.g. 0.1")
        at_least(self.eval_docs_per_lang, 1, "intervention.eval_docs_per_lang", "200")
        at_least(self.max_new_tokens, 1, "intervention.max_new_tokens", str(DEFAULT_MAX_NEW_TOKENS))
        at_least(self.few_shot, 0, "intervention.few_shot", "3")
        at_least(self.translation_pairs, 1, "intervention.translation_pairs", "50")
        if self.mid_checkpoint is not None:
            at_least(self.mid_checkpoint, 0, "intervention.mid_checkpoint", "an iteration of the model's catalogue")
        valid = ["none", *languages, "mixed"]
        if not self.conditions:
            raise ConfigError(f"intervention.conditions is empty; choose from {', '.join(valid)}")
        bad = [c for c in self.conditions if c not in valid]
        if bad:
            raise ConfigError(f"intervention.conditions: {bad[0]!r} is not a condition; valid: {', '.join(valid)} "
                              "('none' = clean model, a language code or 'mixed' = inject that class)")
        return self
