"""The crosscoder stage end to end on the tiny toy world: files, SAELens round trip, resume, report, export."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from sae_lens import SAE

import sae_bilingual  # noqa: F401  registers paper_crosscoder with SAELens
from sae_bilingual.config import load_recipe
from sae_bilingual.report.release import export_release
from sae_bilingual.study import crosscoder_stage
from sae_bilingual.study.context import StudyContext
from sae_bilingual.study.plan import plan_study
from sae_bilingual.study.run import run_study
from tests.conftest import REPO

pytestmark = pytest.mark.slow  # the tiny world and a whole smoke study: ~20-60 s


@pytest.fixture(scope="module")
def study(world_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("cc") / "study"
    recipe = load_recipe(REPO / "recipes" / "smoke.yaml", {
        "output_dir": str(out), "intervention.enabled": False, "sae.lr": 0.005,
        "crosscoder.enabled": True, "crosscoder.layers": [2], "crosscoder.batch_size": 128})
    run_study(recipe, progress=False)
    return recipe, out


def test_files_and_the_plain_saelens_round_trip(study):
    recipe, out = study
    d = out / "crosscoders" / "toy" / "L02"
    s = json.loads((d / "summary.json").read_text())
    cc = SAE.load_from_disk(str(d / "crosscoder"))
    assert cc.cfg.architecture() == "paper_crosscoder" and cc.cfg.n_checkpoints == 3
    assert cc.cfg.metadata.checkpoint_iterations == [sl["iteration"] for sl in s["slices"]]
    t = pd.read_parquet(d / "latents.parquet")
    # the table's shares are those of the saved decoder (recomputed here from W_dec)
    W = cc.W_dec.detach().view(cc.cfg.d_sae, 3, cc.cfg.d_model).norm(dim=-1)
    share = (W / W.sum(1, keepdim=True)).numpy()
    its = [sl["iteration"] for sl in s["slices"]]
    assert np.allclose(t[[f"share_{i}" for i in its]].to_numpy(), share, atol=1e-5)
    # emergence: first checkpoint whose share passes 0.5 / C (a plain loop over latents)
    alive = (share > 0.5 / 3) & ~t["dead"].to_numpy()[:, None]
    first = [its[int(np.argmax(a))] if a.any() else -1 for a in alive]
    assert t["emergence_iteration"].tolist() == first
    # FVU per slice beside the SAE's own, from that unit's summary row
    for sl in s["slices"]:
        row = json.loads((out / "units" / "toy" / f"iter_{sl['iteration']:07d}" / "L02" / "summary.json").read_text())
        assert sl["sae_fvu"] == pytest.approx(row["fvu"]) and 0 < sl["fvu"] < 1
    assert s["sae_total_latents"] == 3 * row["d_sae"]
    assert (out / "figures" / "crosscoder_toy_L02.png").exists()
    assert (out / "tables" / "crosscoder_toy_L02_lineage.csv").exists()
    assert "id=\"crosscoder\"" in (out / "report.html").read_text()


def test_resume_skips_a_finished_layer(study, monkeypatch):
    recipe, out = study
    before = (out / "crosscoders" / "toy" / "L02" / "summary.json").read_text()

    def boom(*a, **k):
        raise AssertionError("a finished crosscoder was trained again")

    monkeypatch.setattr(crosscoder_stage, "train_crosscoder", boom)
    ctx = StudyContext(recipe, progress=False)
    crosscoder_stage.run_all_crosscoders(ctx, plan_study(recipe, ctx), out, 0.005)
    assert (out / "crosscoders" / "toy" / "L02" / "summary.json").read_text() == before


def test_export_has_the_crosscoder(study, tmp_path):
    _, out = study
    rel = export_release(out, tmp_path / "rel")
    assert (rel / "toy" / "crosscoder" / "L02" / "cfg.json").exists()
    assert "## Crosscoders" in (rel / "README.md").read_text()
    cc = SAE.load_from_disk(str(rel / "toy" / "crosscoder" / "L02"))
    x = torch.randn(4, cc.cfg.d_in)
    assert cc.decode(cc.encode(x)).shape == (4, cc.cfg.d_in)
