"""Streamed evaluation == the in-memory path: same codes, same feature table, same metrics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from datasets import Dataset
from transformer_lens import HookedTransformer, HookedTransformerConfig

from sae_bilingual.analysis.codes import encode_to_codes
from sae_bilingual.analysis.features import analyse_features
from sae_bilingual.analysis.stream import stream_eval
from sae_bilingual.data.corpus import make_windows
from sae_bilingual.data.store import collect_activations, iter_activations
from sae_bilingual.sae.metrics import ReconstructionStats, reconstruction_metrics
from sae_bilingual.sae.model import new_paper_sae

HOOKS = ["blocks.0.hook_resid_post", "blocks.2.hook_resid_post"]


@pytest.fixture(scope="module")
def world():
    torch.manual_seed(0)
    cfg = HookedTransformerConfig(n_layers=3, d_model=32, n_ctx=80, d_head=8, n_heads=4, d_vocab=60,
                                  act_fn="gelu", normalization_type="LN")
    model = HookedTransformer(cfg).eval()
    g = torch.Generator().manual_seed(3)
    # lengths 2..64: some windows hold a single vector, so LM batches end on tiny remainders
    ids = [[1] + torch.randint(3, 60, (int(torch.randint(1, 64, (1,), generator=g)),), generator=g).tolist()
           for _ in range(41)]
    ds = Dataset.from_dict({"input_ids": ids, "lang": ["en", "ja"] * 20 + ["en"], "doc_id": list(range(41))})
    saes = {}
    for i, h in enumerate(HOOKS):
        torch.manual_seed(10 + i)
        saes[h] = new_paper_sae(32, k=4, d_sae=96).eval()
    return model, make_windows(ds, None, context=64), saes


def test_iter_activations_batches_concatenate_to_collect(world):
    model, w, _ = world
    ref, lab = collect_activations(model, w, HOOKS, batch_size=5)
    parts = list(iter_activations(model, w, HOOKS, batch_size=5))
    assert len(parts) == -(-len(w) // 5)
    for h in HOOKS:
        assert torch.equal(torch.cat([p[0][h] for p in parts]), ref[h])
    assert torch.equal(torch.cat([p[1].doc_id for p in parts]), lab.doc_id)


@pytest.mark.parametrize("lm_batch, encode_batch", [(3, 50), (7, 8192), (41, 17)])
def test_streamed_codes_table_and_metrics_equal_in_memory(world, tmp_path, lm_batch, encode_batch):
    model, w, saes = world
    # the in-memory reference (the same LM batches: an LM's own products change bits with the batch)
    acts, labels = collect_activations(model, w, HOOKS, batch_size=lm_batch)
    ev = stream_eval(model, saes, w, spool_dir=tmp_path / "spool", lm_batch_size=lm_batch,
                     encode_batch=encode_batch)
    assert torch.equal(ev.labels.token_id, labels.token_id) and torch.equal(ev.labels.doc_id, labels.doc_id)
    for h in HOOKS:
        ref = encode_to_codes(saes[h], acts[h], labels, batch_size=encode_batch, languages=w.languages)
        got = ev.codes(h, w.languages)
        np.testing.assert_array_equal(got.idx, ref.idx)
        np.testing.assert_array_equal(got.val, ref.val)  # bit for bit
        pd.testing.assert_frame_equal(analyse_features(got, 96), analyse_features(ref, 96), check_exact=True)
        want = reconstruction_metrics(saes[h], acts[h], batch_size=encode_batch)
        for k, v in ev.metrics[h].items():
            assert v == pytest.approx(want[k], rel=1e-9, abs=1e-12), k
        ev.spools[h].remove()
        assert not (tmp_path / "spool" / h).exists()


def test_reconstruction_stats_match_a_float64_two_pass_computation(world):
    """The streamed sums against the textbook formulas on the whole set at once."""
    model, w, saes = world
    acts, _ = collect_activations(model, w, HOOKS[:1])
    sae, x = saes[HOOKS[0]], acts[HOOKS[0]]
    idx, val = sae.encode_topk(x)
    z = torch.zeros(x.shape[0], 96).scatter_(-1, idx, val)
    rec = (z @ sae.W_dec + sae.b_dec).double()
    x64 = x.double()
    sse = float((rec - x64).pow(2).sum())
    sst = float((x64 - x64.mean(0)).pow(2).sum())
    stats = ReconstructionStats(96)
    for s in range(0, x.shape[0], 13):  # uneven batches
        i, v = sae.encode_topk(x[s:s + 13])
        zz = torch.zeros(i.shape[0], 96).scatter_(-1, i, v)
        stats.update(x[s:s + 13], zz @ sae.W_dec + sae.b_dec, i, v)
    got = stats.result()
    M = x.shape[0]
    assert got["mse"] == pytest.approx(sse / M, rel=1e-5)
    assert got["fvu"] == pytest.approx(sse / sst, rel=1e-5)
    assert got["explained_variance"] == pytest.approx(1 - sse / sst, rel=1e-5)
    cos = (rec * x64).sum(-1) / (rec.norm(dim=-1) * x64.norm(dim=-1))
    assert got["cossim"] == pytest.approx(float(cos.mean()), rel=1e-9)
    assert got["l2_ratio"] == pytest.approx(float((rec.norm(dim=-1) / x64.norm(dim=-1)).mean()), rel=1e-9)
    assert got["n_live"] == len(np.unique(idx.numpy())) and got["n_live"] + got["n_dead"] == 96


def test_metrics_only_pass_keeps_no_codes(world, tmp_path):
    model, w, saes = world
    ev = stream_eval(model, {HOOKS[0]: saes[HOOKS[0]]}, w, lm_batch_size=8)
    assert ev.spools == {} and ev.metrics[HOOKS[0]]["mse"] > 0
