"""Store: unit-norm, no BOS, first 64 tokens, labels aligned through shuffles, cache."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from transformer_lens import HookedTransformer, HookedTransformerConfig

from sae_bilingual.corpus import make_windows
from sae_bilingual.errors import DataError
from sae_bilingual.store import ActivationStore, collect_activations

HOOKS = ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_post"]


@pytest.fixture(scope="module")
def world():
    torch.manual_seed(0)
    cfg = HookedTransformerConfig(n_layers=3, d_model=16, n_ctx=80, d_head=4, n_heads=4, d_vocab=50,
                                  act_fn="gelu", normalization_type="LN")
    model = HookedTransformer(cfg).eval()
    g = torch.Generator().manual_seed(1)
    ids = [[1] + torch.randint(3, 50, (int(torch.randint(1, 79, (1,), generator=g)),), generator=g).tolist()
           for _ in range(30)]
    ds = Dataset.from_dict({"input_ids": ids, "lang": ["en", "ja"] * 15, "doc_id": list(range(100, 130))})
    return model, make_windows(ds, None, context=64)


def _direct(model, windows, hook, doc, pos):
    r = int((windows.doc_id == doc).nonzero()[0, 0])
    _, cache = model.run_with_cache(windows.tokens[r:r + 1], names_filter=[hook])
    v = cache[hook][0, pos]
    return v / v.norm(), int(windows.tokens[r, pos])


def test_collect_unit_norm_no_bos_first_64(world):
    model, w = world
    acts, lab = collect_activations(model, w, HOOKS, batch_size=7)
    assert len(lab) == w.n_vectors == int((w.lengths - 1).sum())
    assert lab.position.min() >= 1 and lab.position.max() <= 63
    for h in HOOKS:
        assert torch.allclose(acts[h].norm(dim=-1), torch.ones(len(lab)), atol=1e-5)
    # positions of each document are exactly 1..len-1
    for r in range(3):
        sel = lab.doc_id == w.doc_id[r]
        assert lab.position[sel].tolist() == list(range(1, int(w.lengths[r])))
    v, tok = _direct(model, w, HOOKS[1], int(lab.doc_id[5]), int(lab.position[5]))
    assert torch.allclose(v, acts[HOOKS[1]][5], atol=1e-5) and tok == int(lab.token_id[5])


def test_shuffled_store_labels_aligned_and_bounded(world):
    model, w = world
    st = ActivationStore(model, w, HOOKS, batch_size=40, buffer_vectors=300, lm_batch_size=3, seed=3,
                         with_labels=True)
    seen = 0
    for _ in range(int(w.n_vectors * 1.5) // 40):
        acts, lab = next(st)
        assert st._size() <= 300
        assert acts[HOOKS[0]].shape == (40, 16) and len(lab) == 40
        seen += 40
    assert st.epoch >= 1
    assert not (lab.position[:-1] + 1 == lab.position[1:]).all()  # shuffled
    for j in range(4):
        for h in HOOKS:
            v, tok = _direct(model, w, h, int(lab.doc_id[j]), int(lab.position[j]))
            assert torch.allclose(v, acts[h][j], atol=1e-5) and tok == int(lab.token_id[j])
    st2 = ActivationStore(model, w, HOOKS, batch_size=40, buffer_vectors=300, lm_batch_size=3, seed=3,
                          with_labels=True)
    for _ in range(int(w.n_vectors * 1.5) // 40):
        acts2, lab2 = next(st2)
    assert torch.equal(lab.doc_id, lab2.doc_id) and torch.equal(acts[HOOKS[1]], acts2[HOOKS[1]])


def test_one_epoch_covers_every_vector_once(world):
    model, w = world
    st = ActivationStore(model, w, HOOKS[:1], batch_size=1, buffer_vectors=100, lm_batch_size=4, seed=0,
                         with_labels=True)
    keys = set()
    for _ in range(w.n_vectors):
        _, lab = next(st)
        keys.add((int(lab.doc_id[0]), int(lab.position[0])))
    assert len(keys) == w.n_vectors


def test_cache_skips_lm(world, tmp_path):
    model, w = world
    kw = dict(batch_size=32, buffer_vectors=400, seed=0, cache_dir=tmp_path, cache_id={"ckpt": "x"})
    a = next(ActivationStore(model, w, HOOKS, **kw))

    class Broken:
        def run_with_hooks(self, *a, **k):
            raise AssertionError("LM should not run on a cache hit")

    b = next(ActivationStore(Broken(), w, HOOKS, **kw))
    assert torch.equal(a[HOOKS[1]], b[HOOKS[1]])


def test_nan_names_hook_doc_position(world):
    model, w = world

    def poison(act, hook):
        act[0, 2] = float("nan")
        return act

    model.add_hook(HOOKS[1], poison)
    try:
        with pytest.raises(DataError, match=rf"{HOOKS[1]}, document {int(w.doc_id[0])}, position 2"):
            collect_activations(model, w.subset(slice(0, 2)), HOOKS)
    finally:
        model.reset_hooks()
