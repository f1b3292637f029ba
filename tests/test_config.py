"""Recipe schema: every shipped recipe validates; bad fields are named in the error."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from sae_lens.saes.sae import SAEMetadata

from sae_bilingual.config import (AnalysisSpec, DataSpec, InterventionSpec, Recipe, SAESpec, dump_recipe, from_dict,
                                   load_recipe)
from sae_bilingual.errors import ConfigError
from sae_bilingual.sae.topk_config import PaperTopKSAEConfig, PaperTopKTrainingSAEConfig
from sae_bilingual.study.preflight import check_k_below_n
from tests.bad_input_fixtures import REPO, SMOKE, names_problem_and_fix, recipe

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_shipped_recipes_validate(path: Path) -> None:
    recipe = load_recipe(path)
    assert recipe.models and recipe.output_dir
    assert recipe.expected_gpu_hours is not None, "every recipe states the GPU hours it expects"


def test_round_trip_through_yaml(tmp_path: Path) -> None:
    recipe = load_recipe(RECIPES[0])
    p = tmp_path / "r.yaml"
    p.write_text(dump_recipe(recipe))
    assert load_recipe(p) == recipe


def test_scientific_notation_string_becomes_float() -> None:
    # YAML 1.1 reads `1e-3` (no dot) as a string; the schema accepts it as a number.
    r = from_dict(Recipe, yaml.safe_load("sae: {lr: 1e-3}"))
    assert r.sae.lr == pytest.approx(1e-3)


@pytest.mark.parametrize(
    "data, field",
    [
        ({"sae": {"kk": 3}}, "sae.kk"),
        ({"sae": {"k": "many"}}, "sae.k"),
        ({"models": [{"family": "toy", "layerz": 3}]}, "models[0].layerz"),
        ({"models": [{"layers": 2.5}]}, "models[0].layers"),
        ({"data": {"languages": "en"}}, "data.languages"),
        ({"dtype": "fp8"}, "dtype"),
        ({"intervention": {"enabled": "yes"}}, "intervention.enabled"),
    ],
)
def test_bad_field_is_named(data: dict, field: str) -> None:
    with pytest.raises(ConfigError) as e:
        from_dict(Recipe, data).validate()
    assert str(e.value).startswith(field)


@pytest.mark.parametrize(
    "data, words",
    [
        ({"sae": {"k": 64, "d_sae": 64}}, "sae.k"),
        ({"sae": {"d_sae": 0}}, "sae.d_sae must be positive"),
        ({"data": {"languages": ["en", "en"]}}, "two"),
        ({"sae": {"lr": "fast"}}, "sae.lr"),
        ({"models": []}, "models is empty"),
    ],
)
def test_cross_field_checks(data: dict, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        from_dict(Recipe, data).validate()


def test_missing_recipe_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")


def test_yaml_is_loaded_safely(tmp_path: Path) -> None:
    p = tmp_path / "evil.yaml"
    p.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(p)


@pytest.mark.parametrize("k", [0, 1, 63, 64, 65])
def test_one_k_rule_for_recipe_preflight_and_sae_configs(k: int) -> None:
    """1 <= k < n everywhere: the recipe (d_sae given), the preflight (n = expansion x d_model)
    and both SAE configs accept and refuse the same k (n = 64 in each)."""
    def preflight() -> None:
        recipe = from_dict(Recipe, {"sae": {"expansion": 4}}).validate()
        recipe.sae.k = k  # past the load-time checks: the preflight's own
        check_k_below_n(recipe, 16, "toy")

    checks = {
        "recipe": lambda: from_dict(Recipe, {"sae": {"k": k, "d_sae": 64}}).validate(),
        "preflight": preflight,
        "inference": lambda: PaperTopKSAEConfig(d_in=16, d_sae=64, k=k, metadata=SAEMetadata()),
        "training": lambda: PaperTopKTrainingSAEConfig(d_in=16, d_sae=64, k=k, metadata=SAEMetadata()),
    }
    for name, check in checks.items():
        if 1 <= k < 64:
            check()
            continue
        with pytest.raises(ConfigError) as e:
            check()
        msg = str(e.value)
        assert "sae.k" in msg if name in ("recipe", "preflight") else msg.startswith("k = "), (name, msg)
        if name != "recipe" or k > 0:  # (the recipe refuses k = 0 before it knows n)
            assert "smaller than the number of latents n = 64" in msg, (name, msg)


def test_removed_checkpoint_every_is_named_with_the_fix(tmp_path: Path) -> None:
    p = tmp_path / "old.yaml"
    p.write_text("sae:\n  k: 8\n  checkpoint_every: 0\n")
    with pytest.raises(ConfigError, match=r"sae.checkpoint_every: removed .* delete the line"):
        load_recipe(p)


def test_the_sae_section_is_the_training_config() -> None:
    """Every field the trainer reads comes from the recipe: nothing copied by hand in between."""
    r = from_dict(Recipe, yaml.safe_load("sae: {k: 8, fast: false, fused_adam: false, geometric_median_sample: 64}"))
    assert isinstance(r.sae, SAESpec) and (r.sae.k, r.sae.fast, r.sae.fused_adam) == (8, False, False)
    assert r.sae.geometric_median_sample == 64 and r.sae.n_latents(32) == 16 * 32


@pytest.mark.parametrize("section, field", [
    (lambda: SAESpec(k=0), "sae.k"),
    (lambda: SAESpec(lr=float("nan")), "sae.lr"),
    (lambda: DataSpec(languages=["en", "en"]), "data.languages"),
    (lambda: DataSpec(context=1), "data.context"),
    (lambda: AnalysisSpec(act_threshold=1.0), "analysis.act_threshold"),
    (lambda: AnalysisSpec(n_top_tokens=-1), "analysis.n_top_tokens"),
])
def test_each_section_validates_itself(section, field):
    """A section is checked without a Recipe around it, with the recipe's dotted field name."""
    with pytest.raises(ConfigError, match=re.escape(field)):
        section().validate()


