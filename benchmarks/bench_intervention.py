"""Benchmark: the intervention table (Table 1) batched vs one condition and draw at a time.

On the toy recipe's settings (the world's mid and final checkpoints, its eval windows and
translation pairs, 1 "none" + 3 classes x 5 draws), with an SAE of the recipe's shape at the
middle layer (random weights: the cost does not depend on them, and no study has to run
first). Both paths run in this process, the batched one first; prints each time, the max
|difference| of every metric, and last `RATIO one-at-a-time/batched`.

    .venv/bin/python benchmarks/bench_intervention.py [--recipe recipes/toy.yaml] [--threads 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from sae_bilingual.config import load_recipe
from sae_bilingual.study.intervention_stage import _feasible_ms, _translation_pairs, _translation_template
from sae_bilingual.intervention.experiment import run_intervention_table, run_intervention_table_one_at_a_time
from sae_bilingual.layers import hook_for_layer, parse_layers
from sae_bilingual.study.pipeline import _first_docs_per_lang
from sae_bilingual.sae.model import make_metadata, new_paper_sae
from sae_bilingual.study.context import StudyContext


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipe", default=str(Path(__file__).resolve().parents[1] / "recipes" / "toy.yaml"))
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    rec = load_recipe(a.recipe)
    iv = rec.intervention
    ctx = StudyContext(rec, progress=False)
    fam = ctx.family(iv.model)
    cat = fam.catalogue()
    final = fam.load(cat.final, device="cpu", dtype=torch.float32)
    mid = fam.load(cat.select(iteration=iv.mid_checkpoint or cat.checkpoints[len(cat.checkpoints) // 2].iteration),
                   device="cpu", dtype=torch.float32)
    layer = parse_layers(iv.layer, fam.n_layers)[0]
    torch.manual_seed(0)
    sae = new_paper_sae(fam.d_model, k=rec.sae.k, expansion=rec.sae.expansion,
                        metadata=make_metadata(hook_name=hook_for_layer(layer)))
    classes = [c for c in iv.conditions if c != "none"]
    feats = pd.DataFrame({"cls": np.random.default_rng(0).choice(classes, size=sae.cfg.d_sae), "dead": False})
    pairs = _translation_pairs(ctx)
    kw = dict(seed=rec.seed, windows=_first_docs_per_lang(ctx.windows("eval", iv.model), iv.eval_docs_per_lang),
              pairs=None if pairs is None else pairs.iloc[: iv.translation_pairs + iv.few_shot].reset_index(drop=True),
              languages=tuple(rec.data.languages), tokenizer=ctx.tokenizer(iv.model),
              template=_translation_template(ctx), comet=False)
    spec = dataclasses.replace(iv, ms=_feasible_ms(feats, iv, sae.cfg.d_sae), scale_m=False)
    out = {}
    for name, fn in (("batched", run_intervention_table), ("one-at-a-time", run_intervention_table_one_at_a_time)):
        t = time.perf_counter()
        out[name] = (fn(final, mid, sae, feats, layer, spec, **kw), time.perf_counter() - t)
        print(f"{name}: {out[name][1]:.1f} s ({len(out[name][0])} rows, {a.threads} threads)", flush=True)
    (b, tb), (r, tr) = out["batched"], out["one-at-a-time"]
    for c in [c for c in r.columns if c.startswith(("ppl_", "chrf_"))]:
        print(f"max |{c} batched - one-at-a-time| = {float((b[c] - r[c]).abs().max()):.3g}")
    print(f"RATIO one-at-a-time/batched = {tr / tb:.2f}")


if __name__ == "__main__":
    main()
