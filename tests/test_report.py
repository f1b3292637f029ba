"""report.html: self-contained, every figure embedded, user text escaped, browser renders it."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sae_bilingual.figures import make_all_figures
from sae_bilingual.report import discover_units, write_report
from tests.test_figures import build_study, png_size

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from browser_check import find_chromium  # noqa: E402

HAS_CHROMIUM = find_chromium() is not None


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    study = build_study(tmp_path_factory.mktemp("rep") / "study")
    figs = make_all_figures(study)
    path = write_report(study, make_figures=False)
    return study, figs, path, path.read_text(encoding="utf-8")


def test_report_is_self_contained(report):
    _, _, path, html = report
    assert path.name == "report.html" and path.stat().st_size > 10_000
    # no external resources: no http(s) URLs at all, no protocol-relative src/href
    assert not re.search(r"https?://", html)
    assert not re.search(r'(src|href)\s*=\s*"(//|[a-z]+:(?!image/png;base64))', html.replace("data:image/png", "image/png"))
    assert "<link" not in html and not re.search(r"<script[^>]+src=", html)


def test_every_figure_embedded(report):
    _, figs, _, html = report
    embedded = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert {n for n, _ in embedded} == set(figs)
    for name, b64 in embedded:
        # the embedded bytes are exactly the PNG on disk
        assert base64.b64decode(b64) == figs[name][0].read_bytes()


def test_user_text_is_escaped_and_japanese_kept(report):
    _, _, _, html = report
    assert "<script>alert" not in html and "</script>\"" not in html
    assert "<b>not bold</b>" not in html and "&lt;b&gt;not bold&lt;/b&gt;" in html  # recipe text
    for tok in ("猫", "好き", "です"):
        assert tok in html
    # the browser payload parses back to the original tokens
    m = re.search(r'<script type="application/json" id="fb-sae-0">(.*?)</script>', html, re.S)
    payload = json.loads(m.group(1))
    assert payload["examples"]["5"][0]["t"][0] == "<script>alert(1)</script>"
    assert payload["examples"]["3"][0]["t"] == ["猫", "が", "好き", "です"]
    assert {r[0] for r in payload["rows"]} == {3, 5}  # features with examples only
    assert payload["columns"][:4] == ["feature", "class", "p(en)", "p(ja)"]


def test_discover_units_and_caps(tmp_path):
    study = build_study(tmp_path / "s", with_tables=False)
    units = discover_units(study)
    assert [(u["model"], u["iteration"], u["layer"]) for u in units] == [("toy-a", 200, 2)]
    html = write_report(study, max_features=1, max_examples=1).read_text(encoding="utf-8")
    payload = json.loads(re.search(r'id="fb-sae-0">(.*?)</script>', html, re.S).group(1))
    assert len(payload["rows"]) == 1 and all(len(v) == 1 for v in payload["examples"].values())
    assert "LR grid" not in html.split('id="browser"')[0].split("<nav>")[1].split("</nav>")[0]


def test_report_without_units_or_tables(tmp_path):
    (tmp_path / "s").mkdir()
    html = write_report(tmp_path / "s").read_text(encoding="utf-8")
    assert "No analysed SAE units" in html and "recipe.yaml not found" in html


@pytest.mark.skipif(not HAS_CHROMIUM, reason="chromium not installed (apt-get install -y chromium)")
def test_browser_renders_report(report, tmp_path):
    _, _, path, _ = report
    shot = tmp_path / "report.png"
    res = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "browser_check.py"), str(path), "--screenshot", str(shot),
         "--fragment", "sae=0&feature=3", "--expect-text", "猫が好きです", "--expect-text", "I like cats"],
        capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    w, h = png_size(shot)
    assert (w, h) == (1400, 2400)
    assert png_size(shot.with_name("report_browser.png"))[0] == 1400


@pytest.mark.skipif(not HAS_CHROMIUM, reason="chromium not installed (apt-get install -y chromium)")
def test_browser_check_detects_broken_image(report, tmp_path):
    _, _, path, html = report
    broken = tmp_path / "report.html"
    broken.write_text(re.sub(r"base64,[A-Za-z0-9+/=]{40}", "base64,AAAA", html, count=1), encoding="utf-8")
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "browser_check.py"), str(broken),
                          "--screenshot", str(tmp_path / "b.png")], capture_output=True, text=True, timeout=300)
    assert res.returncode == 1 and "render-check" in res.stderr


def test_neuronpedia_export(tmp_path):
    from sae_bilingual.neuronpedia import export_neuronpedia
    from tests.test_figures import FEATURE_EXAMPLES, fake_features

    study = build_study(tmp_path / "s", with_tables=False)
    unit = discover_units(study)[0]["path"]
    out = export_neuronpedia(unit, study / "neuronpedia" / "toy-a_iter_0000200_L02.json", "toy-a", "2-res-paper-topk")
    doc = json.loads(out.read_text(encoding="utf-8"))
    feats = {f["index"]: f for f in doc["features"]}
    ref = fake_features()
    assert set(feats) == {str(i) for i in ref.index[~ref["dead"]]}  # dead feature 4 left out
    assert doc["paper_layer"] == 2 and doc["languages"] == ["en", "ja"]
    f3 = feats["3"]
    assert f3["modelId"] == "toy-a" and f3["layer"] == "2-res-paper-topk"
    assert f3["maxActApprox"] == pytest.approx(ref.loc[3, "max_act"])
    assert f3["sae_bilingual"]["cls"] == "ja" and f3["sae_bilingual"]["top_token_ids"] == [3, 4]
    # activations sorted by max value; argmax recomputed independently
    acts = f3["activations"]
    assert [a["maxValue"] for a in acts] == [1.5, 1.2]
    assert acts[0]["tokens"] == FEATURE_EXAMPLES["3"][0]["tokens"] and acts[0]["maxValueTokenIndex"] == 2
    assert acts[1]["maxValueTokenIndex"] == FEATURE_EXAMPLES["3"][1]["max_pos"]
    assert feats["0"]["activations"] == []
    assert "猫" in out.read_text(encoding="utf-8")  # UTF-8 kept readable
