"""The README's marked blocks: `<!-- test: recipe -->` load with the recipe loader, `<!-- test: run -->` run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

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


def test_readme_has_runnable_blocks() -> None:
    assert len(marked_blocks("run")) >= 1


@pytest.mark.parametrize("text", marked_blocks("run"))
def test_readme_python_runs(text: str, world_cache: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The block's own text, executed as a user would (in an empty folder, the suite's world cache)."""
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(text, "README.md", "exec"), namespace)
    if "injected" in namespace:  # the FeatureInjection example: the hook changed the mid model's logits
        clean, injected = namespace["clean"], namespace["injected"]
        assert clean.shape == injected.shape and not torch.allclose(clean, injected)
        assert namespace["final"] is not namespace["mid"]
    if "LanguageModelSAETrainingRunner" in namespace:  # the runner example: the paper's decoder renormalisation
        norms = namespace["sae"].W_dec.detach().norm(dim=-1)
        assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
        assert (tmp_path / "runs" / "runner-L01").is_dir()
    if "fvu" in namespace:  # the HookedSAETransformer example: a finite FVU at residual scale
        assert 0.0 < namespace["fvu"] < 10.0
