"""The lineage figure: feature classes per checkpoint and the matched features flowing between them.

Data: the flows and class counts of :func:`sae_bilingual.analysis.lineage.lineage_over_checkpoints`
(written by :mod:`sae_bilingual.study.lineage_stage`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from sae_bilingual.report.plotting import class_colour, format_tokens, plt, save_figure

__all__ = ["fig_lineage_flows", "plot_lineage_flows"]


def plot_lineage_flows(flows: pd.DataFrame, class_counts: pd.DataFrame, title: str) -> Figure:
    """Alluvial plot: a stacked bar of feature classes per checkpoint and bands for the
    one-to-one matched features flowing between classes of consecutive checkpoints.

    ``class_counts``: rows = iterations (sorted), columns = classes, values = counts;
    optional column ``tokens`` used for the x labels. ``flows``: iteration_a, iteration_b,
    cls_a, cls_b, count (one row per class pair of consecutive checkpoints).
    """
    cc = class_counts.copy()
    tokens = cc.pop("tokens") if "tokens" in cc.columns else None
    classes = [c for c in cc.columns if c not in ("mixed", "dead")] + [c for c in ("mixed", "dead") if c in cc.columns]
    cc = cc[classes].fillna(0)
    iters = list(cc.index)
    total = float(cc.sum(axis=1).max()) or 1.0
    gap = 0.015 * total
    colour = {c: ("#DDDDDD" if c == "dead" else class_colour(c, i)) for i, c in enumerate(classes)}
    fig, ax = plt.subplots(figsize=(max(7.0, 1.3 * len(iters) + 2), 5.0))
    w = 0.18
    bottoms: dict[tuple[int, str], float] = {}
    for x, it in enumerate(iters):
        y = 0.0
        for c in classes:
            h = float(cc.loc[it, c])
            bottoms[(x, c)] = y
            if h > 0:
                ax.add_patch(Rectangle((x - w / 2, y), w, h, color=colour[c], ec="white", lw=0.5, zorder=3))
                if h > 0.06 * total:
                    ax.text(x, y + h / 2, f"{int(h)}", ha="center", va="center", fontsize=7, zorder=4,
                            color="black" if c == "dead" else "white")
            y += h + gap
    s = np.linspace(0, 1, 40)
    smooth = 3 * s**2 - 2 * s**3
    for x in range(len(iters) - 1):
        f: pd.DataFrame = flows.loc[(flows["iteration_a"] == iters[x]) & (flows["iteration_b"] == iters[x + 1])]
        out_off = {c: bottoms[(x, c)] for c in classes}
        in_off = {c: bottoms[(x + 1, c)] for c in classes}
        order_src = {c: i for i, c in enumerate(classes)}
        f = f.loc[f["cls_a"].isin(classes) & f["cls_b"].isin(classes)]
        f = f.assign(oa=f["cls_a"].map(order_src), ob=f["cls_b"].map(order_src))
        # outgoing bands ordered by target class; incoming ordered by source class
        starts = {}
        for _, r in f.sort_values(["oa", "ob"]).iterrows():  # <= n_classes² bands, drawing only
            starts[(r["cls_a"], r["cls_b"])] = out_off[r["cls_a"]]
            out_off[r["cls_a"]] += r.at["count"]
        for _, r in f.sort_values(["ob", "oa"]).iterrows():
            y0 = starts[(r["cls_a"], r["cls_b"])]
            y1 = in_off[r["cls_b"]]
            in_off[r["cls_b"]] += r.at["count"]
            xs = x + w / 2 + s * (1 - w)
            lo = y0 + (y1 - y0) * smooth
            ax.fill_between(xs, lo, lo + r["count"], color=colour[r["cls_a"]], alpha=0.35, lw=0, zorder=2)
    ax.set_xlim(-0.5, len(iters) - 0.5)
    ax.set_ylim(0, total + gap * len(classes))
    ax.set_xticks(range(len(iters)))
    labels = [f"iter {it}" + (f"\n{format_tokens(tokens.loc[it])}" if tokens is not None and tokens.loc[it] >= 0 else "")
              for it in iters]
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_ylabel("features (stacked by class)")
    ax.set_title(title, fontsize=10)
    handles = [Rectangle((0, 0), 1, 1, color=colour[c]) for c in classes]
    ax.legend(handles, [("Mixed" if c == "mixed" else c) for c in classes], loc="upper left",
              bbox_to_anchor=(1.01, 1.0), fontsize=8)
    for sp_ in ("top", "right"):
        ax.spines[sp_].set_visible(False)
    return fig


def fig_lineage_flows(flows: pd.DataFrame, class_counts: pd.DataFrame, title: str, out_dir: str | Path,
                      name: str) -> list[Path]:
    """:func:`plot_lineage_flows` written as ``<name>.png/.svg`` under ``out_dir``."""
    return save_figure(plot_lineage_flows(flows, class_counts, title), out_dir, name)
