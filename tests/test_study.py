"""The whole study on the smoke recipe: artefacts, plan, resume without recomputation."""

from __future__ import annotations

import base64
import json
import math
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from sae_bilingual.config import load_recipe
from sae_bilingual.errors import ConfigError
from sae_bilingual.layers import LayerError
from sae_bilingual.sae import train
from sae_bilingual.study import pipeline
from sae_bilingual.study.outdir import recipe_hash
from sae_bilingual.study.plan import plan_study
from sae_bilingual.study.run import run_study
from tests.bad_input_fixtures import recipe

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "recipes" / "smoke.yaml"

pytestmark = pytest.mark.slow


class _Report(HTMLParser):
    """The report's sections: per section id, its images {alt: PNG bytes} and tables (rows of cell texts)."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.section, self.cell = "", None
        self.images: dict[str, dict[str, bytes]] = {}
        self.tables: dict[str, list[list[list[str]]]] = {}
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.section = a.get("id", "")
        elif tag == "img" and a.get("src", "").startswith("data:image/png;base64,"):
            self.images.setdefault(self.section, {})[a["alt"]] = base64.b64decode(a["src"].split(",", 1)[1])
        elif tag == "table":
            self.tables.setdefault(self.section, []).append([])
        elif tag == "tr" and self.section in self.tables:
            self.tables[self.section][-1].append([])
        elif tag in ("td", "th"):
            self.cell = []

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self.cell is not None:
            self.tables[self.section][-1][-1].append("".join(self.cell).strip())
            self.cell = None


def _shown(v) -> str:
    """A table value as the report prints it (4 significant digits, blank for NaN)."""
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def test_smoke_study_writes_every_artefact(smoke_study) -> None:
    out, report = smoke_study
    assert Path(report) == out / "report.html"
    shown = _Report(Path(report).read_text(encoding="utf-8"))
    # every figure the study drew is in the report, as the very PNG on disk
    embedded = {alt: png for imgs in shown.images.values() for alt, png in imgs.items()}
    figures = {p.stem: p.read_bytes() for p in (out / "figures").glob("*.png")}
    assert figures and embedded == figures
    # Table 1: one row per condition with the numbers of tables/intervention.csv
    agg = pd.read_csv(out / "tables" / "intervention.csv")
    (table,) = shown.tables["intervention"]
    assert table[0] == list(agg.columns)
    assert table[1:] == [[_shown(v) for v in row] for row in agg.itertuples(index=False)]
    assert [r[0] for r in table[1:]] == ["none", "en", "ja", "mixed"]
    summary = pd.read_parquet(out / "tables" / "summary.parquet")
    recipe = load_recipe(SMOKE)
    # 3 log-spaced checkpoints x every layer of the 2-layer tiny model
    assert len(summary) == 3 * 2
    assert sorted(summary["layer"].unique()) == [1, 2]
    assert list(summary["hook"].unique()) == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    live = summary["n_live"]
    shares = summary["frac_en"] + summary["frac_ja"] + summary["frac_mixed"]
    assert ((shares - 1).abs() < 1e-9)[live > 0].all(), "class shares of live features sum to 1"
    assert (summary["n_dead"] + summary["n_live"] == summary["n_features"]).all()
    assert (summary["fvu"] < 1).all(), "every SAE explains some variance"
    assert summary["k"].eq(recipe.sae.k).all()
    for ldir in (out / "units").glob("*/*/L*"):
        for name in ("sae/cfg.json", "sae/sae_weights.safetensors", "codes.safetensors",
                     "features.parquet", "examples.json", "summary.json"):
            assert (ldir / name).is_file(), ldir / name
        feats = pd.read_parquet(ldir / "features.parquet")
        assert len(feats) == summary["n_features"].iloc[0]
    for name in ("lr_grid.csv", "intervention.csv", "intervention.md"):
        assert (out / "tables" / name).is_file()
    pngs = {p.stem for p in (out / "figures").glob("*.png")}
    assert {"heatmaps_toy", "span_toy", "lr_grid", "intervention", "world_loss"} <= pngs
    assert any(s.startswith("lang_dist_toy") for s in pngs)
    # the toy world's build time and loss curve travel with the study (issue 4)
    world = json.loads((out / "tables" / "world.json").read_text())
    ck = pd.read_csv(out / "tables" / "world_checkpoints.csv")
    steps = pd.read_csv(out / "tables" / "world_loss.csv")
    assert world["build_seconds"] > 0 and world["config"]["steps"] == len(steps)
    assert ck["iteration"].tolist() == sorted(ck["iteration"]) and ck["loss"].iloc[-1] < ck["loss"].iloc[0]
    html = Path(report).read_text(encoding="utf-8")
    world_html = html.split('<section id="world">')[1].split("</section>")[0]
    assert f"{world['build_seconds']:.1f} s" in world_html and 'alt="world_loss"' in world_html
    assert len(list((out / "neuronpedia").glob("*.json"))) == len(summary)
    # the summary table: one row per SAE, with its numbers
    (rows,) = shown.tables["summary"]
    csv = pd.read_csv(out / "tables" / "summary.csv")
    assert rows[0] == list(csv.columns) and len(rows) == 1 + len(csv)
    col = {c: rows[0].index(c) for c in ("iteration", "layer", "fvu", "frac_mixed")}
    got = {(r[col["iteration"]], r[col["layer"]]): (r[col["fvu"]], r[col["frac_mixed"]]) for r in rows[1:]}
    assert got == {(str(r.iteration), str(r.layer)): (_shown(r.fvu), _shown(r.frac_mixed)) for r in csv.itertuples()}


def test_rerun_skips_finished_units(smoke_study, monkeypatch) -> None:
    out, _ = smoke_study
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("units/*/*/L*/summary.json")}

    def boom(*a, **k):
        raise AssertionError("a finished unit was recomputed")

    monkeypatch.setattr(train, "lr_grid", lambda *a, **k: pytest.fail("LR grid recomputed"))
    recipe = load_recipe(SMOKE, {"output_dir": str(out)})
    run_study(recipe, progress=False, unit_stages=pipeline.UnitStages(train=boom))
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_dry_run_plan_names_units_and_budget(world_cache) -> None:
    recipe = load_recipe(SMOKE)
    text = run_study(recipe, dry_run=True)
    assert "3 units, 6 SAEs" in text and "LR grid" in text and "LM tokens" in text
    plan = plan_study(recipe)
    assert [u.layers for u in plan.units] == [[1, 2]] * 3


def test_other_recipe_in_same_dir_is_refused(smoke_study) -> None:
    out, _ = smoke_study
    other = load_recipe(SMOKE, {"output_dir": str(out), "seed": 1})
    assert recipe_hash(other) != json.loads((out / "manifest.json").read_text())["recipe_hash"]
    with pytest.raises(ConfigError, match="different recipe"):
        run_study(other, progress=False)


def test_layer_out_of_range_fails_at_planning(world_cache) -> None:
    recipe = load_recipe(SMOKE, {"models": [{"family": "toy", "layers": [5]}]})
    with pytest.raises(LayerError, match="0..2"):
        plan_study(recipe)


def test_warm_start_study_chains_checkpoints(smoke_study, tmp_path) -> None:
    """sae.warm_start: each checkpoint's SAEs start from the previous checkpoint's (issue 12)."""
    cold_out, _ = smoke_study
    out = tmp_path / "warm"
    run_study(load_recipe(SMOKE, {"output_dir": str(out), "sae.warm_start": True}), progress=False)
    warm = pd.read_csv(out / "tables" / "summary.csv").set_index(["iteration", "layer"])
    cold = pd.read_csv(cold_out / "tables" / "summary.csv").set_index(["iteration", "layer"])
    first = warm.index.get_level_values("iteration").min()
    assert (warm["warm_start"] == (warm.index.get_level_values("iteration") > first)).all()
    assert not cold["warm_start"].any()
    # the first checkpoint trains cold: the same SAEs as the cold study, bit for bit
    for ldir in sorted((out / "units" / "toy" / f"iter_{first:07d}").glob("L*")):
        ref = cold_out / ldir.relative_to(out)
        a, b = load_file(ldir / "sae" / "sae_weights.safetensors"), load_file(ref / "sae" / "sae_weights.safetensors")
        assert all(torch.equal(a[k], b[k]) for k in a)
    # later checkpoints start from a trained SAE: their early loss is far below a cold start's
    later = warm.index.get_level_values("iteration") > first
    ratio = warm.loc[later, "train_loss_first_tenth"] / cold.loc[later, "train_loss_first_tenth"]
    assert (ratio < 0.9).all(), ratio


def test_resume_redoes_a_unit_whose_features_were_damaged(smoke_study, tmp_path, monkeypatch) -> None:
    """issue 21: a features.parquet corrupted after its unit finished made every later run
    crash in lineage; now the resume sees the checksum mismatch and redoes that unit."""
    ref, _ = smoke_study
    out = tmp_path / "copy"
    shutil.copytree(ref, out)
    victim = sorted(out.glob("units/toy/*/L02/features.parquet"))[1]
    blob = bytearray(victim.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    victim.write_bytes(bytes(blob))
    redone = []

    def spy(ctx, unit, model, layers, out_dir, lr):  # the real train stage, recording what is redone
        redone.append((unit.id, list(layers)))
        return pipeline.train_stage(ctx, unit, model, layers, out_dir, lr)

    run_study(load_recipe(SMOKE, {"output_dir": str(out)}), progress=False,
              unit_stages=pipeline.UnitStages(train=spy))
    unit_id = f"toy/{victim.parents[1].name}"
    assert redone == [(unit_id, [2])]
    assert victim.read_bytes() == (ref / victim.relative_to(out)).read_bytes()


def test_forced_rerun_with_other_intervention_settings_redoes_only_the_intervention(smoke_study, tmp_path,
                                                                                     monkeypatch) -> None:
    """--force onto a finished study with another decoder variant used to keep the old Table 1."""
    ref, _ = smoke_study
    out = tmp_path / "copy"
    shutil.copytree(ref, out)
    before = (out / "tables" / "intervention.md").read_text()
    assert "W_dec z + b_pre" in before
    never = pipeline.UnitStages(train=lambda *a, **k: pytest.fail("a finished unit was recomputed"))
    run_study(load_recipe(SMOKE, {"output_dir": str(out), "intervention.add_bias": False}), progress=False, force=True,
              unit_stages=never)
    after = (out / "tables" / "intervention.md").read_text()
    assert "without b_pre" in after.splitlines()[0] and "without b_pre" not in before
    assert set(pd.read_csv(out / "tables" / "intervention.csv")["decoder"]) != set(
        pd.read_csv(ref / "tables" / "intervention.csv")["decoder"])


# ======== bad inputs (moved from test_bad_inputs.py): two models of one family, whole study (run.py)


@pytest.mark.slow
def test_two_models_of_one_family_both_reach_the_summary(world, tmp_path):
    """Before: both wrote units/toy/iter_0000120 and the summary had one row."""
    from sae_bilingual.study.run import run_study

    rec = recipe(tmp_path / "s", models=[
        {"name": "toy-a", "family": "toy", "checkpoints": "final", "layers": [1]},
        {"name": "toy-b", "family": "toy", "source": str(world.root), "checkpoints": "final", "layers": [1]},
    ], **{"intervention.enabled": False, "sae.lr": 0.001, "data.train_tokens_per_lang": 2048,
          "data.eval_tokens_per_lang": 1024})
    run_study(rec, progress=False)
    summary = pd.read_csv(tmp_path / "s" / "tables" / "summary.csv")
    assert sorted(summary["model"]) == ["toy-a", "toy-b"]
    for name in ("toy-a", "toy-b"):
        assert (tmp_path / "s" / "units" / name / "iter_0000120" / "L01" / "features.parquet").is_file()

