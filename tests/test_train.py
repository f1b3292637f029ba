"""Brief training on a tiny random model: loss falls, FVU reported, saved SAEs load."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from datasets import Dataset
from sae_lens import SAE
from transformer_lens import HookedTransformer, HookedTransformerConfig

from sae_bilingual.config import SAESpec
from sae_bilingual.data.corpus import make_windows
from sae_bilingual.data.store import ActivationStore, collect_activations
from sae_bilingual.errors import ConfigError
from sae_bilingual.sae.metrics import ce_metrics_many, evaluate_sae, reconstruction_metrics
from sae_bilingual.sae.model import PaperTopKSAE, new_paper_sae
from sae_bilingual.sae.train import TrainRun, convergence, lr_grid, train_saes


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
    spec = SAESpec(k=8, expansion=4, lr=3e-3, batch_size=128)
    saes = train_saes(store, hooks, spec, TrainRun(total_steps=150), {h: {"model_name": "tiny"} for h in hooks},
                      save_dir=tmp_path)
    acts, _ = collect_activations(model, eval_w, hooks)
    for h in hooks:
        sae = saes[h]
        assert torch.allclose(sae.W_dec.norm(dim=-1), torch.ones(sae.cfg.d_sae), atol=1e-5)
        assert sae.cfg.d_sae == 4 * 32 and sae.cfg.metadata.n_training_steps == 150
        assert sae.cfg.metadata.training_tokens == 150 * 128 and sae.cfg.metadata.lr == 3e-3
        m = evaluate_sae(sae, acts[h], model, eval_w)
        ref = _reconstruction_by_brute_force(sae, acts[h])
        for key in ("mse", "fvu", "l0"):
            assert m[key] == pytest.approx(ref[key], rel=1e-5), (h, key)
        assert (m["n_live"], m["n_dead"]) == (ref["n_live"], sae.cfg.d_sae - ref["n_live"])
        assert m["fvu"] < 0.5 and m["l0"] == 8  # trained: most of the variance is reconstructed
        ce = _ce_by_full_forward(model, sae, eval_w)
        for key in ("ce_loss_clean", "ce_loss_sae", "ce_loss_zero"):
            assert m[key] == pytest.approx(ce[key], rel=1e-5, abs=1e-6), (h, key)
        # random model: zero-ablation need not hurt; then CE recovered is undefined (NaN) and says why
        hurts = m["ce_loss_zero"] > m["ce_loss_clean"]
        assert (m["ce_recovered"] == m["ce_recovered"]) == hurts and (m["ce_recovered_note"] == "") == hurts
        if hurts:
            assert m["ce_recovered"] == pytest.approx(ce["ce_recovered"], rel=1e-5)
        loaded = SAE.load_from_disk(tmp_path / h)
        assert isinstance(loaded, PaperTopKSAE) and loaded.cfg.metadata.model_name == "tiny"
        assert torch.equal(loaded.W_enc, sae.W_enc)
    # every layer from one clean pass (start_at_layer) == splicing into a whole forward
    many = ce_metrics_many(model, [saes[h] for h in hooks], eval_w, batch_size=5)
    for h in hooks:
        ref = _ce_by_full_forward(model, saes[h], eval_w)
        for key, val in ref.items():
            if key == "ce_recovered" and ref["ce_loss_zero"] <= ref["ce_loss_clean"]:
                assert math.isnan(many[h][key])
                continue
            assert many[h][key] == pytest.approx(val, rel=1e-5, abs=1e-6), (h, key)
    assert many[hooks[0]]["ce_loss_sae"] != many[hooks[1]]["ce_loss_sae"]


@torch.no_grad()
def _reconstruction_by_brute_force(sae, x_unit):
    """Reference: dense codes of every vector at once, float64, no batching."""
    u = x_unit.double()
    W_enc, W_dec, b = sae.W_enc.double(), sae.W_dec.double(), sae.b_dec.double()
    pre = (u - b) @ W_enc
    top = pre.topk(sae.cfg.k, dim=-1)
    z = torch.zeros_like(pre).scatter(-1, top.indices, top.values)
    se = ((z @ W_dec + b - u) ** 2).sum(-1)
    return {"mse": float(se.mean()), "fvu": float(se.sum() / ((u - u.mean(0)) ** 2).sum()),
            "l0": float((z != 0).sum(-1).double().mean()), "n_live": int((z != 0).any(0).sum())}


@torch.no_grad()
def _ce_by_full_forward(model, sae, w):
    """Reference: each condition as a whole forward with the residual replaced by a hook."""
    hook = sae.cfg.metadata.hook_name
    T = w.tokens.shape[1]
    live = torch.arange(T)[None, :] < w.lengths[:, None]
    splice = live.clone()
    splice[:, 0] = False
    fns = {"clean": None,
           "sae": lambda a, hook: torch.where(splice[..., None], sae(a), a),
           "zero": lambda a, hook: torch.where(splice[..., None], torch.zeros_like(a), a)}
    ce = {}
    for name, fn in fns.items():
        logits = model.run_with_hooks(w.tokens, fwd_hooks=[(hook, fn)] if fn else [])
        nll = -torch.log_softmax(logits[:, :-1], -1).gather(-1, w.tokens[:, 1:, None])[..., 0]
        ce[f"ce_loss_{name}"] = float(nll[live[:, 1:]].mean())
    ce["ce_recovered"] = (ce["ce_loss_zero"] - ce["ce_loss_sae"]) / (ce["ce_loss_zero"] - ce["ce_loss_clean"])
    return ce


def test_lr_grid_picks_min():
    """Each row's validation MSE is that of an SAE trained on its own with that LR (same stream,
    same seed: equal), the best LR is the lowest finite one, and a diverging LR is kept in the
    table but never chosen."""
    model, w = _world()
    hook = "blocks.0.hook_resid_post"
    acts, _ = collect_activations(model, w.subset(slice(64, 80)), [hook])
    spec = SAESpec(k=4, expansion=2, batch_size=64)

    def store() -> ActivationStore:
        return ActivationStore(model, w.subset(slice(0, 32)), [hook], batch_size=64, buffer_vectors=512)

    lrs = (1e-5, 3e-3, 1e-3)
    df, best = lr_grid(store, hook, spec, TrainRun(total_steps=30),
                       lambda sae: reconstruction_metrics(sae, acts[hook]), lrs=lrs)
    alone = [reconstruction_metrics(train_saes(store(), [hook], dataclasses.replace(spec, lr=lr),
                                               TrainRun(total_steps=30))[hook], acts[hook])["mse"] for lr in lrs]
    assert list(df["lr"]) == list(lrs)
    assert df["val_mse"].tolist() == pytest.approx(alone, rel=1e-6)
    assert best == lrs[min(range(len(lrs)), key=alone.__getitem__)]
    assert len(set(alone)) == len(alone)  # the LRs really differ, so the choice means something
    calls = iter([math.nan, 0.5, 0.2])
    df2, best2 = lr_grid(store, hook, spec, TrainRun(total_steps=2),
                         lambda sae: {"mse": next(calls), "fvu": 0.0}, lrs=(1.0, 1e-3, 2e-3))
    assert math.isnan(df2["val_mse"][0]) and best2 == 2e-3


def test_fused_adam_gives_the_per_tensor_update():
    """The fused kernel is a speed switch, not a different optimiser."""
    model, w = _world()
    hook = "blocks.0.hook_resid_post"
    spec = SAESpec(k=4, expansion=2, lr=3e-3, batch_size=64, warmup_steps=0)
    out = {}
    for fused in (True, False):
        store = ActivationStore(model, w.subset(slice(0, 32)), [hook], batch_size=64, buffer_vectors=512)
        out[fused] = train_saes(store, [hook], dataclasses.replace(spec, fused_adam=fused), TrainRun(total_steps=40))[hook]
    assert out[True].W_enc.abs().sum() > 0
    for name in ("W_enc", "W_dec", "b_dec"):
        assert torch.allclose(getattr(out[True], name), getattr(out[False], name), atol=1e-5), name


def test_convergence_hand_example():
    # last tenth = [1.0] -> final 1.0; window 1; first step within 10 % of it is index 5 -> 6 steps
    c = convergence([10, 8, 6, 4, 2, 1.05, 1, 1, 1, 1])
    assert c == {"train_loss_final": 1.0, "train_loss_first_tenth": 10.0, "train_steps_to_final": 6}
    # 40 steps: tenth 4, window 2: running means 9, 7, 5, 3, 1.5, 1, ... -> index 5 + 2 = 7
    c = convergence([10, 8, 6, 4, 2, 1] + [1] * 34)
    assert c["train_steps_to_final"] == 6 + 1 and c["train_loss_first_tenth"] == 7.0


def test_warm_start_begins_at_the_given_sae():
    model, w = _world()
    hook = "blocks.0.hook_resid_post"
    spec, run = SAESpec(k=4, expansion=2, lr=3e-3, batch_size=64, warmup_steps=0), TrainRun(total_steps=30)

    def store():
        return ActivationStore(model, w.subset(slice(0, 32)), [hook], batch_size=64, buffer_vectors=512)

    cold = train_saes(store(), [hook], spec, run)[hook]
    assert cold.cfg.metadata.warm_start is False
    # a vanishing LR leaves the warm-started SAE where it began: at the cold SAE's weights
    warm = train_saes(store(), [hook], dataclasses.replace(spec, lr=1e-12), run, init_from={hook: cold})[hook]
    assert warm.cfg.metadata.warm_start is True
    for name in ("W_enc", "W_dec", "b_dec"):
        assert torch.allclose(getattr(warm, name), getattr(cold, name), atol=1e-6), name
    # ... and it starts where the cold run ended: early loss near the cold run's final loss
    assert warm.cfg.metadata.train_loss_first_tenth < 1.1 * cold.cfg.metadata.train_loss_final
    assert cold.cfg.metadata.train_loss_first_tenth > cold.cfg.metadata.train_loss_final


def test_warm_start_refuses_other_shapes():
    model, w = _world()
    hook = "blocks.0.hook_resid_post"
    store = ActivationStore(model, w.subset(slice(0, 32)), [hook], batch_size=64, buffer_vectors=512)
    other = new_paper_sae(32, k=4, d_sae=96)
    with pytest.raises(ConfigError, match="d_sae"):
        train_saes(store, [hook], SAESpec(k=4, expansion=2, lr=1e-3, batch_size=64), TrainRun(total_steps=5),
                   init_from={hook: other})


def test_run_steps_and_batch_follow_the_recipe_and_the_vectors():
    """One pass over n_vectors: the batch is clamped to them, steps = n_vectors // batch."""
    spec = SAESpec(batch_size=256, warmup_steps=5)
    assert (TrainRun(n_vectors=8192).batch_size(spec), TrainRun(n_vectors=8192).steps(spec)) == (256, 32)
    assert TrainRun(n_vectors=8192).warmup(spec) == 3  # min(5, 32 // 10)
    assert (TrainRun(n_vectors=1000).batch_size(spec), TrainRun(n_vectors=1000).steps(spec)) == (256, 3)
    assert (TrainRun(n_vectors=100).batch_size(spec), TrainRun(n_vectors=100).steps(spec)) == (100, 1)
    assert TrainRun(n_vectors=8192, total_steps=7).steps(spec) == 7
    with pytest.raises(ConfigError, match="total_steps or n_vectors"):
        TrainRun().steps(spec)


