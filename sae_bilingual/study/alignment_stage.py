"""The unit's translation-alignment stage: encode the translation pairs, add align_* columns.

Why apart from pipeline.py (at its size limit): one streamed LM pass over the pairs'
sentences (each sentence its own BOS-first window, doc_id = pair index) feeds every SAE of
the layer group through :func:`sae_bilingual.analysis.stream.stream_eval`, the evaluation's
own machinery; each layer's table then gets the columns of
:mod:`sae_bilingual.analysis.alignment`.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import pandas as pd
from transformers import PreTrainedTokenizerBase

from sae_bilingual.analysis import stream
from sae_bilingual.analysis.alignment import add_alignment
from sae_bilingual.analysis.codes import Codes
from sae_bilingual.config_alignment import AlignmentSpec
from sae_bilingual.data.corpus import Windows, make_windows
from sae_bilingual.errors import DataError
from sae_bilingual.study.context import StudyContext
from sae_bilingual.study.unit import Unit
from sae_bilingual.world.generator import generate_translation_pairs
from sae_bilingual.world.lexicon import build_lexicon

log = logging.getLogger(__name__)


@dataclass
class PairCodes:
    """The pairs' codes of every hook of one layer group (None: the unit has no pairs)."""

    n_pairs: int = 0
    codes: dict[str, Codes] = field(default_factory=dict)
    languages: tuple[str, ...] = ()
    """The two sides' languages (columns of the pairs)."""


def read_pairs(paths: Mapping[str, str], unspace: list[str]) -> pd.DataFrame:
    """Line-aligned parallel files -> one column per language (spaces removed in ``unspace``)."""
    cols = {}
    for lang, path in paths.items():
        lines = Path(path).read_text(encoding="utf-8").splitlines()
        cols[lang] = [l.replace(" ", "") if lang in unspace else l.strip() for l in lines]
    lengths = {lang: len(v) for lang, v in cols.items()}
    if len(set(lengths.values())) != 1:
        raise DataError(f"analysis.alignment.pairs_paths are not line-aligned: {lengths} lines")
    return pd.DataFrame(cols)


def translation_pairs(ctx: StudyContext) -> pd.DataFrame | None:
    """The alignment's pairs: its own files, else intervention.pairs_paths, else the toy world's
    (the first ones are the world's ``translation_pairs``; more are drawn by the same generator)."""
    spec: AlignmentSpec = ctx.recipe.analysis.alignment
    iv = ctx.recipe.intervention
    if spec.pairs_paths:
        pairs = read_pairs(spec.pairs_paths, spec.unspace_languages)
    elif iv.pairs_paths:
        pairs = read_pairs(iv.pairs_paths, iv.unspace_languages)
    elif ctx.recipe.data.corpus == "toy":  # the world's held-out pairs, drawn on to max_pairs (same generator)
        wc = ctx.world.config
        pairs = pd.DataFrame(generate_translation_pairs(build_lexicon(wc.n_concepts, wc.languages),
                                                        wc.generator_config(), spec.max_pairs))
    else:
        return None
    langs = [lg for lg in ctx.recipe.data.languages if lg in pairs.columns][:2]
    if len(langs) < 2:
        log.warning("alignment: the pairs have columns %s, not two of %s: skipped", list(pairs.columns),
                    list(ctx.recipe.data.languages))
        return None
    return pairs[langs].iloc[: spec.max_pairs].reset_index(drop=True)


def pair_windows(pairs: pd.DataFrame, tokenizer: PreTrainedTokenizerBase, languages: tuple[str, ...], context: int) -> Windows:
    """One window per sentence (both sides of every pair), doc_id = the pair's row."""
    langs = list(pairs.columns)
    n = len(pairs)
    ds = datasets.Dataset.from_dict({
        "text": [str(t) for lg in langs for t in pairs[lg]],
        "lang": [lg for lg in langs for _ in range(n)],
        "doc_id": [i for _ in langs for i in range(n)],
    })
    return make_windows(ds, tokenizer, context=context, languages=languages)


def encode_pairs(ctx: StudyContext, unit: Unit, model: Any, saes: Mapping[str, Any], out: Path) -> PairCodes:
    """The pairs' top-K codes at every hook of ``saes`` from one LM pass (empty when disabled)."""
    spec: AlignmentSpec = ctx.recipe.analysis.alignment
    pairs = translation_pairs(ctx) if spec.enabled else None
    if pairs is None or len(pairs) < 2:
        return PairCodes()
    languages = tuple(ctx.recipe.data.languages)
    win = pair_windows(pairs, ctx.tokenizer(unit.model_index), languages, ctx.recipe.data.context)
    spool = out / "cache" / "pair_codes" / unit.id
    ev = stream.stream_eval(model, saes, win, spool_dir=spool, lm_batch_size=ctx.recipe.data.lm_batch_size,
                            device=ctx.recipe.device)
    codes = {h: ev.codes(h, languages) for h in saes}
    shutil.rmtree(spool, ignore_errors=True)
    return PairCodes(len(pairs), codes, tuple(pairs.columns))


def add_to_table(ctx: StudyContext, df: pd.DataFrame, pairs: PairCodes | None, hook: str) -> dict[str, Any]:
    """align_* columns into the layer's feature table; the summary-row numbers back."""
    codes = pairs.codes.get(hook) if pairs is not None else None
    return add_alignment(df, codes, pairs.n_pairs if pairs is not None else 0, ctx.recipe.analysis.alignment,
                         pairs.languages if pairs is not None else ())
