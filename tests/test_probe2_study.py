"""Second adversarial probe (issue 30): study-stage slips that reused stale results, failed
late or ended in a traceback, each now refused (in one line, before the work) or redone."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from sae_bilingual import world as world_module
from sae_bilingual.config import Recipe
from sae_bilingual.study.artefacts import layer_finished, write_unit_summary
from sae_bilingual.study.intervention_stage import run_intervention
from sae_bilingual.world import WorldConfig
from tests.test_probe2_config import one_error
from tests.test_probe2_export import fake_study


class _Recompute(Exception):
    """Raised by the stand-in context where the stage starts recomputing."""


def _ctx(recipe: Recipe) -> SimpleNamespace:
    def family(i: int) -> None:
        raise _Recompute

    return SimpleNamespace(recipe=recipe, family=family)


def _settings(recipe: Recipe) -> str:
    return json.dumps({"intervention": dataclasses.asdict(recipe.intervention), "seed": recipe.seed},
                      sort_keys=True, default=str)


def test_intervention_table_without_its_settings_file_is_redone(tmp_path: Path) -> None:
    """A forced rerun killed between intervention.csv and its settings used to leave a table
    that a later rerun (other settings) reused."""
    recipe = Recipe()
    recipe.intervention.draws = 2
    tables = tmp_path / "tables"
    tables.mkdir()
    pd.DataFrame({"condition": ["none"], "draws": [3]}).to_csv(tables / "intervention.csv", index=False)
    with pytest.raises(_Recompute):
        run_intervention(_ctx(recipe), SimpleNamespace(units=[]), tmp_path)


def test_recompute_removes_the_old_settings_before_writing_tables(tmp_path: Path) -> None:
    """Settings of draws=2 beside a table being redone for draws=3: a kill mid-redo must not
    leave the draws=2 settings vouching for draws=3 tables."""
    old, new = Recipe(), Recipe()
    old.intervention.draws, new.intervention.draws = 2, 3
    tables = tmp_path / "tables"
    tables.mkdir()
    pd.DataFrame({"condition": ["none"]}).to_csv(tables / "intervention.csv", index=False)
    (tables / "intervention_settings.json").write_text(_settings(old))
    assert run_intervention(_ctx(old), SimpleNamespace(units=[]), tmp_path)["condition"].tolist() == ["none"]
    with pytest.raises(_Recompute):  # the redo for draws=3 is "killed" as it starts
        run_intervention(_ctx(new), SimpleNamespace(units=[]), tmp_path)
    assert not (tables / "intervention_settings.json").exists()
    with pytest.raises(_Recompute):  # ... so draws=2 again redoes the table too
        run_intervention(_ctx(old), SimpleNamespace(units=[]), tmp_path)


def test_a_bad_export_path_fails_before_any_stage(world_cache: str, tmp_path: Path, capsys) -> None:
    """Before: the path was found bad only by the export, after every other stage had run
    (preflight needs the tiny world: built once per session, see conftest)."""
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "out"
    line = one_error(["study", "smoke", "-q", "--output-dir", str(out), "--set", "export.enabled=true",
                      "--set", f"export.path={tmp_path / 'afile'}"], capsys)
    assert line == f"error: export.path {tmp_path / 'afile'} is a file; give a folder for the release"
    assert not out.exists()


@pytest.mark.parametrize("dry", [True, False])
def test_an_empty_recipe_fails_on_the_budget_before_building_the_world(tmp_path: Path, capsys, monkeypatch,
                                                                       dry: bool) -> None:
    """Before: the default world was built (287 s), even for --dry-run, before the budget error."""
    def build_world(*a, **k):
        raise AssertionError("the world was built")

    monkeypatch.setattr(world_module, "build_world", build_world)
    (tmp_path / "empty.yaml").write_text("")
    argv = ["study", str(tmp_path / "empty.yaml"), "--output-dir", str(tmp_path / "out")]
    line = one_error(argv + (["--dry-run"] if dry else []), capsys)
    n = WorldConfig().n_train_docs // 2 * 63  # en documents x tokens after BOS, worked out by hand
    assert line.startswith(f"error: data.train_tokens_per_lang = 50,000,000 is larger than the corpus of the toy "
                           f"world: its 10,000 train documents in 'en' hold at most {n:,} tokens")
    assert not (tmp_path / "out").exists()


def test_report_names_a_layer_whose_features_table_was_truncated(tmp_path: Path, capsys) -> None:
    """Before: a pyarrow traceback (`study` checked the recorded checksums, `report` never did)."""
    study = fake_study(tmp_path / "study")
    ldir = study / "units" / "toy" / "iter_0000010" / "L02"
    table = ldir / "features.parquet"
    pd.DataFrame({"feature": range(16), "class": ["en"] * 16}).to_parquet(table)
    write_unit_summary(ldir, json.loads((ldir / "summary.json").read_text()))
    assert layer_finished(ldir)
    table.write_bytes(table.read_bytes()[:100])
    line = one_error(["report", str(study)], capsys)
    assert line == (f"error: {ldir}: features.parquet changed on disk since layer 2 of toy/iter_0000010 finished "
                    "(truncated or edited): the layer is damaged; rerun the study to repair it (it redoes only "
                    "damaged layers), then the report")
    assert not layer_finished(ldir)  # the same rule: the study's rerun redoes this layer


def test_report_on_a_file_says_it_is_a_file(tmp_path: Path, capsys) -> None:
    """Before: 'study folder ... does not exist'."""
    (tmp_path / "recipe.yaml").write_text("name: x\n")
    line = one_error(["report", str(tmp_path / "recipe.yaml")], capsys)
    assert line == f"error: {tmp_path / 'recipe.yaml'} is a file, not a study folder; pass the output_dir of a study"
