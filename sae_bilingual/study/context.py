"""What a study builds once and shares between its units: the toy world, the model
families, the labelled documents and their token windows, the semantic clusters."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from datasets import DatasetDict
from transformers import PreTrainedTokenizerBase

from sae_bilingual import world as toy_world  # (attributes looked up per call: tests stand in for build_world)
from sae_bilingual.config import Recipe
from sae_bilingual.data import corpus
from sae_bilingual.errors import ConfigError
from sae_bilingual.models.registry import ModelFamily, get_family


def tokenizer_key(tokenizer: PreTrainedTokenizerBase) -> str:
    """A short hash of what decides a tokenizer's ids for the windows: its class, its whole
    serialisation when it has one (vocabulary, merges, normalizer, pre-tokenizer, added
    tokens, post-processor) else its vocabulary, and the BOS/EOS/PAD ids.

    Why: two model families of one study may tokenize the same documents differently, so
    their token windows must not share a cache entry; two loads of one tokenizer must.
    """
    h = hashlib.sha256(type(tokenizer).__qualname__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "to_str"):
        h.update(backend.to_str().encode())
    elif hasattr(tokenizer, "get_vocab"):
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    else:
        h.update(repr(tokenizer).encode())
    special = [getattr(tokenizer, f"{k}_token_id", None) for k in ("bos", "eos", "pad")]
    h.update(json.dumps(special, default=str).encode())
    return h.hexdigest()[:16]


class StudyContext:
    """Everything built once per study and shared by its units (world, corpus, windows)."""

    def __init__(self, recipe: Recipe, progress: bool = True, families: dict[int, Any] | None = None,
                 unit_stages: Any = None):
        self.recipe = recipe
        self.progress = progress
        self.unit_stages = unit_stages
        """A ``pipeline.UnitStages`` every unit of this process runs (None: the study's own);
        typed Any because pipeline imports this module."""
        self._world: toy_world.World | None = None
        self._families: dict[int, Any] = dict(families or {})  # given: stand-ins (dry run)
        self._tokenizer_keys: dict[int, str] = {}
        self._windows: dict[tuple[str, str], Any] = {}
        self.cluster_cache: dict[tuple[str, str, int], Any] = {}

    # -- model sources
    @property
    def world(self) -> toy_world.World:
        """The toy world, built (or loaded from cache) on first use."""
        if self._world is None:
            self._world = toy_world.build_world(recipe_world_config(self.recipe), progress=self.progress)
        return self._world

    def family(self, index: int) -> ModelFamily:
        """The model family of ``recipe.models[index]``."""
        if index not in self._families:
            spec = self.recipe.models[index]
            source = spec.source
            if spec.family == "toy" and source is None:
                source = str(self.world.root)
            extra = {k: getattr(spec, k) for k in ("revision", "tokenizer", "tokens_per_step", "name")
                     if getattr(spec, k) is not None}
            fam = get_family(spec.family, source=source, **extra)
            if spec.model_backend != "hooked":
                if not hasattr(fam, "model_backend"):
                    raise ConfigError(f"models[{index}].model_backend = {spec.model_backend!r}: family "
                                      f"{spec.family!r} ({type(fam).__name__}) loads only its own way; "
                                      "use model_backend: hooked")
                setattr(fam, "model_backend", spec.model_backend)  # not part of ModelFamily: checked above
            self._families[index] = fam
        return self._families[index]

    def tokenizer(self, index: int = 0) -> Any:
        """The tokenizer of ``recipe.models[index]``."""
        return self.family(index).tokenizer()

    # -- data
    def documents(self) -> DatasetDict:
        """``datasets.DatasetDict`` with train/eval splits of labelled documents."""
        data = self.recipe.data
        if data.corpus == "toy":
            return self.world.corpus
        if data.corpus == "text":
            if not data.paths:
                raise ConfigError("data.paths: corpus 'text' needs {language: file} paths")
            chars = corpus.doc_chars_for(data.context)
            train = corpus.load_text_corpus(data.paths, max_chars=chars)
            if data.eval_paths:
                return DatasetDict({"train": train, "eval": corpus.load_text_corpus(data.eval_paths, max_chars=chars)})
        else:
            if not data.hf_name:
                raise ConfigError("data.hf_name: corpus 'hf' needs a dataset name or local path")
            train = corpus.from_hf_dataset(
                data.hf_name, split=data.hf_split, text_field=data.hf_text_field, lang_field=data.hf_lang_field,
                max_chars=corpus.doc_chars_for(data.context),
            )
        # hold out documents for evaluation in proportion to the token budgets
        share = data.eval_tokens_per_lang / (data.train_tokens_per_lang + data.eval_tokens_per_lang)
        split = train.train_test_split(test_size=max(0.01, min(0.5, share)), seed=self.recipe.seed)
        return DatasetDict({"train": split["train"], "eval": split["test"]})

    def windows(self, split: str, index: int = 0) -> corpus.Windows:
        """Token windows for ``split`` ('train' or 'eval') in the tokenizer of ``recipe.models[index]``:
        the same documents for every unit, shared by the models whose tokenizers are the same."""
        if index not in self._tokenizer_keys:
            self._tokenizer_keys[index] = tokenizer_key(self.tokenizer(index))
        key = (split, self._tokenizer_keys[index])
        if key not in self._windows:
            data = self.recipe.data
            budget = data.train_tokens_per_lang if split == "train" else data.eval_tokens_per_lang
            self._windows[key] = corpus.make_windows(
                self.documents()[split],
                self.tokenizer(index),
                context=data.context,
                tokens_per_lang=budget,
                languages=tuple(data.languages),
                seed=self.recipe.seed + (0 if split == "train" else 1),
            )
        return self._windows[key]


def recipe_world_config(recipe: Recipe) -> toy_world.WorldConfig:
    """The toy world's config for ``recipe`` (its preset with ``world.overrides``)."""
    spec = recipe.world
    try:
        return world_config(toy_world.WorldConfig.from_preset(spec.preset), spec.overrides)
    except TypeError as e:
        raise ConfigError(f"world.overrides: {e}") from e


def world_config(cfg: toy_world.WorldConfig, overrides: dict[str, Any]) -> toy_world.WorldConfig:
    """``cfg`` (a WorldConfig) with the recipe's ``world.overrides``; unknown names are refused."""
    names = {f.name for f in dataclasses.fields(cfg)}
    bad = sorted(set(overrides) - names)
    if bad:
        raise ConfigError(f"world.overrides.{bad[0]}: unknown world field; valid: {', '.join(sorted(names))}")
    return dataclasses.replace(cfg, **overrides)
