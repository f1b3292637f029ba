"""Checks a planned study must pass before any LM forward or SAE step.

Why a separate pass: the recipe schema (config.py) cannot know a model's width, its
vocabulary or whether the COMET environment exists, and the planner only resolves names.
Everything here is cheap next to the study (reading configs, tokenizing the corpus, which
the study does anyway and caches), so a bad input fails in seconds, before the output
directory is touched, with one error naming the problem and the fix.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from sae_bilingual.config import Recipe
from sae_bilingual.config_checks import check_k, default_model_ids
from sae_bilingual.data.store import check_token_ids
from sae_bilingual.errors import CheckpointError, ConfigError, DataError
from sae_bilingual.intervention.comet_bridge import comet_model_path, comet_python
from sae_bilingual.models.tokenizer import sentencepiece_source, verify_sentencepiece
from sae_bilingual.report.release import check_export_folder, study_release_folder
from sae_bilingual.study.context import StudyContext, recipe_world_config
from sae_bilingual.study.unit import check_path_part

log = logging.getLogger(__name__)


def check_k_below_n(recipe: Recipe, d_model: int, family: str) -> None:
    """TopK needs K < n latents (n = d_sae or expansion x d_model)."""
    s = recipe.sae
    how = f"sae.d_sae = {s.d_sae}" if s.d_sae else f"sae.expansion x d_model = {s.expansion} x {d_model}"
    check_k(s.k, s.n_latents(d_model), k_name="sae.k", n_from=f"{how} for {family}",
            fix="raise sae.expansion / sae.d_sae")


def check_comet(recipe: Recipe) -> None:
    """COMET requested (intervention.comet_python / comet_model) -> both must exist now."""
    iv = recipe.intervention
    if iv.enabled and (iv.comet_python or iv.comet_model):
        comet_python(iv.comet_python)
        comet_model_path(iv.comet_model)


def check_model_names(recipe: Recipe, family_names: list[str]) -> list[str]:
    """Each model's output id (``name`` or its family's name), unique and path-safe."""
    ids = [str(mid) for mid in default_model_ids(recipe, family_names)]  # (all known once loaded)
    for mid in ids:
        check_path_part(mid, "model")
    return ids


def check_device(device: str) -> None:
    """The recipe's device exists on this machine (cuda needs a visible GPU)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"device {device!r} is not a torch device ({e}); use cpu, cuda, cuda:N or mps") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r}: no GPU is visible to torch (torch.cuda.is_available() is "
                              "False); use device: cpu, or run where a GPU and a CUDA build of torch are")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise ConfigError(f"device {device!r}: this machine has {n} GPU(s) (cuda:0..cuda:{n - 1})")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {device!r}: MPS is not available here; use device: cpu")


def check_context(recipe: Recipe, fam: Any, model: str) -> None:
    """data.context fits the model's position embeddings (else a tensor-size error mid-run)."""
    n_ctx = getattr(fam.hf_config, "max_position_embeddings", None)
    if n_ctx is not None and recipe.data.context > int(n_ctx):
        raise ConfigError(
            f"data.context = {recipe.data.context} is longer than the context window of {model} "
            f"(n_ctx = max_position_embeddings = {n_ctx}); lower data.context to at most {n_ctx}"
        )


MIN_TOKENIZER_SHARE = 0.9
"""A tokenizer under this share of the model's vocab_size needs ``models[].tokenizer_vocab_reason``
(models pad their embedding by < 2 %: LLM-jp-3 99,574 tokens / 99,584, Pythia 50,277 / 50,304)."""
VERIFY_TEXTS = 256
"""Corpus texts on which a tokenizer converted from a SentencePiece .model is checked."""


def check_tokenizer_size(tokenizer: PreTrainedTokenizerBase, vocab_size: int | None, reason: str | None, where: str) -> None:
    """Refuse a tokenizer much smaller than the model's vocabulary unless the recipe says why.

    Why: such a tokenizer maps most text to a few ids that all exist in the model, so nothing
    downstream fails (transformers 5's ``LlamaTokenizer(vocab_file=...)`` silently builds one
    of 3 tokens from a .model it cannot read).
    """
    n = len(tokenizer)
    if vocab_size is None or reason or n >= MIN_TOKENIZER_SHARE * int(vocab_size):
        return
    raise ConfigError(
        f"{where}: the tokenizer ({getattr(tokenizer, 'name_or_path', '') or type(tokenizer).__name__}) has "
        f"{n:,} tokens but the model's vocabulary has {int(vocab_size):,} (under {MIN_TOKENIZER_SHARE:.0%}): "
        "most likely it is not the model's tokenizer, or it was built empty. Use the model's own tokenizer, "
        f"or say why in the recipe: {where}.tokenizer_vocab_reason: '...'")


def check_tokenizer_source(tokenizer: PreTrainedTokenizerBase, documents: Any, where: str, n: int = VERIFY_TEXTS) -> None:
    """A tokenizer converted from a SentencePiece .model encodes a sample of the corpus (evenly
    spaced training documents) exactly like SentencePiece does."""
    if sentencepiece_source(tokenizer) is None or "text" not in getattr(documents, "column_names", ()):
        return
    m = len(documents)
    rows = sorted({int(r) for r in np.linspace(0, m - 1, num=min(n, m))}) if m else []
    texts = documents.select(rows)["text"] if rows else []
    c = verify_sentencepiece(tokenizer, texts, where=f"{where}.tokenizer")
    log.info("%s.tokenizer: %d corpus texts tokenise exactly as SentencePiece does", where, c.n_texts)


