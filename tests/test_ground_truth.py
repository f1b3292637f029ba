"""Ground-truth scoring of features on a hand-built toy world."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from sae_bilingual.analysis.features import analyse_features
from sae_bilingual.errors import DataError
from sae_bilingual.analysis.ground_truth import score_ground_truth
from sae_bilingual.analysis.semantic import clusters_from_ground_truth
from tests.test_analysis import hand_codes

# token -> (lang, concept). Concept 0 = {10 en, 20 ja}, concept 1 = {12 en, 21 ja},
# concept 2 = {13 en} only (one language: not eligible), concept 3 = {14 en, 22 ja} (no feature),
# token 11 has no concept; token 30 is shared ("").
GT = pd.DataFrame(
    {"lang": ["en", "en", "en", "en", "en", "ja", "ja", "ja", ""],
     "concept": [0, -1, 1, 2, 3, 0, 1, 3, -1]},
    index=pd.Index([10, 11, 12, 13, 14, 20, 21, 22, 30], name="token_id"),
)


def test_hand_scores():
    codes = hand_codes()
    feats = analyse_features(codes, 5)
    cols, s = score_ground_truth(codes, feats, GT)
    # feature 0 active tokens 10, 11, 12, 20, 20 -> concept 0 weight 3/5, langs en+ja
    assert cols.loc[0].dominant_concept == 0 and cols.loc[0].concept_purity == pytest.approx(0.6)
    assert cols.loc[0].concept_langs == 2 and cols.loc[0].bilingual_concept
    # feature 1 active tokens 10, 20 -> concept 0, purity 1
    assert (cols.loc[1].dominant_concept, cols.loc[1].concept_purity, cols.loc[1].concept_langs) == (0, 1.0, 2)
    # features 2 (tok 21) and 3 (tok 12): concept 1 but one language each
    assert cols.loc[2].dominant_concept == 1 and cols.loc[2].concept_langs == 1
    assert not cols.loc[2].bilingual_concept and not cols.loc[3].bilingual_concept
    assert cols.loc[4].dominant_concept == -1 and math.isnan(cols.loc[4].concept_purity)  # dead
    # mixed = {0, 1}, both bilingual concept features; eligible concepts {0, 1, 3}, found {0}
    assert s["gt_mixed_precision"] == 1.0 and s["gt_concept_recall"] == pytest.approx(1 / 3)
    assert s["gt_mixed_precision_pure"] == 1.0  # purities 0.6 and 1 are both > 0.5
    assert (s["gt_n_mixed"], s["gt_n_bilingual_concept"], s["gt_n_concepts"]) == (2, 2, 3)


def test_purity_threshold_is_strict_and_only_gates_the_pure_variant():
    codes = hand_codes()
    feats = analyse_features(codes, 5)
    cols, s = score_ground_truth(codes, feats, GT, purity_threshold=0.6)
    assert cols.loc[0].bilingual_concept and not cols.loc[0].pure_bilingual_concept  # 0.6 is not > 0.6
    assert cols.loc[1].pure_bilingual_concept
    assert s["gt_mixed_precision"] == 1.0 and s["gt_mixed_precision_pure"] == 0.5
    assert s["gt_concept_recall"] == pytest.approx(1 / 3)


def test_ground_truth_clusters_give_semantic_entropy():
    clusters = clusters_from_ground_truth(GT["concept"])
    # concept 0 tokens share a cluster; no-concept tokens are singletons
    assert clusters[10] == clusters[20] and clusters[12] == clusters[21]
    assert len({clusters[11], clusters[30], clusters[10], clusters[12]}) == 4
    assert clusters_from_ground_truth(np.array([5, -1, 5, 2, -1])).tolist() == [1, 2, 1, 0, 3]
    df = analyse_features(hand_codes(), 5, token_clusters=np.r_[clusters, np.arange(100, 110)])
    # feature 0: p(concept 0) = 0.6, token 11 = 0.2, concept 1 (token 12) = 0.2
    assert df.loc[0].H_sem == pytest.approx(-(0.6 * math.log(0.6) + 2 * 0.2 * math.log(0.2)))


def test_missing_column():
    codes = hand_codes()
    with pytest.raises(DataError, match="concept"):
        score_ground_truth(codes, analyse_features(codes, 5), GT.drop(columns="concept"))
