"""Crosscoder latent analysis against hand-worked examples and plain per-latent loops."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from sae_bilingual.analysis.crosscoder import (
    alive_mask,
    best_cosine_match,
    codes_from_dense,
    codes_from_sparse,
    decoder_shares,
    emergence_index,
    exclusive_reality,
    latent_table,
    lineage_birth,
    lineage_comparison,
)
from sae_bilingual.analysis.features import analyse_features
from sae_bilingual.data.store import Labels


def test_shares_alive_emergence_by_hand():
    norms = np.array([[1.0, 1.0, 1.0], [0.0, 0.1, 0.9], [0.0, 0.0, 0.0], [0.9, 0.05, 0.05], [0.2, 0.3, 0.5]])
    sh = decoder_shares(norms)
    assert np.allclose(sh[0], 1 / 3) and np.allclose(sh[1], [0, 0.1, 0.9]) and np.all(sh[2] == 0)
    al = alive_mask(sh, 0.5)  # share > 1/6
    assert al.tolist() == [[True] * 3, [False, False, True], [False] * 3, [True, False, False],
                           [True, True, True]]
    assert emergence_index(al).tolist() == [0, 2, -1, 0, 0]


def test_emergence_matches_a_plain_loop():
    g = np.random.default_rng(0)
    norms = g.random((200, 5)) * (g.random((200, 5)) > 0.4)
    al = alive_mask(decoder_shares(norms), 0.5)
    em = emergence_index(al)
    for i in range(200):
        s = norms[i] / norms[i].sum() if norms[i].sum() else np.zeros(5)
        alive = [c for c in range(5) if s[c] > 0.5 / 5]
        assert em[i] == (alive[0] if alive else -1)


def _labels(M):
    return Labels(lang=torch.arange(M) % 2, token_id=torch.arange(M) % 7, doc_id=torch.arange(M) // 10,
                  position=torch.arange(M) % 10 + 1)


def test_codes_from_dense_pads_to_the_sentinel_and_keeps_the_nonzeros():
    z = torch.tensor([[0.0, 2.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0], [3.0, 0.0, 0.5, 4.0]])
    c = codes_from_dense(z, _labels(3), ("en", "ja"))
    assert c.k == 3
    for r in range(3):
        got = {(int(i), float(v)) for i, v in zip(c.idx[r], c.val[r]) if i != 4}
        want = {(j, float(z[r, j])) for j in range(4) if z[r, j] != 0}
        assert got == want and all(v == 0 for i, v in zip(c.idx[r], c.val[r]) if i == 4)
    # analysed as n + 1 latents, the real latents' counts are those of the dense codes
    df = analyse_features(c, 5).iloc[:4]
    assert df["n_fired"].tolist() == [int(x) for x in (z != 0).sum(0)]


def test_latent_table_classes_per_slice_and_exclusive():
    norms = np.array([[1.0, 1.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    feats = pd.DataFrame({"cls": ["mixed", "en", "ja", "dead"], "dead": [False, False, False, True]})
    t = latent_table(norms, feats, [10, 20], [100, 200], 0.5)
    assert t["cls_10"].tolist() == ["mixed", "dead", "ja", "dead"]
    assert t["cls_20"].tolist() == ["mixed", "en", "dead", "dead"]
    assert t["exclusive"].tolist() == [False, True, True, False]
    assert t["emergence_iteration"].tolist() == [10, 20, 10, -1]
    assert t["emergence_tokens"].tolist() == [100, 200, 100, -1]


def test_exclusive_reality_by_hand():
    table = pd.DataFrame({"cls": ["en", "ja", "en", "mixed"], "dominant_concept": [3, 4, -1, 3],
                          "exclusive": [True, True, True, False], "emergence_index": [1, 0, 0, 0]})
    sae0 = pd.DataFrame({"cls": ["en", "ja"], "dominant_concept": [3, 5], "dead": [False, False]})
    sae1 = pd.DataFrame({"cls": ["ja", "en"], "dominant_concept": [4, 9], "dead": [False, True]})
    # latent 0: en concept 3 exclusive at 1, SAE 0 has en/3 -> artefact; latent 1: ja/4 at 0, only SAE 1
    # has ja/4 -> artefact; latent 2: no concept -> unknown; latent 3 is not exclusive
    assert exclusive_reality(table, [sae0, sae1]).tolist() == ["artefact", "artefact", "unknown", ""]
    sae1.loc[0, "dominant_concept"] = 7
    assert exclusive_reality(table, [sae0, sae1]).tolist() == ["artefact", "real", "unknown", ""]


def test_best_cosine_match_brute_force():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(37, 8, generator=g), torch.randn(11, 8, generator=g)
    idx, cos = best_cosine_match(a, b, chunk=5)
    for i in range(37):
        cs = [float(a[i] @ b[j] / (a[i].norm() * b[j].norm())) for j in range(11)]
        assert idx[i] == int(np.argmax(cs)) and abs(cos[i] - max(cs)) < 1e-5


def test_lineage_birth_and_comparison_by_hand():
    # iterations 0, 5, 9 (final); feature 0: J 0.9 at 0 and 5 -> born 0; feature 1: 0.9 at 0 but 0.1 at 5
    # -> born 9; feature 2: 0.1 at 0, 0.8 at 5 -> born 5
    anc = pd.DataFrame({"feature": [0, 0, 1, 1, 2, 2], "iteration": [0, 5, 0, 5, 0, 5],
                        "jaccard": [0.9, 0.9, 0.9, 0.1, 0.1, 0.8]})
    birth = lineage_birth(anc, [0, 5, 9], 0.5)
    assert birth.tolist() == [0, 9, 5]
    table = pd.DataFrame({"cls": ["en", "mixed", "ja"], "emergence_iteration": [5, 5, -1],
                          "emergence_index": [1, 1, -1]})
    sae_dec = torch.eye(3)
    final = torch.tensor([[1.0, 0.1, 0.0], [0.0, 0.2, 1.0], [0.0, 1.0, 0.0]])
    cmp = lineage_comparison(table, final, sae_dec, birth, np.array(["persist", "none", "widen"]), [0, 5, 9])
    assert cmp["latent"].tolist() == [0, 1]  # the never-alive latent is left out
    assert cmp["sae_feature"].tolist() == [0, 2] and cmp["lineage_birth_iteration"].tolist() == [0, 5]
    assert cmp["relation"].tolist() == ["later", "same"] and cmp["lineage_origin"].tolist() == ["persist", "widen"]


def test_codes_from_sparse_equals_the_dense_reference():
    g = torch.Generator().manual_seed(0)
    z = torch.relu(torch.randn(50, 12, generator=g) - 0.8)
    vals, idx = torch.topk(z, int((z > 0).sum(1).max()) + 1, dim=1)  # as encode_sparse: descending, zeros past the active
    lab = _labels(50)
    a = analyse_features(codes_from_sparse(vals, idx, 12, lab, ("en", "ja")), 13).iloc[:12]
    b = analyse_features(codes_from_dense(z, lab, ("en", "ja")), 13).iloc[:12]
    cols = ["max_act", "n_fired", "n_active", "cls", "span_mean"]
    pd.testing.assert_frame_equal(a[cols], b[cols])