def test_intervention_section_checks_its_conditions_against_the_languages():
    spec = InterventionSpec(enabled=True, conditions=["none", "fr"])
    assert spec.validate(["en", "fr"]) is spec
    with pytest.raises(ConfigError, match="intervention.conditions: 'fr'"):
        spec.validate(["en", "ja"])


# ======== bad inputs (moved from test_bad_inputs.py): recipe validation (config.py, config_*.py)


def test_n_not_positive():
    with pytest.raises(ConfigError) as e:
        recipe(Path("/tmp/x"), **{"sae.expansion": 0})
    names_problem_and_fix(e.value, "sae.expansion", "must be positive", fix=("got 0",))
    with pytest.raises(ConfigError) as e:
        recipe(Path("/tmp/x"), **{"sae.d_sae": -4})
    names_problem_and_fix(e.value, "sae.d_sae", "positive")


def test_k_not_below_n_with_explicit_d_sae():
    with pytest.raises(ConfigError) as e:
        recipe(Path("/tmp/x"), **{"sae.k": 64, "sae.d_sae": 64})
    names_problem_and_fix(e.value, "sae.k = 64", "sae.d_sae = 64", fix=("lower sae.k",))


def test_one_language_in_recipe():
    with pytest.raises(ConfigError) as e:
        recipe(Path("/tmp/x"), **{"data.languages": ["en", "en"]})
    names_problem_and_fix(e.value, "data.languages", "two", fix=("[en, ja]",))


def test_warm_start_needs_the_local_executor():
    with pytest.raises(ConfigError, match="warm_start.*executor: local"):
        load_recipe(REPO / "recipes" / "smoke.yaml", {"sae.warm_start": True, "executor": "ray"})


def test_two_models_with_one_family_name_are_refused_at_load(tmp_path):
    with pytest.raises(ConfigError) as e:
        recipe(tmp_path / "s", models=[{"family": "toy"}, {"family": "toy", "source": str(tmp_path)}])
    names_problem_and_fix(e.value, "models[0]", "models[1]", "units/toy", fix=("name:",))
    with pytest.raises(ConfigError) as e:
        recipe(tmp_path / "s", models=[{"family": "toy"}, {"name": "toy", "family": "toy"}])
    names_problem_and_fix(e.value, "models[0]", "models[1]", fix=("name:",))
    with pytest.raises(ConfigError) as e:
        recipe(tmp_path / "s", models=[{"name": "../up", "family": "toy"}])
    names_problem_and_fix(e.value, "models[0].name", fix=("letters, digits",))


