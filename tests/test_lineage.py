"""Feature matching and lineage: identity, permutation, brute-force statistics, and the
merge / widen / none classification on a hand-made 3-checkpoint example."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from sae_bilingual.analysis.features import analyse_features
from sae_bilingual.analysis.codes import Codes
from sae_bilingual.analysis.lineage import Checkpoint, classify_origins, edge_precision, lineage_over_checkpoints
from sae_bilingual.analysis.matching import MatchConfig, coactivation_matrix, match_codes
from sae_bilingual.study.lineage_stage import run_lineage


def random_codes(m=600, n=48, k=4, seed=0) -> Codes:
    """Codes with K distinct features per row, correlated through a few 'topics'."""
    rng = np.random.default_rng(seed)
    topic = rng.integers(0, 6, size=m)
    pools = [rng.choice(n, size=12, replace=False) for _ in range(6)]
    idx = np.stack([rng.choice(pools[t], size=k, replace=False) for t in topic]).astype(np.int32)
    val = rng.uniform(0.1, 1.0, size=(m, k)).astype(np.float32)
    doc = np.arange(m) // 20
    return Codes(idx, val, rng.integers(4, 50, m), rng.integers(0, 2, m), doc, np.arange(m) % 20)


def brute(a: Codes, b: Codes, n1: int, n2: int):
    A = np.zeros((a.n, n1))
    B = np.zeros((b.n, n2))
    np.put_along_axis(A, a.idx.astype(np.int64), (a.val > 0).astype(float), axis=1)
    np.put_along_axis(B, b.idx.astype(np.int64), (b.val > 0).astype(float), axis=1)
    C = A.T @ B
    na, nb = A.sum(0), B.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        J = np.where(na[:, None] + nb[None] - C > 0, C / (na[:, None] + nb[None] - C), 0)
        R = np.corrcoef(np.hstack([A, B]).T)[:n1, n1:]
    return C, J, np.nan_to_num(R)


@pytest.mark.parametrize("dense_max", [10**9, 0])
def test_identical_saes_match_to_identity(dense_max):
    a = random_codes()
    n = 48
    res = match_codes(a, a, n, n, MatchConfig(dense_max=dense_max))
    live = np.flatnonzero(np.bincount(a.idx.ravel(), minlength=n) > 0)
    one = res.one_to_one
    assert one["feature_a"].tolist() == live.tolist()
    assert (one["feature_a"] == one["feature_b"]).all()
    np.testing.assert_allclose(one["jaccard"], 1.0)
    np.testing.assert_allclose(one["corr"], 1.0, atol=1e-9)
    assert (one["rank"] == 1).all()


@pytest.mark.parametrize("dense_max", [10**9, 0])
def test_permuted_copy_recovers_permutation_and_row_order(dense_max):
    a = random_codes(seed=1)
    n = 48
    perm = np.random.default_rng(3).permutation(n)
    rows = np.random.default_rng(4).permutation(a.n)  # shuffled rows: alignment must undo it
    b = Codes(perm[a.idx][rows], a.val[rows], a.token_id[rows], a.lang[rows], a.doc_id[rows], a.position[rows])
    res = match_codes(a, b, n, n, MatchConfig(dense_max=dense_max))
    one = res.one_to_one
    assert len(one) == len(np.unique(a.idx))
    np.testing.assert_array_equal(one["feature_b"].to_numpy(), perm[one["feature_a"].to_numpy()])
    np.testing.assert_allclose(one["jaccard"], 1.0)


def test_candidate_statistics_match_brute_force():
    a, b = random_codes(seed=5), random_codes(n=40, seed=6)
    n1, n2 = 48, 40
    b = Codes(b.idx, b.val, a.token_id, a.lang, a.doc_id, a.position)
    b.val[:, -1] = 0.0  # zero activations are not firing
    C, J, R = brute(a, b, n1, n2)
    np.testing.assert_array_equal(coactivation_matrix(a, b, n1, n2).toarray(), C)
    res = match_codes(a, b, n1, n2, MatchConfig(n_candidates=3, threshold=0.3, block=7))
    c = res.candidates
    fa, fb = c["feature_a"].to_numpy(), c["feature_b"].to_numpy()
    np.testing.assert_allclose(c["jaccard"], J[fa, fb], rtol=1e-6)
    np.testing.assert_allclose(c["corr"], R[fa, fb], atol=1e-9)
    # every pair >= threshold is a one-to-many edge; every row's best is a candidate of rank 1
    want = {(i, j) for i, j in zip(*np.nonzero(J >= 0.3))}
    assert set(zip(res.one_to_many["feature_a"], res.one_to_many["feature_b"])) == want
    for i in np.flatnonzero(J.max(1) > 0):
        top = c[(c["feature_a"] == i) & (c["rank"] == 1)]
        assert top["jaccard"].iloc[0] == pytest.approx(J[i].max())
    # the best pair of each B feature is among the candidates (column top-k across blocks)
    for j in np.flatnonzero(J.max(0) > 0):
        assert c.loc[c["feature_b"] == j, "jaccard"].max() == pytest.approx(J[:, j].max())
    # one-to-one total equals the brute-force optimum (dense Hungarian)
    from scipy.optimize import linear_sum_assignment

    r_, c_ = linear_sum_assignment(J, maximize=True)
    assert res.one_to_one["jaccard"].sum() == pytest.approx(J[r_, c_].sum())


def test_activation_weighted_correlation():
    a, b = random_codes(seed=8), random_codes(seed=9)
    b = Codes(b.idx, b.val, a.token_id, a.lang, a.doc_id, a.position)
    n = 48
    A, B = np.zeros((a.n, n)), np.zeros((b.n, n))
    np.put_along_axis(A, a.idx.astype(np.int64), a.val, axis=1)
    np.put_along_axis(B, b.idx.astype(np.int64), b.val, axis=1)
    R = np.nan_to_num(np.corrcoef(np.hstack([A, B]).T)[:n, n:])
    c = match_codes(a, b, n, n, MatchConfig(weighting="activation")).candidates
    np.testing.assert_allclose(c["corr"], R[c["feature_a"], c["feature_b"]], atol=1e-5)


# ----------------------------------------------------------------- hand-made lineage

GROUPS = ["en_dog", "ja_dog", "en_cat", "ja_cat", "en_bird", "ja_bird", "en_bg", "ja_bg"]
# features firing on each token group; filler feature 7 (val 0) pads rows to K=2
EARLY = {"en_dog": [0], "ja_dog": [1], "en_cat": [2], "ja_cat": [], "en_bird": [], "ja_bird": [],
         "en_bg": [3], "ja_bg": [3]}
FINAL = {"en_dog": [0], "ja_dog": [0, 4], "en_cat": [1], "ja_cat": [1], "en_bird": [2], "ja_bird": [2],
         "en_bg": [3], "ja_bg": [3]}
N, FILL = 8, 7


def hand_codes(table) -> Codes:
    idx, val, lang, doc, pos = [], [], [], [], []
    for g, name in enumerate(GROUPS):
        for r in range(10):
            f = table[name]
            row = (f + [FILL, 6])[:2]
            idx.append(row)
            val.append([1.0 if i < len(f) else 0.0 for i in range(2)])
            lang.append(0 if name.startswith("en") else 1)
            doc.append(g)
            pos.append(r)
    tok = np.repeat(np.arange(len(GROUPS)) + 10, 10)
    return Codes(np.array(idx), np.array(val), tok, np.array(lang), np.array(doc), np.array(pos))


def hand_checkpoints():
    out = []
    for it, table in ((0, EARLY), (10, EARLY), (100, FINAL)):
        codes = hand_codes(table)
        feats = analyse_features(codes, N)
        out.append(Checkpoint(it, it * 1000, None, codes, feats))
    return out


def test_hand_made_classes_are_what_the_example_intends():
    cks = hand_checkpoints()
    assert cks[0].features["cls"].tolist()[:4] == ["en", "ja", "en", "mixed"]
    assert cks[2].features["cls"].tolist()[:5] == ["mixed", "mixed", "mixed", "mixed", "ja"]


def test_merge_widen_none_classification():
    cks = hand_checkpoints()
    res = lineage_over_checkpoints(cks, MatchConfig(threshold=0.3))
    org = res["origins"]
    last = org[org["iteration"] == 100].set_index("feature")
    assert last.loc[0, "origin"] == "merge"           # en dog + ja dog -> bilingual dog
    assert last.loc[0, "ancestor_langs"] == "en+ja"
    assert last.loc[1, "origin"] == "widen"           # en cat -> bilingual cat
    assert last.loc[1, "ancestor"] == 2
    assert last.loc[2, "origin"] == "none"            # bird: nothing fired on it before
    assert last.loc[3, "origin"] == "persist"         # mixed background stays mixed
    assert last.loc[4, "origin"] == "persist"         # ja dog stays ja
    mid = org[org["iteration"] == 10].set_index("feature")
    assert (mid.loc[[0, 1, 2, 3], "origin"] == "persist").all()
    s = res["summary"]
    assert (s["mixed_from_merge"], s["mixed_from_widen"], s["mixed_from_none"], s["mixed_persist"]) == (1, 1, 1, 1)
    assert s["origins_final"]["ja"]["persist"] == 1
    # ancestry: final dog (0) at iteration 0 -> en dog (0) or ja dog (1), both J = 0.5
    anc = res["ancestry"]
    row = anc[(anc["feature"] == 0) & (anc["iteration"] == 0)].iloc[0]
    assert row["ancestor"] in (0, 1) and row["jaccard"] == pytest.approx(0.5)
    assert anc[(anc["feature"] == 2)]["ancestor"].eq(-1).all()
    # flows: the one-to-one matched pairs between iterations 10 and 100
    fl = res["flows"]
    f2 = fl[fl["iteration_b"] == 100].set_index(["cls_a", "cls_b"])["count"].to_dict()
    assert f2[("mixed", "mixed")] == 1 and f2[("ja", "ja")] == 1
    assert sum(f2.values()) == 4  # dog(0)->0 or 4, ja dog, cat, bg: 4 of 5 live finals have a partner


def test_classify_origins_switch_and_narrow():
    cand = pd.DataFrame({"feature_a": [0, 1], "feature_b": [0, 1], "jaccard": [0.8, 0.6]})
    o = classify_origins(cand, np.array(["en", "mixed"]), np.array(["ja", "en", "mixed"]), 0.5)
    assert o["origin"].tolist() == ["switch", "narrow", "none"]


def test_edge_precision_counts_equal_concepts():
    edges = pd.DataFrame({"feature_a": [0, 1, 2, 3], "feature_b": [0, 1, 2, 3]})
    p = edge_precision(edges, np.array([5, 6, 7, -1]), np.array([5, 6, 8, 9]))
    assert p["n"] == 3 and p["precision"] == pytest.approx(2 / 3)
    assert p["chance"] == pytest.approx(2 / 9)  # (1/3)(1/3) for concepts 5 and 6


def test_run_lineage_writes_tables_and_figure(tmp_path):
    for ck in hand_checkpoints():
        d = tmp_path / "units" / "toy" / f"iter_{ck.iteration:07d}" / "L01"
        d.mkdir(parents=True)
        ck.codes.save(d / "codes.safetensors")
        ck.features.to_parquet(d / "features.parquet")
        (d / "summary.json").write_text(json.dumps({"tokens": ck.tokens}))
    s = run_lineage(tmp_path, "toy", 1, MatchConfig(threshold=0.3))
    assert s["mixed_from_merge"] == 1 and s["iterations"] == [0, 10, 100]
    for name in ("tables/lineage_toy_L01.csv", "tables/lineage_toy_L01_summary.json",
                 "tables/lineage_toy_L01_flows.csv", "figures/lineage_toy_L01.png",
                 "figures/lineage_toy_L01.svg"):
        assert (tmp_path / name).stat().st_size > 0
    tab = pd.read_csv(tmp_path / "tables/lineage_toy_L01.csv")
    assert len(tab) == N * 2 and tab.loc[tab["feature"] == 0, "origin"].iloc[0] == "merge"
    from sae_bilingual.report.html import write_report

    html = write_report(tmp_path, make_figures=False).read_text()
    assert 'id="lineage"' in html and "merge" in html


# ----------------------------------------------------------------- N languages

def test_three_language_classes_and_mix_column():
    idx = np.array([[0, 1], [0, 1], [0, 2], [2, 3], [0, 3]])
    c = Codes(idx, np.ones((5, 2), np.float32), np.arange(5), np.array([0, 1, 2, 2, 0]), np.zeros(5),
              np.arange(5), languages=("en", "ja", "xx"))
    df = analyse_features(c, 5)
    assert df["cls"].tolist() == ["mixed", "mixed", "xx", "mixed", "dead"]
    assert df["mix"].tolist() == ["en+ja+xx", "en+ja", "xx", "en+xx", ""]
    from sae_bilingual.analysis.features import summarise

    s = summarise(df)
    assert s["frac_xx"] == pytest.approx(0.25) and s["frac_mixed"] == pytest.approx(0.75)


def test_pseudo_language_xx_lexicon_and_word_order():
    from sae_bilingual.world.generator import GeneratorConfig, generate_translation_pairs
    from sae_bilingual.world.lexicon import build_lexicon, vocabulary

    lex = build_lexicon(90, ("en", "ja", "xx"))
    rows = vocabulary(lex)  # raises if a surface form maps to two (language, concept) pairs
    xx = [r for r in rows if r[1] == "xx" and r[2] >= 0]
    assert len(xx) == len(lex.concepts)  # one made-up word per concept
    assert build_lexicon(None, ("en", "ja", "xx")).forms["xx"]["dog"] == lex.forms["xx"]["dog"]
    pairs = generate_translation_pairs(lex, GeneratorConfig(languages=("en", "ja", "xx"), n_concepts=90), 30)
    # VSO: a tensed transitive xx sentence starts with the tense particle, then the verb
    verbs = {lex.forms["xx"][c.key]["base"] for c in lex.concepts if c.pos.startswith("verb")}
    firsts = [p["xx"].split() for p in pairs]
    assert all(w[-1] == "·" for w in firsts)
    assert any(w[0] in ("pa", "fu") and w[1] in verbs for w in firsts)


# ----------------------------------------------------------------- three-language toy study

TOY3_OVERRIDES = {"world.overrides": {"languages": ["en", "ja", "xx"]}, "data.languages": ["en", "ja", "xx"],
                  "intervention.enabled": False}  # the intervention adds ~2 min; the lead's smoke tests cover it


@pytest.mark.slow
def test_three_language_toy_study_and_lineage(world_cache, tmp_path):
    """The smoke recipe with a third language end to end, then lineage of every layer."""
    from sae_bilingual.config import load_recipe
    from sae_bilingual.study.lineage_stage import run_all_lineage
    from sae_bilingual.report.html import write_report
    from sae_bilingual.study.run import run_study

    from .helpers import REPO  # noqa: I001

    recipe = load_recipe(REPO / "recipes" / "smoke.yaml", {**TOY3_OVERRIDES, "output_dir": str(tmp_path)})
    run_study(recipe, progress=False)
    summary = pd.read_parquet(tmp_path / "tables" / "summary.parquet")
    assert {"frac_en", "frac_ja", "frac_xx", "frac_mixed"} <= set(summary.columns)
    shares = summary[["frac_en", "frac_ja", "frac_xx", "frac_mixed"]].sum(axis=1)
    np.testing.assert_allclose(shares, 1.0, atol=1e-9)
    assert (summary["frac_xx"] > 0).any()  # the third language has its own features
    svg = next((tmp_path / "figures").glob("lang_dist_*.svg")).read_text()
    assert "xx" in svg  # the stacked shares name the third language (legend text in the SVG)
    feats = pd.read_parquet(next((tmp_path / "units").glob("*/*/L01/features.parquet")))
    assert "p_xx" in feats.columns and feats["mix"].str.contains("xx").any()
    out = run_all_lineage(tmp_path)
    assert out and all(s["n_live"] > 0 for s in out)
    # lineage edges agree with the ground truth better than chance
    s = out[-1]
    assert s["precision_consecutive"] > s["chance_consecutive"]
    html = write_report(tmp_path, make_figures=False).read_text()
    assert 'id="lineage"' in html
