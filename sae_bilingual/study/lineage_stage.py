"""The study's lineage stage: feature lineage of every (model, layer) with >= 2 analysed checkpoints.

Reads each unit's ``codes.safetensors`` and ``features.parquet``, runs
:func:`sae_bilingual.analysis.lineage.lineage_over_checkpoints` and writes the lineage
tables (``tables/lineage_<model>_L<layer>*.csv``, ``..._summary.json``) and figure
(``figures/lineage_<model>_L<layer>.{png,svg}``) that the report shows.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import pandas as pd

from sae_bilingual.study.schemas import read_features
from sae_bilingual.study.layout import FEATURES_FILE, tables_dir
from sae_bilingual.analysis.codes import Codes
from sae_bilingual.analysis.lineage import Checkpoint, lineage_over_checkpoints
from sae_bilingual.analysis.matching import MatchConfig
from sae_bilingual.errors import DataError
from sae_bilingual.io import atomic_write_json, atomic_write_text
from sae_bilingual.report.figures_lineage import fig_lineage_flows
from sae_bilingual.report.plotting import slug
from sae_bilingual.study.unit import layer_dirs

log = logging.getLogger(__name__)

__all__ = ["run_all_lineage", "run_lineage"]

_UNIT_FILES = ("codes.safetensors", FEATURES_FILE)


def _load_checkpoint(unit: Path, iteration: int, tokens: int | None) -> Checkpoint:
    """One analysed unit as a lineage checkpoint (codes are loaded later, when matched)."""
    feats = read_features(unit / FEATURES_FILE)
    if tokens is None:
        s = unit / "summary.json"
        tokens = int(json.loads(s.read_text()).get("tokens", -1)) if s.exists() else -1
    return Checkpoint(iteration, int(tokens), unit, None, feats)


def _load_codes(ck: Checkpoint) -> Codes:
    assert ck.unit is not None  # _load_checkpoint names every checkpoint's unit folder
    return Codes.load(ck.unit / "codes.safetensors")


def run_lineage(study_dir: Path, model: str, layer: int, cfg: MatchConfig | None = None) -> dict[str, Any]:
    """Lineage of one layer of one model over all its analysed checkpoints in a study.

    Reads ``units/<model>/iter_*/L<layer:02d>/{codes.safetensors,features.parquet}``, writes
    ``tables/lineage_<model>_L<layer:02d>.csv`` (ancestry: one row per final feature x
    earlier checkpoint, with the final feature's origin), ``..._origins.csv`` (every
    transition), ``..._flows.csv``, ``..._summary.json`` and
    ``figures/lineage_<model>_L<layer:02d>.{png,svg}``; returns the summary dict.
    """
    cfg = cfg or MatchConfig()
    study_dir = Path(study_dir)
    units = [(d.iteration, d.path) for d in layer_dirs(study_dir, family=model, layer=int(layer), having=_UNIT_FILES)]
    if len(units) < 2:
        raise DataError(
            f"lineage of {model} layer {layer} needs >= 2 analysed checkpoints with codes.safetensors "
            f"and features.parquet under {study_dir}/units/{model}/iter_*/L{int(layer):02d}; found {len(units)}."
        )
    cks = [_load_checkpoint(d, it, None) for it, d in units]
    t0 = time.perf_counter()
    res = lineage_over_checkpoints(cks, cfg, load=_load_codes)
    stem = f"lineage_{slug(model)}_L{int(layer):02d}"
    tables = tables_dir(study_dir)
    final_org = res["origins"][res["origins"]["iteration"] == cks[-1].iteration].set_index("feature")
    anc = res["ancestry"].merge(final_org[["origin", "ancestor_langs", "n_ancestors"]],
                                left_on="feature", right_index=True, how="left")
    anc.insert(0, "model", model)
    anc.insert(1, "layer", int(layer))
    atomic_write_text(tables / f"{stem}.csv", anc.to_csv(index=False))
    atomic_write_text(tables / f"{stem}_origins.csv", res["origins"].to_csv(index=False))
    atomic_write_text(tables / f"{stem}_flows.csv", res["flows"].to_csv(index=False))
    summary = {"model": model, "layer": int(layer), **res["summary"],
               "seconds": round(time.perf_counter() - t0, 2)}
    atomic_write_json(tables / f"{stem}_summary.json", summary)
    counts = pd.DataFrame({c.iteration: c.features["cls"].astype(str).value_counts() for c in cks}).T.fillna(0)
    counts["tokens"] = [c.tokens for c in cks]
    fig_lineage_flows(res["flows"], counts, f"{model}, layer {layer}: feature classes and matched features "
                      f"(Jaccard >= {cfg.threshold:g}) across checkpoints", study_dir / "figures", stem)
    log.info("lineage %s L%02d: final mixed from merge %d, widen %d, none %d, persist %d", model, layer,
             summary["mixed_from_merge"], summary["mixed_from_widen"], summary["mixed_from_none"],
             summary["mixed_persist"])
    return summary


def run_all_lineage(study_dir: Path, cfg: MatchConfig | None = None) -> list[dict[str, Any]]:
    """`run_lineage` for every (model, layer) of a study with >= 2 analysed checkpoints."""
    study_dir = Path(study_dir)
    seen: dict[tuple[str, int], int] = {}
    for d in layer_dirs(study_dir, having=_UNIT_FILES):
        seen[(d.family, d.layer)] = seen.get((d.family, d.layer), 0) + 1
    return [run_lineage(study_dir, m, l, cfg) for (m, l), n in sorted(seen.items()) if n >= 2]
