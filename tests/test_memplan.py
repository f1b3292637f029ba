"""Memory plan (memplan.py) and the offline dry run (dryrun.py): byte counts against real
tensors, grouping against brute force, the paper recipe planned before any download."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from sae_bilingual.cli import main
from sae_bilingual.config import load_recipe
from sae_bilingual.config_checks import parse_bytes
from sae_bilingual.errors import CheckpointError, ConfigError
from sae_bilingual.study.memplan import (
    PLAN_FRACTION,
    LMShape,
    lm_weight_bytes,
    pass_peak,
    plan_unit,
    UnitPlan,
    sae_params,
    split_balanced,
    unit_components,
)
from sae_bilingual.models.llmjp import llmjp_llama_config, llmjp_structure_config

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "recipes" / "llmjp-3.7b-paper.yaml"


def test_parse_bytes_reads_sizes_and_names_the_field():
    assert parse_bytes("80GB") == 80 * 10**9 and parse_bytes("40 GiB") == 40 * 2**30
    assert parse_bytes(512) == 512 and parse_bytes("1.5e11") == 150 * 10**9 and parse_bytes("512mb") == 512 * 10**6
    for bad in ("80 GBs", "lots", "-1GB", 0, True):
        with pytest.raises(ConfigError, match="max_memory"):
            parse_bytes(bad)
    with pytest.raises(ConfigError, match="max_memory"):
        load_recipe(REPO / "recipes" / "smoke.yaml", {"max_memory": "eighty"})
    assert load_recipe(REPO / "recipes" / "smoke.yaml", {"max_memory": "80GB"}).max_memory == "80GB"


@pytest.mark.parametrize("kv_heads,dtype", [(4, torch.float32), (2, torch.bfloat16)])
def test_lm_weight_bytes_equal_the_loaded_hooked_transformer(kv_heads, dtype):
    """Every parameter and buffer of the HookedTransformer the study builds, counted by hand."""
    from transformer_lens import HookedTransformer

    from sae_bilingual.models.hf import hooked_config_from_hf

    hf = llmjp_structure_config(vocab_size=101, d_model=32, d_mlp=48, n_layers=3, n_heads=4, d_head=8,
                                max_position_embeddings=80)
    hf.num_key_value_heads = kv_heads
    model = HookedTransformer(hooked_config_from_hf(hf, dtype=dtype))
    real = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    assert lm_weight_bytes(LMShape.from_hf_config(hf), torch.finfo(dtype).bits // 8) == real


def test_paper_model_weights_are_its_3_7_billion_parameters():
    s = LMShape.from_hf_config(llmjp_llama_config("3.7b"))
    n = lm_weight_bytes(s, 1)  # 1 byte per value: a parameter count (+ rotary tables)
    assert 3.7e9 < n < 3.9e9


def test_sae_training_state_is_four_copies_of_its_parameters():
    """Weights, gradients and Adam's two moments of a real SAE after one step: 16 bytes per parameter."""
    from sae_bilingual.sae.model import PaperTopKTrainingSAE, make_metadata
    from sae_bilingual.sae.topk_config import PaperTopKTrainingSAEConfig

    d, n = 24, 96
    sae = PaperTopKTrainingSAE(PaperTopKTrainingSAEConfig(d_in=d, d_sae=n, k=4, metadata=make_metadata(hook_name="h")))
    opt = torch.optim.Adam(sae.parameters(), lr=1e-3, fused=True)
    x = torch.randn(64, d)
    from sae_lens.saes.sae import TrainStepInput

    out = sae.training_forward_pass(TrainStepInput(sae_in=x, coefficients={}, dead_neuron_mask=None,
                                                    n_training_steps=0, is_logging_step=False))
    out.loss.backward()
    opt.step()
    params = list(sae.parameters())
    held = sum(p.numel() * p.element_size() for p in params)
    held += sum(p.grad.numel() * p.grad.element_size() for p in params)
    held += sum(v.numel() * v.element_size() for st in opt.state.values() for k, v in st.items() if k != "step")
    assert sum(p.numel() for p in params) == sae_params(d, n)
    assert held == 16 * sae_params(d, n)


def test_groups_are_the_fewest_that_fit_by_brute_force():
    recipe = load_recipe(PAPER)
    shape = LMShape.from_hf_config(llmjp_llama_config("3.7b"))
    comps = unit_components(recipe, shape)
    layers = list(range(1, 29))
    for budget in (30e9, 40e9, 80e9, 141e9, 1e12):
        plan = plan_unit(recipe, shape, layers, int(budget))
        fits = [k for k in range(1, 29) if pass_peak(comps, k, merged=False)["device"] <= PLAN_FRACTION * budget]
        assert plan.passes == math.ceil(28 / max(fits)), budget
        assert sorted(l for g in plan.groups for l in g) == layers
        assert all(g == list(range(g[0], g[-1] + 1)) for g in plan.groups)  # contiguous
        assert max(map(len, plan.groups)) - min(map(len, plan.groups)) <= 1
        assert plan.peak["device"] <= PLAN_FRACTION * budget
    assert plan_unit(recipe, shape, layers, int(1e12)).passes == 1
    tiny = plan_unit(recipe, shape, layers, int(10e9))
    assert not tiny.fits and tiny.passes == 28  # nothing fits: one layer per pass, flagged
    # a shallow group stops its forward early: passes (1-14 | 15-28) cost 1.5 full passes
    halves = UnitPlan([layers[:14], layers[14:]], {}, None, "", False, True)
    assert halves.lm_cost() == pytest.approx((14 + 28) / 28)
    assert split_balanced(list(range(7)), 3) == [[0, 1, 2], [3, 4], [5, 6]]


