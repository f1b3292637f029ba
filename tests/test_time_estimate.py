"""The dry run's time estimate: the work it multiplies out, worked by hand, and the CLI block.

The estimate's accuracy against a real run is a timing, so it lives in
benchmarks/bench_time_estimate.py (it prints the ratio), not here.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch
from transformer_lens.components import TransformerBlock

from sae_bilingual.cli import main
from sae_bilingual.config import Recipe, load_recipe
from sae_bilingual.study.memplan import LMShape
from sae_bilingual.study.time_estimate import (
    STAGES,
    DeviceRates,
    block_config,
    estimate_unit,
    measure_rates,
    synthetic_codes,
)
from tests.conftest import REPO

SHAPE = LMShape(n_layers=4, d_model=16, n_heads=2, n_kv_heads=2, d_head=8, d_mlp=32, d_vocab=50, n_ctx=64)


def _recipe() -> Recipe:
    r = load_recipe(REPO / "recipes" / "smoke.yaml")
    r.data = replace(r.data, train_tokens_per_lang=100, eval_tokens_per_lang=30, context=8)
    r.sae = replace(r.sae, batch_size=50)
    r.analysis = replace(r.analysis, ce_docs_per_lang=2)
    return r


def _only(**rate: float) -> DeviceRates:
    """Rates that are zero except the one given, so one stage's arithmetic shows alone."""
    base = dict.fromkeys(("block_per_token", "unembed_per_token", "sae_step", "encode_per_token",
                          "analysis_per_token", "collect"), 0.0)
    return DeviceRates(**{**base, **rate})


def test_the_estimate_multiplies_the_plans_work_as_worked_by_hand() -> None:
    r, groups = _recipe(), [[1, 2], [4]]
    # 2 languages: 200 training tokens, 60 eval tokens, CE on min(2 docs x 8, 30) x 2 = 32 tokens
    blocks = estimate_unit(r, SHAPE, groups, _only(block_per_token=1.0)).seconds
    assert blocks["LM train pass"] == 200 * (2 + 4)  # a pass stops at its deepest layer's block
    assert blocks["eval LM + encode"] == 60 * (2 + 4)
    # clean pass: 4 blocks; splice and zero-ablation from layer l on: 2 x (4 - l) blocks each layer
    assert blocks["CE metrics"] == 32 * ((4 + 2 * 3 + 2 * 2) + (4 + 0))
    assert blocks["SAE training"] == blocks["analysis"] == 0
    steps = estimate_unit(r, SHAPE, groups, _only(sae_step=1.0)).seconds
    assert steps["SAE training"] == 3 * (200 // 50)  # three SAEs, four steps each
    enc = estimate_unit(r, SHAPE, groups, _only(encode_per_token=1.0)).seconds
    assert enc["eval LM + encode"] == 60 * 3 and enc["CE metrics"] == 32 * 3
    unembed = estimate_unit(r, SHAPE, groups, _only(unembed_per_token=1.0)).seconds
    assert unembed["CE metrics"] == 32 * ((1 + 6 * 2) + (1 + 6 * 1))
    est = estimate_unit(r, SHAPE, groups, _only(analysis_per_token=1.0, collect=10.0))
    assert est.seconds["analysis"] == 3 * 60
    assert est.seconds["garbage collection"] == 10.0 * ((2 + 2) + (2 + 1))
    assert est.total == sum(est.seconds.values()) and list(est.seconds) == list(STAGES)


def test_one_group_costs_less_lm_work_than_a_pass_per_layer() -> None:
    r, rates = _recipe(), _only(block_per_token=1.0)
    one = estimate_unit(r, SHAPE, [[1, 2, 3, 4]], rates).seconds["LM train pass"]
    each = estimate_unit(r, SHAPE, [[1], [2], [3], [4]], rates).seconds["LM train pass"]
    assert one == 200 * 4 and each == 200 * (1 + 2 + 3 + 4)


def test_synthetic_codes_hold_distinct_latents_per_vector() -> None:
    c = synthetic_codes(500, n=64, k=8, vocab=50, languages=("en", "ja"))
    assert c.idx.shape == (500, 8) and c.idx.max() < 64 and c.token_id.max() < 50
    assert all(len(set(row)) == 8 for row in c.idx.tolist())
    assert set(np.unique(c.lang)) == {0, 1}


def test_the_probe_block_has_the_shapes_parameters() -> None:
    gqa = replace(SHAPE, n_heads=4, n_kv_heads=2, d_head=4)
    block = TransformerBlock(block_config(gqa, 16, "cpu", torch.float32), 0)
    n = sum(p.numel() for name, p in block.named_parameters() if name.rsplit(".", 1)[-1].lstrip("_").startswith("W_"))
    attn = 16 * 4 * 4 * 2 + 16 * 2 * 4 * 2  # W_Q, W_O (4 heads) + W_K, W_V (2 kv heads)
    assert n == attn + 3 * 16 * 32  # + gated MLP (W_gate, W_in, W_out)


def test_measured_rates_are_positive_and_finite(world_cache) -> None:
    rates = measure_rates(_recipe(), SHAPE)
    for name, v in vars(rates).items():
        assert math.isfinite(v) and v > 0, name


def test_cli_prints_the_time_estimate_per_unit(world_cache, tmp_path, capsys) -> None:
    out = tmp_path / "s"
    assert main(["study", "smoke", "--dry-run", "--estimate-time", "--output-dir", str(out), "-q"]) == 0
    text = capsys.readouterr().out
    block = text[text.index("time estimate"):].splitlines()
    units = [line for line in block if line.startswith("  toy/iter_")]
    assert len(units) == 3 and all("~" in u and "SAE training" in u for u in units)
    assert any(line.startswith("  LR grid: ~") for line in block)
    assert any(line.startswith("  all units: ~") for line in block)
    assert not out.exists()


def test_estimate_time_needs_the_dry_run(capsys) -> None:
    assert main(["study", "smoke", "--estimate-time"]) == 2
    assert "--estimate-time goes with --dry-run" in capsys.readouterr().err
