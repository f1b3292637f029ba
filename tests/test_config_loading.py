"""Bad inputs: recipe parsing (sae_bilingual/config_loading.py: from_dict, YAML, --set paths).

Moved from the catalogue of bad inputs (tests/bad_input_fixtures.py has its helpers)."""

from __future__ import annotations

import pytest

from sae_bilingual.config import Recipe, from_dict, load_recipe
from sae_bilingual.errors import ConfigError
from tests.bad_input_fixtures import REPO, names_problem_and_fix


def test_unknown_recipe_field_names_the_valid_ones():
    with pytest.raises(ConfigError) as e:
        from_dict(Recipe, {"sae": {"kk": 8}})
    names_problem_and_fix(e.value, "sae.kk", "unknown field", fix=("valid fields", "k, expansion"))


def test_wrong_type_names_field_and_expected_type():
    with pytest.raises(ConfigError) as e:
        from_dict(Recipe, {"sae": {"k": "eight"}})
    names_problem_and_fix(e.value, "sae.k", "'eight'", fix=("expected an integer",))


def test_wrong_literal_lists_choices():
    with pytest.raises(ConfigError) as e:
        from_dict(Recipe, {"executor": "kubernetes"})
    names_problem_and_fix(e.value, "executor", "kubernetes", fix=("'local'",))


def test_recipe_yaml_with_python_tag_is_refused_by_safe_load(tmp_path):
    """Security: YAML is read with safe_load, so a !!python tag cannot run code."""
    p = tmp_path / "evil.yaml"
    marker = tmp_path / "pwned"
    p.write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError) as e:
        load_recipe(p)
    names_problem_and_fix(e.value, str(p), "not valid YAML")
    assert not marker.exists()


def test_set_indexes_into_lists():
    """`--set models.0.layers=1` used to crash with AttributeError ('list' has no setdefault)."""
    smoke = REPO / "recipes" / "smoke.yaml"
    assert load_recipe(smoke, {"models.0.layers": 1}).models[0].layers == 1
    for bad, word in (({"models.3.layers": 1}, "models.3"), ({"sae.k.x": 1}, "sae.k"),
                      ({"models.first.layers": 1}, "models.first")):
        with pytest.raises(ConfigError) as e:
            load_recipe(smoke, bad)
        names_problem_and_fix(e.value, word, fix=("index", "mapping"))

