"""residuals_at: the residuals TransformerLens caches, from a forward that stops after the deepest hook."""

from __future__ import annotations

import torch

from sae_bilingual.residuals import residuals_at
from tests.test_intervention import N_LAYERS, VOCAB, tiny_model


def test_residuals_equal_run_with_cache_and_later_blocks_do_not_run():
    model = tiny_model(0)
    tokens = torch.randint(0, VOCAB, (3, 7), generator=torch.Generator().manual_seed(0))
    hooks = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    _, cache = model.run_with_cache(tokens)
    ran: list[str] = []
    model.blocks[N_LAYERS - 1].hook_resid_post.add_hook(lambda x, hook: ran.append(hook.name))
    got = residuals_at(model, tokens, hooks)
    assert set(got) == set(hooks)
    for h in hooks:
        torch.testing.assert_close(got[h], cache[h])
        assert not got[h].requires_grad
    assert ran == []  # stopped after block 1 of N_LAYERS
    model.reset_hooks()

