"""The recipe's ``analysis:`` section, which is also the config of the per-feature analysis.

:func:`sae_bilingual.analysis.features.analyse_features` takes this dataclass itself, so the
recipe's field names, defaults and bounds are the analysis's: one place for each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Union

from sae_bilingual.config_alignment import AlignmentSpec
from sae_bilingual.config_checks import at_least
from sae_bilingual.errors import ConfigError

LANGUAGE_RULES = ("document", "script")
SPAN_RULES = ("topk", "threshold")
TOKEN_WEIGHTINGS = ("count", "activation")


@dataclass
class EmbeddingModelSpec:
    """A model named only for its input embedding matrix (semantic clusters)."""

    family: str = "llm-jp-3-3.7b"
    """A model family name, as in `models[].family`."""
    source: str | None = None
    """HF repo id, a local HF dir, or a local root of iter_NNNNNNN dirs (None: the family's Hub repo)."""
    revision: str | None = None
    """Hub revision when `source` is a repo id."""
    checkpoint: Union[int, str] = "final"
    """'final' or an iteration."""


@dataclass
class AnalysisSpec:
    """Feature labelling (PAPER.md, 'Feature analysis'); the defaults are the paper's."""

    act_threshold: float = 0.7
    """An entry is active when its activation is strictly above this fraction of the feature's max."""
    lang_threshold: float = 0.9
    """A feature is language-specific when p(lang|i) exceeds this, else "mixed"."""
    language_rule: Literal["document", "script"] = "document"
    """The language of an entry: its document's label, or the script of its token (digits take
    the previous scripted token's)."""
    span_rule: Literal["topk", "threshold"] = "topk"
    """Spans are runs of TopK selection (the paper) or of active entries."""
    token_weighting: Literal["count", "activation"] = "count"
    """f(v|i) counts active entries, or weights them by activation."""
    n_top_tokens: int = 5
    """How many most frequent active tokens the table lists per feature."""
    mix_threshold: float = 0.1
    """A language is named in the ``mix`` column when p(lang|i) exceeds this."""
    cluster_threshold: float = 0.1
    """Cosine similarity above which two of a feature's tokens share a semantic cluster (the paper: 0.1)."""
    cluster_threshold_scaling: bool = False
    """Scale the threshold by sqrt(3072 / d_embedding): the same number of standard deviations
    of random-vector cosine as 0.1 is in the paper's 3,072-d embeddings."""
    cluster_method: Literal["connected_components", "ground_truth"] = "connected_components"
    """How semantic clusters are formed: components of the cosine graph (the paper), or the toy
    world's ground-truth concepts."""
    cluster_scope: Literal["feature", "global"] = "feature"
    """'feature': feature i's clusters C_i are formed over its own active tokens only (the
    paper); 'global': one clustering of every evaluation token shared by all features, which
    chains unrelated tokens through tokens the feature never fired on (earlier versions; kept
    for comparison, not the paper's)."""
    embedding_source: Literal["self", "final", "model"] = "final"
    """Input embeddings for semantic clusters: the analysed checkpoint, the final checkpoint of
    the same model, or `embedding_model` (the paper: the 3.7B model's, for every size)."""
    embedding_model: EmbeddingModelSpec | None = None
    """The model whose input embeddings cluster tokens when embedding_source is 'model'. It must
    share the analysed models' tokenizer (LLM-jp-3 sizes all do)."""
    ce_docs_per_lang: int = 64
    """Evaluation documents per language for the CE-loss-recovered metric (three LM forwards
    per SAE: clean, spliced, zero-ablated); the other metrics use the whole eval set."""
    n_browser_features: int = 40
    n_examples: int = 8
    alignment: AlignmentSpec = field(default_factory=AlignmentSpec)  # translation alignment (config_alignment.py)

    def validate(self) -> AnalysisSpec:
        """Raise ConfigError naming the ``analysis.`` field that is out of range or unknown."""
        _fraction(self.act_threshold, "act_threshold", 0.0, "0.7")
        _fraction(self.lang_threshold, "lang_threshold", 0.5, "0.9")
        _fraction(self.mix_threshold, "mix_threshold", 0.0, "0.1")
        for name, choices in (("language_rule", LANGUAGE_RULES), ("span_rule", SPAN_RULES),
                              ("token_weighting", TOKEN_WEIGHTINGS)):
            if getattr(self, name) not in choices:
                raise ConfigError(f"analysis.{name} = {getattr(self, name)!r}; choose one of {', '.join(choices)}")
        if isinstance(self.n_top_tokens, bool) or not isinstance(self.n_top_tokens, int) or self.n_top_tokens < 0:
            raise ConfigError(f"analysis.n_top_tokens must be a whole number >= 0, got {self.n_top_tokens!r}")
        if (self.embedding_source == "model") != (self.embedding_model is not None):
            raise ConfigError(
                "analysis.embedding_model names the model whose embeddings cluster tokens and is used "
                "exactly when analysis.embedding_source is 'model': set both, or neither "
                f"(now embedding_source={self.embedding_source!r}, embedding_model={self.embedding_model!r})"
            )
        at_least(self.ce_docs_per_lang, 1, "analysis.ce_docs_per_lang", "64")
        at_least(self.n_examples, 0, "analysis.n_examples", "8")
        at_least(self.n_browser_features, 0, "analysis.n_browser_features", "40")
        self.alignment.check("analysis.alignment")
        return self


def _fraction(value: float, name: str, low: float, paper: str) -> None:
    """``low <= value < 1`` (NaN refused), else an error naming ``analysis.<name>``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and low <= value < 1):
        raise ConfigError(f"analysis.{name} must lie in [{low:g}, 1) (the paper: {paper}), got {value!r}")
