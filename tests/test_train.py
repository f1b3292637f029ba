"""Brief training on a tiny random model: loss falls, FVU reported, saved SAEs load."""

from __future__ import annotations

import logging

import pytest
import torch
from datasets import Dataset
from sae_lens import SAE
from transformer_lens import HookedTransformer, HookedTransformerConfig

from sae_bilingual.corpus import make_windows
from sae_bilingual.sae import PaperTopKSAE
from sae_bilingual.store import ActivationStore, collect_activations
from sae_bilingual.train import SAETrainConfig, evaluate_sae, lr_grid, train_saes

log = logging.getLogger(__name__)


def _world():
    torch.manual_seed(0)
    cfg = HookedTransformerConfig(n_layers=2, d_model=32, n_ctx=64, d_head=8, n_heads=4, d_vocab=50,
                                  act_fn="gelu", normalization_type="LN")
    model = HookedTransformer(cfg).eval()
    g = torch.Generator().manual_seed(1)
    ids = [[1] + torch.randint(3, 50, (63,), generator=g).tolist() for _ in range(80)]
    ds = Dataset.from_dict({"input_ids": ids, "lang": ["en", "ja"] * 40, "doc_id": list(range(80))})
    return model, make_windows(ds, None, context=64)


def test_train_two_hooks_lockstep_and_eval(tmp_path):
    model, w = _world()
    hooks = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]  # middle layer = paper layer 1
    train_w, eval_w = w.subset(slice(0, 64)), w.subset(slice(64, 80))
    store = ActivationStore(model, train_w, hooks, batch_size=128, buffer_vectors=1024, lm_batch_size=16)
    cfg = SAETrainConfig(k=8, expansion=4, lr=3e-3, batch_size=128, total_steps=150)
    saes = train_saes(store, hooks, cfg, {h: {"model_name": "tiny"} for h in hooks}, save_dir=tmp_path)
    acts, _ = collect_activations(model, eval_w, hooks)
    for h in hooks:
        sae = saes[h]
        assert torch.allclose(sae.W_dec.norm(dim=-1), torch.ones(sae.cfg.d_sae), atol=1e-5)
        m = evaluate_sae(sae, acts[h], model, eval_w)
        log.warning("tiny model %s: %s", h, m)
        print(h, m)
        assert m["fvu"] < 0.5 and m["l0"] == 8
        assert all(map(lambda v: v == v, m.values()))  # random model: zero-ablation need not hurt
        loaded = SAE.load_from_disk(tmp_path / h)
        assert isinstance(loaded, PaperTopKSAE) and loaded.cfg.metadata.model_name == "tiny"
        assert torch.equal(loaded.W_enc, sae.W_enc)
        # a clean loss carried over from an earlier layer gives the same metrics
        again = evaluate_sae(sae, acts[h], model, eval_w, clean_ce=m["ce_loss_clean"])
        assert again["ce_loss_sae"] == pytest.approx(m["ce_loss_sae"], rel=1e-6)
        assert again["ce_recovered"] == pytest.approx(m["ce_recovered"], rel=1e-6)


def test_lr_grid_picks_min():
    model, w = _world()
    hook = "blocks.0.hook_resid_post"
    acts, _ = collect_activations(model, w.subset(slice(64, 80)), [hook])
    cfg = SAETrainConfig(k=4, expansion=2, batch_size=64, total_steps=30)
    df, best = lr_grid(lambda: ActivationStore(model, w.subset(slice(0, 32)), [hook], batch_size=64,
                                               buffer_vectors=512), hook, cfg, acts[hook], lrs=(1e-5, 3e-3))
    assert list(df["lr"]) == [1e-5, 3e-3] and best == df.loc[df["val_mse"].idxmin(), "lr"] == 3e-3
