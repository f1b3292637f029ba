"""The intervention figure (paper Table 1 as bars) and the intervention table's long form.

Why its own module: the intervention tables come in three shapes (wide ``<metric>_mean/_std``,
long, per-draw rows); :func:`intervention_long` reads all of them, and the bars are drawn
from that one normalised form.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from sae_bilingual.errors import DataError
from sae_bilingual.report.plotting import plt, require_columns, save_figure

__all__ = ["fig_intervention", "intervention_long", "plot_intervention"]

_INTERVENTION_METRICS = ("ppl_en", "ppl_ja", "ppl_all", "comet_en_ja", "comet_ja_en", "chrf_en_ja", "chrf_ja_en")


def intervention_long(table_df: pd.DataFrame) -> pd.DataFrame:
    """Normalise an intervention table to long form: columns condition, metric, mean, std.

    Accepted inputs:
    - wide: ``condition`` + ``<metric>_mean`` and optional ``<metric>_std`` (metric e.g.
      ppl_en, ppl_ja, ppl_all, comet_en_ja, ...);
    - long: ``condition, metric, mean[, std]``;
    - per draw: ``condition`` + ``<metric>`` value columns (one row per random draw);
      mean and sample std (ddof=1, as ``intervention.tables.aggregate_table``) over draws are computed here.
    Extra ``alpha``/``m`` columns with several values are folded into the condition label.
    """
    df = table_df.copy()
    require_columns(df, ["condition"], "fig_intervention")
    extra = [k for k in ("alpha", "m") if k in df.columns and df[k].nunique() > 1]
    if extra:
        df["condition"] = df["condition"].astype(str) + df[extra].apply(
            lambda r: " " + " ".join(f"{k}={v:g}" for k, v in r.items()), axis=1)
    if {"metric", "mean"} <= set(df.columns):
        out = df[["condition", "metric", "mean"] + (["std"] if "std" in df.columns else [])].copy()
    elif any(c.endswith("_mean") for c in df.columns):
        rows = []
        for c in [c for c in df.columns if c.endswith("_mean")]:
            m = c[: -len("_mean")]
            part = pd.DataFrame({"condition": df["condition"], "metric": m, "mean": df[c]})
            part["std"] = df[f"{m}_std"].to_numpy() if f"{m}_std" in df.columns else np.nan
            rows.append(part)
        out = pd.concat(rows, ignore_index=True)
    else:
        vals = [c for c in df.columns if c.startswith(("ppl_", "comet_", "chrf_"))]
        if not vals:
            raise DataError("fig_intervention: no metric columns (ppl_*/comet_*, *_mean, or metric/mean) "
                            f"in {list(df.columns)}.")
        order = list(dict.fromkeys(df["condition"]))
        g = df.groupby("condition", sort=False)[vals]
        out = g.mean().reset_index().melt("condition", var_name="metric", value_name="mean")
        sd = g.std(ddof=1).fillna(0.0).reset_index().melt("condition", var_name="metric", value_name="std")
        out = out.merge(sd, on=["condition", "metric"])
        out["_o"] = out["condition"].map({c: i for i, c in enumerate(order)})
        out = out.sort_values(["metric", "_o"]).drop(columns="_o")
    if "std" not in out.columns:
        out["std"] = np.nan
    return out.reset_index(drop=True)


def plot_intervention(table_df: pd.DataFrame) -> Figure:
    """Paper Table 1 as bars: one panel per metric (PPL en/ja/all, COMET when present),
    one bar per condition, error bars = std over random draws. See :func:`intervention_long`
    for the accepted table formats (wide ``<metric>_mean/_std``, long, or per-draw rows)."""
    title = "Intervention: mid model + final-model features (mean ± std over draws)"
    cells = [k for k in ("alpha", "m") if k in table_df.columns]
    if cells and len(table_df[cells].drop_duplicates()) > 1:
        # Table 4 grid present: draw the paper's cell (alpha=0.1, m=5000) when there, else the first.
        combos = table_df[cells].drop_duplicates()
        paper = combos.loc[(combos.get("alpha", 0.1) == 0.1) & (combos.get("m", 5000) == 5000)]
        pick = (paper if len(paper) else combos).iloc[0]
        table_df = table_df.loc[(table_df[cells] == pick).all(axis=1)]
        title += " — " + ", ".join(f"{k}={pick[k]:g}" for k in cells)
    long = intervention_long(table_df)
    metrics = [m for m in _INTERVENTION_METRICS if m in set(long["metric"])]
    metrics += [m for m in dict.fromkeys(long["metric"]) if m not in metrics]
    conds = list(dict.fromkeys(long["condition"]))
    fig, axes = plt.subplots(1, len(metrics), figsize=(2.0 + 2.3 * len(metrics) + 0.15 * len(conds), 3.8),
                             constrained_layout=True, squeeze=False)
    cmap = plt.get_cmap("tab10")
    for ax, m in zip(axes[0], metrics):
        d = long[long["metric"] == m].set_index("condition").reindex(conds)
        mean, std = d["mean"].to_numpy(float), np.nan_to_num(d["std"].to_numpy(float))
        xs = np.arange(len(conds))
        ax.bar(xs, mean, yerr=std, capsize=3, color=[cmap(i % 10) for i in range(len(conds))], alpha=0.85)
        ok = np.isfinite(mean)
        if ok.any():
            lo, hi = np.min((mean - std)[ok]), np.max((mean + std)[ok])
            pad = max((hi - lo) * 0.25, abs(hi) * 0.002, 1e-6)
            ax.set_ylim(lo - pad, hi + pad)
        for x_, v, e in zip(xs, mean, std):
            if np.isfinite(v):
                ax.text(x_, v + e, f"{v:.2f}", ha="center", va="bottom", fontsize=7)
        ax.set_xticks(xs)
        ax.set_xticklabels(conds, rotation=30, ha="right", fontsize=8)
        ax.set_title(m.replace("ppl_", "PPL ").replace("comet_", "COMET ").replace("_", "→" if m.startswith("comet") else " "), fontsize=10)
        ax.grid(alpha=0.25, axis="y")
    fig.suptitle(title, fontsize=10)
    return fig


def fig_intervention(table_df: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """:func:`plot_intervention` written as ``intervention.png/.svg``."""
    return save_figure(plot_intervention(table_df), out_dir, "intervention")
