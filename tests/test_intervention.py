"""FeatureInjection and feature-class masks on tiny random HookedTransformers."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from sae_bilingual.errors import ConfigError, DataError, SAEFileError
from sae_bilingual.intervention.hook import FeatureInjection, final_residuals
from sae_bilingual.intervention.masks import class_features, class_mask, class_masks, mask_tensor, scale_m
from sae_bilingual.study.intervention_stage import _feasible_ms

D = 32
N_LAYERS = 3
VOCAB = 40

torch.set_num_threads(1)  # tiny models: threads only contend on the shared CPUs


def tiny_model(seed: int, d_model: int = D) -> HookedTransformer:
    cfg = HookedTransformerConfig(
        n_layers=N_LAYERS, d_model=d_model, d_head=8, n_heads=d_model // 8, d_mlp=2 * d_model,
        d_vocab=VOCAB, n_ctx=64, act_fn="silu", normalization_type="RMS",
        positional_embedding_type="rotary", gated_mlp=True, seed=seed, device="cpu",
    )
    model = HookedTransformer(cfg)
    model.eval()
    return model


class StandInSAE(torch.nn.Module):
    """Contract API of PaperTopKSAE: TopK(W_enc (x - b_pre)) without ReLU; x_hat = W_dec z + b_pre.

    With ``identity=True``: d_sae = 2 d_in, W_enc = [I, -I], W_dec = [I; -I], k = d_in, b_pre = 0.
    The top d_in pre-activations of [x, -x] are exactly |x_i| in the sign-matching slot, so
    decode(encode(x_unit)) == x_unit: a perfect reconstruction.
    """

    def __init__(self, d_in: int = D, hook_name: str = "blocks.1.hook_resid_post", identity: bool = True, seed: int = 0):
        super().__init__()
        eye = torch.eye(d_in)
        if identity:
            W_enc = torch.cat([eye, -eye], dim=1)
            W_dec = torch.cat([eye, -eye], dim=0)
            b = torch.zeros(d_in)
            k = d_in
        else:
            g = torch.Generator().manual_seed(seed)
            W_enc = torch.randn(d_in, 4 * d_in, generator=g) / d_in**0.5
            W_dec = W_enc.T.clone()
            b = 0.1 * torch.randn(d_in, generator=g)
            k = 8
        self.W_enc = torch.nn.Parameter(W_enc)
        self.W_dec = torch.nn.Parameter(W_dec)
        self.b_dec = torch.nn.Parameter(b)
        self.cfg = SimpleNamespace(
            d_in=d_in, d_sae=W_enc.shape[1], k=k, metadata=SimpleNamespace(hook_name=hook_name)
        )

    def encode_normalized(self, x_unit: torch.Tensor) -> torch.Tensor:
        pre = (x_unit - self.b_dec) @ self.W_enc
        val, idx = pre.topk(self.cfg.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, idx, val)

    def decode_normalized(self, z: torch.Tensor, add_bias: bool = True) -> torch.Tensor:
        out = z @ self.W_dec
        return out + self.b_dec if add_bias else out


HOOK = "blocks.1.hook_resid_post"  # paper layer 2


@pytest.fixture(scope="module")
def models():
    return tiny_model(1), tiny_model(2)


@pytest.fixture()
def tokens():
    g = torch.Generator().manual_seed(0)
    t = torch.randint(1, VOCAB, (2, 9), generator=g)
    t[:, 0] = 0  # BOS
    return t


def manual_final(final, tokens, hook=HOOK):
    _, cache = final.run_with_cache(tokens, names_filter=[hook])
    return cache[hook]


def test_alpha_zero_and_empty_mask_are_exact_noops(models, tokens):
    final, mid = models
    clean = mid(tokens)
    sae = StandInSAE(identity=False)
    with FeatureInjection(sae, mid_model=mid, final_model=final, alpha=0.0) as inj:
        assert torch.equal(mid.run_with_hooks(tokens, fwd_hooks=inj.fwd_hooks()), clean)
    with FeatureInjection(
        sae, mid_model=mid, final_model=final, alpha=0.5, mask=torch.zeros(sae.cfg.d_sae), add_bias=False
    ) as inj:
        assert torch.equal(mid.run_with_hooks(tokens, fwd_hooks=inj.fwd_hooks()), clean)
    # ...but with b_pre on, an empty mask still adds alpha * ||x|| * b_pre
    with FeatureInjection(
        sae, mid_model=mid, final_model=final, alpha=0.5, mask=torch.zeros(sae.cfg.d_sae), add_bias=True
    ) as inj:
        assert not torch.allclose(mid.run_with_hooks(tokens, fwd_hooks=inj.fwd_hooks()), clean)


def test_perfect_sae_adds_exactly_the_final_residual(models, tokens):
    final, mid = models
    x_full = manual_final(final, tokens)
    x_mid = manual_final(mid, tokens)
    seen = {}

    def after(x, hook):
        seen["x"] = x.clone()

    for skip_bos in (False, True):
        with FeatureInjection(
            StandInSAE(), mid_model=mid, final_model=final, alpha=1.0, skip_bos=skip_bos
        ) as inj:
            mid.run_with_hooks(tokens, fwd_hooks=inj.fwd_hooks() + [(HOOK, after)])
        expected = x_mid + x_full
        if skip_bos:
            expected[:, 0] = x_mid[:, 0]
        torch.testing.assert_close(seen["x"], expected, rtol=1e-6, atol=1e-6)


def test_delta_matches_formula_scales_and_partial_mask(models, tokens):
    final, mid = models
    sae = StandInSAE(identity=False)
    x_full = manual_final(final, tokens)
    mask = torch.zeros(sae.cfg.d_sae)
    mask[::3] = 1
    for scale in ("residual", "unit"):
        for add_bias in (True, False):
            inj = FeatureInjection(
                sae, mid_model=mid, final_model=final, alpha=0.3, mask=mask, scale=scale, add_bias=add_bias
            )
            norm = x_full.norm(dim=-1, keepdim=True)
            xu = x_full / norm
            pre = (xu - sae.b_dec) @ sae.W_enc
            v, i = pre.topk(sae.cfg.k, dim=-1)
            z = torch.zeros_like(pre).scatter(-1, i, v) * mask
            dec = z @ sae.W_dec + (sae.b_dec if add_bias else 0)
            want = 0.3 * dec * (norm if scale == "residual" else 1)
            torch.testing.assert_close(inj.delta(x_full), want, rtol=1e-5, atol=1e-6)
            inj.close()


def test_cached_x_full_equals_final_model(models, tokens):
    final, mid = models
    sae = StandInSAE(identity=False)
    x_full = final_residuals(final, tokens, HOOK, batch_size=1)
    torch.testing.assert_close(x_full, manual_final(final, tokens))
    with FeatureInjection(sae, mid_model=mid, final_model=final, alpha=0.2) as a:
        la = mid.run_with_hooks(tokens, fwd_hooks=a.fwd_hooks())
    with FeatureInjection(sae, mid_model=mid, x_full=x_full, alpha=0.2) as b:
        lb = mid.run_with_hooks(tokens, fwd_hooks=b.fwd_hooks())
    torch.testing.assert_close(la, lb, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(la, mid(tokens), atol=1e-3)


def test_generation_with_kv_cache_equals_recomputation(models, tokens):
    final, mid = models
    sae = StandInSAE(identity=False)
    prompt = tokens[:, :5]
    steps = 6
    with FeatureInjection(sae, mid_model=mid, final_model=final, alpha=0.5) as inj:
        with mid.hooks(fwd_hooks=inj.fwd_hooks()):
            out_c = mid.generate(prompt, max_new_tokens=steps, do_sample=False, use_past_kv_cache=True,
                                 stop_at_eos=False, verbose=False, output_logits=True)
            out_n = mid.generate(prompt, max_new_tokens=steps, do_sample=False, use_past_kv_cache=False,
                                 stop_at_eos=False, verbose=False, output_logits=True)
        # step-by-step recomputation on the whole sequence, no cache anywhere
        seq = prompt
        manual_logits = []
        for _ in range(steps):
            inj.reset()
            lg = mid.run_with_hooks(seq, fwd_hooks=inj.fwd_hooks())[:, -1]
            manual_logits.append(lg)
            seq = torch.cat([seq, lg.argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out_c.sequences, seq)
    assert torch.equal(out_n.sequences, seq)
    for a, b, c in zip(out_c.logits, out_n.logits, manual_logits):
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(b, c, rtol=1e-4, atol=1e-4)
    # and the hook really changes generation logits
    plain = mid.generate(prompt, max_new_tokens=steps, do_sample=False, stop_at_eos=False,
                         verbose=False, output_logits=True)
    assert not torch.allclose(plain.logits[-1], out_c.logits[-1], atol=1e-3)


def test_stacked_masks_generate_as_each_mask_alone(models, tokens):
    """G masks on a batch stacked G times: each block generates what that mask alone generates,
    and the final model runs the shared prompt once (its KV cache tiled), not G times."""
    final, mid = models
    sae = StandInSAE(identity=False)
    g = torch.Generator().manual_seed(3)
    masks = (torch.rand(3, sae.cfg.d_sae, generator=g) < 0.5).float()
    alphas = [0.0, 0.7, 1.5]
    prompt, steps = tokens[:, :5], 6
    kw = dict(max_new_tokens=steps, do_sample=False, use_past_kv_cache=True, stop_at_eos=False, verbose=False)
    rows = []
    with FeatureInjection(sae, mid_model=mid, final_model=final, alpha=alphas, mask=masks) as inj:
        assert inj.final is not None
        real = inj.final.run
        inj.final.run = lambda t, **k: rows.append(t.shape[0]) or real(t, **k)
        with mid.hooks(fwd_hooks=inj.fwd_hooks()):
            stacked = mid.generate(prompt.repeat(3, 1), **kw)
    assert rows[0] == prompt.shape[0] and set(rows[1:]) == {3 * prompt.shape[0]}  # prompt once, then per row
    b = prompt.shape[0]
    for i, (m, a) in enumerate(zip(masks, alphas)):
        with FeatureInjection(sae, mid_model=mid, final_model=final, alpha=a, mask=m) as one:
            with mid.hooks(fwd_hooks=one.fwd_hooks()):
                alone = mid.generate(prompt, **kw)
        assert torch.equal(stacked[i * b : (i + 1) * b], alone)
    assert torch.equal(stacked[:b], mid.generate(prompt, **kw))  # alpha 0: the clean model
    assert not torch.equal(stacked[b : 2 * b], stacked[2 * b :])


def test_hooked_sae_transformer_accepts_the_hook(models, tokens):
    from sae_lens import HookedSAETransformer

    final, mid = models
    hst = HookedSAETransformer(mid.cfg)
    hst.load_state_dict(mid.state_dict())
    hst.eval()
    sae = StandInSAE(identity=False)
    with FeatureInjection(sae, mid_model=mid, final_model=final, alpha=0.2) as a:
        want = mid.run_with_hooks(tokens, fwd_hooks=a.fwd_hooks())
    with FeatureInjection(sae, mid_model=hst, final_model=final, alpha=0.2) as b:
        got = hst.run_with_hooks(tokens, fwd_hooks=b.fwd_hooks())
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_d_model_mismatch_is_a_clear_error(models):
    final, mid = models
    with pytest.raises(SAEFileError, match=r"d_in=16.*d_model=32"):
        FeatureInjection(StandInSAE(d_in=16), mid_model=mid, final_model=final)


def test_wrong_hook_sae_is_a_clear_error(models):
    final, mid = models
    sae = StandInSAE(hook_name="blocks.0.hook_resid_post")
    with pytest.raises(SAEFileError, match=r"blocks\.0\.hook_resid_post.*blocks\.1\.hook_resid_post"):
        FeatureInjection(sae, mid_model=mid, final_model=final, layer=2)
    # the same layer under its resid_pre name is fine
    inj = FeatureInjection(sae, mid_model=mid, final_model=final, hook_name="blocks.1.hook_resid_pre")
    assert inj.layer == 1
    inj.close()
    with pytest.raises(ConfigError, match="same object"):
        FeatureInjection(StandInSAE(), mid_model=mid, final_model=mid)


def test_missing_tokens_is_a_clear_error(models, tokens):
    final, mid = models
    with FeatureInjection(StandInSAE(), mid_model=mid, final_model=final, alpha=1.0) as inj:
        resid = mid.embed(tokens)
        with pytest.raises(DataError, match="token ids"):
            inj.close()  # capture hooks gone: the layer hook cannot know the tokens
            inj(resid, None)


def features_table() -> pd.DataFrame:
    cls = ["en"] * 10 + ["ja"] * 6 + ["mixed"] * 3 + ["dead"] * 5
    df = pd.DataFrame({"cls": cls, "dead": [c == "dead" for c in cls]})
    df.index.name = "feature"
    return df


def test_class_mask_draws_live_features_of_the_class():
    df = features_table()
    m = class_mask(df, "ja", 4, seed=3, d_sae=len(df))
    assert m.shape == (24,) and int(m.sum()) == 4
    assert set(np.flatnonzero(m.numpy())) <= set(range(10, 16))
    assert torch.equal(m, class_mask(df, "ja", 4, seed=3, d_sae=len(df)))
    draws = class_masks(df, "en", 5, n_draws=4, seed=0)
    assert len(draws) == 4 and len({tuple(np.flatnonzero(d.numpy())) for d in draws}) > 1
    assert list(class_features(df, "mixed")) == [16, 17, 18]
    # a feature flagged dead is never drawn even if its cls says otherwise
    df2 = df.copy()
    df2.loc[16, "dead"] = True
    assert list(class_features(df2, "mixed")) == [17, 18]


def test_class_with_too_few_features_names_the_count():
    df = features_table()
    with pytest.raises(DataError, match=r"only 3 live features but m=5"):
        class_mask(df, "mixed", 5, seed=0)
    with pytest.raises(ConfigError):
        class_mask(df, "dead", 1, seed=0)


def test_scale_m_and_mask_tensor():
    assert scale_m(5000, 32768) == 5000
    assert scale_m(5000, 256) == 39
    assert scale_m(1000, 64) == 2
    assert scale_m(1, 64) == 1
    assert torch.equal(mask_tensor([0, 2], 4), torch.tensor([1.0, 0, 1, 0]))
    assert torch.equal(mask_tensor(torch.tensor([True, False]), 2), torch.tensor([1.0, 0]))
    with pytest.raises(ConfigError):
        mask_tensor([5], 4)


# -- the real PaperTopKSAE (sae_bilingual.sae.model) ------------------------------------------


def real_identity_sae(hook_name: str = HOOK):
    from sae_bilingual.sae.model import make_metadata, new_paper_sae

    sae = new_paper_sae(D, k=D, d_sae=2 * D, metadata=make_metadata(hook_name=hook_name))
    eye = torch.eye(D)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        sae.b_dec.zero_()
    return sae


def test_real_paper_topk_sae_adds_exactly_the_final_residual(models, tokens):
    pytest.importorskip("sae_bilingual.sae.model")
    final, mid = models
    sae = real_identity_sae()
    x_full = manual_final(final, tokens)
    x_mid = manual_final(mid, tokens)
    seen = {}
    with FeatureInjection(sae, mid_model=mid, final_model=final, layer=2, alpha=1.0, skip_bos=False) as inj:
        mid.run_with_hooks(tokens, fwd_hooks=inj.fwd_hooks() + [(HOOK, lambda x, hook: seen.update(x=x.clone()))])
    torch.testing.assert_close(seen["x"], x_mid + x_full, rtol=1e-6, atol=1e-6)
    with FeatureInjection(sae, mid_model=mid, final_model=final, alpha=0.0) as inj:
        assert torch.equal(mid.run_with_hooks(tokens, fwd_hooks=inj.fwd_hooks()), mid(tokens))


def test_real_paper_topk_sae_hook_and_width_checks(models, tmp_path):
    pytest.importorskip("sae_bilingual.sae.model")
    from sae_lens import SAE

    from sae_bilingual.sae.files import save_sae
    from sae_bilingual.sae.model import make_metadata, new_paper_sae

    final, mid = models
    wrong = new_paper_sae(D, k=4, d_sae=64, metadata=make_metadata(hook_name="blocks.2.hook_resid_post"))
    save_sae(wrong, tmp_path / "sae")
    loaded = SAE.load_from_disk(str(tmp_path / "sae"))
    with pytest.raises(SAEFileError, match=r"blocks\.2\.hook_resid_post.*paper layer 3.*blocks\.1\.hook_resid_post"):
        FeatureInjection(loaded, mid_model=mid, final_model=final, layer=2)
    narrow = new_paper_sae(16, k=4, d_sae=64, metadata=make_metadata(hook_name=HOOK))
    with pytest.raises(SAEFileError, match=r"d_in=16.*d_model=32"):
        FeatureInjection(narrow, mid_model=mid, final_model=final)


def test_mask_size_is_capped_at_half_the_smallest_class_so_draws_differ():
    cls = ["en"] * 10 + ["ja"] * 8 + ["mixed"] * 6 + ["mixed"] * 3
    features = pd.DataFrame({"cls": cls, "dead": [False] * 24 + [True] * 3})
    iv = SimpleNamespace(conditions=["none", "en", "ja", "mixed"], ms=[5000, 64], scale_m=False)
    assert _feasible_ms(features, iv, d_sae=32768) == [3, 3]  # 6 live Mixed -> m = 3
    assert _feasible_ms(features, SimpleNamespace(conditions=["none", "en", "ja"], ms=[3], scale_m=False),
                        d_sae=32768) == [3]  # below the cap: unchanged
    with pytest.raises(DataError, match="no live features"):
        _feasible_ms(features.assign(dead=features["cls"].eq("mixed")), iv, d_sae=32768)
