"""The dry run's time estimate against the seconds a real study's units take, side by side.

Runs ``study --dry-run --estimate-time``'s estimate for a recipe, then the study itself
(in a temporary folder), and prints per unit: estimated seconds, measured seconds (the sum
of its layers' ``seconds`` column in summary.json, which also holds the model load, token
clusters and pair encoding the estimate leaves out) and their ratio.

    python benchmarks/bench_time_estimate.py                 # the smoke recipe, on the CPU
    python benchmarks/bench_time_estimate.py --recipe toy    # the default toy study (minutes)

Last line: ``RATIO estimate/measured = X.XX (per unit: min A.AA, max B.BB)``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import machine_line  # noqa: E402

from sae_bilingual.cli import resolve_recipe_path  # noqa: E402
from sae_bilingual.config import load_recipe  # noqa: E402
from sae_bilingual.study.context import StudyContext  # noqa: E402
from sae_bilingual.study.membudget import host_memory_budget, memory_budget  # noqa: E402
from sae_bilingual.study.memplan import LMShape, plan_unit  # noqa: E402
from sae_bilingual.study.plan import plan_study  # noqa: E402
from sae_bilingual.study.run import run_study  # noqa: E402
from sae_bilingual.study.time_estimate import estimate_unit, measure_rates  # noqa: E402


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="smoke")
    a = p.parse_args(argv)
    print(f"# {machine_line()}")
    with tempfile.TemporaryDirectory() as tmp:
        recipe = load_recipe(resolve_recipe_path(a.recipe), {"output_dir": str(Path(tmp) / "study")})
        ctx = StudyContext(recipe, progress=False)
        plan = plan_study(recipe, ctx)
        budget, source = memory_budget(recipe)
        host, _ = host_memory_budget(recipe)
        estimates, rates = {}, {}
        for u in plan.units:
            shape = LMShape.from_hf_config(ctx.family(u.model_index).hf_config)
            rates.setdefault(u.model_index, measure_rates(recipe, shape))
            groups = plan_unit(recipe, shape, u.layers, budget, source, host_budget=host).groups
            estimates[u.id] = estimate_unit(recipe, shape, groups, rates[u.model_index])
        run_study(recipe, progress=False)
        ratios = {}
        print(f"{'unit':<32} {'estimate s':>10} {'measured s':>10} {'ratio':>6}")
        for u in plan.units:
            rows = [json.loads((u.layer_dir(recipe.output_dir, layer) / "summary.json").read_text()) for layer in u.layers]
            measured = sum(r["seconds"] for r in rows)
            ratios[u.id] = estimates[u.id].total / measured
            print(f"{u.id:<32} {estimates[u.id].total:>10.2f} {measured:>10.2f} {ratios[u.id]:>6.2f}   {estimates[u.id].describe()}")
    total = sum(e.total for e in estimates.values()) / sum(estimates[k].total / r for k, r in ratios.items())
    print(f"RATIO estimate/measured = {total:.2f} (per unit: min {min(ratios.values()):.2f}, "
          f"max {max(ratios.values()):.2f})")
    return ratios


if __name__ == "__main__":
    main()
