"""The study's summary table: every finished layer's ``summary.json`` stacked into
``tables/summary.{parquet,csv}``, one row per SAE (the report, figures and lineage read it);
:func:`check_layer_files`: the layers' files still match their recorded checksums."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from sae_bilingual.study.layout import SUMMARY_TABLE, tables_dir
from sae_bilingual.errors import DataError
from sae_bilingual.io import atomic_write_text, save_parquet
from sae_bilingual.study.artefacts import ARTEFACTS_KEY, SUMMARY_FILE, mismatches, read_json
from sae_bilingual.study.unit import layer_dirs


def collect_summary(out: Path) -> pd.DataFrame:
    """Stack every layer's summary.json (checksums left out) into tables/summary.{parquet,csv}."""
    rows = [read_json(d.path / SUMMARY_FILE) for d in layer_dirs(out, having=(SUMMARY_FILE,))]
    df = pd.DataFrame([{k: v for k, v in r.items() if k != ARTEFACTS_KEY} for r in rows if isinstance(r, dict)])
    if len(df):
        df = df.sort_values(["model", "iteration", "layer"]).reset_index(drop=True)
    save_parquet(df, tables_dir(out) / SUMMARY_TABLE)
    atomic_write_text(tables_dir(out) / "summary.csv", df.to_csv(index=False))
    return df


def check_layer_files(out: Path) -> None:
    """Refuse a study whose finished layer has a file that no longer matches the size and
    checksum in its summary.json (the rule the study resumes by, artefacts.mismatches).

    Why: `report` read a truncated features.parquet into a pyarrow traceback; a study rerun
    redoes exactly such a layer."""
    for d in layer_dirs(out, having=(SUMMARY_FILE,)):
        row = read_json(d.path / SUMMARY_FILE)
        bad = mismatches(d.path, row.get(ARTEFACTS_KEY)) if isinstance(row, dict) else []
        if bad:
            raise DataError(f"{d.path}: {', '.join(bad)} changed on disk since layer {d.layer} of {d.unit_id} "
                            "finished (truncated or edited): the layer is damaged; rerun the study to repair it "
                            "(it redoes only damaged layers), then the report")
