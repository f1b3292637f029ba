"""A family's checkpoint as HookedSAETransformer (issue 28, part 4): same logits as the
HookedTransformer our loaders return, and our SAEs splice in with run_with_saes."""

from __future__ import annotations

import pytest
import torch
from sae_lens import HookedSAETransformer
from transformer_lens import HookedTransformer

import sae_bilingual
from sae_bilingual.errors import ConfigError
from sae_bilingual.models.registry import get_family
from sae_bilingual.sae.model import make_metadata, new_paper_sae
from sae_bilingual.world.build import build_world
from sae_bilingual.world.config import WorldConfig

HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def toy(world_cache):
    world = build_world(WorldConfig.tiny(), cache_dir=world_cache, progress=False)
    fam = get_family("toy", source=world.root)
    return fam, fam.catalogue().final


@torch.no_grad()
def test_same_logits_as_the_hooked_transformer_and_run_with_saes(toy):
    fam, ck = toy
    ref = fam.load(ck)
    hst = sae_bilingual.load_hooked_sae_transformer(fam, ck.iteration)
    assert isinstance(hst, HookedSAETransformer) and type(ref) is HookedTransformer
    toks = torch.tensor([[ref.tokenizer.bos_token_id, 5, 9, 12, 7, 30, 4, 8]])
    assert torch.equal(hst(toks), ref(toks))
    torch.manual_seed(0)
    sae = new_paper_sae(ref.cfg.d_model, k=8, d_sae=4 * ref.cfg.d_model, metadata=make_metadata(hook_name=HOOK))
    got, cache = hst.run_with_cache_with_saes(toks, saes=[sae])
    # independent: the SAE's own forward put in place at the hook of the plain HookedTransformer
    want = ref.run_with_hooks(toks, fwd_hooks=[(HOOK, lambda act, hook: sae(act))])
    assert torch.allclose(got, want, atol=1e-5) and not torch.allclose(got, ref(toks), atol=1e-3)
    assert hst.acts_to_saes == {} and torch.equal(hst(toks), ref(toks))  # run_with_saes detaches them
    # README's note: hook_sae_recons is in unit-norm space, hook_sae_output at residual scale
    x = cache[f"{HOOK}.hook_sae_input"]
    rec, out = cache[f"{HOOK}.hook_sae_recons"], cache[f"{HOOK}.hook_sae_output"]
    assert torch.allclose(rec * x.norm(dim=-1, keepdim=True), out, atol=1e-4)


def test_refuses_a_bridge(toy):
    fam, ck = toy
    fam.model_backend = "bridge"
    try:
        with pytest.raises(ConfigError, match="model_backend: hooked"):
            sae_bilingual.load_hooked_sae_transformer(fam, ck)
    finally:
        fam.model_backend = "hooked"
