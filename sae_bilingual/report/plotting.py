"""Shared plotting helpers of the report's figures: colours, token labels, the token axis, saving.

Every figure module draws with matplotlib's Agg backend (set here, before pyplot is
imported) and writes ``<name>.png`` and ``<name>.svg`` atomically with :func:`save_figure`.
"""

from __future__ import annotations

import io
import logging
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # noqa: E402  (headless; must precede pyplot)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FixedLocator, NullLocator  # noqa: E402

from sae_bilingual.errors import DataError  # noqa: E402
from sae_bilingual.io import atomic_write_bytes  # noqa: E402

if TYPE_CHECKING:
    from matplotlib.axes import Axes

log = logging.getLogger(__name__)

__all__ = ["CLASS_COLOURS", "DPI", "checkpoint_table", "class_colour", "format_tokens", "language_columns", "plt",
           "require_columns", "save_figure", "select_model", "setup_token_axis", "slug", "token_positions"]

#: Colours per class; languages beyond these get tab10 colours.
CLASS_COLOURS = {"en": "#4C72B0", "ja": "#DD5555", "mixed": "#8C8C8C"}
DPI = 110

#: A matplotlib colour: a hex string or an RGBA tuple (what a colormap returns).
Colour = str | tuple[float, float, float, float]


def language_columns(df: pd.DataFrame) -> list[str]:
    """Language codes present as ``frac_<lang>`` columns (``frac_mixed`` excluded), in order."""
    return [c[5:] for c in df.columns if c.startswith("frac_") and c != "frac_mixed"]


def class_colour(cls: str, i: int) -> Colour:
    """Colour of a feature class: en/ja/mixed fixed, other languages tab10 by their index ``i``."""
    if cls in CLASS_COLOURS:
        return CLASS_COLOURS[cls]
    return plt.get_cmap("tab10")((i + 3) % 10)


def format_tokens(t: float) -> str:
    """Compact token count: 0, 4M, 400M, 4B, 2.1T (used for axis and colour-bar labels)."""
    t = float(t)
    if t <= 0:
        return "0"
    for div, suf in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if t >= div:
            v = t / div
            return f"{v:.0f}{suf}" if v >= 10 or v == int(v) else f"{v:.1f}{suf}"
    return f"{t:.0f}"


def slug(s: object) -> str:
    """Filesystem-safe name part (model names may contain '/')."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(s)).strip("_") or "x"


def require_columns(df: pd.DataFrame, cols: list[str], what: str) -> None:
    """Raise DataError naming the columns ``what`` needs that ``df`` lacks."""
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise DataError(
            f"{what} needs columns {missing}, but the table has {list(df.columns)}. "
            "Pass the study's tables/summary.parquet (see the module contract)."
        )


def select_model(summary: pd.DataFrame, model: str) -> pd.DataFrame:
    """The summary rows of one model; DataError naming the models present when absent."""
    require_columns(summary, ["model", "layer", "tokens"], "this figure")
    sub: pd.DataFrame = summary.loc[summary["model"].astype(str) == str(model)]
    if sub.empty:
        raise DataError(
            f"model {model!r} is not in the summary table; choose one of "
            f"{sorted(summary['model'].astype(str).unique())}."
        )
    return sub


def save_figure(fig: Figure, out_dir: str | Path, name: str) -> list[Path]:
    """Render ``fig`` to PNG and SVG in memory, write both atomically, close the figure."""
    out_dir = Path(out_dir)
    paths = []
    try:
        for ext in ("png", "svg"):
            buf = io.BytesIO()
            fig.savefig(buf, format=ext, dpi=DPI, bbox_inches="tight",
                        metadata={"Date": None} if ext == "svg" else None)
            paths.append(atomic_write_bytes(out_dir / f"{name}.{ext}", buf.getvalue()))
    finally:
        plt.close(fig)
    log.info("wrote figure %s", out_dir / name)
    return paths


def token_positions(tokens: np.ndarray) -> tuple[np.ndarray, float | None]:
    """x positions for a log axis: tokens > 0 stay; 0 (init) goes one decade left of the
    smallest positive count (returned as the second value, None if no zero)."""
    tokens = np.asarray(tokens, dtype=float)
    pos = tokens[tokens > 0]
    if (tokens <= 0).any():
        left = (pos.min() if pos.size else 1.0) / 10.0
        return np.where(tokens > 0, tokens, left), left
    return tokens, None


def setup_token_axis(ax: Axes, x: np.ndarray, init_x: float | None) -> None:
    """Log token axis; with a step-0 point (``init_x``) a tick "init" and a dotted break line."""
    ax.set_xscale("log")
    if init_x is not None:
        # The decade ticks stay; "init" labels the step-0 point, a dotted line marks the break.
        ax.axvline(init_x * np.sqrt(10), color="k", lw=0.6, ls=":", alpha=0.6)
        lo, hi = ax.get_xlim()
        decades = [10.0 ** e for e in range(math.ceil(math.log10(init_x * 3)), math.floor(math.log10(max(hi, 1))) + 1)]
        ticks = [init_x] + decades
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.set_xticklabels(["init"] + [format_tokens(d) for d in decades])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlim(init_x / 1.6, max(x) * 1.6)


def checkpoint_table(sub: pd.DataFrame, value: str) -> pd.DataFrame:
    """Pivot layer x tokens (mean over duplicate rows, e.g. SAE seeds)."""
    return sub.pivot_table(index="layer", columns="tokens", values=value, aggfunc="mean").sort_index()
