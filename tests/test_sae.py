"""paper_topk SAE: hand-worked codes, geometric median, SAELens round trip, fast == dense."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sae_lens import SAE

from sae_bilingual.sae.files import export_stock_topk, load_sae, save_sae
from sae_bilingual.sae.kernels import _code_outer, dense_reference_loss, geometric_median, pre_activation, unit_norm
from sae_bilingual.sae.model import PaperTopKSAE, make_metadata, new_paper_sae


def _hand_sae() -> PaperTopKSAE:
    # d_in=2, d_sae=3, k=1; W_enc columns e1, e2, -e1; b_pre = (0.1, 0)
    s = new_paper_sae(2, k=1, d_sae=3, metadata=make_metadata(hook_name="blocks.0.hook_resid_post"))
    with torch.no_grad():
        s.W_enc.copy_(torch.tensor([[1.0, 0.0, -1.0], [0.0, 1.0, 0.0]]))
        s.W_dec.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
        s.b_dec.copy_(torch.tensor([0.1, 0.0]))
    return s


def test_hand_weights_codes_and_reconstruction():
    s = _hand_sae()
    x = torch.tensor([[3.0, 4.0], [-6.0, 8.0], [-10.0, 0.0]])  # unit: (.6,.8), (-.6,.8), (-1,0)
    # pre = (u - b) @ W_enc: row0 (.5,.8,-.5) -> latent 1 = .8; row1 (-.7,.8,.7) -> latent 1 = .8;
    # row2 (-1.1, 0, 1.1) -> latent 2 = 1.1
    z = s.encode(x)
    expected = torch.tensor([[0, 0.8, 0], [0, 0.8, 0], [0, 0, 1.1]])
    assert torch.allclose(z, expected, atol=1e-6)
    # unit recon = z W_dec + b: (0.1, .8), (0.1, .8), (-1.1+0.1, 0); residual scale * ||x||
    rec = s.decode(z)
    exp_rec = torch.tensor([[0.1, 0.8], [0.1, 0.8], [-1.0, 0.0]]) * torch.tensor([[5.0], [10.0], [10.0]])
    assert torch.allclose(rec, exp_rec, atol=1e-5)
    idx, val = s.encode_topk(x / x.norm(dim=-1, keepdim=True))
    assert idx[:, 0].tolist() == [1, 1, 2] and torch.allclose(val[:, 0], torch.tensor([0.8, 0.8, 1.1]))


def test_no_relu_negative_codes_kept():
    s = _hand_sae()
    with torch.no_grad():
        s.W_enc.mul_(-1)  # all pre-activations of (1, 0) negative except none
    x = torch.tensor([[0.0, 1.0]])  # pre = -(( -.1, 1) @ W) = (.1, -1, -.1): top is .1
    z = s.encode_normalized(x)
    assert torch.allclose(z, torch.tensor([[0.1, 0.0, 0.0]]), atol=1e-6)
    x2 = torch.tensor([[0.1, 2.0]]) / math.hypot(0.1, 2.0)
    with torch.no_grad():
        s.W_enc.copy_(-torch.ones(2, 3))
    z2 = s.encode_normalized(x2)
    assert (z2 < 0).sum() == 1  # the paper keeps a negative top-1 value (no ReLU)


def test_geometric_median_matches_scipy():
    from scipy.optimize import minimize

    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 3)) + np.array([5.0, 0, 0])
    x[:3] += 40.0  # outliers: the mean is far off, the median is not
    f = lambda m: np.linalg.norm(x - m, axis=1).sum()  # noqa: E731
    ref = minimize(f, x.mean(0), method="Nelder-Mead", options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 20000}).x
    got = geometric_median(torch.tensor(x)).numpy()
    assert f(got) <= f(ref) + 1e-6
    assert np.allclose(got, ref, atol=1e-3)


def test_save_load_bit_identical_and_splice(tmp_path):
    from sae_lens import HookedSAETransformer
    from transformer_lens import HookedTransformerConfig

    torch.manual_seed(0)
    hook = "blocks.0.hook_resid_post"
    s = new_paper_sae(16, k=4, metadata=make_metadata(hook_name=hook, model_name="tiny",
                                                       checkpoint_iteration=7, tokens=123, corpus="c", seed=0))
    with torch.no_grad():
        s.b_dec.normal_()
    save_sae(s, tmp_path / "sae")
    s2 = SAE.load_from_disk(tmp_path / "sae")
    assert type(s2) is PaperTopKSAE and s2.cfg.d_sae == 256 and s2.cfg.k == 4
    assert s2.cfg.metadata.paper_layer == 1 and s2.cfg.metadata.checkpoint_iteration == 7
    for k_, v in s.state_dict().items():
        assert torch.equal(v, s2.state_dict()[k_])
    cfg = HookedTransformerConfig(n_layers=2, d_model=16, n_ctx=16, d_head=4, n_heads=4, d_vocab=20,
                                  act_fn="gelu", normalization_type="LN")
    model = HookedSAETransformer(cfg)
    toks = torch.randint(0, 20, (2, 8))
    _, cache = model.run_with_cache(toks, names_filter=[hook])
    x = cache[hook]
    model.add_sae(s2)
    _, cache2 = model.run_with_cache(toks, names_filter=[hook + ".hook_sae_output"])
    assert torch.allclose(cache2[hook + ".hook_sae_output"], s2(x), atol=1e-5)
    # reconstruction is at residual scale
    u = x / x.norm(dim=-1, keepdim=True)
    rec_u = s2.decode_normalized(s2.encode_normalized(u))
    assert torch.allclose(s2(x), rec_u * x.norm(dim=-1, keepdim=True), atol=1e-5)


def test_loads_next_to_stock_saelens_sae(tmp_path):
    from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig

    stock = StandardSAE(StandardSAEConfig(d_in=16, d_sae=32))
    stock.save_model(tmp_path / "stock")
    save_sae(new_paper_sae(16, k=2, d_sae=32, metadata=make_metadata(hook_name="blocks.0.hook_resid_post")),
             tmp_path / "ours")
    a, b = SAE.load_from_disk(tmp_path / "stock"), load_sae(tmp_path / "ours")
    assert type(a).__name__ == "StandardSAE" and type(b) is PaperTopKSAE


def test_stock_topk_export_same_codes_and_recon(tmp_path):
    torch.manual_seed(1)
    s = new_paper_sae(16, k=4, d_sae=64, metadata=make_metadata(hook_name="blocks.0.hook_resid_post"))
    with torch.no_grad():
        s.b_dec.normal_(std=0.1)
    export_stock_topk(s, tmp_path / "stock")
    stock = SAE.load_from_disk(tmp_path / "stock")
    assert stock.cfg.architecture() == "topk"
    x = torch.randn(200, 16) * 7
    pos = (torch.topk((x / x.norm(dim=-1, keepdim=True) - s.b_dec) @ s.W_enc, 4).values > 0).all(-1)
    x = x[pos]
    assert x.shape[0] > 20
    z_ours, z_stock = s.encode(x), stock.encode(x)
    assert torch.allclose(z_ours, z_stock, atol=1e-5)
    assert torch.allclose(s.decode(z_ours), stock.decode(z_stock), atol=1e-4)


@pytest.mark.parametrize("variant", [{}, {"encoder_bias": True, "relu_before_topk": True}])
def test_fast_step_equals_dense_reference(variant):
    from sae_lens.saes.sae import TrainStepInput

    torch.manual_seed(2)
    t = new_paper_sae(32, k=5, d_sae=128, training=True, dtype="float64", **variant)
    x = torch.randn(64, 32, dtype=torch.float64)
    t.init_b_pre(x)
    if variant:
        with torch.no_grad():
            t.b_enc.normal_(std=0.1)
    out = t.training_forward_pass(TrainStepInput(sae_in=x, coefficients={}, dead_neuron_mask=None,
                                                 n_training_steps=0, is_logging_step=False))
    out.loss.backward()
    fast = {n: p.grad.clone() for n, p in t.named_parameters()}
    t.zero_grad()
    b_enc = t.b_enc if variant else None
    loss, *_ = dense_reference_loss(x / x.norm(dim=-1, keepdim=True), t.b_dec, t.W_enc, t.W_dec, 5, b_enc,
                                    bool(variant))
    loss.backward()
    assert torch.allclose(out.loss, loss, rtol=1e-12)
    for n, p in t.named_parameters():
        assert torch.allclose(fast[n], p.grad, atol=1e-10), n
    assert out.feature_acts.to_dense().ne(0).sum(-1).le(5).all()


def test_code_outer_dense_gemm_path_equals_sparse_path():
    # the GPU-autocast path (dense GEMM of the scattered code) and the sparse path agree
    torch.manual_seed(3)
    B, K, n, d = 16, 4, 50, 8
    idx = torch.stack([torch.randperm(n)[:K] for _ in range(B)])
    vals = torch.randn(B, K, dtype=torch.float64)
    X = torch.randn(B, d, dtype=torch.float64)
    brute = torch.zeros(n, d, dtype=torch.float64)
    for b in range(B):
        for k in range(K):
            brute[idx[b, k]] += vals[b, k] * X[b]
    assert torch.allclose(_code_outer(idx, vals, X, n, None), brute, atol=1e-12)
    assert torch.allclose(_code_outer(idx, vals, X, n, torch.float64), brute, atol=1e-12)


def test_fast_step_runs_under_bf16_autocast():
    # autocast hands bf16 top-k values to the fp32 decode: the step must still run and stay close
    from sae_lens.saes.sae import TrainStepInput

    torch.manual_seed(4)
    t = new_paper_sae(32, k=5, d_sae=128, training=True)
    x = torch.randn(64, 32)
    t.init_b_pre(x)
    step = TrainStepInput(sae_in=x, coefficients={}, dead_neuron_mask=None, n_training_steps=0,
                          is_logging_step=False)
    ref = t.training_forward_pass(step).loss.item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = t.training_forward_pass(step)
    out.loss.backward()
    assert abs(out.loss.item() - ref) < 0.05 * ref
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in t.parameters())


def test_the_gpu_bf16_gemm_branch_gives_the_sparse_gradients(monkeypatch):
    """The dense half-precision GEMM that replaces the sparse products on a GPU under autocast
    (``_gemm_dtype``) is reached here on the CPU by forcing it: the same step's gradients as the
    sparse path, within bf16 rounding (the autocast test above never reaches this branch)."""
    from sae_lens.saes.sae import TrainStepInput

    import sae_bilingual.sae.kernels as kernels

    torch.manual_seed(5)
    x = torch.randn(64, 32)
    grads = {}
    for branch in ("sparse", "bf16"):
        if branch == "bf16":
            monkeypatch.setattr(kernels, "_gemm_dtype", lambda _x: torch.bfloat16)
        torch.manual_seed(6)
        t = new_paper_sae(32, k=5, d_sae=128, training=True)
        t.init_b_pre(x)
        step = TrainStepInput(sae_in=x, coefficients={}, dead_neuron_mask=None, n_training_steps=0,
                              is_logging_step=False)
        t.training_forward_pass(step).loss.backward()
        grads[branch] = {n: p.grad.clone() for n, p in t.named_parameters()}
    for name in ("W_enc", "W_dec"):
        a, b = grads["sparse"][name], grads["bf16"][name]
        assert a.abs().max() > 0, name
        assert not torch.equal(a, b), f"{name}: bit-identical, so the bf16 branch was not taken"
        assert torch.allclose(a, b, rtol=2e-2, atol=2e-2 * float(a.abs().max())), name


def test_auxk_loss_matches_dense_reference():
    """The auxiliary-K loss over the dead columns == SAELens-style dense masked top-k."""
    from sae_bilingual.sae.auxk import auxk_loss

    g = torch.Generator().manual_seed(0)
    B, d, n, k_aux = 16, 8, 40, 5
    xc = torch.randn(B, d, generator=g, dtype=torch.float64)
    resid = torch.randn(B, d, generator=g, dtype=torch.float64)
    W_enc = torch.randn(d, n, generator=g, dtype=torch.float64, requires_grad=True)
    W_dec = torch.randn(n, d, generator=g, dtype=torch.float64, requires_grad=True)
    dead = torch.zeros(n, dtype=torch.bool)
    dead[[1, 4, 7, 9, 20, 33]] = True
    got = auxk_loss(xc, resid, W_enc, W_dec, dead, k_aux)
    pre = torch.where(dead[None], xc @ W_enc, -torch.inf)
    top = pre.topk(k_aux, dim=-1)
    acts = torch.zeros_like(pre).scatter(-1, top.indices, top.values)
    ref = min(6 / k_aux, 1.0) * ((acts @ W_dec) - resid).pow(2).sum(-1).mean()
    assert torch.allclose(got, ref)
    gw = torch.autograd.grad(got, [W_enc, W_dec])
    rw = torch.autograd.grad(ref, [W_enc, W_dec])
    assert all(torch.allclose(a, b) for a, b in zip(gw, rw))
    assert gw[0][:, ~dead].abs().sum() == 0  # only dead latents learn from it
    assert auxk_loss(xc, resid, W_enc, W_dec, torch.zeros(n, dtype=torch.bool), k_aux) == 0


def test_auxk_off_by_default_and_on_in_the_training_step():
    from sae_lens.saes.sae import TrainStepInput

    sae = new_paper_sae(8, k=2, d_sae=16, training=True)
    x = torch.randn(32, 8)
    dead = torch.ones(16, dtype=torch.bool)
    step = TrainStepInput(sae_in=x, coefficients={}, dead_neuron_mask=dead, n_training_steps=0, is_logging_step=False)
    out = sae.training_forward_pass(step)
    assert set(out.losses) == {"mse_loss"} and torch.equal(out.loss, out.losses["mse_loss"])
    sae.cfg.aux_k_coefficient = 0.5
    out = sae.training_forward_pass(step)
    aux = out.losses["auxiliary_reconstruction_loss"]
    assert aux > 0 and torch.allclose(out.loss, out.losses["mse_loss"] + 0.5 * aux)


@pytest.mark.parametrize("variant", [{}, {"encoder_bias": True, "relu_before_topk": True}])
def test_every_encode_path_has_the_hand_computed_pre_activation(variant):
    """Inference (unit space and SAELens's residual-scale encode), the dense reference and the
    sparse training kernel all select the top-k of (u - b_pre) @ W_enc (+ b_enc) (ReLU)."""
    from sae_bilingual.sae.kernels import topk_encode_sparse

    torch.manual_seed(5)
    k = 3
    s = new_paper_sae(6, k=k, d_sae=10, dtype="float64", **variant)
    with torch.no_grad():
        s.b_dec.normal_(std=0.2)
        if variant:
            s.b_enc.normal_(std=0.2)
    x = torch.randn(7, 6, dtype=torch.float64) * 3
    # independent reference: per row, per latent, the sum written out
    u = x / x.norm(dim=-1, keepdim=True)
    ref = torch.zeros(7, 10, dtype=torch.float64)
    for r in range(7):
        for j in range(10):
            v = sum((u[r, i] - s.b_dec[i]) * s.W_enc[i, j] for i in range(6))
            if variant:
                v = max(v + s.b_enc[j], 0.0)
            ref[r, j] = v
    ref_vals, ref_idx = ref.topk(k, dim=-1)
    b_enc = s.b_enc if variant else None
    relu = bool(variant)
    with torch.no_grad():
        assert torch.allclose(pre_activation(u - s.b_dec, s.W_enc, b_enc, relu), ref, atol=1e-12)
        dense = torch.zeros_like(ref).scatter_(-1, ref_idx, ref_vals)
        idx, vals = s.encode_topk(u)
        assert torch.allclose(vals, ref_vals, atol=1e-12)  # sorted, like ref's
        assert torch.allclose(torch.zeros_like(ref).scatter_(-1, idx, vals), dense, atol=1e-12)
        assert relu or torch.equal(idx, ref_idx)  # (after a ReLU, zeros may tie)
        assert torch.allclose(s.encode_normalized(u), dense, atol=1e-12)
        assert torch.allclose(s.encode(x), dense, atol=1e-12)  # residual scale: normalised inside
        _, z, pre, _ = dense_reference_loss(u, s.b_dec, s.W_enc, s.W_dec, k, b_enc, relu)
        assert torch.allclose(pre, ref, atol=1e-12) and torch.allclose(z, dense, atol=1e-12)
        vals_s, idx_s = topk_encode_sparse(u, s.b_dec, s.W_enc, b_enc, k, relu)
        got = torch.zeros_like(ref).scatter_(-1, idx_s, vals_s)
        assert torch.allclose(got, dense, atol=1e-12)


def test_unit_norm_in_place_equals_out_of_place_bit_for_bit():
    """The store divides in place, the SAE out of place: the same bits, zero rows stay zero."""
    torch.manual_seed(6)
    x = torch.randn(50, 16) * torch.rand(50, 1) * 10
    x[3] = 0.0
    out = unit_norm(x)
    inplace = x.clone()
    assert unit_norm(inplace, inplace=True) is inplace
    assert torch.equal(out, inplace)
    assert torch.equal(out[3], torch.zeros(16))
    keep = torch.arange(50) != 3
    assert torch.allclose(out[keep].norm(dim=-1), torch.ones(49), atol=1e-6)
    assert torch.allclose(out[keep] * x[keep].norm(dim=-1, keepdim=True), x[keep], atol=1e-5)
