"""Perplexity, few-shot translation and the intervention tables on tiny random models."""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from sae_bilingual.config_intervention import InterventionSpec
from sae_bilingual.intervention.experiment import run_intervention_table, run_intervention_table_one_at_a_time
from sae_bilingual.intervention.hook import FeatureInjection
from sae_bilingual.intervention.metrics import PromptTemplate, chrf, perplexity, translate
from sae_bilingual.intervention.tables import (
    PAPER_TABLE1,
    aggregate_table,
    compare_with_paper,
    table1,
    table4,
    to_markdown,
)
from tests.test_comet_bridge import fake_comet  # noqa: F401  (fixture)
from tests.test_intervention import HOOK, StandInSAE, tiny_model

torch.set_num_threads(1)  # tiny models: threads only contend on the shared CPUs


class CharTok:
    """Minimal char tokenizer: id 0 = BOS, no EOS."""

    alphabet = " :\nabcdefghijklmnopqrstuvwxyz"
    bos_token_id = 0
    eos_token_id = None

    def encode(self, text):
        return [self.alphabet.index(c) + 1 for c in text]

    def decode(self, ids):
        return "".join(self.alphabet[i - 1] if 0 < i <= len(self.alphabet) else "" for i in ids)


TEMPLATE = PromptTemplate(names={"en": "e", "ja": "j"})


@pytest.fixture(scope="module")
def models():
    return tiny_model(1), tiny_model(2)


def hand_batch():
    g = torch.Generator().manual_seed(5)
    tokens = torch.randint(1, 40, (5, 7), generator=g)
    tokens[:, 0] = 0
    lengths = torch.tensor([7, 4, 2, 6, 5])
    for i, n in enumerate(lengths.tolist()):
        tokens[i, n:] = 39  # padding
    lang = torch.tensor([0, 1, 0, 1, 1])
    return SimpleNamespace(tokens=tokens, lengths=lengths, lang=lang, languages=("en", "ja"))


def test_perplexity_matches_manual_cross_entropy(models):
    _, mid = models
    w = hand_batch()
    got = perplexity(mid, w, batch_size=2)
    # manual: one sequence at a time, unpadded, targets 1..len-1
    nll = {0: [], 1: []}
    for i in range(5):
        n = int(w.lengths[i])
        seq = w.tokens[i : i + 1, :n]
        logits = mid(seq)[0]
        ce = torch.nn.functional.cross_entropy(logits[:-1], seq[0, 1:], reduction="none")
        nll[int(w.lang[i])].extend(ce.tolist())
    assert got["tokens_en"] == 6 + 1 and got["tokens_ja"] == 3 + 5 + 4
    assert got["ppl_en"] == pytest.approx(math.exp(np.mean(nll[0])), rel=1e-5)
    assert got["ppl_ja"] == pytest.approx(math.exp(np.mean(nll[1])), rel=1e-5)
    assert got["ppl_all"] == pytest.approx(math.exp(np.mean(nll[0] + nll[1])), rel=1e-5)
    # padding content is irrelevant; batch size is irrelevant
    w2 = hand_batch()
    for i, n in enumerate(w2.lengths.tolist()):
        w2.tokens[i, n:] = 7
    assert perplexity(mid, w2, batch_size=5)["ppl_all"] == pytest.approx(got["ppl_all"], rel=1e-5)
    # tensor form
    t = perplexity(mid, w.tokens, w.lang, ("en", "ja"), lengths=w.lengths)
    assert t["ppl_all"] == pytest.approx(got["ppl_all"], rel=1e-6)


def test_perplexity_with_injection_differs_and_noop_equal(models):
    final, mid = models
    w = hand_batch()
    clean = perplexity(mid, w)
    with FeatureInjection(StandInSAE(identity=False), mid_model=mid, final_model=final, alpha=0.0) as inj:
        assert perplexity(mid, w, fwd_hooks=inj.fwd_hooks()) == clean
    with FeatureInjection(StandInSAE(identity=False), mid_model=mid, final_model=final, alpha=1.0) as inj:
        assert perplexity(mid, w, fwd_hooks=inj.fwd_hooks())["ppl_all"] != pytest.approx(clean["ppl_all"])


PAIRS = pd.DataFrame(
    {"en": ["ab", "cat", "dog", "sun", "hi"], "ja": ["ba", "neko", "inu", "hi", "yo"]}
)


def manual_translate(model, hooks, src, tgt, shots_df, test_df, max_new):
    tok = CharTok()
    out = []
    shots = list(zip(shots_df[src], shots_df[tgt]))
    for s in test_df[src]:
        seq = torch.tensor([[0] + tok.encode(TEMPLATE.build(shots, s, src, tgt))])
        n = seq.shape[1]
        for _ in range(max_new):
            for h in hooks:
                if isinstance(h[1], FeatureInjection):
                    h[1].reset()
            nxt = model.run_with_hooks(seq, fwd_hooks=hooks)[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], dim=1)
        out.append(TEMPLATE.cut(tok.decode(seq[0, n:].tolist())))
    return out


def test_translate_equals_manual_greedy(models):
    final, mid = models
    got = translate(mid, PAIRS, "en", "ja", few_shot=1, max_new_tokens=6, tokenizer=CharTok(), template=TEMPLATE)
    assert len(got) == 4
    assert got == manual_translate(mid, [], "en", "ja", PAIRS.iloc[:1], PAIRS.iloc[1:], 6)
    with FeatureInjection(StandInSAE(identity=False), mid_model=mid, final_model=final, alpha=0.7) as inj:
        hooked = translate(mid, PAIRS, "ja", "en", 1, inj.fwd_hooks(), 6, tokenizer=CharTok(), template=TEMPLATE)
        want = manual_translate(mid, inj.fwd_hooks(), "ja", "en", PAIRS.iloc[:1], PAIRS.iloc[1:], 6)
    assert hooked == want


