"""Build (or find in the cache) a toy world: corpus, tokenizer, ground truth, pre-trained checkpoints.

Why cached: the study needs the same checkpoints many times and building takes minutes, so
a world lives in ``<cache>/world/<config hash>`` and is rebuilt only when its config
changes or a build was killed half-way (no completion marker).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import datasets
import pandas as pd
from transformers import PreTrainedTokenizerFast

from sae_bilingual.errors import DataError, OutputError
from sae_bilingual.io import atomic_dir, atomic_write_json, atomic_write_text, save_parquet
from sae_bilingual.models.catalogue import iter_dirname
from sae_bilingual.world.config import WORLD_VERSION, WorldConfig
from sae_bilingual.world.generator import generate_documents, generate_translation_pairs
from sae_bilingual.world.lexicon import build_lexicon
from sae_bilingual.world.pretrain import pad_windows, pretrain
from sae_bilingual.world.tokenizer import BOS, build_tokenizer, load_tokenizer, save_tokenizer

log = logging.getLogger(__name__)

_COMPLETE = "COMPLETE"


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
    def tokenizer(self) -> PreTrainedTokenizerFast:
        """The word-level PreTrainedTokenizerFast (BOS=1 added first)."""
        return load_tokenizer(self.root / "tokenizer")

    @cached_property
    def corpus(self) -> datasets.DatasetDict:
        """datasets.DatasetDict with "train"/"eval": text, lang, doc_id, bilingual, input_ids, concept_ids."""
        corpus = datasets.load_from_disk(str(self.root / "corpus"))
        assert isinstance(corpus, datasets.DatasetDict), "the world's corpus is saved as a DatasetDict"
        return corpus

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
        return [self.root / iter_dirname(c["iteration"]) for c in self.catalogue["checkpoints"]]

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
def _lock(path: Path) -> Iterator[None]:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        f = open(path, "a+")
    except OSError as e:  # read-only, a file, a name too long: the first write into the cache
        raise OutputError(f"the toy-world cache {path.parent.parent} cannot be written ({e.strerror or e}: "
                          f"{e.filename}); set SAE_BILINGUAL_CACHE to a folder you can write (unset: "
                          "~/.cache/sae_bilingual)") from e
    with f:
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
