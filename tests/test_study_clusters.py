"""Which embeddings and clusters a study analyses with (analysis.embedding_source / cluster_scope)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from sae_bilingual.config import load_recipe
from sae_bilingual.errors import ConfigError
from sae_bilingual.study.layer_analysis import token_clusters
from sae_bilingual.analysis.semantic import TokenGraph, token_graph_from_embeddings
from sae_bilingual.data.store import Labels
from sae_bilingual.study.context import StudyContext
from sae_bilingual.study.plan import plan_study

SMOKE = Path(__file__).resolve().parents[1] / "recipes" / "smoke.yaml"


def _labels(token_ids: np.ndarray) -> Labels:
    t = torch.as_tensor(token_ids)
    z = torch.zeros_like(t)
    return Labels(lang=z, token_id=t, doc_id=z, position=z + 1)


def _embeddings(root: Path, iteration: int) -> torch.Tensor:
    tensors = {}
    for f in sorted((root / f"iter_{iteration:07d}").glob("*.safetensors")):
        tensors.update(load_file(str(f)))
    return tensors["model.embed_tokens.weight"].float()


def test_named_embedding_model_is_used(world_cache) -> None:
    ctx = StudyContext(load_recipe(SMOKE), progress=False)
    plan = plan_study(ctx.recipe, ctx)
    root = Path(ctx.world.root)
    first = plan.units[0].iteration
    ids = np.arange(3, 60)
    # embedding_source: model, pointing at the world's FIRST checkpoint as a local root
    named = load_recipe(SMOKE, {"analysis.embedding_source": "model",
                                "analysis.embedding_model": {"family": "toy", "source": str(root), "checkpoint": first}})
    got = token_clusters(StudyContext(named, progress=False), plan.units[-1], _labels(ids))
    assert isinstance(got.embeddings, TokenGraph) and got.ground_truth is not None
    want = token_graph_from_embeddings(_embeddings(root, first), got.threshold, token_ids=ids)
    np.testing.assert_array_equal(got.embeddings.indptr, want.indptr)
    np.testing.assert_array_equal(got.embeddings.indices, want.indices)
    # the default ('final') uses the last checkpoint's embeddings, which differ after training
    final = token_clusters(ctx, plan.units[0], _labels(ids))
    last = plan.units[-1].iteration
    ref = token_graph_from_embeddings(_embeddings(root, last), final.threshold, token_ids=ids)
    np.testing.assert_array_equal(final.embeddings.indices, ref.indices)
    assert not np.array_equal(final.embeddings.indices, got.embeddings.indices)
    # the global scope gives one partition of the vocabulary instead of a graph
    glob = token_clusters(StudyContext(load_recipe(SMOKE, {"analysis.cluster_scope": "global"}), progress=False),
                          plan.units[0], _labels(ids))
    assert isinstance(glob.embeddings, np.ndarray) and glob.embeddings.ndim == 1


@pytest.mark.parametrize("overrides", [
    {"analysis.embedding_source": "model"},
    {"analysis.embedding_model": {"family": "llm-jp-3-3.7b"}},
])
def test_embedding_model_and_source_go_together(overrides) -> None:
    with pytest.raises(ConfigError, match="embedding_model"):
        load_recipe(SMOKE, overrides)
