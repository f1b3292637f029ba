"""The recipe's ``data:`` section: where the labelled documents come from, how many tokens, and its own checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from sae_bilingual.config_checks import positive
from sae_bilingual.defaults import PAPER_LANGUAGES
from sae_bilingual.errors import ConfigError


@dataclass
class DataSpec:
    """Where the labelled documents come from and how many tokens to use."""

    corpus: Literal["toy", "text", "hf"] = "toy"
    """'toy' (the world's corpus), 'text' (local files per language), 'hf' (a datasets corpus)."""
    paths: dict[str, str] = field(default_factory=dict)
    """For corpus 'text': language code -> .txt (one document a line) or .jsonl path."""
    eval_paths: dict[str, str] = field(default_factory=dict)
    """For corpus 'text': held-out files per language (default: split the train files)."""
    hf_name: str | None = None
    """For corpus 'hf': dataset name or local path."""
    hf_split: str = "train"
    hf_text_field: str = "text"
    hf_lang_field: str = "lang"
    languages: list[str] = field(default_factory=lambda: list(PAPER_LANGUAGES))
    """Language codes, in the order used for labels."""
    context: int = 64
    """Tokens per document window, BOS included (the paper: 64)."""
    train_tokens_per_lang: int = 50_000_000
    """Training vectors per language (the paper: 50M)."""
    eval_tokens_per_lang: int = 5_000_000
    """Evaluation vectors per language (the paper: 5M)."""
    buffer_vectors: int = 1_000_000
    """Shuffle-buffer size in vectors per layer (the paper: 0.5M-10M by model size)."""
    lm_batch_size: int = 32
    """Documents per LM forward when collecting activations."""
    buffer_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """dtype of the shuffle buffers' vectors. bfloat16 halves the host RAM of the buffers (the
    paper's 3.7B: 7.4 -> 3.7 GB per layer); each vector is rounded once to 8 mantissa bits after
    its unit normalisation, and the SAE casts its batch back to float32 and normalises it again
    before the step, so the SAE still trains on (rounded) unit vectors in float32."""
    logits_budget_mb: float = 256.0
    """Most MB of float32 logits formed at once (CE metrics, perplexity compute losses in chunks)."""
    activation_cache: bool = True
    """Keep training activations as safetensors shards under <output_dir>/cache so further
    SAE runs on the same (checkpoint, layers) -- the LR grid, a rerun -- skip the LM. Costs
    n_vectors x d_model x 4 bytes per layer (turn off at full scale)."""


    def validate(self) -> DataSpec:
        """Raise ConfigError naming the ``data.`` field that is out of range or contradicts another."""
        if self.context < 2:
            raise ConfigError("data.context must be >= 2 (BOS plus at least one token)")
        langs = list(self.languages)
        if len(set(langs)) < 2:
            raise ConfigError(f"data.languages = {langs}: a bilingual study needs at least two "
                              "distinct language codes, e.g. [en, ja]")
        twice = sorted({c for c in langs if langs.count(c) > 1})
        if twice:
            raise ConfigError(f"data.languages = {langs} names {twice[0]!r} twice; list each language once, "
                              f"e.g. languages: [{', '.join(dict.fromkeys(langs))}]")
        for name in ("train_tokens_per_lang", "eval_tokens_per_lang", "buffer_vectors", "lm_batch_size",
                     "logits_budget_mb"):
            positive(getattr(self, name), f"data.{name}")
        for name in ("paths", "eval_paths"):
            seen: dict[Path, str] = {}
            for lang, path in getattr(self, name).items():
                key = Path(str(path)).expanduser().resolve()
                if key in seen:
                    raise ConfigError(f"data.{name}.{seen[key]} and data.{name}.{lang} are the same file {path}: "
                                      "every document would be labelled with both languages; give each "
                                      "language its own file")
                seen[key] = lang
        return self