def test_train_saes_needs_a_number_as_lr_and_the_batch_of_the_store():
    model, w = _world()
    hook = "blocks.0.hook_resid_post"

    def store(bs):
        return ActivationStore(model, w.subset(slice(0, 8)), [hook], batch_size=bs, buffer_vectors=256)

    with pytest.raises(ConfigError, match="lr_grid"):
        train_saes(store(64), [hook], SAESpec(k=4, expansion=2, batch_size=64), TrainRun(total_steps=2))
    with pytest.raises(ConfigError, match="batches of 32 vectors"):
        train_saes(store(32), [hook], SAESpec(k=4, expansion=2, lr=1e-3, batch_size=64), TrainRun(total_steps=2))


@pytest.mark.parametrize("progress", [True, False])
def test_quiet_run_hides_saelens_training_bar(capsys, progress):
    """SAELens's MultiSAETrainer draws its own tqdm bar; ``-q`` (progress=False) must hide it."""
    model, w = _world()
    hook = "blocks.0.hook_resid_post"
    store = ActivationStore(model, w.subset(slice(0, 16)), [hook], batch_size=64, buffer_vectors=512)
    train_saes(store, [hook], SAESpec(k=4, expansion=2, lr=1e-3, batch_size=64), TrainRun(total_steps=3, progress=progress))
    assert ("Training Multi-SAE" in capsys.readouterr().err) is progress


