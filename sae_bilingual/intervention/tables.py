"""The intervention tables: paper Table 1 (mean ± std over draws) and Table 4 (alpha × m grid).

Rows come from :func:`sae_bilingual.intervention.experiment.run_intervention_table`, one per
(condition, alpha, m, draw); ``aggregate_table`` / ``table1`` / ``table4`` / ``to_markdown``
turn them into the paper's tables. ``PAPER_TABLE1`` holds the published Table 1 (LLM-jp-3
3.7B, layer 14, iteration 10,000, alpha 0.1, m 5,000) for :func:`compare_with_paper`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import pandas as pd

from sae_bilingual.errors import DataError

__all__ = ["PAPER_TABLE1", "aggregate_table", "compare_with_paper", "metric_columns", "table1", "table4",
           "to_markdown"]

#: Table 1 of the paper (condition "mixed" = the paper's "Bi"); COMET on the 0..100 scale.
PAPER_TABLE1 = pd.DataFrame(
    {
        "condition": ["none", "en", "ja", "mixed"],
        "ppl_en": [18.70, 18.53, 18.65, 18.36],
        "ppl_ja": [25.78, 25.64, 25.33, 25.20],
        "ppl_all": [22.43, 22.28, 22.17, 21.96],
        "comet_en_ja": [61.1, 61.4, 61.3, 62.5],
        "comet_ja_en": [56.4, 56.9, 57.2, 57.2],
    }
).set_index("condition")

METRIC_PREFIXES = ("ppl_", "chrf_", "comet_")


def metric_columns(df: pd.DataFrame) -> list[str]:
    """Metric columns of an intervention table, in table order."""
    return [c for c in df.columns if c.startswith(METRIC_PREFIXES)]


def aggregate_table(df: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over draws per (condition, alpha, m): columns ``<metric>_mean``/``_std``."""
    metrics = metric_columns(df)
    order = list(dict.fromkeys(df["condition"]))
    g = df.groupby(["condition", "alpha", "m"], sort=False)[metrics]
    mean = cast(pd.DataFrame, g.mean()).add_suffix("_mean")  # pandas types the groupby mean as any scalar
    std = g.std(ddof=1).fillna(0.0).add_suffix("_std")
    out = pd.concat([mean, std], axis=1)
    out["n_draws"] = g.size()
    cols = [c for m_ in metrics for c in (f"{m_}_mean", f"{m_}_std")] + ["n_draws"]
    out = out[cols].reset_index()
    out["condition"] = pd.Categorical(out["condition"], categories=order, ordered=True)
    return out.sort_values(["alpha", "m", "condition"]).reset_index(drop=True)


def table1(df_or_agg: pd.DataFrame, alpha: float | None = None, m: int | None = None) -> pd.DataFrame:
    """Table 1: one (alpha, m) cell (default the paper's 0.1 / 5000, else the first), by condition."""
    agg = df_or_agg if any(c.endswith("_mean") for c in df_or_agg.columns) else aggregate_table(df_or_agg)
    cells = list(dict.fromkeys(zip(agg["alpha"], agg["m"])))
    if alpha is None and m is None:
        alpha, m = (0.1, 5000) if (0.1, 5000) in cells else cells[0]
    sel = agg[(agg["alpha"] == alpha) & (agg["m"] == m)]
    if sel.empty:
        raise DataError(f"no rows for alpha={alpha}, m={m}; cells present: {cells}")
    return sel.set_index("condition")


def table4(df_or_agg: pd.DataFrame, metric: str = "ppl_all", relative_to_none: bool = True) -> pd.DataFrame:
    """Table 4 grid: rows (alpha, m), columns condition, values mean ``metric`` (minus "none")."""
    agg = df_or_agg if any(c.endswith("_mean") for c in df_or_agg.columns) else aggregate_table(df_or_agg)
    col = f"{metric}_mean"
    if col not in agg.columns:
        raise DataError(f"metric {metric!r} is not in the table; choose one of {[c[:-5] for c in agg.columns if c.endswith('_mean')]}")
    grid = agg.pivot_table(index=["alpha", "m"], columns="condition", values=col, observed=True)
    if relative_to_none and "none" in grid.columns:
        grid = grid.sub(grid["none"], axis=0).drop(columns="none")
    return grid


def _fmt(v: object, digits: int) -> str:
    """A table cell (a float, NaN or None) with ``digits`` decimals; "–" when missing."""
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def to_markdown(table: pd.DataFrame, metrics: Sequence[str] | None = None, digits: int = 2) -> str:
    """Markdown of Table 1 (``mean ± std`` per metric) or of a plain grid (Table 4)."""
    if any(c.endswith("_mean") for c in table.columns):
        t = table if table.index.name == "condition" else table.set_index("condition")
        metrics = list(metrics or [c[:-5] for c in t.columns if c.endswith("_mean")])
        lines = ["| condition | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
        for cond, r in t.iterrows():
            cells = [f"{_fmt(r[f'{k}_mean'], digits)} ± {_fmt(r[f'{k}_std'], digits)}" for k in metrics]
            lines.append(f"| {cond} | " + " | ".join(cells) + " |")
        return "\n".join(lines)
    idx_names = [str(n) for n in (table.index.names or ["index"])]
    cols = [str(c) for c in table.columns]
    lines = ["| " + " | ".join(idx_names + cols) + " |", "|---" * (len(idx_names) + len(cols)) + "|"]
    for key, r in table.iterrows():
        key = key if isinstance(key, tuple) else (key,)
        lines.append("| " + " | ".join([str(k) for k in key] + [_fmt(float(v), digits) for v in r]) + " |")
    return "\n".join(lines)


def compare_with_paper(df_or_agg: pd.DataFrame, digits: int = 2) -> str:
    """Markdown: our Table 1 cell beside the paper's published Table 1 (LLM-jp recipe)."""
    ours = table1(df_or_agg)
    metrics = [c for c in PAPER_TABLE1.columns if f"{c}_mean" in ours.columns]
    lines = ["| condition | " + " | ".join(f"{k} (ours) | {k} (paper)" for k in metrics) + " |",
             "|---" * (2 * len(metrics) + 1) + "|"]
    for cond in ours.index:
        cells = []
        for k in metrics:
            cells.append(f"{_fmt(ours.loc[cond, f'{k}_mean'], digits)} ± {_fmt(ours.loc[cond, f'{k}_std'], digits)}")
            cells.append(_fmt(PAPER_TABLE1.loc[cond, k], digits) if cond in PAPER_TABLE1.index else "–")
        lines.append(f"| {cond} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
