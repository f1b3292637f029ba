"""Bad inputs caught while planning the study (sae_bilingual/study/plan.py: layers, checkpoints,
model sources and families, the intervention layer), and the units a plan names.

Moved from the catalogue of bad inputs (tests/bad_input_fixtures.py has its helpers)."""

from __future__ import annotations

from sae_bilingual.errors import CheckpointError, ConfigError
from tests.bad_input_fixtures import snapshot, names_problem_and_fix, recipe, run_fails


def test_layer_out_of_range_fails_in_plan(world, no_lm_no_sae, earlier):
    out, before = earlier
    rec = recipe(out)
    rec.models[0].layers = [1, 7]
    err = run_fails(rec, ConfigError)  # LayerError is a ConfigError
    names_problem_and_fix(err, "layer 7", "out of range", fix=("0..2",))
    assert snapshot(out) == before


def test_checkpoint_not_in_catalogue(world, no_lm_no_sae, earlier):
    out, before = earlier
    rec = recipe(out)
    rec.models[0].checkpoints = [12345]
    err = run_fails(rec, CheckpointError)
    names_problem_and_fix(err, "12345", fix=("available iterations",))
    assert "120" in str(err)  # the valid choices are listed
    assert snapshot(out) == before


def test_model_source_missing(tmp_path, no_lm_no_sae, earlier):
    out, before = earlier
    rec = recipe(out)
    rec.models[0].source = str(tmp_path / "no_such_root")
    err = run_fails(rec, CheckpointError)
    names_problem_and_fix(err, "no_such_root", "does not exist", fix=("pass an existing root",))
    assert snapshot(out) == before


def test_unknown_model_family(no_lm_no_sae, earlier):
    out, before = earlier
    rec = recipe(out)
    rec.models[0].family = "gpt-17"
    err = run_fails(rec, CheckpointError)
    names_problem_and_fix(err, "gpt-17", fix=("registered:", "register_family"))
    assert snapshot(out) == before


def test_intervention_layer_not_analysed(world, no_lm_no_sae, earlier):
    out, before = earlier
    rec = recipe(out)
    rec.models[0].layers = [1]
    rec.intervention.layer = 2
    err = run_fails(rec, ConfigError)
    names_problem_and_fix(err, "intervention.layer 2", fix=("add it to models[0].layers",))
    assert snapshot(out) == before


def test_named_models_get_their_own_units(world, tmp_path):
    from sae_bilingual.study.context import StudyContext
    from sae_bilingual.study.plan import plan_study

    rec = recipe(tmp_path / "s", models=[
        {"name": "toy-a", "family": "toy", "checkpoints": "final", "layers": [1]},
        {"name": "toy-b", "family": "toy", "source": str(world.root), "checkpoints": "final", "layers": [1]},
    ], **{"intervention.enabled": False})
    assert [m.name for m in rec.models] == ["toy-a", "toy-b"]
    plan = plan_study(rec, StudyContext(rec, progress=False))
    assert [u.id for u in plan.units] == ["toy-a/iter_0000120", "toy-b/iter_0000120"]
    assert [u.dir(tmp_path).relative_to(tmp_path).as_posix() for u in plan.units] == [
        "units/toy-a/iter_0000120", "units/toy-b/iter_0000120"]
    text = plan.describe(rec)
    assert "toy-a/iter_0000120" in text and "toy-b/iter_0000120" in text

