"""Figures of the study (paper Figs 3, 5/8/12-14, 6/9, 11 and the size comparison).

Every figure has two functions: ``plot_<name>(tables...) -> Figure`` draws it from pandas
DataFrames (mostly the study's summary table, one row per (model, iteration, tokens,
layer); columns in the module contract) with matplotlib's Agg backend, and
``fig_<name>(tables..., out_dir)`` writes ``<name>.png`` and ``<name>.svg`` atomically
(:func:`sae_bilingual.report.plotting.save_figure`) and returns the written paths.
``make_all_figures(study_dir)`` draws whatever the study's tables support. Table 1's bars
are in :mod:`~sae_bilingual.report.figures_intervention`, the lineage flows in
:mod:`~sae_bilingual.report.figures_lineage`, the LR grid and size comparison in
:mod:`~sae_bilingual.report.figures_sweeps`.

Languages are never hard-coded: every ``frac_<lang>`` column other than ``frac_mixed``
is a language share.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import pandas as pd
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from sae_bilingual.study.layout import SUMMARY_TABLE, WORLD_META, tables_dir
from sae_bilingual.errors import DataError
from sae_bilingual.report.figures_intervention import fig_intervention
from sae_bilingual.report.figures_sweeps import fig_lr_grid, fig_sizes
from sae_bilingual.report.plotting import (
    checkpoint_table,
    class_colour,
    format_tokens,
    language_columns,
    plt,
    require_columns,
    save_figure,
    select_model,
    setup_token_axis,
    slug,
    token_positions,
)
from sae_bilingual.study.manifest import read_json

if TYPE_CHECKING:
    from matplotlib.axes import Axes

log = logging.getLogger(__name__)

__all__ = [
    "FIGURE_CAPTIONS", "make_all_figures",
    "fig_language_distribution", "fig_layer_checkpoint_heatmaps", "fig_span_by_layer",
    "fig_world_loss", "plot_language_distribution", "plot_layer_checkpoint_heatmaps",
    "plot_span_by_layer", "plot_world_loss",
]

#: Caption per figure-name prefix (used by the HTML report).
FIGURE_CAPTIONS = {
    "lang_dist": "Share of live features per class (stacked) against training tokens, with mean "
    "monosemanticity R (right axis); lower panel: FVU and dead-feature share of the same SAEs "
    "(paper Fig. 3). Step 0 (0 tokens) sits at the left edge, marked 'init'.",
    "heatmaps": "Layer x checkpoint heatmaps of the Mixed (bilingual) share and of mean "
    "monosemanticity R (paper Figs. 5, 8, 12-14).",
    "span": "Mean span length by layer, one line per checkpoint, coloured by training progress "
    "(paper Figs. 6, 9).",
    "lr_grid": "Validation reconstruction MSE against learning rate; the best LR is starred "
    "(paper Fig. 11).",
    "intervention": "Perplexity (and COMET when present) of the mid-training model with "
    "final-model features added, per condition; error bars are the std over random draws "
    "(paper Table 1). Y axes do not start at zero.",
    "sizes": "Mixed share at the final checkpoint against relative depth (layer / deepest "
    "layer), one line per model size.",
    "world_loss": "Pre-training of the toy world's LM: training loss per optimizer step and "
    "held-out loss at each saved checkpoint (the checkpoints the study analyses), against "
    "tokens seen; the title gives the build's wall time.",
    "lineage": "Feature classes per checkpoint (stacked bars, dead features in grey) and the "
    "features matched one-to-one between consecutive checkpoints (bands, coloured by the "
    "earlier class; Jaccard of co-firing on the same evaluation tokens above the threshold).",
}


# --------------------------------------------------------------------------- figures
def plot_language_distribution(summary: pd.DataFrame, model: str, layer: int) -> Figure:
    """Paper Fig. 3 for one (model, layer): class shares over training, with R, FVU, dead share.

    Rows with equal ``tokens`` (e.g. several SAE seeds) are averaged.
    """
    sub = select_model(summary, model)
    sub = sub.loc[sub["layer"] == layer]
    if sub.empty:
        raise DataError(f"layer {layer} of {model!r} is not in the summary table; layers present: "
                        f"{sorted(select_model(summary, model)['layer'].unique().tolist())}.")
    langs = language_columns(sub)
    classes = langs + ["mixed"]
    require_columns(sub, [f"frac_{c}" for c in classes], "fig_language_distribution")
    num = [c for c in sub.columns if c in {f"frac_{k}" for k in classes}
           | {"mean_R", "fvu", "n_dead", "n_features"}]
    g = cast(pd.DataFrame, sub.groupby("tokens")[num].mean()).sort_index()  # pandas types the mean as any scalar
    x, init_x = token_positions(g.index.to_numpy())

    fig, (ax, axq) = plt.subplots(2, 1, figsize=(9.0, 5.6), sharex=True,
                                  gridspec_kw={"height_ratios": [3, 1.1], "hspace": 0.08})
    shares = np.vstack([g[f"frac_{c}"].to_numpy() for c in classes])
    labels = {"mixed": "Mixed (bilingual)"}
    ax.stackplot(x, shares, labels=[labels.get(c, c) for c in classes],
                 colors=[class_colour(c, i) for i, c in enumerate(classes)], alpha=0.85)
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of live features")
    ax.set_title(f"{model}, layer {layer}: feature classes over training")
    handles, lbls = ax.get_legend_handles_labels()
    if "mean_R" in g:
        axr = ax.twinx()
        (hr,) = axr.plot(x, g["mean_R"], "k-o", ms=4, lw=1.6, label="mean R (right)")
        axr.set_ylim(0, 1.02)
        axr.set_ylabel("mean monosemanticity R")
        handles.append(hr)
        lbls.append(hr.get_label())
    ax.legend(handles, lbls, loc="upper left", bbox_to_anchor=(1.1, 1.0), fontsize=8, framealpha=0.9)

    qh = []
    if "fvu" in g:
        qh += axq.plot(x, g["fvu"], "-s", color="#6A3D9A", ms=3, label="FVU")
    if "n_dead" in g and "n_features" in g:
        dead = g["n_dead"] / g["n_features"].replace(0, np.nan)
        qh += axq.plot(x, dead, "--^", color="#E08214", ms=3, label="dead share")
    axq.set_ylabel("FVU / dead", fontsize=9)
    axq.set_ylim(bottom=0)
    if qh:
        axq.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.1, 1.0))
    axq.set_xlabel("training tokens (log scale)")
    setup_token_axis(axq, x, init_x)
    if init_x is not None:
        ax.axvline(init_x * np.sqrt(10), color="k", lw=0.6, ls=":", alpha=0.6)
    for a in (ax, axq):
        a.grid(alpha=0.25, which="major")
    return fig


def fig_language_distribution(summary: pd.DataFrame, model: str, layer: int, out_dir: str | Path) -> list[Path]:
    """:func:`plot_language_distribution` written as ``lang_dist_<model>_L<layer>.png/.svg``."""
    fig = plot_language_distribution(summary, model, layer)
    return save_figure(fig, out_dir, f"lang_dist_{slug(model)}_L{int(layer):02d}")


def _heat(ax: Axes, tab: pd.DataFrame, title: str, cmap: str, vmin: float, vmax: float,
          dark_high: bool) -> None:
    data = tab.to_numpy(dtype=float)
    im = ax.imshow(data, origin="lower", aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax)
    ax.set_xticks(range(tab.shape[1]))
    ax.set_xticklabels([format_tokens(t) for t in tab.columns], rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(tab.shape[0]))
    ax.set_yticklabels([str(v) for v in tab.index], fontsize=8)
    ax.set_xlabel("checkpoint (training tokens)")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=10)
    if data.size <= 300:
        mid = (vmin + vmax) / 2
        for (i, j), v in np.ndenumerate(data):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6.5,
                        color="white" if (v > mid) == dark_high else "black")
    plt.colorbar(im, ax=ax, fraction=0.046, pad=0.03)


def plot_layer_checkpoint_heatmaps(summary: pd.DataFrame, model: str) -> Figure:
    """Paper Figs. 5/8/12-14: layer x checkpoint heatmaps of the Mixed share and of mean R."""
    sub = select_model(summary, model)
    require_columns(sub, ["frac_mixed", "mean_R"], "fig_layer_checkpoint_heatmaps")
    mixed = checkpoint_table(sub, "frac_mixed")
    r = checkpoint_table(sub, "mean_R")
    w = max(9.0, 3.0 + 0.9 * mixed.shape[1])
    h = max(3.2, 1.4 + 0.28 * mixed.shape[0])
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(w, h), constrained_layout=True)
    _heat(a1, mixed, "Mixed (bilingual) share", "magma_r", 0.0, max(0.01, float(np.nanmax(mixed.to_numpy()))), True)
    _heat(a2, r, "mean monosemanticity R", "viridis", float(np.nanmin(r.to_numpy())), 1.0, False)
    fig.suptitle(str(model))
    return fig


def fig_layer_checkpoint_heatmaps(summary: pd.DataFrame, model: str, out_dir: str | Path) -> list[Path]:
    """:func:`plot_layer_checkpoint_heatmaps` written as ``heatmaps_<model>.png/.svg``."""
    return save_figure(plot_layer_checkpoint_heatmaps(summary, model), out_dir, f"heatmaps_{slug(model)}")


def plot_span_by_layer(summary: pd.DataFrame, model: str) -> Figure:
    """Paper Figs. 6/9: mean span length by layer, one line per checkpoint."""
    sub = select_model(summary, model)
    require_columns(sub, ["mean_span"], "fig_span_by_layer")
    tab = checkpoint_table(sub, "mean_span")
    n = tab.shape[1]
    cmap = plt.get_cmap("viridis")
    norm = Normalize(0, max(n - 1, 1))
    fig, ax = plt.subplots(figsize=(7, 4.2), constrained_layout=True)
    for j, t in enumerate(tab.columns):
        ax.plot(tab.index, tab[t], "-o", ms=3, color=cmap(norm(j)), label=format_tokens(t))
    ax.set_xlabel("layer")
    ax.set_ylabel("mean span length (tokens)")
    ax.set_title(f"{model}: span length by layer")
    ax.set_xticks(tab.index.to_list() if len(tab.index) <= 30 else ax.get_xticks())
    ax.grid(alpha=0.25)
    sm = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
    cb = fig.colorbar(sm, ax=ax, pad=0.02)
    idx = np.unique(np.linspace(0, n - 1, min(n, 8)).round().astype(int))
    cb.set_ticks(idx.tolist())
    cb.set_ticklabels([format_tokens(tab.columns[i]) for i in idx])
    cb.set_label("checkpoint (training tokens)")
    return fig


def fig_span_by_layer(summary: pd.DataFrame, model: str, out_dir: str | Path) -> list[Path]:
    """:func:`plot_span_by_layer` written as ``span_<model>.png/.svg``."""
    return save_figure(plot_span_by_layer(summary, model), out_dir, f"span_{slug(model)}")


def plot_world_loss(steps: pd.DataFrame, checkpoints: pd.DataFrame, build_seconds: float | None = None) -> Figure:
    """The toy world's pre-training curve: why the checkpoints differ, at a glance.

    ``steps``: columns ``step``, ``loss`` (per optimizer step); ``checkpoints``: ``iteration``,
    ``tokens``, ``loss`` (held-out loss of each saved checkpoint). Tokens on a symlog x axis so
    step 0 shows.
    """
    require_columns(steps, ["step", "loss"], "fig_world_loss (steps)")
    require_columns(checkpoints, ["iteration", "tokens", "loss"], "fig_world_loss (checkpoints)")
    ck = checkpoints.sort_values("iteration")
    per_it = ck["tokens"].iloc[-1] / max(int(ck["iteration"].iloc[-1]), 1)
    fig, ax = plt.subplots(figsize=(6.5, 4.0), constrained_layout=True)
    ax.plot(steps["step"] * per_it, steps["loss"], lw=1, color="#4C72B0", alpha=0.7, label="training loss (per step)")
    ax.plot(ck["tokens"], ck["loss"], "o-", color="#DD5555", label="held-out loss (checkpoints)")
    for _, r in ck.iterrows():
        ax.annotate(f"{int(r.at['iteration'])}", (r["tokens"], r["loss"]), textcoords="offset points",
                    xytext=(0, 6), fontsize=7, ha="center")
    ax.set_xscale("symlog", linthresh=max(per_it, 1.0))
    ax.set_xlabel("tokens seen (symlog; labels: checkpoint iteration)")
    ax.set_ylabel("cross-entropy (nats / token)")
    title = "Toy world pre-training"
    if build_seconds is not None:
        title += f" (world built in {build_seconds / 60:.1f} min)"
    ax.set_title(title)
    ax.grid(alpha=0.25, which="both")
    ax.legend(fontsize=8)
    return fig


def fig_world_loss(steps: pd.DataFrame, checkpoints: pd.DataFrame, out_dir: str | Path,
                   build_seconds: float | None = None) -> list[Path]:
    """:func:`plot_world_loss` written as ``world_loss.png/.svg``."""
    return save_figure(plot_world_loss(steps, checkpoints, build_seconds), out_dir, "world_loss")


# --------------------------------------------------------------------------- driver
def _middle_layer(layers: list[int]) -> int:
    layers = sorted(layers)
    return layers[len(layers) // 2]


def make_all_figures(study_dir: str | Path, *, layers: str | list[int] = "middle") -> dict[str, list[Path]]:
    """Draw every figure the study's tables support into ``<study_dir>/figures``.

    ``layers`` picks the layers that get a Fig.-3 plot: "middle" (the middle analysed
    layer of each model, as in the paper), "all", or a list of paper layer numbers.
    Returns {figure name: [png, svg]}; figures whose data is absent are skipped (logged).
    """
    study_dir = Path(study_dir)
    out = study_dir / "figures"
    tables = tables_dir(study_dir)
    made: dict[str, list[Path]] = {}

    def keep(paths: list[Path]) -> None:
        made[paths[0].stem] = paths

    summ_path = tables / SUMMARY_TABLE
    if summ_path.exists():
        summary = pd.read_parquet(summ_path)
        if summary.empty:
            log.warning("%s is empty: no summary figures", summ_path)
        else:
            for model in sorted(summary["model"].astype(str).unique()):
                sub: pd.DataFrame = summary.loc[summary["model"].astype(str) == model]
                present = sorted(int(v) for v in sub["layer"].unique())
                if layers == "middle":
                    chosen = [_middle_layer(present)]
                elif layers == "all":
                    chosen = present
                else:
                    chosen = [int(v) for v in layers if int(v) in present]
                for layer in chosen:
                    keep(fig_language_distribution(summary, model, layer, out))
                if len(present) > 1 or sub["tokens"].nunique() > 1:
                    keep(fig_layer_checkpoint_heatmaps(summary, model, out))
                if "mean_span" in sub and len(present) > 1:
                    keep(fig_span_by_layer(summary, model, out))
            if summary["model"].nunique() > 1:
                keep(fig_sizes(summary, out))
    else:
        log.warning("%s absent: skipping summary figures", summ_path)
    steps_p, ck_p = tables / "world_loss.csv", tables / "world_checkpoints.csv"
    if steps_p.exists() and ck_p.exists():
        meta = read_json(tables / WORLD_META)
        keep(fig_world_loss(pd.read_csv(steps_p), pd.read_csv(ck_p), out,
                            meta.get("build_seconds") if isinstance(meta, dict) else None))
    for name, fn in (("lr_grid.csv", fig_lr_grid), ("intervention.csv", fig_intervention)):
        p = tables / name
        if p.exists():
            df = pd.read_csv(p)
            if df.empty:
                log.warning("%s is empty: skipped", p)
                continue
            keep(fn(df, out))
    return made
