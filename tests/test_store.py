"""Store: unit-norm, no BOS, first 64 tokens, labels aligned through shuffles, cache."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from transformer_lens import HookedTransformer, HookedTransformerConfig

from sae_bilingual.data.corpus import make_windows
from sae_bilingual.errors import DataError
from sae_bilingual.data.store import ActivationStore, collect_activations

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


def _reference(model, w, hooks):
    """Every (doc, position) -> its unit-norm vector per hook, from one plain collection."""
    acts, lab = collect_activations(model, w, hooks, batch_size=len(w))
    keys = list(zip(lab.doc_id.tolist(), lab.position.tolist()))
    return {h: dict(zip(keys, acts[h])) for h in hooks}, dict(zip(keys, lab.token_id.tolist()))


@pytest.mark.parametrize("cached", [False, True])
def test_every_served_vector_is_right_and_epochs_never_mix(world, tmp_path, cached):
    """Three epochs in odd-sized batches: each block of n_vectors served is one whole epoch
    (every (doc, position) once), every vector equals the direct forward's, unit norm, no BOS."""
    model, w = world
    ref, tok = _reference(model, w, HOOKS)
    kw = dict(cache_dir=tmp_path, cache_id={"x": 1}) if cached else {}
    st = ActivationStore(model, w, HOOKS, batch_size=37, buffer_vectors=150, lm_batch_size=5, seed=1,
                         with_labels=True, **kw)
    n = w.n_vectors
    keys, vecs = [], {h: [] for h in HOOKS}
    while len(keys) < 3 * n:
        acts, lab = next(st)
        assert len(lab) == 37 and st._size() <= 150
        keys += list(zip(lab.doc_id.tolist(), lab.position.tolist()))
        assert all(tok[k] == t for k, t in zip(keys[-37:], lab.token_id.tolist()))
        for h in HOOKS:
            vecs[h].append(acts[h])
    assert min(p for _, p in keys) >= 1  # BOS is never served
    for e in range(3):
        assert sorted(keys[e * n:(e + 1) * n]) == sorted(ref[HOOKS[0]]), f"epoch {e} is not every vector once"
    assert keys[:n] != sorted(keys[:n]) and keys[:n] != keys[n:2 * n]  # shuffled, anew each epoch
    for h in HOOKS:
        got = torch.cat(vecs[h])
        want = torch.stack([ref[h][k] for k in keys])
        assert torch.allclose(got, want, atol=1e-5)
        assert torch.allclose(got.norm(dim=-1), torch.ones(len(keys)), atol=1e-5)


def test_buffer_is_allocated_once_and_refilled_in_place(world):
    model, w = world
    st = ActivationStore(model, w, HOOKS, batch_size=32, buffer_vectors=200, lm_batch_size=3, seed=0)
    next(st)
    ptrs = {h: st._buf[h].data_ptr() for h in HOOKS}
    refills = 0
    for _ in range(3 * w.n_vectors // 32):
        before = st._ready
        next(st)
        refills += st._ready > before
        assert {h: st._buf[h].data_ptr() for h in HOOKS} == ptrs
        assert all(st._buf[h].shape == (200, 16) for h in HOOKS)
    assert refills >= 5


def test_batches_of_a_hook_do_not_depend_on_the_other_hooks(world):
    """A unit's layers may train in groups (memplan.py): each group's store must serve a hook
    exactly the batches a store of all hooks would."""
    model, w = world
    both = ActivationStore(model, w, HOOKS, batch_size=40, buffer_vectors=300, lm_batch_size=3, seed=5,
                           with_labels=True)
    alone = ActivationStore(model, w, HOOKS[1:], batch_size=40, buffer_vectors=300, lm_batch_size=3, seed=5,
                            with_labels=True)
    for _ in range(2 * w.n_vectors // 40):
        (a, la), (b, lb) = next(both), next(alone)
        assert torch.equal(a[HOOKS[1]], b[HOOKS[1]]) and torch.equal(la.doc_id, lb.doc_id)
        assert torch.equal(la.position, lb.position)


def test_unshuffled_store_serves_window_order(world):
    model, w = world
    _, ref = collect_activations(model, w, HOOKS[:1], batch_size=7)
    st = ActivationStore(model, w, HOOKS[:1], batch_size=25, buffer_vectors=120, lm_batch_size=4, seed=0,
                         with_labels=True, shuffle=False)
    docs, pos = [], []
    while len(docs) < w.n_vectors:
        _, lab = next(st)
        docs += lab.doc_id.tolist()
        pos += lab.position.tolist()
    assert docs[:w.n_vectors] == ref.doc_id.tolist() and pos[:w.n_vectors] == ref.position.tolist()


def test_a_cached_store_runs_the_lm_at_its_first_batch_not_in_its_constructor(world, tmp_path):
    model, w = world
    st = ActivationStore(model, w, HOOKS, batch_size=16, buffer_vectors=120, lm_batch_size=4, cache_dir=tmp_path,
                         cache_id={"x": 2})
    assert st.shard_dir is not None and not st.shard_dir.exists()
    next(st)
    assert (st.shard_dir / "index.json").is_file()

