"""The crosscoder emergence figure: its counts against a plain loop, and the files written."""

from __future__ import annotations

import numpy as np
import pandas as pd

from sae_bilingual.report.figures_crosscoder import emergence_counts, fig_crosscoder_emergence


def _table():
    g = np.random.default_rng(0)
    n = 60
    return pd.DataFrame({"cls": g.choice(["en", "ja", "mixed"], n), "emergence_index": g.integers(-1, 4, n),
                         "bilingual_concept": g.random(n) > 0.5})


def test_counts_match_a_loop():
    t = _table()
    got = emergence_counts(t, [0, 10, 100, 1000])
    for c, tok in enumerate([0, 10, 100, 1000]):
        for cl in ("en", "ja", "mixed"):
            want = sum(1 for _, r in t.iterrows() if r["cls"] == cl and 0 <= r["emergence_index"] <= c)
            assert got.loc[tok, cl] == want
        want = sum(1 for _, r in t.iterrows()
                   if r["cls"] == "mixed" and r["bilingual_concept"] and 0 <= r["emergence_index"] <= c)
        assert got.loc[tok, "mixed, concept-bilingual"] == want


def test_figure_files(tmp_path):
    paths = fig_crosscoder_emergence(_table(), [0, 10, 100, 1000], "t", tmp_path, "crosscoder_toy_L02")
    assert sorted(p.name for p in paths) == ["crosscoder_toy_L02.png", "crosscoder_toy_L02.svg"]
    assert all(p.stat().st_size > 1000 for p in paths)
