"""The study's intervention stage (paper Tables 1 and 4): load the final and mid checkpoints,
draw the masks, run :func:`~sae_bilingual.intervention.experiment.run_intervention_table` and write
``tables/intervention*.{csv,md}``. Split out of ``pipeline.py`` (one work unit)."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pandas as pd

from sae_bilingual.config_intervention import InterventionSpec
from sae_bilingual.study.layout import FEATURES_FILE, tables_dir
from sae_bilingual.errors import DataError
from sae_bilingual.intervention.metrics import PromptTemplate
from sae_bilingual.intervention.tables import aggregate_table, compare_with_paper, table1, table4, to_markdown
from sae_bilingual.intervention.experiment import run_intervention_table
from sae_bilingual.io import atomic_write_text
from sae_bilingual.layers import parse_layers
from sae_bilingual.intervention.masks import scale_m
from sae_bilingual.models.generic import is_paper_model
from sae_bilingual.study.context import StudyContext
from sae_bilingual.study.faults import crash_point
from sae_bilingual.study.pipeline import _first_docs_per_lang, _torch_dtype
from sae_bilingual.sae.files import load_sae
from sae_bilingual.study.plan import Plan
from sae_bilingual.study.schemas import read_features
from sae_bilingual.study.unit import Unit

log = logging.getLogger(__name__)


def run_intervention(ctx: StudyContext, plan: Plan, out: Path) -> pd.DataFrame:
    """Table 1 / Table 4: inject final-model features into the mid checkpoint."""
    iv = ctx.recipe.intervention
    path, settings_path = tables_dir(out) / "intervention.csv", tables_dir(out) / "intervention_settings.json"
    settings = json.dumps({"intervention": dataclasses.asdict(iv), "seed": ctx.recipe.seed}, sort_keys=True, default=str)
    if path.exists() and settings_path.exists() and settings_path.read_text() == settings:
        return pd.read_csv(path)
    if path.exists():
        log.info("%s was written with other settings (or its settings file is missing): recomputing it", path)
    # The settings file goes first and comes back last: tables stand for these settings only
    # when it exists and matches (a run killed between the two writes is redone).
    settings_path.unlink(missing_ok=True)
    fam = ctx.family(iv.model)
    cat = fam.catalogue()
    final = cat.final
    if iv.mid_checkpoint is not None:
        mid = cat.select(iteration=iv.mid_checkpoint)
    else:
        analysed = sorted(u.iteration for u in plan.units if u.model_index == iv.model)
        mid = cat.select(iteration=analysed[len(analysed) // 2])
    layer = parse_layers(iv.layer, fam.n_layers)[0]
    name = next(u.family for u in plan.units if u.model_index == iv.model)  # the model's output name
    ldir = Unit(iv.model, name, final.iteration, final.tokens, [layer]).layer_dir(out, layer)
    sae = load_sae(ldir / "sae", device=ctx.recipe.device)
    features = read_features(ldir / FEATURES_FILE)
    dtype = _torch_dtype(ctx.recipe.dtype)
    final_model = fam.load(final, device=ctx.recipe.device, dtype=dtype)
    mid_model = fam.load(mid, device=ctx.recipe.device, dtype=dtype)
    crash_point("intervention_models")
    windows = ctx.windows("eval", iv.model)
    windows = _first_docs_per_lang(windows, iv.eval_docs_per_lang)
    pairs = _translation_pairs(ctx)
    if pairs is not None:
        pairs = pairs.iloc[: iv.translation_pairs + iv.few_shot].reset_index(drop=True)
    ms = _feasible_ms(features, iv, sae.cfg.d_sae)
    draws = run_intervention_table(
        final_model, mid_model, sae, features, layer, dataclasses.replace(iv, ms=ms, scale_m=False),  # ms scaled
        seed=ctx.recipe.seed, windows=windows, pairs=pairs, languages=tuple(ctx.recipe.data.languages),
        tokenizer=ctx.tokenizer(iv.model), template=_translation_template(ctx),
        logits_budget_bytes=int(ctx.recipe.data.logits_budget_mb * 2**20),
    )
    draws["mid_iteration"], draws["final_iteration"], draws["layer"] = mid.iteration, final.iteration, layer
    agg = aggregate_table(draws)
    variant = decoder_variant(iv.add_bias, iv.scale)
    draws["decoder"] = agg["decoder"] = variant
    md = [f"Injected: alpha * D(mask * E(X_full)) with {variant}.", "",
          "## Table 1", to_markdown(table1(agg)), "", "## Table 4 (PPL all, relative to none)", to_markdown(table4(agg))]
    if is_paper_model(fam):  # the paper's numbers are for LLM-jp-3 3.7B only
        md += ["", "## Beside the paper", compare_with_paper(agg)]
    atomic_write_text(tables_dir(out) / "intervention_draws.csv", draws.to_csv(index=False))
    atomic_write_text(tables_dir(out) / "intervention.md", "\n".join(md) + "\n")
    atomic_write_text(path, agg.to_csv(index=False))
    crash_point("intervention_table")
    atomic_write_text(settings_path, settings)
    return agg


def decoder_variant(add_bias: bool, scale: str) -> str:
    """How the injected vector was decoded, in words for tables and the report."""
    d = "D(z) = W_dec z + b_pre (the paper's decoder)" if add_bias else "D(z) = W_dec z without b_pre (not the paper's)"
    s = "rescaled by ||X_full|| (residual scale)" if scale == "residual" else "left in unit-norm space"
    return f"{d}, {s}"


def _feasible_ms(features: pd.DataFrame, iv: InterventionSpec, d_sae: int) -> list[int]:
    """Mask sizes per recipe m: scaled to this SAE's n, capped at half the smallest class.

    Every class must be drawn with the same m for the comparison to be fair; a small SAE
    may have fewer live Mixed features than the scaled m. At m = the class size every draw
    is the same mask, so the cap is half the smallest class: the draws differ and their
    spread means something (and we say so).
    """
    classes = [c for c in iv.conditions if c != "none"]
    counts = {str(c): int(n) for c, n in features.loc[~features["dead"], "cls"].value_counts().items()}
    smallest = min(counts.get(c, 0) for c in classes) if classes else 0
    if smallest < 1:
        raise DataError(f"intervention: a class in {classes} has no live features ({counts}); "
                        "train a larger SAE or drop that condition")
    cap = max(1, smallest // 2)
    out = []
    for m in iv.ms:
        want = scale_m(m, d_sae) if iv.scale_m else m
        if want > cap:
            log.warning("intervention m=%d (scaled %d) exceeds half the smallest class (%d live features; %s): "
                        "using m=%d for every class so that draws differ", m, want, smallest, counts, cap)
            want = cap
        out.append(want)
    return out


def _translation_pairs(ctx: StudyContext) -> pd.DataFrame | None:
    """Parallel test pairs: files named in the recipe, else the toy world's own, else none."""
    iv = ctx.recipe.intervention
    if iv.pairs_paths:
        cols = {}
        for lang, path in iv.pairs_paths.items():
            lines = Path(path).read_text(encoding="utf-8").splitlines()
            cols[lang] = [l.replace(" ", "") if lang in iv.unspace_languages else l.strip() for l in lines]
        lengths = {lang: len(v) for lang, v in cols.items()}
        if len(set(lengths.values())) != 1:
            raise DataError(f"intervention.pairs_paths are not line-aligned: {lengths} lines")
        return pd.DataFrame(cols)
    if ctx.recipe.data.corpus == "toy":
        return ctx.world.translation_pairs
    return None


def _translation_template(ctx: StudyContext) -> PromptTemplate:
    """The toy world has no 'English:' tokens: its bilingual documents are bare sentence
    pairs, so the prompt is the same form ("src tgt src tgt src") and generation stops at
    the target sentence's end mark."""
    if ctx.recipe.data.corpus == "toy" and not ctx.recipe.intervention.pairs_paths:
        return PromptTemplate(shot="{src} {tgt} ", query="{src}", stops=("。", "."))
    return PromptTemplate()
