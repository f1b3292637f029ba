"""The BatchTopK crosscoder (sae/crosscoder.py, sae/batchtopk_kernels.py, sae/crosscoder_train.py).

Every check is against an independent computation: the dense autograd reference, a brute-force
sort, a plain per-slice FVU, and the directions planted in a synthetic 3-checkpoint dataset.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sae_lens import SAE

import sae_bilingual  # noqa: F401  (registers paper_crosscoder)
from sae_bilingual.defaults import ADAM_EPS
from sae_bilingual.errors import ConfigError, DataError
from sae_bilingual.sae.batchtopk_kernels import (
    batch_topk_encode,
    batch_topk_select,
    dense_batchtopk_reference,
    sparse_decode_flat,
)
from sae_bilingual.sae.crosscoder import PaperCrosscoder, PaperCrosscoderTraining, to_inference
from sae_bilingual.sae.crosscoder_config import PaperCrosscoderConfig, PaperCrosscoderTrainingConfig
from sae_bilingual.sae.crosscoder_train import (
    eval_crosscoder,
    eval_fvu_per_checkpoint,
    load_crosscoder,
    save_crosscoder,
    train_crosscoder,
)
from sae_bilingual.sae.kernels import geometric_median
from sae_lens.saes.sae import TrainStepInput

C, D = 3, 32


def _unit_slices(x: torch.Tensor, C: int) -> torch.Tensor:
    v = x.reshape(x.shape[0], C, -1)
    return (v / v.norm(dim=-1, keepdim=True)).reshape(x.shape)


def planted(N: int, n_shared: int = 24, n_excl: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows [N, C*D] = per-slice unit norm of 2 shared + 1 exclusive planted features (+ noise).

    Shared feature f has its own random direction at every checkpoint; exclusive feature f
    lives at one checkpoint (zero elsewhere). Returns (rows, directions [F, C, D])."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.zeros(n_shared + C * n_excl, C, D)
    dirs[:n_shared] = torch.randn(n_shared, C, D, generator=g)
    for c in range(C):
        dirs[n_shared + c * n_excl: n_shared + (c + 1) * n_excl, c] = torch.randn(n_excl, D, generator=g)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    shared = torch.stack([torch.randperm(n_shared, generator=g)[:2] for _ in range(N)])
    excl = n_shared + torch.randint(C * n_excl, (N, 1), generator=g)
    active = torch.cat([shared, excl], 1)
    coef = 0.5 + torch.rand(N, 3, generator=g)
    x = torch.einsum("nk,nkcd->ncd", coef, dirs[active]) + 0.01 * torch.randn(N, C, D, generator=g)
    return _unit_slices(x.reshape(N, C * D), C), dirs


@pytest.fixture(scope="module")
def trained():
    rows, dirs = planted(20000)
    cfg = PaperCrosscoderTrainingConfig(d_in=C * D, d_sae=96, n_checkpoints=C, k=3)
    cc, stats = train_crosscoder(rows[:16000], cfg, lr=3e-3, steps=1500, batch_size=256, warmup_steps=50, seed=0)
    return cc, stats, rows, dirs


def _random_cc(n: int = 64, k: float = 4, seed: int = 0, **kw) -> PaperCrosscoderTraining:
    torch.manual_seed(seed)
    cc = PaperCrosscoderTraining(PaperCrosscoderTrainingConfig(d_in=C * 16, d_sae=n, n_checkpoints=C, k=k,
                                                               geometric_median_sample=None, **kw))
    with torch.no_grad():
        cc.b_enc.normal_(std=0.1)
        cc.b_dec.normal_(std=0.1)
    return cc


# -- kernels ----------------------------------------------------------------------------------

@pytest.mark.parametrize("tau", [None, "low", "too_high"])
def test_batch_topk_select_is_the_exact_top_m(tau):
    torch.manual_seed(1)
    pre = torch.randn(40, 50).relu()
    m = 120
    brute = np.sort(pre.numpy().ravel())[::-1][:m]  # brute force: sort everything
    floor = {None: None, "low": 0.5 * float(brute[-1]), "too_high": 10.0 * float(brute[-1])}[tau]
    sel, vals = batch_topk_select(pre, m, floor)
    assert sel.shape == (m,) and bool((sel[1:] > sel[:-1]).all())  # unique, ascending
    np.testing.assert_array_equal(np.sort(vals.numpy())[::-1], brute)
    np.testing.assert_array_equal(vals.numpy(), pre.reshape(-1)[sel].numpy())


@pytest.mark.parametrize("tau_factor", [None, 0.8, 5.0])
def test_sparse_kernels_match_dense_reference(tau_factor):
    cc = _random_cc()
    u = cc.unit_input(torch.randn(32, C * 16)).requires_grad_(True)
    params = [cc.W_enc, cc.b_enc, cc.W_dec, cc.b_dec]
    m = cc.batch_size_m(32)
    loss_ref, z, rec_ref = dense_batchtopk_reference(u, cc.b_dec, cc.W_enc, cc.b_enc, cc.W_dec, m)
    g_ref = torch.autograd.grad(loss_ref, [u, *params])
    kth = float(z.detach()[z.detach() > 0].min())
    code = batch_topk_encode(u, cc.b_dec, cc.W_enc, cc.b_enc, m, None if tau_factor is None else tau_factor * kth)
    rec = sparse_decode_flat(code, cc.W_dec) + cc.b_dec
    loss = (rec - u).pow(2).sum(-1).mean()
    g = torch.autograd.grad(loss, [u, *params])
    dense_from_flat = torch.zeros_like(z)
    dense_from_flat[code.rows, code.cols] = code.vals.detach()
    torch.testing.assert_close(dense_from_flat, z.detach(), rtol=0, atol=0)
    torch.testing.assert_close(rec, rec_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss, loss_ref, rtol=1e-6, atol=1e-7)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_training_step_keeps_exactly_k_times_B_and_fast_equals_dense():
    for k in (4, 2.5):
        fast, dense = _random_cc(k=k), _random_cc(k=k, fast=False)
        x = torch.randn(30, C * 16)
        step = TrainStepInput(sae_in=x, coefficients={}, dead_neuron_mask=None, n_training_steps=0,
                              is_logging_step=False)
        of, od = fast.training_forward_pass(step), dense.training_forward_pass(step)
        acts = of.feature_acts.to_dense()
        assert int((acts != 0).sum()) == round(k * 30)  # all kept values > 0 here
        per_row = (acts != 0).sum(1)
        assert int(per_row.max()) > int(per_row.min())  # rows get different numbers: batch, not per-row
        torch.testing.assert_close(acts, od.feature_acts.detach())
        torch.testing.assert_close(of.loss, od.loss)
        # the smallest kept value starts the inference threshold
        assert float(fast.threshold) == pytest.approx(float(acts[acts > 0].min()))


def test_training_step_under_cpu_bf16_autocast():
    cc = _random_cc()
    x = torch.randn(32, C * 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = cc.training_forward_pass(TrainStepInput(sae_in=x, coefficients={}, dead_neuron_mask=None,
                                                      n_training_steps=0, is_logging_step=False))
    out.loss.backward()
    assert torch.isfinite(out.loss) and int(out.feature_acts._nnz()) == cc.batch_size_m(32)
    for p in (cc.W_enc, cc.b_enc, cc.W_dec, cc.b_dec):
        assert p.grad is not None and p.grad.dtype == torch.float32 and bool(torch.isfinite(p.grad).all())


# -- the model --------------------------------------------------------------------------------

def test_config_checks():
    with pytest.raises(ConfigError, match="n_checkpoints x d_model"):
        PaperCrosscoderConfig(d_in=96, d_sae=64, n_checkpoints=3, d_model=16)
    with pytest.raises(ConfigError, match="multiple of n_checkpoints"):
        PaperCrosscoderConfig(d_in=97, d_sae=64, n_checkpoints=3)
    with pytest.raises(ConfigError, match="k = 64"):
        PaperCrosscoderConfig(d_in=96, d_sae=64, n_checkpoints=3, k=64)
    with pytest.raises(ConfigError, match="normalize_activations"):
        PaperCrosscoderConfig(d_in=96, d_sae=64, n_checkpoints=3, normalize_activations="layer_norm")
    assert PaperCrosscoderConfig(d_in=96, d_sae=64, n_checkpoints=3).d_model == 32


def test_decoder_norm_convention_and_per_checkpoint_view():
    cc = _random_cc()
    opt = torch.optim.Adam(cc.parameters(), lr=1e-2)
    x = torch.randn(64, C * 16)
    for _ in range(3):
        out = cc.training_forward_pass(TrainStepInput(sae_in=x, coefficients={}, dead_neuron_mask=None,
                                                      n_training_steps=0, is_logging_step=False))
        out.loss.backward()
        opt.step()
        opt.zero_grad()
    assert opt.param_groups[0]["eps"] == ADAM_EPS  # the paper's eps, through training_choices
    W = cc.W_dec.detach()
    torch.testing.assert_close(W.norm(dim=-1), torch.ones(64))  # whole row unit-norm after each step
    for c in range(C):  # the view is slice c of each row
        torch.testing.assert_close(cc.W_dec_per_checkpoint[:, c], W[:, c * 16:(c + 1) * 16])
    norms = cc.decoder_norms()
    manual = torch.stack([W[:, c * 16:(c + 1) * 16].norm(dim=-1) for c in range(C)], 1)
    torch.testing.assert_close(norms, manual)
    torch.testing.assert_close(norms.pow(2).sum(-1), torch.ones(64))
    torch.testing.assert_close(cc.decoder_shares(), manual / manual.sum(-1, keepdim=True))


def test_b_dec_is_the_geometric_median_of_each_checkpoint():
    torch.manual_seed(0)
    cc = PaperCrosscoderTraining(PaperCrosscoderTrainingConfig(d_in=C * 16, d_sae=64, n_checkpoints=C, k=4,
                                                               geometric_median_sample=50))
    x = _unit_slices(torch.randn(80, C * 16) + torch.arange(C * 16) / 20, C)
    cc.training_forward_pass(TrainStepInput(sae_in=x, coefficients={}, dead_neuron_mask=None,
                                            n_training_steps=0, is_logging_step=False))
    for c in range(C):
        want = geometric_median(x[:50, c * 16:(c + 1) * 16]).float()
        torch.testing.assert_close(cc.b_dec.detach()[c * 16:(c + 1) * 16], want, rtol=1e-5, atol=1e-6)
    joint = geometric_median(x[:50]).float()  # not the joint median of the whole row
    assert float((cc.b_dec.detach() - joint).abs().max()) > 1e-4


def test_encode_sparse_and_inference_rule():
    cc = to_inference(_random_cc())
    cc.threshold.fill_(0.05)
    x = torch.randn(20, C * 16) * 3  # not unit: the input handling normalises each slice
    u = _unit_slices(x, C)
    pre = ((u - cc.b_dec) @ cc.W_enc + cc.b_enc).relu()
    want = torch.where(pre > 0.05, pre, torch.zeros_like(pre))
    z = cc.encode(x)
    torch.testing.assert_close(z, want.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cc.decode(z), (want @ cc.W_dec + cc.b_dec).detach(), rtol=1e-5, atol=1e-5)
    vals, idx = cc.encode_sparse(x, cap=8)
    top = torch.sort(want, dim=-1, descending=True).values[:, :8]
    torch.testing.assert_close(vals, top.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.gather(z, 1, idx), vals)
    idx2, vals2 = cc.encode_topk(u, cap=8)
    torch.testing.assert_close(vals2, vals, rtol=1e-5, atol=1e-6)
    rec, counts, _ = cc.reconstruct(x)
    torch.testing.assert_close(counts, (want > 0).sum(-1))
    torch.testing.assert_close(rec, (want @ cc.W_dec + cc.b_dec).detach(), rtol=1e-5, atol=1e-5)


def test_round_trip_through_plain_saelens(tmp_path):
    cc = to_inference(_random_cc())
    cc.threshold.fill_(0.123)
    folder = save_crosscoder(cc, tmp_path / "cc")
    cfg = json.loads((folder / "cfg.json").read_text())
    assert cfg["architecture"] == "paper_crosscoder" and cfg["n_checkpoints"] == C and cfg["d_model"] == 16
    back = SAE.load_from_disk(folder)
    assert type(back) is PaperCrosscoder
    for name, t in cc.state_dict().items():
        torch.testing.assert_close(back.state_dict()[name], t, rtol=0, atol=0)
    x = torch.randn(16, C * 16)
    torch.testing.assert_close(back(x), cc(x), rtol=0, atol=0)
    torch.testing.assert_close(back.encode(x), cc.encode(x), rtol=0, atol=0)
    assert type(load_crosscoder(folder)) is PaperCrosscoder
    # a training crosscoder saves its inference copy (decoder rows renormalised)
    tr = _random_cc()
    with torch.no_grad():
        tr.W_dec.mul_(2.0)
    back2 = SAE.load_from_disk(save_crosscoder(tr, tmp_path / "tr"))
    torch.testing.assert_close(back2.W_dec.norm(dim=-1), torch.ones(64))


# -- training on planted directions ---------------------------------------------------------

def test_training_recovers_planted_shared_and_exclusive_directions(trained):
    cc, stats, rows, dirs = trained
    n_shared, n_f = 24, dirs.shape[0]
    fvu = eval_fvu_per_checkpoint(cc, rows[16000:])
    assert len(fvu) == C and max(fvu) < 0.1  # FVU well below 1 at every checkpoint
    flat = dirs.reshape(n_f, -1)
    cos = (flat / flat.norm(dim=-1, keepdim=True)) @ cc.W_dec.detach().T  # decoder rows are unit-norm
    best, match = cos.max(1)
    assert float(best.median()) > 0.95 and float((best > 0.9).float().mean()) >= 0.85
    sq = cc.decoder_norms()[match].pow(2)  # [F, C], rows sum to 1
    good = best > 0.9
    excl_home = torch.arange(n_f - n_shared) // 8
    ex = sq[n_shared:][good[n_shared:]]
    assert bool((ex[torch.arange(ex.shape[0]), excl_home[good[n_shared:]]] > 0.9).all())
    sh = sq[:n_shared][good[:n_shared]]
    assert bool(((sh > 0.2) & (sh < 0.5)).all())  # a shared feature is spread ~1/3 each
    assert stats["warmup_steps"] == 50 and stats["steps"] == 1500


def test_threshold_matches_training_selection_on_training_rows(trained):
    cc, _, rows, _ = trained
    batch = rows[:256]
    pre = cc._pre(batch)
    m = round(cc.cfg.k * 256)
    sel, _ = batch_topk_select(pre, m)
    batch_mask = torch.zeros(pre.numel(), dtype=torch.bool)
    batch_mask[sel] = True
    thr_mask = (pre > cc.threshold).reshape(-1)
    jaccard = float((batch_mask & thr_mask).sum()) / float((batch_mask | thr_mask).sum())
    assert jaccard > 0.85
    l0 = eval_crosscoder(cc, rows[16000:])["l0"]
    assert abs(l0 - cc.cfg.k) / cc.cfg.k < 0.15


def test_short_run_threshold_is_calibrated_to_k():
    rows, _ = planted(6000, seed=3)
    cfg = PaperCrosscoderTrainingConfig(d_in=C * D, d_sae=96, n_checkpoints=C, k=3)
    cc, stats = train_crosscoder(rows[:5000], cfg, lr=3e-3, steps=150, batch_size=256, warmup_steps=10)
    assert stats["calibration_steps"] == 15 and stats["threshold"] == float(cc.threshold)
    # the threshold keeps ~k latents per row on rows from the training distribution
    l0 = eval_crosscoder(cc, rows[5000:])["l0"]
    assert abs(l0 - 3) / 3 < 0.2, (l0, stats["threshold"], stats["threshold_ema"])


def test_eval_fvu_matches_a_plain_per_slice_computation(trained):
    cc, _, rows, _ = trained
    x = rows[16000:17000]
    rec = cc.decode(cc.encode(x)).detach().double()
    for c, got in enumerate(eval_fvu_per_checkpoint(cc, x, batch_size=300)):
        xs, rs = x[:, c * D:(c + 1) * D].double(), rec[:, c * D:(c + 1) * D]
        want = float((xs - rs).pow(2).sum() / (xs - xs.mean(0)).pow(2).sum())
        assert got == pytest.approx(want, rel=1e-4)


def test_train_crosscoder_inputs():
    rows, _ = planted(600)
    cfg = PaperCrosscoderConfig(d_in=C * D, d_sae=64, n_checkpoints=C, k=3)  # an inference config is accepted
    chunks = [rows[i:i + 100] for i in range(0, 600, 100)]  # re-cut into batches of 128
    cc, stats = train_crosscoder(iter(chunks), cfg, lr=1e-3, tokens=4 * 128, batch_size=128)
    assert stats["steps"] == 4 and isinstance(cc, PaperCrosscoder)
    with pytest.raises(DataError, match="ran out after 4 batches"):
        train_crosscoder(iter(chunks), cfg, lr=1e-3, steps=5, batch_size=128)
    with pytest.raises(DataError, match="width"):
        train_crosscoder(rows[:, :D], cfg, lr=1e-3, steps=2, batch_size=128)
