"""Control studies beside a toy study: the same recipe on the control worlds.

Why: whether the analysis can see bilingual features is only known where their existence is
known. ``controls: [codeswitch, disjoint]`` in a toy recipe runs the study's units again on
the code-switching world (bilingual concepts certainly exist: the positive control) and on
the disjoint-concepts world (they cannot: every Mixed feature found there is the analysis's
false-positive floor), under ``<output_dir>/controls/<name>/``, and the report puts their
numbers beside the study's.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from sae_bilingual.config import Recipe, WorldSpec
from sae_bilingual.errors import ConfigError
from sae_bilingual.study.layout import tables_dir
from sae_bilingual.world import PRESETS

log = logging.getLogger(__name__)

CONTROLS = ("codeswitch", "disjoint")
"""Control world presets a recipe may ask for (sae_bilingual.world.PRESETS)."""

CONTROL_COLUMNS = ("frac_mixed", "gt_mixed_precision", "gt_mixed_precision_pure", "gt_n_mixed", "gt_n_bilingual_concept",
                   "n_live", "fvu")


def control_dir(out: Path, name: str) -> Path:
    """Where the control study ``name`` of the study in ``out`` lives."""
    return Path(out) / "controls" / name


def control_recipe(recipe: Recipe, name: str, out: Path) -> Recipe:
    """``recipe`` on the control world ``name``: same models, data budgets and SAEs, the
    world's own overrides kept under the control preset's, no intervention, no nesting."""
    if name not in CONTROLS:
        raise ConfigError(f"controls: {name!r} is not a control world; choose from {list(CONTROLS)}")
    if recipe.data.corpus != "toy":
        raise ConfigError("controls need the toy world (data.corpus: toy): only there is the ground truth known")
    overrides = {**recipe.world.overrides, **PRESETS[name]}
    if recipe.world.preset == "tiny":
        overrides = {**PRESETS["tiny"], **overrides}
    return dataclasses.replace(
        recipe, name=f"{recipe.name}-{name}", output_dir=str(control_dir(out, name)),
        world=WorldSpec(preset="default", overrides=overrides),
        intervention=dataclasses.replace(recipe.intervention, enabled=False),
        controls=[], export=dataclasses.replace(recipe.export, enabled=False),
    )


def controls_table(out: Path) -> pd.DataFrame:
    """The study's and its controls' numbers side by side at the last analysed checkpoint.

    One row per (world, model, layer): Mixed share, ground-truth precision of Mixed features
    (share whose dominant concept fires in two languages), their counts, live latents, FVU.
    Empty when the study has no controls.
    """
    out = Path(out)
    parts = []
    names = ["study"] + [p.name for p in sorted((out / "controls").glob("*")) if p.is_dir()]
    if len(names) == 1:
        return pd.DataFrame()
    for name in names:
        root = out if name == "study" else out / "controls" / name
        path = tables_dir(root) / "summary.csv"
        df = pd.read_csv(path) if path.exists() else pd.DataFrame()
        if df.empty:
            continue
        last = df.loc[df["iteration"] == df.groupby("model")["iteration"].transform("max")]
        cols = [c for c in CONTROL_COLUMNS if c in last.columns]
        parts.append(last.loc[:, ["model", "iteration", "layer", *cols]].assign(world=name))
    if not parts:
        return pd.DataFrame()
    table = pd.concat(parts, ignore_index=True)
    return table.loc[:, ["world", *[c for c in table.columns if c != "world"]]]


def world_label(config: dict[str, Any]) -> str:
    """One line naming the toy world a run used (for the report and the feature browser)."""
    if config.get("disjoint"):
        kind = "disjoint concepts (negative control)"
    elif float(config.get("codeswitch_rate", 0) or 0) > 0:
        kind = f"code-switching, rate {config['codeswitch_rate']} (positive control)"
    else:
        kind = "default"
    return (f"toy world: {kind}; bilingual share {config.get('bilingual_share')}, "
            f"{config.get('n_layers')} layers x d_model {config.get('d_model')}, {config.get('steps')} steps, "
            f"seed {config.get('seed')}")
