"""The toy world and its two controls side by side (docs/toy-world.md, "Controls").

Reads the summary tables of three finished studies (``toy.yaml``, ``toy-codeswitch.yaml``,
``toy-disjoint.yaml``), writes the figure with the sweep's plot (Mixed share and ground-truth
precision of Mixed features per checkpoint, mean over layers, one line per world) and prints
the final-checkpoint table in the doc's markdown.

    .venv/bin/python scripts/controls_figure.py runs/toy runs/toy-codeswitch runs/toy-disjoint \\
        --figure docs/figures/toy_controls.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from phase3_sweep import plot  # noqa: E402  (one line per world = one setting of one seed)

WORLDS = ("default", "codeswitch (positive)", "disjoint (negative)")


def _cells(values: pd.Series) -> str:
    return " ".join(f"{v:.2f}" for v in values)


def final_rows(runs: dict[str, pd.DataFrame]) -> str:
    """Markdown table: per world, per-layer Mixed share, precision (both readings), Mixed
    features and dead share at the last checkpoint."""
    lines = ["| world | Mixed share | precision | pure precision | Mixed features | dead |", "|---|---|---|---|---|---|"]
    for world, s in runs.items():
        last = s[s["iteration"] == s["iteration"].max()].sort_values("layer")
        dead = 100 * last["n_dead"] / last["n_features"]
        lines.append(f"| {world} | {_cells(last['frac_mixed'])} | {_cells(last['gt_mixed_precision'])} | "
                     f"{last['gt_mixed_precision_pure'].min():.2f}–{last['gt_mixed_precision_pure'].max():.2f} | "
                     f"{int(last['gt_n_mixed'].min())}–{int(last['gt_n_mixed'].max())} | "
                     f"{dead.min():.1f}–{dead.max():.1f} % |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs=3, help="study folders: default world, codeswitch, disjoint")
    ap.add_argument("--figure", default=None, help="also write the figure (PNG) here")
    a = ap.parse_args()
    runs = {w: pd.read_csv(Path(d) / "tables" / "summary.csv") for w, d in zip(WORLDS, a.runs)}
    print(final_rows(runs))
    if a.figure:
        table = pd.concat([s.assign(setting=w, seed=0) for w, s in runs.items()], ignore_index=True)
        print("figure:", plot(table, Path(a.figure)))


if __name__ == "__main__":
    main()