@pytest.mark.parametrize("field,value", [
    ("intervention.draws", 0), ("intervention.ms", [0]), ("intervention.ms", []),
    ("intervention.alphas", []), ("intervention.alphas", [float("nan")]),
    ("intervention.eval_docs_per_lang", 0), ("intervention.max_new_tokens", 0),
    ("intervention.few_shot", -1), ("intervention.translation_pairs", -1),
    ("intervention.conditions", []), ("intervention.mid_checkpoint", -5),
    ("analysis.ce_docs_per_lang", 0), ("analysis.n_examples", -1), ("analysis.n_browser_features", -1),
    ("sae.warmup_steps", -1), ("sae.geometric_median_sample", 0), ("sae.adam_eps", 0.0), ("seed", -1),
])
def test_counts_and_numbers_are_validated_at_load(field, value):
    with pytest.raises(ConfigError) as e:
        recipe(Path("/tmp/x"), **{field: value})
    names_problem_and_fix(e.value, field)


@pytest.mark.parametrize("field,value", [
    ("sae.lr", float("nan")), ("sae.lr", float("inf")), ("sae.lr", -1e-3), ("sae.lr", "nan"),
    ("sae.lr_grid", []), ("sae.lr_grid", [1e-3, float("nan")]), ("sae.lr_grid", [-1e-3]),
    ("sae.lr_grid", [float("inf")]),
])
def test_learning_rates_must_be_finite_and_positive(field, value):
    with pytest.raises(ConfigError) as e:
        recipe(Path("/tmp/x"), **{field: value})
    names_problem_and_fix(e.value, field, fix=("e.g.", "> 0", "positive"))


def test_unknown_intervention_condition_refused_at_load():
    with pytest.raises(ConfigError) as e:
        recipe(Path("/tmp/x"), **{"intervention.conditions": ["none", "en", "fr"]})
    names_problem_and_fix(e.value, "intervention.conditions", "'fr'", fix=("none, en, ja, mixed",))


def test_device_that_is_not_a_device(world, no_lm_no_sae, tmp_path):
    """Before: accepted, then a RuntimeError traceback when the first model loaded."""
    with pytest.raises(ConfigError) as e:
        recipe(tmp_path / "s", device="banana")
    names_problem_and_fix(e.value, "device", "banana", fix=("cpu", "cuda"))
    from sae_bilingual.study.preflight import check_device  # (the preflight's own check)

    with pytest.raises(ConfigError):
        check_device("banana")
    assert not (tmp_path / "s").exists()


def test_recipe_naming_a_program_says_it_runs_it(tmp_path, caplog):
    """intervention.comet_python / comet_model name a program to run and a pickle to load:
    a recipe with them is code, and loading one says so (and the README documents it)."""
    import logging

    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump({**SMOKE, "intervention": {**SMOKE["intervention"],
                                                           "comet_python": "/usr/bin/python3"}}))
    with caplog.at_level(logging.WARNING):
        load_recipe(p)
    msg = " ".join(r.getMessage() for r in caplog.records)
    for word in ("intervention.comet_python", "/usr/bin/python3", "runs", "trust"):
        assert word in msg, f"{word!r} not in the warning: {msg!r}"
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "comet_python" in readme and "code" in readme.split("comet_python", 1)[1][:600]


def test_intervention_fields_are_not_checked_when_it_is_off():
    """An [en, fr] study without the intervention keeps the default (en/ja) conditions."""
    rec = recipe(Path("/tmp/x"), **{"data.languages": ["en", "fr"], "intervention.enabled": False})
    assert rec.intervention.conditions == ["none", "en", "ja", "mixed"]
    with pytest.raises(ConfigError, match="'ja' is not a condition"):
        recipe(Path("/tmp/x"), **{"data.languages": ["en", "fr"]})

