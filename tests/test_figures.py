"""Figures: every figure is written as a valid PNG + SVG, data absent → figure skipped."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sae_bilingual.errors import DataError
from sae_bilingual.report.figures import (
    fig_intervention,
    fig_language_distribution,
    format_tokens,
    intervention_long,
    language_columns,
    make_all_figures,
)
from sae_bilingual.io import atomic_write_json, atomic_write_text, save_parquet

TOKENS = [0, 4_000_000, 40_000_000, 400_000_000]
ITERS = [0, 2, 20, 200]
LAYERS = [2, 4]


def fake_summary(models=(("toy-a", "10m"),), layers=LAYERS) -> pd.DataFrame:
    """2 layers x 4 checkpoints per model, shares summing to 1 and a recognisable trend."""
    rows = []
    for model, size in models:
        for it, tok in zip(ITERS, TOKENS):
            for layer in layers:
                mixed = 0.5 - 0.1 * ITERS.index(it) + 0.02 * layer
                en = (1 - mixed) * 0.55
                rows.append(dict(model=model, size=size, iteration=it, tokens=tok, layer=layer,
                                 hook=f"blocks.{layer - 1}.hook_resid_post", n_features=64,
                                 n_dead=8 * (it == 2), n_live=64 - 8 * (it == 2),
                                 frac_en=en, frac_ja=1 - mixed - en, frac_mixed=mixed,
                                 mean_R=0.3 + 0.15 * ITERS.index(it), mean_H_tok=1.0, mean_H_sem=0.5,
                                 mean_span=1.0 + 0.3 * layer + 0.1 * ITERS.index(it), mse=0.01,
                                 fvu=0.1 / (1 + ITERS.index(it)), l0=8.0, seconds=1.0))
    return pd.DataFrame(rows)


FEATURE_EXAMPLES = {
    "3": [
        {"tokens": ["猫", "が", "好き", "です"], "acts": [0.0, 0.2, 1.5, 0.1], "lang": "ja", "doc_id": 7, "max_pos": 2},
        {"tokens": ["I", " like", " cats"], "acts": [0.0, 1.2, 0.4], "lang": "en", "doc_id": 8, "max_pos": 1},
    ],
    "5": [
        {"tokens": ["<script>alert(1)</script>", " & ", "\"q\""], "acts": [0.9, 0.0, 0.3], "lang": "en",
         "doc_id": 9, "max_pos": 0},
    ],
}


def fake_features(n: int = 8) -> pd.DataFrame:
    cls = ["en", "ja", "mixed", "ja", "dead", "en", "mixed", "en"][:n]
    df = pd.DataFrame({
        "max_act": np.linspace(0.5, 2.0, n),
        "n_fired": np.arange(n) * 10,
        "n_active": np.arange(n) * 3,
        "dead": [c == "dead" for c in cls],
        "p_en": [1.0 if c == "en" else 0.0 if c == "ja" else 0.5 for c in cls],
        "p_ja": [0.0 if c == "en" else 1.0 if c == "ja" else 0.5 for c in cls],
        "cls": cls,
        "H_tok": np.linspace(0, 1, n), "H_sem": np.linspace(0, 0.5, n), "R": np.linspace(1, 0.5, n),
        "span_mean": np.linspace(1, 3, n), "span_max": np.arange(n) + 1,
        "top_token_ids": [[i, i + 1] for i in range(n)],
    })
    df.index.name = "feature"
    return df


def build_study(root: Path, *, with_tables: bool = True, models=(("toy-a", "10m"),)) -> Path:
    """A synthetic study dir following the contract's output layout."""
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(root / "recipe.yaml", "model: toy\nlayers: [2, 4]\nnote: <b>not bold</b>\n")
    units = []
    for model, _ in models:
        for it in (ITERS[-1], ITERS[0]):
            for layer in LAYERS:
                units.append({"model": model, "iteration": it, "layer": layer, "status": "done", "seconds": 1.5})
    atomic_write_json(root / "manifest.json", {"version": "0.1.0", "units": units})
    summ = fake_summary(models)
    save_parquet(summ, root / "tables" / "summary.parquet")
    if with_tables:
        lr = pd.DataFrame({"model": "toy-a", "layer": 2, "lr": [1e-4, 5e-4, 1e-3, 5e-3],
                           "val_mse": [0.05, 0.02, 0.03, 0.08]})
        lr.to_csv(root / "tables" / "lr_grid.csv", index=False)
        inter = pd.DataFrame({"condition": ["none", "En", "Ja", "Bi"],
                              "ppl_en_mean": [18.7, 18.53, 18.65, 18.36], "ppl_en_std": [0, .05, .04, .06],
                              "ppl_ja_mean": [25.78, 25.64, 25.33, 25.2], "ppl_ja_std": [0, .05, .04, .06],
                              "ppl_all_mean": [22.43, 22.28, 22.17, 21.96], "ppl_all_std": [0, .05, .04, .06]})
        inter.to_csv(root / "tables" / "intervention.csv", index=False)
    unit = root / "units" / models[0][0] / f"iter_{ITERS[-1]:07d}" / f"L{LAYERS[0]:02d}"
    save_parquet(fake_features(), unit / "features.parquet")
    atomic_write_json(unit / "examples.json", FEATURE_EXAMPLES)
    atomic_write_json(unit / "summary.json", {"frac_mixed": 0.2})
    return root