def test_paper_dry_run_before_download_plans_and_warns(capsys, tmp_path):
    """No checkpoints, no corpus here: the dry run plans from the size table, lists what is
    missing, exits 0; the real run still stops on the missing source before touching output_dir."""
    shape = LMShape.from_hf_config(llmjp_llama_config("3.7b"))
    recipe = load_recipe(PAPER)
    passes = {}
    for mem in ("80GB", "40GB"):
        assert main(["study", str(PAPER), "--dry-run", "--set", f"max_memory={mem}", "--set", "max_host_memory=1TB"]) == 0
        text = capsys.readouterr().out
        passes[mem] = plan_unit(recipe, shape, list(range(1, 29)), parse_bytes(mem)).passes
        assert text.count(f": {passes[mem]} LM passes") == 6  # one line per unit
        assert "warning: models[0].source /data/llm-jp-3-3.7b does not exist" in text
        assert "warning: data.paths.en /data/wiki/en.jsonl does not exist" in text
        assert "logits chunk (673 tokens x 99,584 vocab" in text and "6 units, 168 SAEs" in text
        assert f"all units: {6 * passes[mem]} LM passes" in text
    assert 1 < passes["80GB"] < passes["40GB"]
    assert main(["study", str(PAPER), "--dry-run"]) == 0  # no GPU, no max_memory: says how to plan
    assert "set max_memory" in capsys.readouterr().out
    out = tmp_path / "run"
    with pytest.raises(CheckpointError, match="/data/llm-jp-3-3.7b does not exist"):
        from sae_bilingual.study.run import run_study

        run_study(load_recipe(PAPER, {"output_dir": str(out)}), progress=False)
    assert not out.exists()


def test_dry_run_refuses_a_missing_source_it_cannot_shape(tmp_path):
    recipe = load_recipe(REPO / "recipes" / "smoke.yaml",
                         {"models": [{"family": "hf", "source": str(tmp_path / "nowhere")}]})
    from sae_bilingual.study.run import run_study

    with pytest.raises(ConfigError, match=r"models\[0\].source .*nowhere does not exist.*no built-in shape"):
        run_study(recipe, dry_run=True)


@pytest.mark.parametrize("device_mem, host_mem, passes", [("80GB", "128GB", 3), ("40GB", "64GB", 6)])
def test_paper_unit_fits_one_gpu_node_on_both_sides(capsys, device_mem, host_mem, passes):
    """The issue's two nodes: every pass under both budgets, and the dry run says so per unit."""
    recipe = load_recipe(PAPER, {"max_memory": device_mem, "max_host_memory": host_mem})
    shape = LMShape.from_hf_config(llmjp_llama_config("3.7b"))
    plan = plan_unit(recipe, shape, list(range(1, 29)), parse_bytes(device_mem),
                     host_budget=parse_bytes(host_mem), baseline=2 * 10**9)
    assert plan.fits and plan.passes == passes
    assert plan.peak["device"] <= PLAN_FRACTION * parse_bytes(device_mem)
    assert plan.peak["host"] <= PLAN_FRACTION * parse_bytes(host_mem)
    # the fewest passes: one pass fewer would need a group that breaks a budget
    comps = unit_components(recipe, shape, baseline=2 * 10**9)
    more = pass_peak(comps, math.ceil(28 / (passes - 1)), merged=False)
    assert (more["device"] > PLAN_FRACTION * parse_bytes(device_mem)
            or more["host"] > PLAN_FRACTION * parse_bytes(host_mem))
    assert main(["study", str(PAPER), "--dry-run", "--set", f"max_memory={device_mem}",
                 "--set", f"max_host_memory={host_mem}"]) == 0
    text = capsys.readouterr().out
    assert text.count(f": {passes} LM passes") == 6 and text.count("host RAM ") >= 6


def test_host_terms_are_byte_counts_and_the_buffer_dtype_halves_the_buffers():
    recipe = load_recipe(PAPER)
    shape = LMShape.from_hf_config(llmjp_llama_config("3.7b"))
    by_name = {c.name.split(" (")[0]: c for c in unit_components(recipe, shape, baseline=0)}
    buf = by_name["store buffer"]
    chunk, B, d = 256 * 63, 32_768, 3072
    assert buf.per_hook == 500_000 * d * 4 + 2 * chunk * d * 4 + 2 * B * d * 4
    half = {c.name.split(" (")[0]: c for c in unit_components(
        load_recipe(PAPER, {"data.buffer_dtype": "bfloat16"}), shape, baseline=0)}["store buffer"]
    assert buf.per_hook - half.per_hook == 500_000 * d * 2
    # evaluation streams: no host term grows with the number of layers in the analysis
    assert all(c.per_hook == 0 for c in by_name.values() if c.where == "host" and c.phase == "analyse")
    with pytest.raises(ConfigError, match="max_host_memory"):
        load_recipe(PAPER, {"max_host_memory": "lots"})