def test_bfloat16_buffer_trains_within_seed_noise_of_float32():
    """data.buffer_dtype: bfloat16 rounds each stored unit vector once; the SAE casts back to
    float32 and renormalises, so its validation MSE moves less than changing the seed does."""
    model, w = _world()
    hook = "blocks.1.hook_resid_post"
    acts, _ = collect_activations(model, w.subset(slice(64, 80)), [hook])
    spec = SAESpec(k=8, expansion=4, lr=3e-3, batch_size=128, warmup_steps=0)

    def val_mse(dtype: torch.dtype, seed: int) -> float:
        store = ActivationStore(model, w.subset(slice(0, 64)), [hook], batch_size=128, buffer_vectors=1024,
                                lm_batch_size=16, dtype=dtype, seed=0)
        if dtype != torch.float32:
            assert store.next_with_labels()[0][hook].dtype == dtype  # the buffer really holds bf16
        sae = train_saes(store, [hook], spec, TrainRun(total_steps=120, seed=seed))[hook]
        return reconstruction_metrics(sae, acts[hook])["mse"]

    f32, bf16, other_seed = val_mse(torch.float32, 0), val_mse(torch.bfloat16, 0), val_mse(torch.float32, 1)
    assert bf16 != f32  # the rounding reached the SAE
    assert abs(bf16 - f32) <= max(abs(other_seed - f32), 0.01 * f32)