def png_size(path: Path) -> tuple[int, int]:
    """Width, height from the PNG header (independent of matplotlib)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_language_columns_and_format_tokens():
    assert language_columns(fake_summary()) == ["en", "ja"]
    assert [format_tokens(t) for t in (0, 4e6, 4e8, 2.1e12, 1.5e9)] == ["0", "4M", "400M", "2.1T", "1.5B"]


def test_make_all_figures_writes_every_figure(tmp_path):
    study = build_study(tmp_path / "study", models=(("toy-a", "10m"), ("toy-b", "40m")))
    made = make_all_figures(study)
    expected = {"lang_dist_toy-a_L04", "lang_dist_toy-b_L04", "heatmaps_toy-a", "heatmaps_toy-b",
                "span_toy-a", "span_toy-b", "sizes", "lr_grid", "intervention"}
    assert set(made) == expected
    for name, paths in made.items():
        png, svg = paths
        assert png.parent == study / "figures" and png.suffix == ".png" and svg.suffix == ".svg"
        w, h = png_size(png)
        assert w > 200 and h > 150
        assert svg.read_text().lstrip().startswith("<?xml") and "<svg" in svg.read_text()
    # no stray temp files from the atomic writes
    assert not [p for p in (study / "figures").iterdir() if p.name.startswith(".")]


def test_missing_tables_are_skipped(tmp_path):
    study = build_study(tmp_path / "s", with_tables=False)
    made = make_all_figures(study)
    assert "lr_grid" not in made and "intervention" not in made and "sizes" not in made
    assert "heatmaps_toy-a" in made
    assert make_all_figures(tmp_path / "empty") == {}


def test_language_distribution_three_languages(tmp_path):
    s = fake_summary()
    s["frac_zh"] = 0.1
    s["frac_en"] -= 0.1
    paths = fig_language_distribution(s, "toy-a", 2, tmp_path)
    assert png_size(paths[0])[0] > 200
    with pytest.raises(DataError, match="layers present"):
        fig_language_distribution(s, "toy-a", 3, tmp_path)
    with pytest.raises(DataError, match="toy-a"):
        fig_language_distribution(s, "nope", 2, tmp_path)


def test_intervention_formats_agree(tmp_path):
    draws = pd.DataFrame({"condition": ["none", "Bi", "Bi", "Bi"],
                          "ppl_en": [18.7, 18.3, 18.4, 18.5], "ppl_ja": [25.0, 25.1, 25.2, 25.3]})
    long = intervention_long(draws).set_index(["condition", "metric"])
    # independent: sample std of (18.3, 18.4, 18.5) = sqrt((0.01 + 0 + 0.01) / 2) = 0.1
    assert long.loc[("Bi", "ppl_en"), "mean"] == pytest.approx(18.4)
    assert long.loc[("Bi", "ppl_en"), "std"] == pytest.approx(0.1)
    assert long.loc[("none", "ppl_en"), "std"] == 0.0
    wide = pd.DataFrame({"condition": ["none", "Bi"], "ppl_en_mean": [18.7, 18.4], "ppl_en_std": [0.0, 0.08]})
    lw = intervention_long(wide).set_index(["condition", "metric"])
    assert lw.loc[("Bi", "ppl_en"), "std"] == pytest.approx(0.08)
    assert len(fig_intervention(draws, tmp_path)) == 2
    with pytest.raises(DataError):
        intervention_long(pd.DataFrame({"condition": ["x"], "foo": [1]}))


def test_intervention_grid_draws_paper_cell(tmp_path):
    """A Table-4 grid (several alpha, m) is drawn at the paper's cell, not as 36 bars."""
    rows = [dict(condition=c, alpha=a, m=m, draw=d, ppl_en=18 + a + m / 1e4 + 0.01 * d)
            for c in ("none", "mixed") for a in (0.05, 0.1) for m in (1000, 5000) for d in range(2)]
    paths = fig_intervention(pd.DataFrame(rows), tmp_path)
    svg = paths[1].read_text()
    assert "alpha=0.1, m=5000" in svg.replace("α", "alpha")
    assert "18.60" in svg and "18.15" not in svg  # 18 + 0.1 + 0.5 (+0.005 mean draw) shown; other cells not
