"""The columns a layer's ``features.parquet`` and its summary row must have, as pyarrow schemas.

Why: a dozen readers (report, browser, lineage, matching, the intervention, Neuronpedia) each
assumed columns such as ``cls`` and ``dead`` and failed at their first use of a missing one,
with a KeyError or a pyarrow traceback. They now read through :func:`read_features`, which
checks the core columns and their types once and names what is missing and the fix. Columns
beyond the core (``p_<lang>`` per language, ground truth, alignment) are allowed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from sae_bilingual.errors import DataError
from sae_bilingual.io import save_parquet

FEATURE_COLUMNS = pa.schema([
    ("max_act", pa.float64()), ("n_fired", pa.int64()), ("n_active", pa.int64()), ("dead", pa.bool_()),
    ("cls", pa.string()), ("mix", pa.string()), ("H_tok", pa.float64()), ("H_sem", pa.float64()),
    ("R", pa.float64()), ("span_mean", pa.float64()), ("span_max", pa.float64()),
    ("top_token_ids", pa.list_(pa.int64())),
])
"""Every features.parquet has these (analysis/features.py writes them), plus ``p_<lang>`` per language."""

SUMMARY_COLUMNS = pa.schema([
    ("model", pa.string()), ("iteration", pa.int64()), ("tokens", pa.int64()), ("layer", pa.int64()),
    ("hook", pa.string()), ("d_sae", pa.int64()), ("k", pa.int64()), ("n_features", pa.int64()),
    ("n_dead", pa.int64()), ("n_live", pa.int64()), ("frac_mixed", pa.float64()),
])
"""Every summary row has these, plus ``frac_<lang>`` per language."""

_FIX = "rerun the study (it redoes this layer's analysis)"


def feature_schema(languages: Sequence[str]) -> pa.Schema:
    """The core feature columns and one ``p_<lang>`` share per language."""
    return pa.schema(list(FEATURE_COLUMNS) + [pa.field(f"p_{lg}", pa.float64()) for lg in languages])


def _compatible(have: pa.DataType, want: pa.DataType) -> bool:
    """Same type, or a value pyarrow reads as it (strings as large strings, ints as floats, nulls)."""
    if have.equals(want) or pa.types.is_null(have):
        return True
    if pa.types.is_floating(want):
        return pa.types.is_floating(have) or pa.types.is_integer(have)
    if pa.types.is_integer(want):
        return pa.types.is_integer(have)
    if pa.types.is_string(want):
        return pa.types.is_string(have) or pa.types.is_large_string(have)
    if pa.types.is_list(want):
        return (pa.types.is_list(have) or pa.types.is_large_list(have)) and _compatible(have.value_type, want.value_type)
    return False


def check_schema(have: pa.Schema, want: pa.Schema, where: str) -> None:
    """Raise DataError naming the first column of ``want`` that ``have`` lacks or types differently."""
    for f in want:
        i = have.get_field_index(f.name)
        if i < 0:
            raise DataError(f"{where} has no column {f.name!r}; {_FIX}")
        if not _compatible(have.field(i).type, f.type):
            raise DataError(f"{where}: column {f.name!r} is {have.field(i).type}, expected {f.type}; {_FIX}")


def _languages(schema: pa.Schema) -> list[str]:
    return [n[2:] for n in schema.names if n.startswith("p_")]


def write_features(df: pd.DataFrame, path: Path) -> Path:
    """Check a per-feature table against :func:`feature_schema` and write it atomically."""
    table_schema = pa.Schema.from_pandas(df, preserve_index=False)
    check_schema(table_schema, feature_schema(_languages(table_schema)), f"the feature table for {path}")
    return save_parquet(df, path)


def read_features(path: Path, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """A layer's features.parquet, its core columns checked (missing file, truncation, old layout)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} not found: it is written when a layer's analysis finishes; {_FIX}")
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowInvalid) as e:
        raise DataError(f"{path} is not a readable Parquet file ({e}); {_FIX}") from e
    langs = _languages(schema)
    if not langs:
        raise DataError(f"{path} has no p_<lang> columns; {_FIX}")
    check_schema(schema, feature_schema(langs), str(path))
    return pd.read_parquet(path, columns=list(columns) if columns is not None else None)


def check_summary_row(row: Mapping[str, Any], languages: Sequence[str]) -> None:
    """Raise DataError when a summary row lacks a core key (or ``frac_<lang>``) or has a wrong type."""
    schema = pa.schema(list(SUMMARY_COLUMNS) + [pa.field(f"frac_{lg}", pa.float64()) for lg in languages])
    missing = [f.name for f in schema if f.name not in row]
    if missing:
        raise DataError(f"the summary row of layer {row.get('layer')} lacks {missing}; {_FIX}")
    have = pa.Schema.from_pandas(pd.DataFrame([{f.name: row[f.name] for f in schema}]), preserve_index=False)
    check_schema(have, schema, f"the summary row of layer {row.get('layer')}")
