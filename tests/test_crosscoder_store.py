"""Aligned store: slice c is what the ordinary store gives for checkpoint c on the same windows."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from transformer_lens import HookedTransformer, HookedTransformerConfig

from sae_bilingual.data.corpus import make_windows
from sae_bilingual.data.crosscoder_store import aligned_from_slices, collect_aligned, collect_aligned_sets, windows_for_tokens
from sae_bilingual.data.store import Labels, collect_activations
from sae_bilingual.errors import DataError

HOOK = "blocks.1.hook_resid_post"


def _model(seed: int) -> HookedTransformer:
    torch.manual_seed(seed)
    cfg = HookedTransformerConfig(n_layers=2, d_model=16, n_ctx=80, d_head=4, n_heads=4, d_vocab=50,
                                  act_fn="gelu", normalization_type="LN")
    return HookedTransformer(cfg).eval()


@pytest.fixture(scope="module")
def windows():
    g = torch.Generator().manual_seed(1)
    ids = [[1] + torch.randint(3, 50, (int(torch.randint(1, 79, (1,), generator=g)),), generator=g).tolist()
           for _ in range(20)]
    ds = Dataset.from_dict({"input_ids": ids, "lang": ["en", "ja"] * 10, "doc_id": list(range(100, 120))})
    return make_windows(ds, None, context=64)


def test_slice_c_is_the_ordinary_store_of_checkpoint_c(windows):
    seeds = [3, 4, 5]
    loaded: list[int] = []

    def load(c):
        loaded.append(c)
        return _model(seeds[c])

    al = collect_aligned(load, 3, windows, HOOK, lm_batch_size=7)
    assert loaded == [0, 1, 2]  # one at a time, in order
    assert al.rows.shape == (windows.n_vectors, 3 * 16) and al.d_model == 16
    for c, s in enumerate(seeds):
        acts, lab = collect_activations(_model(s), windows, [HOOK], batch_size=5)  # another batching
        assert torch.allclose(al.slice(c), acts[HOOK], atol=1e-6)
        assert torch.equal(al.labels.token_id, lab.token_id) and torch.equal(al.labels.doc_id, lab.doc_id)
        assert torch.equal(al.labels.position, lab.position) and torch.equal(al.labels.lang, lab.lang)
        assert torch.allclose(al.slice(c).norm(dim=1), torch.ones(len(lab)), atol=1e-5)  # each slice unit-norm


def test_batches_serve_every_row_once_per_pass():
    M = 100
    lab = Labels(*(torch.arange(M) for _ in range(4)))
    al = aligned_from_slices([torch.arange(M, dtype=torch.float32)[:, None], -torch.ones(M, 1)], lab)
    it = al.batches(16, seed=0)
    got = torch.cat([next(it) for _ in range(12)])  # 192 rows: one full pass + 92 of the next
    assert got.shape == (192, 2) and bool((got[:, 1] == -1).all())
    assert sorted(got[:M, 0].long().tolist()) == list(range(M))  # the first pass: every row once
    assert len(set(got[M:, 0].long().tolist())) == 92


def test_windows_for_tokens_balanced_and_prefix(windows):
    w = windows_for_tokens(windows, 200)
    n = (w.lengths - 1)
    for i in range(2):  # per language: the fewest leading windows reaching 100 vectors
        ni = n[w.lang == i]
        assert int(ni.sum()) >= 100 and int(ni[:-1].sum()) < 100
    assert windows_for_tokens(windows, None) is windows


def test_other_d_model_refused(windows):
    def load(c):
        if c == 0:
            return _model(0)
        torch.manual_seed(1)
        return HookedTransformer(HookedTransformerConfig(n_layers=2, d_model=8, n_ctx=80, d_head=4, n_heads=2,
                                                         d_vocab=50, act_fn="gelu", normalization_type="LN")).eval()

    with pytest.raises(DataError, match="d_model"):
        collect_aligned(load, 2, windows, HOOK)


def test_sets_load_each_checkpoint_once(windows):
    loaded: list[int] = []

    def load(c):
        loaded.append(c)
        return _model(10 + c)

    a, b = collect_aligned_sets(load, 2, [windows, windows.subset(slice(0, 5))], HOOK)
    assert loaded == [0, 1]
    assert torch.equal(b.rows, a.rows[:b.rows.shape[0]])  # the first 5 windows' rows, same values
