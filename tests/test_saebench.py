"""SAEBench core metrics per SAE, cross-checked against SAELens's own ``sae_lens.evals`` on one
SAE (issue 28, part 5). Where a definition differs on purpose the test says which and checks
ours against a brute-force computation instead."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from sae_lens.evals import ExplainedVarianceCalculator, get_recons_loss, get_sparsity_and_variance_metrics
from sae_lens.training.activation_scaler import ActivationScaler
from transformer_lens import HookedTransformer, HookedTransformerConfig

from sae_bilingual.analysis.stream import stream_eval
from sae_bilingual.data import store
from sae_bilingual.data.corpus import make_windows
from sae_bilingual.sae.metrics import ce_metrics_many, encode_decode
from sae_bilingual.sae.model import make_metadata, new_paper_sae
from sae_bilingual.sae.saebench import density_fractions

VOCAB, T, BOS, HOOK = 300, 16, 1, "blocks.0.hook_resid_post"


@pytest.fixture(scope="module")
def world():
    torch.manual_seed(0)
    cfg = HookedTransformerConfig(n_layers=2, d_model=32, n_ctx=T, d_head=8, n_heads=4, d_vocab=VOCAB,
                                  act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary",
                                  gated_mlp=True, d_mlp=64)
    model = HookedTransformer(cfg)
    g = torch.Generator().manual_seed(1)
    # a predictable language (next = 7 * token + 3 mod V), learnt briefly: ablating a layer then costs loss
    start = torch.randint(3, VOCAB, (10,), generator=g)
    ids = [[BOS] + [int(start[i] * 7 ** j + 3 * sum(7 ** m for m in range(j))) % (VOCAB - 3) + 3
                    for j in range(T - 1)] for i in range(10)]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(60):
        opt.zero_grad()
        model(torch.tensor(ids), return_type="loss").backward()
        opt.step()
    model.eval()
    ds = Dataset.from_dict({"input_ids": ids, "lang": ["en", "ja"] * 5, "doc_id": list(range(10))})
    windows = make_windows(ds, None, context=T)  # full length: no padding, so SAELens's mask is BOS only
    sae = new_paper_sae(32, k=4, d_sae=64, metadata=make_metadata(hook_name=HOOK))
    with torch.no_grad():  # decoder rows along typical residual directions: a non-trivial SAE
        u = next(store.iter_activations(model, windows, [HOOK], batch_size=10))[0][HOOK]
        sae.W_dec.data = u[torch.randperm(u.shape[0], generator=g)[:64]] + 0.1 * torch.randn(64, 32, generator=g)
        sae.normalize_decoder_()
        sae.W_enc.data = sae.W_dec.data.T.clone()
        sae.b_dec.data = u.mean(0) * 0.5
    return model, windows, sae


class _Store:
    """The one method of ActivationsStore that SAELens's sparsity/variance metrics call."""

    def __init__(self, tokens):
        self.tokens = tokens

    def get_batch_tokens(self, n):
        return self.tokens[:n]


@torch.no_grad()
def test_sparsity_and_shrinkage_equal_saelens(world):
    model, windows, sae = world
    ours = stream_eval(model, {HOOK: sae}, windows, encode_batch=37).metrics[HOOK]
    theirs, feats = get_sparsity_and_variance_metrics(
        sae, model, _Store(windows.tokens), ActivationScaler(), n_batches=1, compute_l2_norms=True,
        compute_sparsity_metrics=True, compute_variance_metrics=True, compute_featurewise_density_statistics=True,
        eval_batch_size_prompts=len(windows), model_kwargs={}, ignore_tokens=[BOS])
    # per-token scale cancels in these: same numbers on the residual (SAELens) and unit-norm (ours)
    for name in ("cossim", "l2_ratio", "l0"):
        assert ours[name] == pytest.approx(theirs[name], rel=1e-5, abs=1e-6), name
    dens = torch.tensor(feats["feature_density"])
    assert ours["frac_alive"] == pytest.approx(float((dens > 0).float().mean()))
    assert ours["frac_firing_gt_1pct"] == pytest.approx(float((dens > 0.01).float().mean()))
    assert ours["frac_firing_gt_10pct"] == pytest.approx(float((dens > 0.1).float().mean()))
    assert 0 < ours["frac_firing_gt_10pct"] < ours["frac_alive"] <= 1
    # MSE and explained variance: ours in the SAE's unit-norm space (the paper's), SAELens's on the
    # residual; SAELens's own calculator fed our unit-norm vectors gives ours
    u = torch.cat([a[HOOK] for a, _ in store.iter_activations(model, windows, [HOOK], batch_size=4)])
    _, _, rec = encode_decode(sae, u)
    calc = ExplainedVarianceCalculator()
    calc.add_batch(sae_output=rec[:50], hidden_acts=u[:50])
    calc.add_batch(sae_output=rec[50:], hidden_acts=u[50:])
    assert ours["explained_variance"] == pytest.approx(calc.compute(), rel=1e-6)
    assert ours["mse"] == pytest.approx(float((u - rec).pow(2).sum(-1).mean()), rel=1e-6)


