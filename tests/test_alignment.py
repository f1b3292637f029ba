"""Translation alignment per feature: hand-worked counts, the per-feature loop reference, the
shuffled-pair baseline, the aligned class, the recipe option and the pair sources."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from tests.helpers import shared_path

from sae_bilingual.analysis.alignment import (
    add_alignment,
    alignment_reference,
    alignment_stats,
    firing_matrices,
    shuffled_both,
)
from sae_bilingual.analysis.codes import Codes
from sae_bilingual.config import load_recipe
from sae_bilingual.config_alignment import AlignmentSpec
from sae_bilingual.errors import ConfigError
from sae_bilingual.study.alignment_stage import pair_windows, read_pairs

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def _codes(rows: list[tuple[int, int, list[int], list[float]]], k: int) -> Codes:
    """rows of (pair, lang, feature ids, values) -> Codes (one vector per row)."""
    idx = np.array([r[2] for r in rows], dtype=np.int32).reshape(-1, k)
    val = np.array([r[3] for r in rows], dtype=np.float32).reshape(-1, k)
    m = len(rows)
    return Codes(idx, val, token_id=np.zeros(m), lang=[r[1] for r in rows], doc_id=[r[0] for r in rows],
                 position=np.arange(m) + 1, languages=("en", "ja"))


def _hand_world(n_pairs: int = 20, m: int = 4):
    """Feature 0 fires on every sentence (a function word), feature 1 on both sides of the
    first ``m`` pairs only (a concept), feature 2 on en of pairs 0..4 and ja of pairs 5..9
    (never both), feature 3 is selected everywhere but only weakly (below 0.7 x max) except on
    pair 0's en side. Two tokens per sentence, K = 2."""
    rows = []
    for p in range(n_pairs):
        for lang in (0, 1):
            f1 = 1 if p < m else (2 if (lang == 0 and p < 5) or (lang == 1 and 5 <= p < 10) else 3)
            rows.append((p, lang, [0, f1], [1.0, 1.0 if f1 != 3 else 0.1]))
            rows.append((p, lang, [0, 3], [0.9, 1.0 if (p == 0 and lang == 0) else 0.1]))
    return _codes(rows, 2), np.array([1.0, 1.0, 1.0, 1.0])


def test_hand_worked_function_word_scores_one_and_concept_scores_n_over_m():
    codes, mx = _hand_world(20, 4)
    A, B = firing_matrices(codes, 4, 20, [0, 1], mx, rule="threshold", ratio=0.7)
    st = alignment_stats(A, B)
    # function word: a = b = both = 20, expected = 20*20/20 = 20, score 1, no variance -> z NaN
    assert st.loc[0, ["align_n_first", "align_n_second", "align_both"]].tolist() == [20, 20, 20]
    assert st.loc[0, "align_score"] == pytest.approx(1.0) and np.isnan(st.loc[0, "align_z"])
    # concept: a = b = both = 4, expected 4*4/20 = 0.8, score 20 / 4 = 5
    assert st.loc[1, "align_expected"] == pytest.approx(0.8)
    assert st.loc[1, "align_score"] == pytest.approx(20 / 4)
    var = 4 * 4 * 16 * 16 / (20 ** 2 * 19)
    assert st.loc[1, "align_z"] == pytest.approx((4 - 0.8) / var ** 0.5)
    # feature 2: en side of pair 4 only (pairs 0..3 carry the concept), ja side of pairs 5..9: never both
    assert st.loc[2, "align_n_first"] == 1 and st.loc[2, "align_n_second"] == 5 and st.loc[2, "align_both"] == 0
    assert st.loc[2, "align_score"] == 0.0
    # feature 3 under 'threshold' fires only on pair 0's en side; under 'selected' on every side
    assert st.loc[3, "align_n_first"] == 1 and st.loc[3, "align_both"] == 0
    sel = alignment_stats(*firing_matrices(codes, 4, 20, [0, 1], mx, rule="selected"))
    assert sel.loc[3, "align_both"] == 20 and sel.loc[3, "align_score"] == pytest.approx(1.0)


@pytest.mark.parametrize("rule", ["selected", "threshold"])
def test_vectorised_equals_per_feature_loop(rule):
    rng = np.random.default_rng(0)
    n, k, n_pairs, m = 40, 4, 30, 400
    idx = np.stack([rng.choice(n, k, replace=False) for _ in range(m)]).astype(np.int32)
    val = rng.exponential(1.0, (m, k)).astype(np.float32)
    codes = Codes(idx, val, token_id=np.zeros(m), lang=rng.integers(0, 2, m), doc_id=rng.integers(0, n_pairs, m),
                  position=np.arange(m), languages=("en", "ja"))
    mx = np.array([val[idx == f].max() if (idx == f).any() else np.nan for f in range(n)])
    fast = alignment_stats(*firing_matrices(codes, n, n_pairs, [0, 1], mx, rule=rule, ratio=0.7))
    ref = alignment_reference(codes, n, n_pairs, [0, 1], mx, rule=rule, ratio=0.7)
    pd.testing.assert_frame_equal(fast, ref, check_dtype=False)


