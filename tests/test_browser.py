"""report/browser.py: the older-study fallback for top tokens reads the study's own threshold."""

from __future__ import annotations

from pathlib import Path

from sae_bilingual.config import Recipe, dump_recipe
from sae_bilingual.config_analysis import AnalysisSpec
from sae_bilingual.report.browser import _top_tokens_from_examples, study_act_threshold

EXAMPLES = [{"tokens": ["a", "b", "c", "d"], "acts": [1.0, 0.8, 0.6, 0.2]}]


def test_top_tokens_follow_the_threshold():
    """At 0.7 of the max (1.0) the tokens above are a, b; at 0.5 also c; at 0.9 only a."""
    assert _top_tokens_from_examples(EXAMPLES, 0.7) == "a | b"
    assert _top_tokens_from_examples(EXAMPLES, 0.5) == "a | b | c"
    assert _top_tokens_from_examples(EXAMPLES, 0.9) == "a"


def test_the_study_threshold_comes_from_its_recipe(tmp_path: Path):
    assert study_act_threshold(tmp_path) == AnalysisSpec().act_threshold  # no recipe.yaml: the default
    recipe = Recipe()
    recipe.analysis.act_threshold = 0.55
    (tmp_path / "recipe.yaml").write_text(dump_recipe(recipe), encoding="utf-8")
    assert study_act_threshold(tmp_path) == 0.55
    (tmp_path / "recipe.yaml").write_text("analysis: [not, a, mapping]\n", encoding="utf-8")
    assert study_act_threshold(tmp_path) == AnalysisSpec().act_threshold