def test_density_fractions_by_hand():
    counts = torch.tensor([0, 1, 5, 20, 0])  # over 100 tokens: densities 0, .01, .05, .2, 0
    assert density_fractions(counts, 100) == {"frac_alive": 0.6, "frac_firing_gt_1pct": 0.4,
                                              "frac_firing_gt_10pct": 0.2}


@torch.no_grad()
def test_kl_and_ce_scores_equal_saelens_where_defined_alike(world):
    model, windows, sae = world
    ours = ce_metrics_many(model, [sae], windows, batch_size=3, budget_bytes=4 * VOCAB * 7)[HOOK]
    m = get_recons_loss(sae, model, ActivationScaler(), windows.tokens, compute_kl=True, compute_ce_loss=True,
                        ignore_tokens=[BOS])
    # KL with the SAE: SAELens's per-position KL, averaged over non-BOS positions (its ignore mask)
    assert ours["kl_div_with_sae"] == pytest.approx(float(m["kl_div_with_sae"][:, 1:].mean()), rel=1e-4)
    # CE: ours averages every predicted token (position 0, BOS as input, included; SAELens's mask
    # drops it), so compare with SAELens's per-token losses under our positions
    assert ours["ce_loss_clean"] == pytest.approx(float(m["ce_loss_without_sae"].mean()), rel=1e-5)
    assert ours["ce_loss_sae"] == pytest.approx(float(m["ce_loss_with_sae"].mean()), rel=1e-5)
    # zero-ablation differs on purpose: SAELens zeroes BOS too, ours only the positions the SAE
    # replaces. Brute force with the full logits: zero positions >= 1 at the hook
    zero = lambda act, hook: torch.cat([act[:, :1], torch.zeros_like(act[:, 1:])], dim=1)  # noqa: E731
    clean, abl = model(windows.tokens), model.run_with_hooks(windows.tokens, fwd_hooks=[(HOOK, zero)])
    lp_c, lp_a = clean.log_softmax(-1), abl.log_softmax(-1)
    kl_zero = (lp_c.exp() * (lp_c - lp_a)).sum(-1)[:, 1:].mean()
    ce_zero = -lp_a[:, :-1].gather(-1, windows.tokens[:, 1:, None]).mean()
    assert ours["kl_div_with_ablation"] == pytest.approx(float(kl_zero), rel=1e-4)
    assert ours["ce_loss_zero"] == pytest.approx(float(ce_zero), rel=1e-5)
    # the scores: SAELens's formulas on these terms
    assert ours["kl_div_score"] == pytest.approx((ours["kl_div_with_ablation"] - ours["kl_div_with_sae"])
                                                 / ours["kl_div_with_ablation"], rel=1e-9)
    assert ours["ce_loss_score"] == ours["ce_recovered"] == pytest.approx(
        (ours["ce_loss_zero"] - ours["ce_loss_sae"]) / (ours["ce_loss_zero"] - ours["ce_loss_clean"]), rel=1e-9)
    # and SAELens's own zero-ablation (BOS zeroed too) is a different, larger intervention here
    assert float(m["kl_div_with_ablation"][:, 1:].mean()) != pytest.approx(float(kl_zero), rel=1e-3)