def check_safetensors(path: Path) -> None:
    """A safetensors file is complete: its header parses and the data ends where it says.

    Only the header is read, so checking every checkpoint of a study costs milliseconds.
    """
    fix = "download or copy the checkpoint again"
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if size < 8 or n > size - 8:
                raise ValueError(f"header of {n} bytes in a {size}-byte file")
            header = json.loads(f.read(n).decode("utf-8"))
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
        raise CheckpointError(f"{path} is truncated or corrupt ({e}); {fix}") from e
    if size != 8 + n + end:
        raise CheckpointError(f"{path} is truncated or corrupt: {size} bytes on disk, the header says "
                              f"{8 + n + end}; {fix}")


def check_checkpoint_files(ctx: StudyContext, model_index: int, iteration: int) -> None:
    """Every safetensors file of one local checkpoint is complete."""
    ck = ctx.family(model_index).catalogue().select(iteration=iteration)
    if ck.path is not None:
        for f in sorted(Path(ck.path).glob("*.safetensors")):
            check_safetensors(f)


def check_pairs_files(recipe: Recipe) -> None:
    """intervention.pairs_paths: readable UTF-8 files, line-aligned, enough pairs (else the
    intervention would fail only after every unit had trained)."""
    iv = recipe.intervention
    if not (iv.enabled and iv.pairs_paths):
        return
    counts = {}
    for lang, path in iv.pairs_paths.items():
        p, field = Path(path), f"intervention.pairs_paths.{lang}"
        if lang not in recipe.data.languages:
            raise ConfigError(f"{field}: {lang!r} is not one of data.languages {recipe.data.languages}")
        if not p.is_file():
            what = "is a directory" if p.is_dir() else "does not exist"
            raise DataError(f"{field}: {p} {what}; give a text file with one sentence a line")
        try:
            counts[lang] = len(p.read_text(encoding="utf-8").splitlines())
        except UnicodeDecodeError as e:
            raise DataError(f"{field}: {p} is not valid UTF-8 ({e.reason} at byte {e.start}); "
                            "re-encode it as UTF-8") from None
    if len(set(counts.values())) != 1:
        raise DataError(f"intervention.pairs_paths are not line-aligned: {counts} lines; give parallel "
                        "files with one sentence pair per line number")
    if min(counts.values()) <= iv.few_shot:
        raise DataError(f"intervention.pairs_paths hold {min(counts.values())} pairs, but few_shot = "
                        f"{iv.few_shot} examples plus at least one test pair are needed")


def check_toy_budget(recipe: Recipe) -> None:
    """The token budgets fit the toy world's corpus, checked from its config before the world
    is built (minutes for the default world). An upper bound: documents take turns by language
    and hold at most ``context - 1`` tokens after BOS; the windows check the exact count."""
    if recipe.data.corpus != "toy":
        return
    cfg = recipe_world_config(recipe)
    per_doc = min(cfg.context, recipe.data.context) - 1
    for split, docs in (("train", cfg.n_train_docs), ("eval", cfg.n_eval_docs)):
        field = f"data.{split}_tokens_per_lang"
        budget = getattr(recipe.data, f"{split}_tokens_per_lang")
        for i, lang in enumerate(cfg.languages):
            n_docs = len(range(i, docs, len(cfg.languages)))
            if budget > n_docs * per_doc:
                raise DataError(
                    f"{field} = {budget:,} is larger than the corpus of the toy world: its {n_docs:,} {split} "
                    f"documents in {lang!r} hold at most {n_docs * per_doc:,} tokens after BOS ({per_doc} each). "
                    f"Lower tokens_per_lang ({field} <= {n_docs * per_doc}) or raise world.overrides.n_{split}_docs")


def preflight(recipe: Recipe, plan: Any, ctx: StudyContext) -> None:
    """Run every pre-study check on a resolved plan; raises a SaeBilingualError subclass.

    ``plan``: the :class:`~sae_bilingual.study.plan.Plan`; ``ctx``: its StudyContext (world,
    families, windows are built and cached there, so the study reuses them).
    """
    check_device(recipe.device)
    for unit in plan.units:
        check_path_part(unit.family)
    for i, spec in enumerate(recipe.models):
        fam = ctx.family(i)
        check_k_below_n(recipe, fam.d_model, spec.family)
        check_context(recipe, fam, spec.family)
    checkpoints = {(u.model_index, u.iteration) for u in plan.units}
    if recipe.intervention.enabled and recipe.intervention.mid_checkpoint is not None:
        checkpoints.add((recipe.intervention.model, recipe.intervention.mid_checkpoint))
    for i, it in sorted(checkpoints):
        check_checkpoint_files(ctx, i, it)
    check_comet(recipe)
    check_pairs_files(recipe)
    if recipe.export.enabled:  # (else found only after every other stage)
        check_export_folder(Path(recipe.output_dir), study_release_folder(recipe.output_dir, recipe.export.path),
                            "export.path")
    indices = sorted({u.model_index for u in plan.units}) or [0]
    for i in indices:
        where = f"models[{i}]"
        tok = ctx.tokenizer(i)
        check_tokenizer_size(tok, getattr(ctx.family(i).hf_config, "vocab_size", None),
                             recipe.models[i].tokenizer_vocab_reason, where)
        check_tokenizer_source(tok, ctx.documents()["train"], where)
    for split in ("train", "eval"):
        for i in indices:
            w = ctx.windows(split, i)  # raises DataError: empty, one language, budget > corpus
            vocab = getattr(ctx.family(i).hf_config, "vocab_size", None)
            check_token_ids(w, vocab)
