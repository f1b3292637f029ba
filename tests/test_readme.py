"""The README's recipe blocks marked `<!-- test: recipe -->` load with the recipe loader."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sae_bilingual.config import load_recipe

README = Path(__file__).resolve().parents[1] / "README.md"
_BLOCK = re.compile(r"<!-- test: (\w+) -->\n```(\w+)\n(.*?)\n```", re.S)


def marked_blocks(kind: str) -> list[str]:
    """The text of every fenced block in the README marked `<!-- test: kind -->`."""
    return [body for mark, _lang, body in _BLOCK.findall(README.read_text(encoding="utf-8")) if mark == kind]


def test_readme_has_marked_recipes() -> None:
    assert len(marked_blocks("recipe")) >= 1


@pytest.mark.parametrize("text", marked_blocks("recipe"))
def test_readme_recipe_validates(text: str, tmp_path: Path) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text(text, encoding="utf-8")
    recipe = load_recipe(path)
    iv = recipe.intervention
    assert iv.enabled and iv.pairs_paths and set(iv.pairs_paths) == set(recipe.data.languages)
    assert recipe.data.train_tokens_per_lang == 10_000_000 and recipe.data.eval_tokens_per_lang == 1_000_000
