"""The recipe's crosscoder: section: defaults, types and bad values named by field."""

from __future__ import annotations

import pytest

from sae_bilingual.config import Recipe, from_dict
from sae_bilingual.config_crosscoder import EMERGENCE_THRESHOLD, CrosscoderSpec
from sae_bilingual.errors import ConfigError


def _recipe(**cc):
    return from_dict(Recipe, {"crosscoder": cc}).validate()


def test_defaults_off_and_round_trip():
    r = from_dict(Recipe, {}).validate()
    assert r.crosscoder == CrosscoderSpec() and r.crosscoder.enabled is False
    r = _recipe(enabled=True, layers=[2], checkpoints=[0, 5, 11], k=8, lr=0.001, tokens=1000)
    assert r.crosscoder.checkpoints == [0, 5, 11] and r.crosscoder.lr == 0.001
    assert r.crosscoder.emergence_threshold == EMERGENCE_THRESHOLD


@pytest.mark.parametrize("field,value,needle", [
    ("k", 0, "crosscoder.k"), ("batch_size", -1, "crosscoder.batch_size"), ("lr", "grid", "crosscoder.lr"),
    ("lr", -1.0, "crosscoder.lr"), ("emergence_threshold", 1.5, "crosscoder.emergence_threshold"),
    ("checkpoints", [5], "crosscoder.checkpoints"), ("checkpoints", "all", "crosscoder.checkpoints"),
    ("layers", [0], "crosscoder.layers"), ("layers", "first", "crosscoder.layers"),
    ("model", 3, "crosscoder.model"), ("tokens", 0, "crosscoder.tokens"),
])
def test_bad_values_name_the_field(field, value, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        _recipe(enabled=True, **{field: value})


def test_types_checked_even_when_disabled():
    with pytest.raises(ConfigError, match=r"crosscoder\.k"):
        _recipe(k="many")
    with pytest.raises(ConfigError, match=r"crosscoder\.nope"):
        _recipe(nope=1)
