"""The embedded toy world: a bilingual corpus with exact ground truth, and a tiny Llama
pre-trained on it with log-spaced checkpoints — built offline on CPU in minutes.

Why: LLM-jp checkpoints are large and their data is not ours to change. A generated
world lets the study run anywhere, lets us vary the knobs the paper's phases may depend
on (bilingual share, training length, depth, concept recurrence), and makes the feature
analysis scoreable (every token's language and concept is known).

    from sae_bilingual.world import WorldConfig, build_world
    world = build_world(WorldConfig())          # cached; rebuilt only when the config changes
    world.root                                  # iter_NNNNNNN/ HF checkpoints + catalogue.json
    world.corpus["eval"][0]["input_ids"]        # BOS first, aligned with concept_ids
    world.ground_truth.loc[token_id]            # lang, concept, concept_name, pos
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

from sae_bilingual.errors import ConfigError, DataError
from sae_bilingual.io import atomic_dir, atomic_write_json, atomic_write_text, save_parquet

log = logging.getLogger(__name__)

WORLD_VERSION = 1
"""Bumped when the generator/training code changes results: part of the cache key."""

_COMPLETE = "COMPLETE"


@dataclass
class WorldConfig:
    """Everything that determines a toy world (the cache key is a hash of these fields)."""

    seed: int = 0
    """Seed for the corpus generator, model initialisation and batch order."""
    languages: tuple[str, ...] = ("en", "ja")
    """Language codes; each needs a lexicon and realizer in world/generator.py."""
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

    def generator_config(self):  # noqa: ANN201
        """The corpus generator's share of this config."""
        from sae_bilingual.world.generator import GeneratorConfig

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


@dataclass
class World:
    """A built toy world on disk. Heavy members load lazily from ``root``."""

    root: Path
    config: WorldConfig
    from_cache: bool = False
    """True when this call found the world on disk (no corpus generation, no training)."""

    @cached_property
    def meta(self) -> dict[str, Any]:
        """world.json: config, timings, loss curve, checkpoints."""
        return json.loads((self.root / "world.json").read_text())

    @cached_property
    def tokenizer(self):  # noqa: ANN201
        """The word-level PreTrainedTokenizerFast (BOS=1 added first)."""
        from sae_bilingual.world.tokenizer import load_tokenizer

        return load_tokenizer(self.root / "tokenizer")

    @cached_property
    def corpus(self):  # noqa: ANN201
        """datasets.DatasetDict with "train"/"eval": text, lang, doc_id, bilingual, input_ids, concept_ids."""
        import datasets

        return datasets.load_from_disk(str(self.root / "corpus"))

    @cached_property
    def ground_truth(self) -> pd.DataFrame:
        """Per token id: token, lang ("" for specials), concept (-1 none), concept_name, pos."""
        return pd.read_parquet(self.root / "ground_truth.parquet")

    @cached_property
    def translation_pairs(self) -> pd.DataFrame:
        """Held-out parallel sentences, one column per language (en, ja)."""
        return pd.read_parquet(self.root / "translation_pairs.parquet")

    @property
    def loss_curve(self) -> pd.DataFrame:
        """Training loss per optimizer step (columns step, loss, lr)."""
        return pd.DataFrame(self.meta["loss_curve"])

    @property
    def catalogue(self) -> dict[str, Any]:
        """catalogue.json: tokens_per_iteration and [{"iteration", "tokens", "loss"}]."""
        return json.loads((self.root / "catalogue.json").read_text())

    @property
    def checkpoints(self) -> list[Path]:
        """Checkpoint directories, by iteration."""
        from sae_bilingual.world.pretrain import iteration_dirname

        return [self.root / iteration_dirname(c["iteration"]) for c in self.catalogue["checkpoints"]]

    @property
    def final_checkpoint(self) -> Path:
        """Directory of the last checkpoint."""
        return self.checkpoints[-1]

    @property
    def build_seconds(self) -> float:
        """Wall time the original build took (not this load)."""
        return float(self.meta["build_seconds"])