def test_template_and_chrf():
    t = PromptTemplate()
    p = t.build([("hello", "こんにちは")], "cat", "en", "ja")
    assert p == "English: hello\nJapanese: こんにちは\n\nEnglish: cat\nJapanese:"
    assert t.cut(" 猫です\nEnglish: x") == "猫です"
    assert chrf(["the cat sat"], ["the cat sat"]) == pytest.approx(100.0)
    assert chrf(["xyz"], ["abc"]) == pytest.approx(0.0)
    assert 0 < chrf(["the cat sat"], ["the cat sits"]) < 100


def test_run_intervention_table_and_aggregates(models, fake_comet):  # noqa: F811
    final, mid = models
    sae = StandInSAE(identity=False, hook_name=HOOK)  # d_sae = 128
    rng = np.random.default_rng(0)
    feats = pd.DataFrame({"cls": rng.choice(["en", "ja", "mixed", "dead"], size=128)})
    w = hand_batch()
    spec = InterventionSpec(alphas=[0.5], ms=[2000, 5000], draws=2, few_shot=1, max_new_tokens=4)
    df = run_intervention_table(final, mid, sae, feats, 2, spec, seed=0, windows=w, pairs=PAIRS,
                                tokenizer=CharTok(), template=TEMPLATE)
    assert len(df) == 2 * (1 + 3 * 2)
    assert set(df["m_eff"]) == {0, 8, 20}
    cols = ["ppl_en", "ppl_ja", "ppl_all", "chrf_en_ja", "chrf_ja_en", "comet_en_ja", "comet_ja_en"]
    assert all(c in df.columns for c in cols)
    assert df[cols].notna().all().all()  # fake COMET is configured by the fixture
    none = df[df.condition == "none"].iloc[0]
    assert none["ppl_all"] == pytest.approx(perplexity(mid, w)["ppl_all"])
    # draws differ (different masks)
    en = df[(df.condition == "en") & (df.m == 5000)]
    assert en["ppl_all"].nunique() == 2
    agg = aggregate_table(df)
    assert len(agg) == 2 * 4
    row = agg[(agg.condition == "en") & (agg.m == 5000)].iloc[0]
    assert row["ppl_all_mean"] == pytest.approx(en["ppl_all"].mean())
    assert row["ppl_all_std"] == pytest.approx(en["ppl_all"].std(ddof=1))
    t1 = table1(df, alpha=0.5, m=5000)
    assert list(t1.index) == ["none", "en", "ja", "mixed"]
    md = to_markdown(t1, ["ppl_en", "ppl_ja", "ppl_all"])
    assert md.count("\n") == 5 and "±" in md
    grid = table4(df)
    assert list(grid.columns) == ["en", "ja", "mixed"] and len(grid) == 2
    assert grid.loc[(0.5, 5000), "en"] == pytest.approx(row["ppl_all_mean"] - none["ppl_all"])
    assert "| alpha | m |" in to_markdown(grid)
    cmp = compare_with_paper(df[df.m == 5000])
    assert "18.70" in cmp and "62.50" in cmp


def test_paper_table1_constant():
    assert PAPER_TABLE1.loc["mixed", "ppl_all"] == 21.96
    assert PAPER_TABLE1.loc["none", "comet_ja_en"] == 56.4
    assert list(PAPER_TABLE1.index) == ["none", "en", "ja", "mixed"]


def test_batched_intervention_equals_one_at_a_time(models, caplog):
    """Table 1 rows (perplexity per condition and draw, chrF) from the batched path -- one pass
    to the hook, conditions stacked after it and in generation -- equal the plain path's."""
    final, mid = models
    sae = StandInSAE(identity=False, hook_name=HOOK)
    rng = np.random.default_rng(1)
    feats = pd.DataFrame({"cls": rng.choice(["en", "ja", "mixed"], size=128)})
    w = hand_batch()
    spec = InterventionSpec(alphas=[0.5, 2.0], ms=[5000], draws=3, few_shot=1, max_new_tokens=5)
    kw = dict(seed=0, windows=w, pairs=PAIRS, tokenizer=CharTok(), template=TEMPLATE, batch_size=2, comet=False)
    ref = run_intervention_table_one_at_a_time(final, mid, sae, feats, 2, spec, **kw)
    for stack in (4, 16):  # 4: the 13 conditions x draws in several passes
        got = run_intervention_table(final, mid, sae, feats, 2, dataclasses.replace(spec, stack=stack), **kw)
        assert got.columns.tolist() == ref.columns.tolist() and len(got) == 2 * (1 + 3 * 3)
        keys = ["condition", "alpha", "m", "m_eff", "draw"]
        pd.testing.assert_frame_equal(got[keys], ref[keys])
        ppl = [c for c in got.columns if c.startswith("ppl_")]
        diff = float((got[ppl] - ref[ppl]).abs().max().max())
        print(f"stack {stack}: max |ppl batched - ppl one at a time| = {diff:.3g}")
        np.testing.assert_allclose(got[ppl].to_numpy(), ref[ppl].to_numpy(), rtol=1e-5)
        assert got[ppl].nunique().min() > 2  # conditions and draws really differ
        chrf_cols = [c for c in got.columns if c.startswith("chrf_")]
        np.testing.assert_allclose(got[chrf_cols].to_numpy(), ref[chrf_cols].to_numpy())
        assert got[chrf_cols].nunique().min() > 2  # the translations really differ between conditions
