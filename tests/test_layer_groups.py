"""A unit whose layers do not fit one pass trains them in groups, with identical results.

The toy unit's three layers (embeddings, blocks 1 and 2) run once in one LM pass and once
under a ``max_memory`` that fits two layers per pass (so: layers 0-1, then 2); the SAE
weights must be bit-identical and every result table equal (timing columns aside).
"""

from __future__ import annotations

from dataclasses import replace

import importlib.util
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sae_bilingual.study import memplan, pipeline
from sae_bilingual.config import load_recipe
from sae_bilingual.study.memplan import PLAN_FRACTION, LMShape, pass_peak, plan_unit, unit_components
from sae_bilingual.study.context import StudyContext
from sae_bilingual.study.run import run_study

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _soak():
    spec = importlib.util.spec_from_file_location("soak", REPO / "benchmarks" / "soak.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _recipe(out: Path, **extra):
    return load_recipe(REPO / "recipes" / "smoke.yaml", {
        "output_dir": str(out), "models": [{"family": "toy", "checkpoints": "final", "layers": "all+emb"}],
        "sae.lr": 0.005, "intervention.enabled": False, **extra})


def test_layer_groups_give_the_same_saes_and_tables(world_cache, tmp_path, monkeypatch):
    one = _recipe(tmp_path / "one", max_memory="1TB")
    shape = LMShape.from_hf_config(StudyContext(one, progress=False).family(0).hf_config)
    comps = unit_components(one, shape, baseline=0)
    # a budget in which two layers fit one pass and three do not
    budget = int(pass_peak(comps, 2, merged=True)["device"] / PLAN_FRACTION) + 1
    assert pass_peak(comps, 3, merged=True)["device"] > PLAN_FRACTION * budget
    assert plan_unit(one, shape, [0, 1, 2], budget, baseline=0).groups == [[0, 1], [2]]
    assert plan_unit(one, shape, [0, 1, 2], int(pass_peak(comps, 1, merged=True)["device"] / PLAN_FRACTION) + 1,
                     baseline=0).groups == [[0], [1], [2]]

    passes: list[list[int]] = []

    def spy(ctx, unit, model, layers, out, lr):  # the train stage, recording each pass's layers
        passes.append(list(layers))
        return pipeline.train_stage(ctx, unit, model, layers, out, lr)

    stages = replace(pipeline.UnitStages(), train=spy)
    # the plan counts this process's RSS, which grows with the tests run before this one:
    # plan the study as the budgets above were computed (without it)
    monkeypatch.setattr(memplan, "process_rss", lambda: 0)
    run_study(one, progress=False, unit_stages=stages)
    assert passes == [[0, 1, 2]]
    grouped = _recipe(tmp_path / "grouped", max_memory=budget)
    run_study(grouped, progress=False, unit_stages=stages)
    assert passes == [[0, 1, 2], [0, 1], [2]]

    diffs = _soak().compare_outputs(tmp_path / "one", tmp_path / "grouped")
    assert diffs == []
    saes = sorted((tmp_path / "one").glob("units/toy/*/L*/sae/sae_weights.safetensors"))
    assert len(saes) == 3
    for a in saes:
        ta = load_file(a)
        tb = load_file(tmp_path / "grouped" / a.relative_to(tmp_path / "one"))
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
    for name in ("features.parquet", "codes.safetensors", "summary.json"):
        assert len(list((tmp_path / "one").glob(f"units/toy/*/L*/{name}"))) == 3
