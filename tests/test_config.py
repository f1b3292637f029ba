"""Recipe schema: every shipped recipe validates; bad fields are named in the error."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sae_bilingual.config import Recipe, dump_recipe, from_dict, load_recipe
from sae_bilingual.errors import ConfigError

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
