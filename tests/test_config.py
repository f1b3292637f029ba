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
from sae_bilingual.sae.model import PaperTopKSAEConfig, PaperTopKTrainingSAEConfig
from sae_bilingual.study.preflight import check_k_below_n

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
