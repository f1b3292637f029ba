"""Per-feature analysis: hand-worked example + brute-force reference on random codes."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from sae_bilingual.config_analysis import AnalysisSpec
from sae_bilingual.analysis.features import analyse_features, summarise
from sae_bilingual.analysis.token_script import script_of_tokens
from sae_bilingual.analysis.examples import display_tokens, top_examples
from sae_bilingual.analysis.codes import Codes
from sae_bilingual.errors import ConfigError, DataError

# Hand-worked example. K=2, 5 features, two documents (doc 0 English, doc 1 Japanese).
# doc 1 starts at position 4 so that doc0/pos3 -> doc1/pos4 looks consecutive: a span
# must still not cross the document boundary.
#        doc pos tok  (feat, val)  (feat, val)
ROWS = [
    (0, 0, 10, (0, 10.0), (1, 1.0)),
    (0, 1, 11, (0, 8.0), (2, 3.0)),
    (0, 2, 10, (0, 7.0), (1, 2.0)),   # 7.0 == 0.7 * 10 exactly: NOT active (strict >)
    (0, 3, 12, (0, 9.0), (3, 4.0)),
    (1, 4, 20, (0, 9.5), (1, 2.0)),
    (1, 5, 21, (2, 5.0), (1, 0.5)),
    (1, 6, 20, (0, 10.0), (2, 1.0)),
]
# token clusters: {10, 20} (a translation pair), {12, 21}, everything else singleton
CLUSTERS = np.arange(30)
CLUSTERS[20] = 10
CLUSTERS[21] = 12


def hand_codes(shuffle: bool = True) -> Codes:
    rows = list(ROWS)
    if shuffle:
        rows = [rows[i] for i in (5, 2, 6, 0, 3, 1, 4)]
    return Codes(
        idx=np.array([[a[0], b[0]] for *_, a, b in rows]),
        val=np.array([[a[1], b[1]] for *_, a, b in rows]),
        token_id=np.array([r[2] for r in rows]),
        lang=np.array([r[0] for r in rows]),  # doc 0 en, doc 1 ja
        doc_id=np.array([r[0] for r in rows]),
        position=np.array([r[1] for r in rows]),
        languages=("en", "ja"),
    )


def plogp(*ps: float) -> float:
    return -sum(p * math.log(p) for p in ps)


def test_hand_example_every_metric():
    df = analyse_features(hand_codes(), 5, token_clusters=CLUSTERS)
    assert df.index.name == "feature" and len(df) == 5
    # feature 0: selected rows 0,1,2,3 (doc0) 4,6 (doc1); max 10, threshold 7 -> row 2 out
    f0 = df.loc[0]
    assert f0.max_act == 10.0 and f0.n_fired == 6 and f0.n_active == 5
    assert f0.p_en == pytest.approx(3 / 5) and f0.p_ja == pytest.approx(2 / 5) and f0.cls == "mixed"
    H_tok0 = plogp(0.2, 0.2, 0.2, 0.4)  # tokens 10, 11, 12, 20(x2)
    H_sem0 = plogp(0.6, 0.2, 0.2)       # clusters {10,20}=0.6, {11}=0.2, {12,21}=0.2
    assert f0.H_tok == pytest.approx(H_tok0) and f0.H_sem == pytest.approx(H_sem0)
    assert f0.R == pytest.approx(1 - H_sem0 / H_tok0)
    # topk spans: doc0 pos0-3 (4), doc1 pos4 (1, not joined to doc0 pos3), doc1 pos6 (1)
    assert f0.span_mean == pytest.approx(6 / 3) and f0.span_max == 4
    assert list(f0.top_token_ids) == [20, 10, 11, 12]
    # feature 1: vals 1.0 (tok10), 2.0 (tok10), 2.0 (tok20), 0.5 (tok21); thr 1.4
    f1 = df.loc[1]
    assert (f1.max_act, f1.n_fired, f1.n_active) == (2.0, 4, 2)
    assert (f1.p_en, f1.p_ja, f1.cls) == (0.5, 0.5, "mixed")
    assert f1.H_tok == pytest.approx(math.log(2)) and f1.H_sem == pytest.approx(0.0)
    assert f1.R == pytest.approx(1.0)
    # runs: doc0 pos0 | doc0 pos2 | doc1 pos4-5
    assert f1.span_mean == pytest.approx(4 / 3) and f1.span_max == 2
    assert list(f1.top_token_ids) == [10, 20]
    # feature 2: vals 3.0 (tok11, en), 5.0 (tok21, ja), 1.0 (tok20, ja); thr 3.5 -> only tok21
    f2 = df.loc[2]
    assert (f2.n_fired, f2.n_active, f2.cls, f2.p_ja) == (3, 1, "ja", 1.0)
    assert f2.H_tok == 0.0 and f2.H_sem == 0.0 and f2.R == 1.0  # R = 1 when H_tok = 0
    assert f2.span_mean == pytest.approx(1.5) and f2.span_max == 2
    # feature 3: a feature with one token (one entry)
    f3 = df.loc[3]
    assert (f3.max_act, f3.n_fired, f3.n_active, f3.cls) == (4.0, 1, 1, "en")
    assert (f3.H_tok, f3.R, f3.span_mean, f3.span_max) == (0.0, 1.0, 1.0, 1.0)
    assert list(f3.top_token_ids) == [12]
    # feature 4: dead
    f4 = df.loc[4]
    assert f4.dead and f4.cls == "dead" and f4.n_fired == 0 and f4.n_active == 0
    assert np.isnan(f4.max_act) and np.isnan(f4.H_tok) and np.isnan(f4.R) and np.isnan(f4.p_en)
    assert list(f4.top_token_ids) == []
    assert df["dead"].tolist() == [False, False, False, False, True]


def test_threshold_spans_do_not_cross_documents():
    df = analyse_features(hand_codes(), 5, cfg=AnalysisSpec(span_rule="threshold"))
    # feature 0 active rows: doc0 pos0,1 | doc0 pos3 | doc1 pos4 | doc1 pos6
    assert df.loc[0].span_mean == pytest.approx(5 / 4) and df.loc[0].span_max == 2
    # feature 1 active: doc0 pos2 | doc1 pos4
    assert df.loc[1].span_mean == 1.0 and df.loc[1].span_max == 1
    assert df["H_sem"].isna().all() and df["R"].isna().all()  # no clusters given


def test_shuffled_and_sorted_codes_agree():
    a = analyse_features(hand_codes(shuffle=True), 5, token_clusters=CLUSTERS)
    b = analyse_features(hand_codes(shuffle=False), 5, token_clusters=CLUSTERS)
    pd.testing.assert_frame_equal(a.drop(columns="top_token_ids"), b.drop(columns="top_token_ids"))


def test_threshold_tie_is_excluded_for_awkward_float():
    mx = np.float32(0.3)
    tie = np.float32(0.7 * np.float64(mx))  # exactly 0.7 x max after rounding to float32
    just_above = np.nextafter(tie, np.float32(1))
    c = Codes(idx=np.zeros((3, 1)), val=np.array([[mx], [tie], [just_above]]),
              token_id=np.array([1, 2, 3]), lang=np.zeros(3), doc_id=np.arange(3),
              position=np.zeros(3))
    df = analyse_features(c, 1)
    assert df.loc[0].n_active == 2  # max and just_above; the tie is out
    assert sorted(df.loc[0].top_token_ids) == [1, 3]


def test_activation_weighting():
    df = analyse_features(hand_codes(), 5, cfg=AnalysisSpec(token_weighting="activation"))
    # feature 0 active: 10 (en), 8 (en), 9 (en), 9.5 (ja), 10 (ja) -> p_en = 27 / 46.5
    assert df.loc[0].p_en == pytest.approx(27 / 46.5)
    w = np.array([10, 8, 9, 19.5]) / 46.5
    assert df.loc[0].H_tok == pytest.approx(plogp(*w))


def test_script_rule():
    # one document labelled ja: tokens [digit, en word, digit, ja word]; all rows active
    pieces = ["。", "▁42", "▁cat", "です"]
    table = script_of_tokens(pieces)
    assert table.tolist() == [1, -1, 0, 1]  # punctuation -> ja (literal rule), digits -> -1
    c = Codes(idx=np.zeros((4, 1)), val=np.ones((4, 1)), token_id=np.array([1, 2, 1, 3]),
              lang=np.ones(4), doc_id=np.zeros(4), position=np.arange(4))
    df = analyse_features(c, 1, cfg=AnalysisSpec(language_rule="script"), token_script=table)
    # row0 digit, nothing before -> document label ja; row1 en; row2 digit -> previous (en); row3 ja
    assert df.loc[0].p_en == pytest.approx(2 / 4) and df.loc[0].p_ja == pytest.approx(2 / 4)
    doc = analyse_features(c, 1)
    assert doc.loc[0].p_ja == 1.0 and doc.loc[0].cls == "ja"


def test_summarise_hand_example():
    df = analyse_features(hand_codes(), 5, token_clusters=CLUSTERS)
    s = summarise(df, ("en", "ja"))
    assert (s["n_dead"], s["n_live"], s["n_features"]) == (1, 4, 5)
    assert (s["frac_en"], s["frac_ja"], s["frac_mixed"]) == (0.25, 0.25, 0.5)
    H0 = plogp(0.2, 0.2, 0.2, 0.4)
    R0 = 1 - plogp(0.6, 0.2, 0.2) / H0
    assert s["mean_H_tok"] == pytest.approx((H0 + math.log(2)) / 4)
    assert s["mean_H_sem"] == pytest.approx(plogp(0.6, 0.2, 0.2) / 4)
    assert s["mean_R"] == pytest.approx((R0 + 3) / 4)
    assert s["mean_span"] == pytest.approx((2 + 4 / 3 + 1.5 + 1) / 4)
    assert summarise(df) == s  # languages inferred from p_ columns


def test_bad_inputs_name_the_fix():
    with pytest.raises(DataError, match="n_latents"):
        analyse_features(hand_codes(), 3)
    with pytest.raises(ConfigError, match="choose one of"):
        analyse_features(hand_codes(), 5, cfg=AnalysisSpec(span_rule="window"))
    with pytest.raises(ConfigError, match="token_script"):
        analyse_features(hand_codes(), 5, cfg=AnalysisSpec(language_rule="script"))
    # one bound for the recipe and the library: the recipe's section is the analysis's config
    with pytest.raises(ConfigError, match=r"analysis.lang_threshold must lie in \[0.5, 1\)"):
        analyse_features(hand_codes(), 5, cfg=AnalysisSpec(lang_threshold=0.3))
    with pytest.raises(DataError, match="token_clusters"):
        analyse_features(hand_codes(), 5, token_clusters=np.arange(5))


# ------------------------------------------------------------------ brute force


def reference(codes: Codes, n: int, clusters, cfg: AnalysisSpec) -> pd.DataFrame:
    """Per-feature loops over plain Python rows (independent of the vectorised code)."""
    rows = sorted(range(codes.n), key=lambda r: (codes.doc_id[r], codes.position[r]))
    out = []
    for i in range(n):
        ent = [(r, float(codes.val[r][list(codes.idx[r]).index(i)])) for r in rows if i in codes.idx[r]]
        rec = dict(n_fired=len(ent))
        if not ent:
            out.append(dict(rec, n_active=0, dead=True, cls="dead"))
            continue
        mx = max(v for _, v in ent)
        thr = float(np.float32(cfg.act_threshold * mx))
        act = [(r, v) for r, v in ent if v > thr]
        if not act:  # selected, but only with activations <= 0: dead
            out.append(dict(rec, n_active=0, dead=True, cls="dead"))
            continue
        w = {}
        lw = [0.0] * len(codes.languages)
        for r, v in act:
            wt = 1.0 if cfg.token_weighting == "count" else v
            w[int(codes.token_id[r])] = w.get(int(codes.token_id[r]), 0.0) + wt
            lw[int(codes.lang[r])] += wt
        tot = sum(w.values())
        f = {t: x / tot for t, x in w.items()}
        H_tok = -sum(p * math.log(p) for p in f.values())
        pc = {}
        for t, p in f.items():
            pc[clusters[t]] = pc.get(clusters[t], 0.0) + p
        H_sem = -sum(p * math.log(p) for p in pc.values())
        plang = [x / tot for x in lw]
        cls = "mixed"
        for lg, p in zip(codes.languages, plang):
            if p > cfg.lang_threshold:
                cls = lg
        span_set = ent if cfg.span_rule == "topk" else act
        runs, prev = [], None
        for r, _ in span_set:
            key = (int(codes.doc_id[r]), int(codes.position[r]))
            if prev is not None and key[0] == prev[0] and key[1] == prev[1] + 1:
                runs[-1] += 1
            else:
                runs.append(1)
            prev = key
        top = sorted(w, key=lambda t: (-w[t], t))[: cfg.n_top_tokens]
        out.append(dict(rec, max_act=mx, n_active=len(act), dead=False, cls=cls, H_tok=H_tok, H_sem=H_sem,
                        R=1.0 if H_tok == 0 else 1 - H_sem / H_tok, span_mean=sum(runs) / len(runs),
                        span_max=max(runs), top=top,
                        **{f"p_{lg}": p for lg, p in zip(codes.languages, plang)}))
    return out


def random_codes(seed: int, m: int = 240, k: int = 4, n: int = 30, langs=("en", "ja", "zh")) -> Codes:
    rng = np.random.default_rng(seed)
    doc_len = rng.integers(1, 12, size=m)
    doc = np.repeat(np.arange(m), doc_len)[:m]
    start = np.r_[0, np.flatnonzero(np.diff(doc)) + 1]
    pos = np.arange(m) - np.repeat(start, np.diff(np.r_[start, m])) + rng.integers(0, 3)
    # features concentrated on a few popular ids so spans and ties occur
    idx = np.stack([rng.choice(n, size=k, replace=False, p=np.r_[[8.0] * 5, [1.0] * (n - 5)] / (40 + n - 5))
                    for _ in range(m)])
    val = np.round(rng.random((m, k)) * 10, 0).astype(np.float32)  # integer values: many ties
    val[idx == n - 1] = 0.0  # a feature whose max is 0: selected but never active -> dead
    perm = rng.permutation(m)
    return Codes(idx=idx[perm], val=val[perm], token_id=rng.integers(0, 15, m)[perm],
                 lang=rng.integers(0, len(langs), m)[doc][perm], doc_id=doc[perm], position=pos[perm],
                 languages=langs)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("cfg", [AnalysisSpec(), AnalysisSpec(span_rule="threshold", token_weighting="activation",
                                                                  act_threshold=0.5, lang_threshold=0.6)])
def test_matches_brute_force_reference(seed, cfg):
    n = 30
    codes = random_codes(seed, n=n)
    clusters = np.random.default_rng(seed + 100).integers(0, 5, size=15)
    df = analyse_features(codes, n, token_clusters=clusters, cfg=cfg)
    ref = reference(codes, n, clusters, cfg)
    assert df["dead"].any() and (~df["dead"]).sum() > 10
    for i, r in enumerate(ref):
        got = df.loc[i]
        assert got.n_fired == r["n_fired"] and got.n_active == r["n_active"] and got.dead == r["dead"], i
        assert got.cls == r["cls"], i
        if r["dead"]:
            continue
        for col in ("max_act", "H_tok", "H_sem", "R", "span_mean", "span_max", *[f"p_{lg}" for lg in codes.languages]):
            assert got[col] == pytest.approx(r[col], abs=1e-9), (i, col)
        assert list(got.top_token_ids) == r["top"], i


# ------------------------------------------------------------------ examples


def test_top_examples_hand():
    ex = top_examples(hand_codes(), None, [0, 3], n_examples=2, context=1,
                      decode_token=lambda t: f"t{t}")
    # feature 0: best 10.0 at doc0 pos0 and doc1 pos6 (one per document)
    assert ex["0"] == [
        {"tokens": ["t10", "t11"], "acts": [10.0, 8.0], "lang": "en", "doc_id": 0, "max_pos": 0},
        {"tokens": ["t21", "t20"], "acts": [0.0, 10.0], "lang": "ja", "doc_id": 1, "max_pos": 1},
    ]
    # feature 3: doc0 pos3, context pos2..pos3 only (pos4 belongs to doc 1)
    assert ex["3"] == [{"tokens": ["t10", "t12"], "acts": [0.0, 4.0], "lang": "en", "doc_id": 0, "max_pos": 1}]
    two = top_examples(hand_codes(), None, [0], n_examples=3, context=0, one_per_document=False)
    assert [e["acts"] for e in two["0"]] == [[10.0], [10.0], [9.5]]


def test_display_tokens_merges_byte_fallback():
    vocab = {1: "▁Hello", 2: "<0xE3>", 3: "<0x81>", 4: "<0x82>", 5: "です", 6: "<0x41>"}
    assert display_tokens([1, 2, 3, 4, 5, 6], vocab.get) == [" Hello", "あ", "", "", "です", "A"]

    class Tok:
        def convert_ids_to_tokens(self, ids):
            return [vocab[i] for i in ids]

    assert display_tokens([2, 3, 4], Tok()) == ["あ", "", ""]


# ------------------------------------------------------------------ clusters


def test_token_clusters_hand():
    from sae_bilingual.analysis.semantic import token_clusters_from_embeddings

    s = 1 / math.sqrt(2)
    E = np.array([[1, 0, 0], [s, s, 0], [0, 1, 0], [0, 0, 1], [0, 0, -1], [0.0, -1, 0.0]], dtype=np.float32)
    cc = token_clusters_from_embeddings(E, threshold=0.5)
    # 0-1 (cos .71) and 1-2 (cos .71) chain 0, 1, 2 together; 3, 4, 5 alone
    assert cc[0] == cc[1] == cc[2] and len({cc[0], cc[3], cc[4], cc[5]}) == 4
    ld = token_clusters_from_embeddings(E, threshold=0.5, method="leader")
    # leader 0 takes 1 (not 2: cos(0, 2) = 0); 2 leads its own cluster
    assert ld[0] == ld[1] and ld[2] != ld[0]
    only = token_clusters_from_embeddings(E, threshold=0.5, token_ids=[0, 2])
    assert only[0] != only[2] and len(set(only.tolist())) == 6  # 1 not clustered -> no chain
    with pytest.raises(ConfigError, match="connected_components"):
        token_clusters_from_embeddings(E, method="kmeans")


def test_token_clusters_blockwise_matches_dense(monkeypatch):
    from scipy.sparse.csgraph import connected_components

    import sae_bilingual.analysis.semantic as sem

    E = np.random.default_rng(0).normal(size=(60, 16)).astype(np.float32)
    X = E / np.linalg.norm(E, axis=1, keepdims=True)
    n_ref, ref = connected_components(X @ X.T > 0.55, directed=False)
    monkeypatch.setattr(sem, "_block_rows", lambda n, budget=0: 7)
    got = sem.token_clusters_from_embeddings(E, threshold=0.55)
    assert n_ref > 3
    # same partition: pairs together in one iff together in the other
    np.testing.assert_array_equal(got[:, None] == got[None, :], ref[:, None] == ref[None, :])


def test_dead_features_have_nan_metrics():
    # feature 1 is selected by the TopK but only with activations <= 0: dead, every metric NaN
    codes = Codes(idx=np.array([[0, 1], [0, 1], [2, 1]]), val=np.array([[1.0, 0.0], [2.0, -1.0], [1.0, 0.0]]),
                  token_id=np.array([5, 6, 7]), lang=np.array([0, 0, 1]), doc_id=np.array([0, 0, 1]),
                  position=np.array([1, 2, 1]), languages=("en", "ja"))
    df = analyse_features(codes, 4, token_clusters=np.arange(10))
    for f in (1, 3):  # 1: selected with activations <= 0; 3: never selected
        row = df.loc[f]
        assert row.dead and row.cls == "dead"
        for col in ("H_tok", "H_sem", "R", "span_mean", "span_max", "p_en", "p_ja"):
            assert np.isnan(row[col]), (f, col)
    assert df.loc[0, "span_mean"] == 2.0 and df.loc[2, "span_max"] == 1.0