def test_expected_is_the_mean_of_the_shuffled_pair_baseline():
    codes, mx = _hand_world(20, 4)
    A, B = firing_matrices(codes, 4, 20, [0, 1], mx)
    st = alignment_stats(A, B)
    sh = shuffled_both(A, B, n_perm=2000, seed=1)
    se = sh.std(axis=0) / np.sqrt(sh.shape[0])
    assert np.all(np.abs(sh.mean(axis=0) - st["align_expected"].to_numpy()) <= 4 * se + 1e-12)
    # the sample variance of the shuffled counts matches the hypergeometric variance behind z
    assert sh[:, 1].var() == pytest.approx(4 * 4 * 16 * 16 / (20 ** 2 * 19), rel=0.15)


def test_add_alignment_flags_mixed_features_above_the_threshold():
    codes, mx = _hand_world(20, 4)
    df = pd.DataFrame({"max_act": mx, "dead": [False, False, False, True],
                       "cls": ["mixed", "mixed", "en", "dead"]})
    spec = AlignmentSpec(min_score=3.0, min_both=3)
    row = add_alignment(df, codes, 20, spec, ("en", "ja"))
    assert df["aligned"].tolist() == [False, True, False, False]  # the function word scores 1; feature 2 is not Mixed
    assert np.isnan(df.loc[3, "align_score"])  # dead: no numbers
    assert row["n_aligned"] == 1 and row["aligned_share_of_mixed"] == pytest.approx(1 / 2)
    assert row["frac_aligned"] == pytest.approx(1 / 3)
    df2 = df[["max_act", "dead", "cls"]].copy()
    assert add_alignment(df2, codes, 20, AlignmentSpec(min_score=3.0, min_both=5), ("en", "ja"))["n_aligned"] == 0
    empty = add_alignment(df[["max_act", "dead", "cls"]].copy(), None, 0, spec, ("en", "ja"))
    assert empty["n_align_pairs"] == 0 and np.isnan(empty["aligned_share_of_mixed"])


def test_recipe_option_is_validated_naming_the_field(tmp_path):
    r = load_recipe(REPO / "recipes" / "toy.yaml", {"analysis.alignment.fire_rule": "selected"})
    assert r.analysis.alignment.fire_rule == "selected" and r.analysis.alignment.fire_ratio == 0.7
    with pytest.raises(ConfigError, match=r"analysis\.alignment\.fire_ratio"):
        load_recipe(REPO / "recipes" / "toy.yaml", {"analysis.alignment.fire_ratio": 1.5})
    with pytest.raises(ConfigError, match=r"fire_rule"):
        load_recipe(REPO / "recipes" / "toy.yaml", {"analysis.alignment.fire_rule": "sometimes"})


class _WordTok:
    """Whitespace tokenizer with BOS = 1 (ids from a growing vocabulary)."""

    bos_token_id, pad_token_id = 1, 0

    def __init__(self):
        self.vocab: dict[str, int] = {}

    def __call__(self, texts, add_special_tokens=True, truncation=True, max_length=None):
        ids = [[1] + [self.vocab.setdefault(w, len(self.vocab) + 3) for w in t.split()] for t in texts]
        return {"input_ids": [x[:max_length] for x in ids]}


def test_tanaka_pairs_become_one_window_per_sentence_with_the_pair_as_doc_id():
    root = shared_path("data", "small_parallel_enja")
    pairs = read_pairs({"en": str(root / "dev.en"), "ja": str(root / "dev.ja")}, ["ja"]).iloc[:30]
    assert " " not in "".join(pairs["ja"]) and pairs["en"].str.contains(" ").all()
    tok = _WordTok()
    w = pair_windows(pairs, tok, ("en", "ja"), context=64)
    assert len(w) == 60
    for lang in (0, 1):
        rows = (w.lang == lang).nonzero().flatten()
        assert sorted(w.doc_id[rows].tolist()) == list(range(30))
    r = int(((w.lang == 0) & (w.doc_id == 7)).nonzero()[0, 0])
    assert w.lengths[r] == 1 + len(pairs.loc[7, "en"].split())
