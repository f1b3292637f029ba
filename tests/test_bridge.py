"""model_backend 'bridge': TransformerBridge gives our HookedTransformer's logits and residuals."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from transformer_lens import HookedTransformer
from transformer_lens.model_bridge import TransformerBridge

from sae_bilingual.config import Recipe
from sae_bilingual.config_loading import from_dict
from sae_bilingual.data.corpus import make_windows
from sae_bilingual.data.store import iter_activations
from sae_bilingual.errors import CheckpointError, ConfigError
from sae_bilingual.models import get_family
from sae_bilingual.models.bridge import bridge_from_hf_model
from sae_bilingual.models.registry import HFLlamaFamily
from sae_bilingual.sae.metrics import ce_metrics_many
from sae_bilingual.sae.model import make_metadata, new_paper_sae
from sae_bilingual.study.context import StudyContext
from tests.test_families import VOCAB, make_root, tiny_model
from tests.test_hf_study import word_tokenizer


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("bridge")
    word_tokenizer().save_pretrained(base / "tok")
    return {"llama": make_root(base / "llama", "llama", ["iter_0000010"]),
            "neox": make_root(base / "neox", "neox", ["step10"]), "tok": base / "tok"}


def _family(roots, arch: str, backend: str):
    if arch == "llama":  # the toy / LLM-jp loader (our own Llama conversion)
        fam = HFLlamaFamily(name="tiny", source=roots["llama"], tokenizer_source=str(roots["tok"]),
                            tokens_per_iteration=1)
    else:  # family: hf (TransformerLens's converters)
        fam = get_family("hf", source=str(roots["neox"]), tokenizer=str(roots["tok"]), tokens_per_step=1)
    fam.model_backend = backend
    return fam


@pytest.mark.parametrize("arch", ["llama", "neox"])
def test_bridge_equals_hooked_transformer(roots, arch: str) -> None:
    hooked, bridge = (_family(roots, arch, b).load() for b in ("hooked", "bridge"))
    assert isinstance(hooked, HookedTransformer) and isinstance(bridge, TransformerBridge)
    assert (bridge.cfg.n_layers, bridge.cfg.d_model, bridge.cfg.d_vocab) == (2, 64, VOCAB)
    toks = torch.randint(3, VOCAB, (3, 12), generator=torch.Generator().manual_seed(1))
    toks[:, 0] = 1
    with torch.no_grad():
        lh, ch = hooked.run_with_cache(toks)
        lb, cb = bridge.run_with_cache(toks)
    assert lh.shape == lb.shape == (3, 12, VOCAB) and lh.abs().max() > 0.1
    assert (lh - lb).abs().max() < 1e-5, (lh - lb).abs().max()
    names = [f"blocks.{b}.hook_resid_{w}" for b in range(2) for w in ("pre", "post")]
    for n in names:
        assert (ch[n] - cb[n]).abs().max() < 1e-5, n
    # the study's own path: one forward per batch, stopped after the deepest hook, unit-norm vectors
    g = torch.Generator().manual_seed(2)
    ids = [[1] + torch.randint(3, VOCAB, (15,), generator=g).tolist() for _ in range(8)]
    w = make_windows(Dataset.from_dict({"input_ids": ids, "lang": ["en", "ja"] * 4}), None, context=16)
    hooks = ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_post"]
    (ah, lab_h), = list(iter_activations(hooked, w, hooks, batch_size=8))
    (ab, lab_b), = list(iter_activations(bridge, w, hooks, batch_size=8))
    for h in hooks:
        assert ah[h].shape == (8 * 15, 64) and (ah[h] - ab[h]).abs().max() < 1e-5, h
    assert torch.equal(lab_h.lang, lab_b.lang)
    # CE recovered restarts the forward at the hook: the bridge reruns from the embedding instead
    torch.manual_seed(3)
    saes = [new_paper_sae(64, k=4, d_sae=128, metadata=make_metadata(hook_name=h)) for h in hooks[1:]]
    ce_h, ce_b = (ce_metrics_many(m, saes, w)[hooks[1]] for m in (hooked, bridge))
    for key in ("ce_loss_clean", "ce_loss_sae", "ce_loss_zero"):
        assert ce_h[key] == pytest.approx(ce_b[key], rel=1e-5), key
    assert abs(ce_h["ce_loss_sae"] - ce_h["ce_loss_clean"]) > 20 * 1e-5 * ce_h["ce_loss_clean"]  # the splice shows


def test_recipe_asks_for_the_bridge(roots) -> None:
    rec = from_dict(Recipe, {"models": [{"family": "hf", "source": str(roots["neox"]), "tokenizer": str(roots["tok"]),
                                         "tokens_per_step": 1, "model_backend": "bridge"}]})
    assert isinstance(StudyContext(rec, progress=False).family(0).load(), TransformerBridge)
    with pytest.raises(ConfigError, match="model_backend"):
        from_dict(Recipe, {"models": [{"family": "hf", "source": "x", "model_backend": "vllm"}]})


def test_bridge_needs_a_tokenizer() -> None:
    with pytest.raises(CheckpointError, match="needs a tokenizer"):
        bridge_from_hf_model(tiny_model("llama"), model_name="tiny")
