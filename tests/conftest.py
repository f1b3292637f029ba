"""Suite-wide settings: one intra-op thread keeps tiny-model tests fast on 2 shared cores."""

from __future__ import annotations

import os

import torch

os.environ.setdefault("MPLBACKEND", "Agg")
torch.set_num_threads(1)


import pytest  # noqa: E402

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]

# The bad-input catalogue's fixtures (world, no_lm_no_sae, earlier, sae_dir, offline): a test module
# that defines a fixture of the same name keeps its own.
pytest_plugins = ["tests.bad_input_fixtures"]


@pytest.fixture(scope="session")
def world_cache(tmp_path_factory) -> str:
    """One toy-world cache for the whole session (the tiny world builds once, ~40 s)."""
    cache = os.environ.get("SAE_BILINGUAL_CACHE") or str(tmp_path_factory.mktemp("cache"))
    os.environ["SAE_BILINGUAL_CACHE"] = cache
    return cache


@pytest.fixture(scope="session")
def smoke_study(world_cache, tmp_path_factory):
    """The smoke recipe run once, uninterrupted, in-process: the reference other tests compare to."""
    from sae_bilingual.config import load_recipe
    from sae_bilingual.study.run import run_study

    out = tmp_path_factory.mktemp("smoke") / "study"
    recipe = load_recipe(REPO / "recipes" / "smoke.yaml", {"output_dir": str(out)})
    report = run_study(recipe, progress=False)
    return out, report
