"""Figures: what each figure draws (its data, labels, lines and bars, checked against the input tables),
every figure written as a valid PNG + SVG, data absent → figure skipped."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sae_bilingual.errors import DataError
from sae_bilingual.io import atomic_write_json, atomic_write_text, save_parquet
from sae_bilingual.report.figures import (
    fig_language_distribution,
    make_all_figures,
    plot_language_distribution,
    plot_layer_checkpoint_heatmaps,
    plot_span_by_layer,
    plot_world_loss,
)
from sae_bilingual.report.figures_intervention import fig_intervention, intervention_long, plot_intervention
from sae_bilingual.report.figures_lineage import plot_lineage_flows
from sae_bilingual.report.figures_sweeps import plot_lr_grid, plot_sizes
from sae_bilingual.report.plotting import format_tokens, language_columns, plt

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
        "cls": cls, "mix": ["" if c == "dead" else "en+ja" if c == "mixed" else c for c in cls],
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
    fig = plot_language_distribution(s, "toy-a", 2)
    assert legend_texts(fig.axes[0]) == ["en", "ja", "zh", "Mixed (bilingual)", "mean R (right)"]
    plt.close(fig)
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


# ----------------------------------------------------------------- what the figures draw
# Expected values are computed here from the recipe of fake_summary (i = checkpoint index,
# mixed = 0.5 - 0.1 i + 0.02 layer, en = 0.55 (1 - mixed), R = 0.3 + 0.15 i, ...), not read
# back from the plotting code.


def legend_texts(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def upper_envelope(coll, xs) -> list[float]:
    """Top edge of a fill_between / stackplot polygon at each x."""
    v = coll.get_paths()[0].vertices
    return [float(v[np.isclose(v[:, 0], x), 1].max()) for x in xs]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_language_distribution_draws_stacked_shares_r_fvu_and_dead():
    fig = plot_language_distribution(fake_summary(), "toy-a", 2)
    ax, axq, axr = fig.axes
    assert ax.get_title() == "toy-a, layer 2: feature classes over training"
    assert ax.get_ylabel() == "share of live features" and axr.get_ylabel() == "mean monosemanticity R"
    assert legend_texts(ax) == ["en", "ja", "Mixed (bilingual)", "mean R (right)"]
    # step 0 sits one decade left of the first positive token count
    xs = [4e5, 4e6, 4e7, 4e8]
    mixed = np.array([0.5 - 0.1 * i + 0.04 for i in range(4)])
    en = 0.55 * (1 - mixed)
    cumulative = [en, 1 - mixed, np.ones(4)]  # en, en + ja, en + ja + mixed
    assert len(ax.collections) == 3
    for coll, want in zip(ax.collections, cumulative):
        np.testing.assert_allclose(upper_envelope(coll, xs), want)
    (r_line,) = axr.lines
    np.testing.assert_allclose(r_line.get_xdata(), xs)
    np.testing.assert_allclose(r_line.get_ydata(), [0.3 + 0.15 * i for i in range(4)])
    fvu, dead = (line for line in axq.lines if line.get_label() in ("FVU", "dead share"))
    np.testing.assert_allclose(fvu.get_ydata(), [0.1 / (1 + i) for i in range(4)])
    np.testing.assert_allclose(dead.get_ydata(), [0, 8 / 64, 0, 0])
    assert axq.get_xscale() == "log" and axq.get_xticklabels()[0].get_text() == "init"


def test_heatmaps_show_mixed_share_and_r_per_layer_and_checkpoint():
    fig = plot_layer_checkpoint_heatmaps(fake_summary(), "toy-a")
    heat = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in heat] == ["Mixed (bilingual) share", "mean monosemanticity R"]
    mixed = np.array([[0.5 - 0.1 * i + 0.02 * layer for i in range(4)] for layer in LAYERS])
    r = np.array([[0.3 + 0.15 * i for i in range(4)] for _ in LAYERS])
    np.testing.assert_allclose(heat[0].images[0].get_array(), mixed)
    np.testing.assert_allclose(heat[1].images[0].get_array(), r)
    for ax in heat:
        assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "4M", "40M", "400M"]
        assert [t.get_text() for t in ax.get_yticklabels()] == ["2", "4"]
        assert len(ax.texts) == mixed.size  # every cell annotated
    assert f"{mixed[1, 0]:.2f}" in [t.get_text() for t in heat[0].texts]
    assert fig._suptitle.get_text() == "toy-a"


def test_span_figure_has_one_line_per_checkpoint():
    fig = plot_span_by_layer(fake_summary(), "toy-a")
    ax = fig.axes[0]
    assert ax.get_title() == "toy-a: span length by layer" and ax.get_xlabel() == "layer"
    assert [line.get_label() for line in ax.lines] == ["0", "4M", "40M", "400M"]
    for i, line in enumerate(ax.lines):
        np.testing.assert_allclose(line.get_xdata(), LAYERS)
        np.testing.assert_allclose(line.get_ydata(), [1.0 + 0.3 * layer + 0.1 * i for layer in LAYERS])


def test_lr_grid_stars_the_lowest_validation_loss():
    lr = pd.DataFrame({"model": "toy-a", "layer": 2, "lr": [5e-3, 1e-4, 1e-3, 5e-4],
                       "val_mse": [0.08, 0.05, 0.03, 0.02]})
    ax = plot_lr_grid(lr).axes[0]
    curve, star = ax.lines
    np.testing.assert_allclose(curve.get_xdata(), [1e-4, 5e-4, 1e-3, 5e-3])  # sorted by LR
    np.testing.assert_allclose(curve.get_ydata(), [0.05, 0.02, 0.03, 0.08])
    assert list(star.get_xdata()) == [5e-4] and list(star.get_ydata()) == [0.02] and star.get_marker() == "*"
    assert [t.get_text() for t in ax.texts] == ["best 0.0005"]
    assert ax.get_xscale() == "log" and ax.get_ylabel() == "validation val_mse"
    assert legend_texts(ax) == ["toy-a, layer=2"]


def test_sizes_plot_final_mixed_share_against_relative_depth():
    ax = plot_sizes(fake_summary((("toy-b", "40m"), ("toy-a", "10m")))).axes[0]
    assert [line.get_label() for line in ax.lines] == ["10m (400M tokens)", "40m (400M tokens)"]  # by size
    for line in ax.lines:
        np.testing.assert_allclose(line.get_xdata(), [2 / 4, 4 / 4])  # layer / deepest layer
        np.testing.assert_allclose(line.get_ydata(), [0.5 - 0.3 + 0.02 * layer for layer in LAYERS])


def test_world_loss_plots_steps_and_checkpoints_against_tokens():
    steps = pd.DataFrame({"step": range(1, 11), "loss": np.linspace(5, 2, 10)})
    cks = pd.DataFrame({"iteration": [10, 0, 5], "tokens": [640, 0, 320], "loss": [2.0, 5.5, 3.0]})
    ax = plot_world_loss(steps, cks, build_seconds=90).axes[0]
    assert ax.get_title() == "Toy world pre-training (world built in 1.5 min)"
    train, held_out = ax.lines
    np.testing.assert_allclose(train.get_xdata(), np.arange(1, 11) * 64)  # 640 tokens / 10 iterations
    np.testing.assert_allclose(held_out.get_xdata(), [0, 320, 640])  # sorted by iteration
    np.testing.assert_allclose(held_out.get_ydata(), [5.5, 3.0, 2.0])
    assert [t.get_text() for t in ax.texts] == ["0", "5", "10"] and ax.get_xscale() == "symlog"


def test_intervention_bars_are_means_with_std_error_bars():
    draws = pd.DataFrame({"condition": ["none", "Bi", "Bi", "Bi"],
                          "ppl_en": [18.7, 18.3, 18.4, 18.5], "ppl_ja": [25.0, 25.1, 25.2, 25.3]})
    fig = plot_intervention(draws)
    axes = [ax for ax in fig.axes if ax.patches]
    assert [ax.get_title() for ax in axes] == ["PPL en", "PPL ja"]
    for ax, means in zip(axes, ([18.7, 18.4], [25.0, 25.2])):
        np.testing.assert_allclose([p.get_height() for p in ax.patches], means)
        assert [t.get_text() for t in ax.get_xticklabels()] == ["none", "Bi"]
    # the error bar of "Bi" spans mean ± sample std (0.1), the single "none" draw has none
    (segs,) = [c.get_segments() for c in axes[0].collections]
    np.testing.assert_allclose(segs[1], [[1, 18.3], [1, 18.5]])
    np.testing.assert_allclose(segs[0], [[0, 18.7], [0, 18.7]])


def test_lineage_flows_draw_class_bars_and_one_band_per_flow():
    counts = pd.DataFrame({"en": [5, 3], "ja": [4, 2], "mixed": [1, 4], "dead": [0, 1], "tokens": [0, 640]},
                          index=[0, 10])
    flows = pd.DataFrame({"iteration_a": 0, "iteration_b": 10, "cls_a": ["en", "en", "ja", "mixed"],
                          "cls_b": ["en", "mixed", "ja", "mixed"], "count": [3, 2, 2, 1]})
    ax = plot_lineage_flows(flows, counts, "toy, layer 1").axes[0]
    assert ax.get_title() == "toy, layer 1"
    assert legend_texts(ax) == ["en", "ja", "Mixed", "dead"]  # languages first, then mixed and dead
    bars = [p for p in ax.patches if p.get_width() < 0.5]
    # one bar segment per non-empty (checkpoint, class) cell, heights = the class counts
    assert [p.get_height() for p in bars] == [5, 4, 1, 3, 2, 4, 1]
    assert len(ax.collections) == len(flows)  # one band per (class, class) flow
    # x labels: iteration and tokens (a checkpoint with tokens < 0, unknown, gets no token line)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["iter 0\n0", "iter 10\n640"]
