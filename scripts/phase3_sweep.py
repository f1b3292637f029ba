"""The search for phase 3 on the toy world: settings x seeds -> Mixed share per checkpoint,
ground-truth precision of Mixed features, Table 1 ordering (docs/toy-world.md).

Each (setting, seed) is a study of the toy recipe on a world with the setting's overrides
and that seed (world seed = SAE seed = recipe seed), analysing the middle layers at every
checkpoint of the world, with the intervention at the middle layer. Results go to
``<out>/<setting>/s<seed>/`` (resumable: a finished run is skipped) and the tables to
``<out>/sweep.csv`` (per run, checkpoint, layer) and ``<out>/sweep_runs.csv`` (per run).

    .venv/bin/python scripts/phase3_sweep.py --out runs/sweep --settings default,bi50 --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import matplotlib
import pandas as pd
import yaml

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from sae_bilingual.config import load_recipe  # noqa: E402
from sae_bilingual.study.run import run_study  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

SETTINGS: dict[str, dict] = {
    "default": {},
    "bi50": {"bilingual_share": 0.5},
    "cs10": {"codeswitch_rate": 0.1},
    "cs25": {"codeswitch_rate": 0.25},
    "small": {"d_model": 64, "n_heads": 2, "d_mlp": 256},
    "long": {"steps": 1200, "n_checkpoints": 11},
    "few": {"n_concepts": 120},
}
"""World overrides per setting (what plausibly makes sharing pay)."""


def run_one(setting: str, seed: int, out: Path, base: str, layers: str, extra: dict) -> Path:
    """One study; returns its output dir."""
    d = out / setting / f"s{seed}"
    recipe = load_recipe(REPO / "recipes" / base, {
        "output_dir": str(d), "seed": seed,
        "world.overrides": {**SETTINGS[setting], "seed": seed},
        "models": [{"family": "toy", "checkpoints": "all", "layers": layers}],
        "intervention.layer": "mid", "intervention.mid_checkpoint": None,
        **extra,
    })
    if not (d / "report.html").exists():
        run_study(recipe, progress=False)
    return d


def collect(out: Path, runs: list[tuple[str, int, Path]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per checkpoint x layer rows, per run rows with the phase-3 verdict inputs)."""
    rows, per_run = [], []
    for setting, seed, d in runs:
        s = pd.read_csv(d / "tables" / "summary.csv")
        if "gt_mixed_precision_pure" not in s.columns:  # a run scored with the purity-gated definition
            s = s.drop(columns="gt_mixed_precision").merge(_precision_from_features(d), on=["iteration", "layer"])
        s["setting"], s["seed"] = setting, seed
        rows.append(s)
        mid = s.groupby("iteration")[["frac_mixed", "gt_mixed_precision", "n_dead", "fvu"]].mean()
        low_it = mid["frac_mixed"].idxmin()
        r = {"setting": setting, "seed": seed, "first": mid["frac_mixed"].iloc[0], "min": mid["frac_mixed"].min(),
             "min_at": int(low_it), "final": mid["frac_mixed"].iloc[-1],
             "final_precision": mid["gt_mixed_precision"].iloc[-1], "final_dead": mid["n_dead"].iloc[-1]}
        r["late_rise"] = r["final"] - r["min"]
        iv = d / "tables" / "intervention.csv"
        if iv.exists():
            t = pd.read_csv(iv).set_index("condition")["ppl_all_mean"]
            r.update({f"ppl_{c}": t.get(c) for c in ("none", "en", "ja", "mixed")})
            r["bi_best"] = bool(t.get("mixed") < min(t.get("en"), t.get("ja")) < t.get("none"))
        per_run.append(r)
    return pd.concat(rows, ignore_index=True), pd.DataFrame(per_run)


def _precision_from_features(d: Path) -> pd.DataFrame:
    """gt_mixed_precision (analysis.ground_truth's definition) from the stored per-feature tables:
    share of live Mixed features whose dominant concept fires in >= 2 languages."""
    rows = []
    for f in sorted((d / "units").glob("*/iter_*/L*/features.parquet")):
        t = pd.read_parquet(f, columns=["dead", "cls", "concept_langs"])
        mixed = t[~t["dead"] & (t["cls"] == "mixed")]
        rows.append({"iteration": int(f.parent.parent.name[5:]), "layer": int(f.parent.name[1:]),
                     "gt_mixed_precision": float((mixed["concept_langs"] >= 2).mean()) if len(mixed) else float("nan")})
    return pd.DataFrame(rows)


def plot(table: pd.DataFrame, path: Path) -> Path:
    """Mixed share and ground-truth precision of Mixed features per checkpoint: one panel
    each, one line per setting (mean over seeds, band = min..max over seeds)."""
    g = table.groupby(["setting", "seed", "iteration"])[["frac_mixed", "gt_mixed_precision"]].mean().reset_index()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, col, title in zip(axes, ("frac_mixed", "gt_mixed_precision"),
                              ("Mixed share of live features", "ground-truth precision of Mixed features")):
        for setting, d in g.groupby("setting", sort=False):
            st = d.groupby("iteration")[col].agg(["mean", "min", "max"])
            x = st.index.to_numpy() + 1  # log axis: step 0 at 1
            ax.plot(x, st["mean"], marker="o", label=setting)
            ax.fill_between(x, st["min"], st["max"], alpha=0.2)
        ax.set_xscale("log")
        ax.set_xlabel("checkpoint (optimizer step + 1)")
        ax.set_title(title)
    axes[0].legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/sweep")
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--recipe", default="toy.yaml", help="base recipe under recipes/")
    ap.add_argument("--layers", default="mid", help="paper layers to analyse (default: the middle layer)")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="extra recipe overrides")
    ap.add_argument("--figure", default=None, help="also write the sweep figure (PNG) here")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    extra = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in a.set)}
    out = Path(a.out)
    runs = []
    for setting in a.settings.split(","):
        for seed in (int(x) for x in a.seeds.split(",")):
            logging.info("sweep: %s seed %d", setting, seed)
            runs.append((setting, seed, run_one(setting, seed, out, a.recipe, a.layers, extra)))
    table, per_run = collect(out, runs)
    table.to_csv(out / "sweep.csv", index=False)
    per_run.to_csv(out / "sweep_runs.csv", index=False)
    if a.figure:
        plot(table, Path(a.figure))
    spread = per_run.groupby("setting")["final"].agg(["mean", "std"])
    rise = per_run.groupby("setting")["late_rise"].mean()
    print(per_run.round(3).to_string(index=False))
    print((spread.assign(late_rise=rise, rise_over_3sd=rise / (3 * spread["std"]))).round(3).to_string())


if __name__ == "__main__":
    main()
