"""Re-score a finished toy study's SAEs for translation alignment under every fire rule and
several score thresholds (how analysis.alignment's defaults were chosen, docs/toy-world.md).

    python scripts/alignment_sweep.py RECIPE OUTPUT_DIR [--iteration 600] [--layers 2,3,4,5]

Prints, per layer and rule, the aligned share of Mixed features at each min_score.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sae_bilingual.analysis.alignment import alignment_stats, firing_matrices  # noqa: E402
from sae_bilingual.config import load_recipe  # noqa: E402
from sae_bilingual.layers import hook_for_layer  # noqa: E402
from sae_bilingual.sae.files import load_sae  # noqa: E402
from sae_bilingual.study import alignment_stage  # noqa: E402
from sae_bilingual.study.context import StudyContext  # noqa: E402
from sae_bilingual.study.pipeline import _load_model  # noqa: E402
from sae_bilingual.study.unit import Unit  # noqa: E402

SCORES = (2.0, 3.0, 4.0, 6.0, 10.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe")
    ap.add_argument("out")
    ap.add_argument("--iteration", type=int, default=600)
    ap.add_argument("--layers", default="2,3,4,5")
    ap.add_argument("--min-both", type=int, default=3)
    a = ap.parse_args()
    layers = [int(x) for x in a.layers.split(",")]
    ctx = StudyContext(load_recipe(a.recipe), progress=False)
    out = Path(a.out)
    ldirs = {l: next(out.glob(f"units/*/iter_{a.iteration:07d}/L{l:02d}")) for l in layers}
    family = ldirs[layers[0]].parents[1].name
    cat = ctx.family(0).catalogue().select(iteration=a.iteration)
    unit = Unit(model_index=0, family=family, iteration=a.iteration, tokens=cat.tokens, layers=layers)
    model = _load_model(ctx, unit)
    saes = {hook_for_layer(l): load_sae(ldirs[l] / "sae") for l in layers}
    pc = alignment_stage.encode_pairs(ctx, unit, model, saes, Path("/tmp") / "alignment_sweep")
    sides = [list(ctx.recipe.data.languages).index(lg) for lg in pc.languages]
    rows = []
    for l in layers:
        df = pd.read_parquet(ldirs[l] / "features.parquet")
        mixed = (df["cls"] == "mixed").to_numpy()
        for rule in ("selected", "threshold"):
            st = alignment_stats(*firing_matrices(pc.codes[hook_for_layer(l)], len(df), pc.n_pairs, sides,
                                                  df["max_act"].to_numpy(), rule, 0.7))
            ok = st["align_both"].to_numpy() >= a.min_both
            r = {"layer": l, "rule": rule, "n_mixed": int(mixed.sum())}
            for s in SCORES:
                r[f">={s:g}"] = round(float((mixed & ok & (st["align_score"].fillna(0).to_numpy() >= s)).sum()
                                            / max(1, mixed.sum())), 3)
            rows.append(r)
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
