"""Chunked cross-entropy (bounded logits memory) and CE loss recovered, on a tiny model with a
large-ish vocabulary."""

from __future__ import annotations

import math

import pytest
import torch
from datasets import Dataset
from transformer_lens import HookedTransformer, HookedTransformerConfig

from sae_bilingual.lm_loss import chunk_positions, final_residual, nll_rows
from sae_bilingual.data.corpus import make_windows
from sae_bilingual.intervention.metrics import perplexity
from sae_bilingual.sae.metrics import ce_metrics_many, ce_recovered
from sae_bilingual.sae.model import make_metadata, new_paper_sae

VOCAB = 6000


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = HookedTransformerConfig(n_layers=2, d_model=32, n_ctx=32, d_head=8, n_heads=4, d_vocab=VOCAB,
                                  act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary",
                                  gated_mlp=True, d_mlp=64, output_logits_soft_cap=20.0)
    return HookedTransformer(cfg).eval()


@pytest.fixture(scope="module")
def windows():
    g = torch.Generator().manual_seed(1)
    ids = [[1] + torch.randint(3, VOCAB, (int(n) - 1,), generator=g).tolist()
           for n in torch.randint(5, 33, (12,), generator=g)]
    ds = Dataset.from_dict({"input_ids": ids, "lang": ["en", "ja"] * 6, "doc_id": list(range(12))})
    return make_windows(ds, None, context=32)


class LogitsShapes:
    """Records the shape of every logits block the unembedding forms."""

    def __init__(self, model):
        self.shapes: list[tuple[int, ...]] = []
        self.handle = model.unembed.register_forward_hook(lambda m, i, o: self.shapes.append(tuple(o.shape)))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


@torch.no_grad()
def test_chunked_nll_equals_full_logits_and_stays_in_budget(model, windows):
    tok, ln = windows.tokens, windows.lengths
    # reference: the model's own full logits (soft-cap included) and torch's cross-entropy
    logits = model(tok)
    ref = torch.zeros(len(tok), dtype=torch.float64)
    for i, n in enumerate(ln.tolist()):
        ce = torch.nn.functional.cross_entropy(logits[i, : n - 1], tok[i, 1:n], reduction="sum")
        ref[i] = float(ce)
    resid = final_residual(model, tok)
    whole = nll_rows(model, resid, tok, ln, budget_bytes=1 << 40)
    budget = 7 * 4 * VOCAB + 100  # room for 7 positions of float32 logits
    assert chunk_positions(VOCAB, budget) == 7
    with LogitsShapes(model) as seen:
        chunked = nll_rows(model, resid, tok, ln, budget_bytes=budget)
    torch.testing.assert_close(whole, ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(chunked, whole, rtol=1e-6, atol=1e-6)
    n_targets = int((ln - 1).sum())
    assert len(seen.shapes) == math.ceil(n_targets / 7)  # every target position, 7 at a time
    assert max(s[-2] * s[-1] * 4 for s in seen.shapes) <= budget
    assert sum(s[-2] for s in seen.shapes) == n_targets  # padding positions are never unembedded


@torch.no_grad()
def test_perplexity_and_ce_metrics_do_not_depend_on_the_budget(model, windows):
    big = perplexity(model, windows, batch_size=5)
    with LogitsShapes(model) as seen:
        small = perplexity(model, windows, batch_size=5, logits_budget_bytes=3 * 4 * VOCAB)
    assert small["ppl_all"] == pytest.approx(big["ppl_all"], rel=1e-6)
    assert max(s[-2] for s in seen.shapes) == 3
    saes = []
    for hook in ("blocks.0.hook_resid_post", "blocks.1.hook_resid_post"):
        torch.manual_seed(2)
        saes.append(new_paper_sae(32, k=4, expansion=2, metadata=make_metadata(hook_name=hook)))
    a = ce_metrics_many(model, saes, windows, batch_size=5)
    with LogitsShapes(model) as seen:
        b = ce_metrics_many(model, saes, windows, batch_size=5, budget_bytes=2 * 4 * VOCAB)
    assert max(s[-2] for s in seen.shapes) == 2
    for hook in a:
        for key in ("ce_loss_clean", "ce_loss_sae", "ce_loss_zero"):
            assert b[hook][key] == pytest.approx(a[hook][key], rel=1e-6, abs=1e-6), (hook, key)
        assert math.isclose(a[hook]["ce_loss_clean"], math.log(big["ppl_all"]), rel_tol=1e-6)


def test_ce_recovered_is_nan_with_a_reason_when_ablation_costs_nothing():
    assert ce_recovered(2.0, 2.5, 3.0) == (0.5, "")  # (3 - 2.5) / (3 - 2)
    assert ce_recovered(2.0, 2.0, 6.0) == (1.0, "")
    for zero in (3.0, 2.9):  # zero-ablation equal to, or better than, the clean model
        value, why = ce_recovered(3.0, 2.5, zero)
        assert math.isnan(value) and "not above the clean loss" in why and f"{zero:.4f}" in why
