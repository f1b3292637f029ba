"""Figures of the sweeps beside the study grid: the LR grid (paper Fig. 11) and the model-size
comparison.

Why its own module: both read tables other than one model's checkpoint grid (the LR sweep's
``lr_grid.csv``, the summary across model sizes), so they share none of the per-model
helpers in :mod:`~sae_bilingual.report.figures`.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import cast

import pandas as pd
from matplotlib.figure import Figure

from sae_bilingual.errors import DataError
from sae_bilingual.report.plotting import format_tokens, plt, require_columns, save_figure

__all__ = ["fig_lr_grid", "fig_sizes", "plot_lr_grid", "plot_sizes"]


def _pick(df: pd.DataFrame, names: tuple[str, ...], what: str) -> str:
    for n in names:
        if n in df.columns:
            return n
    raise DataError(f"{what}: the table needs one of the columns {list(names)}; it has {list(df.columns)}.")


def plot_lr_grid(lr_df: pd.DataFrame) -> Figure:
    """Paper Fig. 11: validation MSE against LR (log x), one line per model (and layer), best starred.

    Columns: ``lr`` (or ``learning_rate``), ``val_mse`` (or ``mse``/``val_loss``/``loss``),
    optional ``model``/``size``/``layer`` for grouping.
    """
    lr = _pick(lr_df, ("lr", "learning_rate"), "fig_lr_grid")
    y = _pick(lr_df, ("val_mse", "mse", "val_loss", "loss"), "fig_lr_grid")
    keys = [k for k in ("model", "layer") if k in lr_df.columns]
    fig, ax = plt.subplots(figsize=(6.5, 4.2), constrained_layout=True)
    groups = lr_df.groupby(keys) if keys else [((), lr_df)]
    for i, (key, g) in enumerate(groups):
        g = cast(pd.Series, g.groupby(lr)[y].mean()).sort_index()  # pandas types the mean as any scalar
        key = key if isinstance(key, tuple) else (key,)
        label = ", ".join(f"{k}={v}" if k == "layer" else str(v) for k, v in zip(keys, key)) or y
        c = plt.get_cmap("tab10")(i % 10)
        ax.plot(g.index, g.to_numpy(), "-o", color=c, label=label)
        best = cast(float, g.idxmin())  # the index holds the learning rates
        ax.plot([best], [g.at[best]], "*", ms=16, color=c, mec="k", zorder=5)
        ax.annotate(f"best {best:g}", (best, g.at[best]), textcoords="offset points", xytext=(6, 8), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel(f"validation {y}")
    ax.set_title("LR grid (star = lowest validation loss)")
    ax.grid(alpha=0.25, which="both")
    ax.legend(fontsize=8)
    return fig


def fig_lr_grid(lr_df: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """:func:`plot_lr_grid` written as ``lr_grid.png/.svg``."""
    return save_figure(plot_lr_grid(lr_df), out_dir, "lr_grid")


def _size_key(s: object) -> tuple[float, str]:
    m = re.search(r"([\d.]+)\s*([kmbt]?)", str(s).lower())
    if not m:
        return (math.inf, str(s))
    mult = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}[m.group(2)]
    try:
        return (float(m.group(1)) * mult, str(s))
    except ValueError:
        return (math.inf, str(s))


def plot_sizes(summary: pd.DataFrame) -> Figure:
    """Mixed share at each model's final checkpoint vs relative depth, one line per size.

    Relative depth = layer / n_layers (column ``n_layers`` when present, else the deepest
    layer in the table for that model).
    """
    require_columns(summary, ["model", "layer", "tokens", "frac_mixed"], "fig_sizes")
    label_col = "size" if "size" in summary.columns else "model"
    fig, ax = plt.subplots(figsize=(6.8, 4.2), constrained_layout=True)
    models = sorted(summary["model"].astype(str).unique(),
                    key=lambda m: _size_key(summary.loc[summary["model"].astype(str) == m, label_col].iloc[0]))
    cmap = plt.get_cmap("plasma")
    for i, m in enumerate(models):
        sub: pd.DataFrame = summary.loc[summary["model"].astype(str) == m]
        final: pd.DataFrame = sub.loc[sub["tokens"] == sub["tokens"].max()]
        g = cast(pd.Series, final.groupby("layer")["frac_mixed"].mean()).sort_index()  # typed as any scalar
        depth = float(final["n_layers"].iloc[0]) if "n_layers" in final.columns else float(max(cast(int, g.index.max()), 1))
        lab = f"{sub[label_col].iloc[0]} ({format_tokens(final['tokens'].iloc[0])} tokens)"
        ax.plot(g.index / depth, g.to_numpy(), "-o", ms=3, color=cmap(i / max(len(models), 2) * 0.9), label=lab)
    ax.set_xlabel("relative depth (layer / number of layers)")
    ax.set_ylabel("Mixed (bilingual) share")
    ax.set_title("Bilingual features by model size (final checkpoints)")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.25)
    ax.legend(fontsize=8)
    return fig


def fig_sizes(summary: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """:func:`plot_sizes` written as ``sizes.png/.svg``."""
    return save_figure(plot_sizes(summary), out_dir, "sizes")
