"""The study folder's layout: the one place that names its folders and shared files.

Why: the names were string literals in a dozen modules (``"tables"`` 24 times,
``"features.parquet"`` 8 times); a reader and a writer that spell a name differently fail
only at run time. Every module that reads or writes these goes through this one.

    <study>/units/<model>/iter_<N>/L<layer>/{features.parquet, summary.json, sae/, ...}
    <study>/recipe.yaml
    <study>/tables/{summary, lr_grid}.{parquet,csv}, world*.*, intervention*.*, lineage_*.*
"""

from __future__ import annotations

from pathlib import Path

UNITS_DIR = "units"
"""Per-unit folders: ``units/<model>/iter_<N>/L<layer>/``."""
TABLES_DIR = "tables"
"""The study's tables (summary, LR grid, world facts, intervention, lineage, timings)."""
FEATURES_FILE = "features.parquet"
"""A layer's per-feature table (one row per SAE feature)."""
SUMMARY_TABLE = "summary.parquet"
"""Under ``tables/``: one row per SAE, stacked from the layers' summary.json."""
RECIPE_FILE = "recipe.yaml"
"""At the study's root: the resolved recipe it ran with (``sae-bilingual study`` reruns it)."""
WORLD_META = "world.json"
"""Under ``tables/``: the toy world's build facts (absent for real models)."""


def tables_dir(study: str | Path) -> Path:
    """``<study>/tables``."""
    return Path(study) / TABLES_DIR