def default_cache_dir() -> Path:
    """``$SAE_BILINGUAL_CACHE`` or ``~/.cache/sae_bilingual``."""
    env = os.environ.get("SAE_BILINGUAL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "sae_bilingual"


def world_dir(cfg: WorldConfig, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the world for ``cfg`` lives: ``<cache>/world/<config hash>``."""
    base = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return base / "world" / cfg.key()


def is_complete(root: Path) -> bool:
    """A world dir is usable only if its completion marker (written last) exists."""
    return (root / _COMPLETE).is_file() and (root / "world.json").is_file()


@contextlib.contextmanager
def _lock(path: Path):  # noqa: ANN202
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # two processes asking for one world: the second waits
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build_world(cfg: WorldConfig | None = None, cache_dir: str | os.PathLike | None = None,
                progress: bool = True) -> World:
    """Return the toy world for ``cfg``, building it (corpus, tokenizer, pre-training) if absent.

    Why cached: the study needs the same checkpoints many times; building takes minutes.
    A world is found by the hash of its config; a directory without the completion
    marker (a build killed half-way) is rebuilt.
    """
    cfg = cfg or WorldConfig()
    root = world_dir(cfg, cache_dir)
    if is_complete(root):
        log.info("toy world %s found in cache", root)
        return World(root, cfg, from_cache=True)
    with _lock(root.parent / f".{root.name}.lock"):
        if is_complete(root):  # built by another process while we waited
            return World(root, cfg, from_cache=True)
        _remove_stale_temps(root)
        if root.exists():
            log.warning("toy world %s is incomplete (interrupted build?): rebuilding", root)
        t0 = time.perf_counter()
        with atomic_dir(root) as tmp:
            _build_into(tmp, cfg, progress=progress, t0=t0)
    world = World(root, cfg, from_cache=False)
    log.info("toy world built in %.1f s at %s", world.build_seconds, root)
    return world


def _remove_stale_temps(root: Path, max_age_s: float = 6 * 3600) -> None:
    """Delete temp build dirs of this world left by crashed builds (older than ``max_age_s``)."""
    now = time.time()
    for p in root.parent.glob(f".{root.name}.*.tmp"):
        with contextlib.suppress(OSError):
            if now - p.stat().st_mtime > max_age_s:
                shutil.rmtree(p, ignore_errors=True)


def _build_into(tmp: Path, cfg: WorldConfig, *, progress: bool, t0: float) -> None:
    import datasets

    from sae_bilingual.world.generator import build_lexicon, generate_documents, generate_translation_pairs
    from sae_bilingual.world.pretrain import pad_windows, pretrain
    from sae_bilingual.world.tokenizer import BOS, build_tokenizer, save_tokenizer

    gcfg = cfg.generator_config()
    lex = build_lexicon(cfg.n_concepts, cfg.languages)
    tok, gt = build_tokenizer(lex)
    vocab = tok.get_vocab()
    save_tokenizer(tok, tmp / "tokenizer")
    save_parquet(gt, tmp / "ground_truth.parquet")

    splits = {}
    for split, n, offset, share in (
        ("train", cfg.n_train_docs, 0, cfg.bilingual_share),
        ("eval", cfg.n_eval_docs, 1, 0.0),
    ):
        docs = generate_documents(lex, gcfg, n, seed_offset=offset, bilingual_share=share)
        splits[split] = datasets.Dataset.from_dict({
            "text": [" ".join(d.tokens) for d in docs],
            "lang": [d.lang for d in docs],
            "doc_id": list(range(len(docs))),
            "bilingual": [d.bilingual for d in docs],
            "input_ids": [[BOS] + [vocab[t] for t in d.tokens] for d in docs],
            "concept_ids": [[-1] + d.concepts for d in docs],
        })
    corpus = datasets.DatasetDict(splits)
    corpus.save_to_disk(str(tmp / "corpus"))
    for lang in cfg.languages:
        if lang not in set(splits["train"]["lang"]):
            raise DataError(f"the generated corpus has no {lang!r} documents; raise n_train_docs.")
    pairs = pd.DataFrame(generate_translation_pairs(lex, gcfg, cfg.n_translation_pairs))
    save_parquet(pairs, tmp / "translation_pairs.parquet")
    corpus_s = time.perf_counter() - t0
    log.info("corpus: %d train / %d eval docs, vocab %d, %.1f s", cfg.n_train_docs, cfg.n_eval_docs, len(vocab), corpus_s)

    train = pad_windows(splits["train"]["input_ids"], cfg.context)
    ev = pad_windows(splits["eval"]["input_ids"][:256], cfg.context)
    res = pretrain(cfg, tok, train, ev, tmp, progress=progress)
    build_s = time.perf_counter() - t0
    cfg_d = dataclasses.asdict(cfg)
    cfg_d["languages"] = list(cfg.languages)
    atomic_write_json(tmp / "world.json", {
        "config": cfg_d, "key": cfg.key(), "version": WORLD_VERSION,
        "build_seconds": round(build_s, 2), "corpus_seconds": round(corpus_s, 2),
        "pretrain_seconds": round(res["seconds"], 2), "n_params": res["n_params"],
        "vocab_size": len(vocab), "n_concepts": len(lex.concepts),
        "tokens_per_iteration": res["tokens_per_iteration"],
        "checkpoints": res["checkpoints"], "loss_curve": res["loss_curve"],
    })
    curve = res["checkpoints"]
    log.info("loss by checkpoint: %s", ", ".join(f"{c['iteration']}:{c['loss']:.3f}" for c in curve))
    atomic_write_text(tmp / _COMPLETE, f"built in {build_s:.1f} s\n")  # written last


__all__ = ["WORLD_VERSION", "World", "WorldConfig", "build_world", "default_cache_dir", "is_complete", "world_dir"]
