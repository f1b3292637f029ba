"""The crosscoder's emergence figure: how many latents are alive by each checkpoint, by class.

Data: the per-latent table of :mod:`sae_bilingual.study.crosscoder_stage` (``emergence_tokens``,
``cls``, ``bilingual_concept`` on the toy world; definitions in
:mod:`sae_bilingual.analysis.crosscoder`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from sae_bilingual.report.plotting import class_colour, plt, save_figure, setup_token_axis, token_positions

__all__ = ["emergence_counts", "fig_crosscoder_emergence", "plot_crosscoder_emergence"]


def emergence_counts(table: pd.DataFrame, tokens: Sequence[int]) -> pd.DataFrame:
    """Cumulative latents emerged by each checkpoint (rows: tokens), one column per class, plus
    ``mixed, concept-bilingual`` where the table has ground truth. Never-alive latents are left out."""
    tk = np.asarray(tokens, dtype=np.int64)
    live: pd.DataFrame = table.loc[table["emergence_index"] >= 0]
    C = len(tk)
    cols: dict[str, np.ndarray] = {}
    classes = sorted(live["cls"].astype(str).unique(), key=lambda s: (s == "mixed", s))
    for cl in classes:  # a loop over classes, not latents
        e = live.loc[live["cls"].astype(str) == cl, "emergence_index"].to_numpy(dtype=np.int64)
        cols[cl] = np.cumsum(np.bincount(e, minlength=C))
    if "bilingual_concept" in live.columns:
        sel = (live["cls"].astype(str) == "mixed") & live["bilingual_concept"].astype(bool)
        cols["mixed, concept-bilingual"] = np.cumsum(np.bincount(live.loc[sel, "emergence_index"].to_numpy(
            dtype=np.int64), minlength=C))
    return pd.DataFrame(cols, index=pd.Index(tk, name="tokens"))


def plot_crosscoder_emergence(counts: pd.DataFrame, title: str) -> Figure:
    """Lines: latents alive by each checkpoint's training tokens (log axis, "init" at step 0)."""
    x, init_x = token_positions(counts.index.to_numpy())
    fig, ax = plt.subplots(figsize=(7.0, 4.2))
    for i, col in enumerate(counts.columns):
        style: dict[str, Any] = {"ls": "--", "color": "k"} if col.startswith("mixed, ") else {"color": class_colour(col, i)}
        ax.plot(x, counts[col].to_numpy(), marker="o", ms=3, label=col, **style)
    setup_token_axis(ax, x, init_x)
    ax.set_xlabel("training tokens of the checkpoint")
    ax.set_ylabel("crosscoder latents alive by then (cumulative)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    return fig


def fig_crosscoder_emergence(table: pd.DataFrame, tokens: Sequence[int], title: str, out_dir: str | Path,
                             name: str) -> list[Path]:
    """Draw and write ``name``.{png,svg} under ``out_dir``; returns the paths."""
    return save_figure(plot_crosscoder_emergence(emergence_counts(table, tokens), title), out_dir, name)
