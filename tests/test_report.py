"""report.html: self-contained, every figure embedded, user text escaped, browser renders it."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sae_bilingual.report.figures import make_all_figures
from sae_bilingual.report.html import discover_units, write_report
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
    from sae_bilingual.report.neuronpedia import export_neuronpedia
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


def _multi_unit_study(root, n_layers=None):
    """Three checkpoints x layers 1..6, each with the same features; optionally n_layers in the summary."""
    import pandas as pd

    from sae_bilingual.io import atomic_write_json, save_parquet
    from tests.test_figures import FEATURE_EXAMPLES, fake_features

    for it in (0, 20, 200):
        for layer in range(1, 7):
            unit = root / "units" / "toy" / f"iter_{it:07d}" / f"L{layer:02d}"
            save_parquet(fake_features(), unit / "features.parquet")
            atomic_write_json(unit / "examples.json", FEATURE_EXAMPLES)
    if n_layers is not None:
        save_parquet(pd.DataFrame({"model": ["toy"], "n_layers": [n_layers]}), root / "tables" / "summary.parquet")
    return root


def _browser_index(html):
    return json.loads(re.search(r'<script type="application/json" id="fb-index">(.*?)</script>', html, re.S).group(1))


@pytest.mark.parametrize("n_layers, want", [(6, 3), (8, 4), (None, 3)])
def test_browser_opens_on_final_checkpoint_middle_layer(tmp_path, n_layers, want):
    """The browser's default SAE is the final checkpoint's middle layer (the study's 'mid', n_layers // 2,
    else the lower middle of the analysed layers), also when the SAEs are capped; the note names it."""
    study = _multi_unit_study(tmp_path / "s", n_layers)
    for max_saes in (50, 4):
        html = write_report(study, make_figures=False, max_saes=max_saes).read_text(encoding="utf-8")
        index = _browser_index(html)
        default = [e for e in index if e["default"]]
        label = f"toy / iter_0000200 / layer {min(want, 6)}"
        assert [e["label"] for e in default] == [label], (max_saes, index)
        assert index[0]["label"] != label  # the first SAE is not the one it opens on
        assert f"it opens on {label}, the final checkpoint's middle layer" in html


NODE = __import__("shutil").which("node")

# A minimal DOM for report.js: enough elements for load(), the select's value and render-check.
_DOM_STUB = r"""
const fs = require("fs");
const html = fs.readFileSync(process.argv[2], "utf8");
const scripts = {};
for (const m of html.matchAll(/<script type="application\/json" id="([^"]+)">([\s\S]*?)<\/script>/g)) scripts[m[1]] = m[2];
function node(id) {
  return { id, textContent: scripts[id] || "", options: [], rows: [], dataset: {}, style: {}, className: "",
    value: "", appendChild(c) { if (c.tag === "option") this.options.push(c); return c; }, remove(i) { this.options.splice(i, 1); },
    addEventListener() {}, querySelectorAll() { return []; } };
}
const els = {};
global.document = {
  getElementById(id) { return els[id] || (els[id] = node(id)); },
  querySelector(sel) { return els[sel] || (els[sel] = node(sel)); },
  querySelectorAll() { return []; }, createElement(tag) { const n = node(""); n.tag = tag; return n; },
  createTextNode(t) { return node(t); }, images: [], body: { classList: { add() {} }, dataset: {} },
};
global.location = { hash: process.argv[3] || "" };
global.window = { addEventListener() {} };
const js = html.match(/<script>\n?([\s\S]*?)<\/script>\s*<\/body>/)[1];
eval(js);
console.log(document.getElementById("fb-sae").value);
"""


@pytest.mark.skipif(NODE is None, reason="node not installed")
def test_report_script_selects_the_default_sae(tmp_path):
    study = _multi_unit_study(tmp_path / "s", 6)
    path = write_report(study, make_figures=False)
    index = _browser_index(path.read_text(encoding="utf-8"))
    stub = tmp_path / "run.js"
    stub.write_text(_DOM_STUB, encoding="utf-8")
    opened = subprocess.run([NODE, str(stub), str(path)], capture_output=True, text=True, timeout=60)
    assert opened.returncode == 0, opened.stderr
    assert index[int(opened.stdout.strip())]["label"] == "toy / iter_0000200 / layer 3"
    linked = subprocess.run([NODE, str(stub), str(path), "#sae=1"], capture_output=True, text=True, timeout=60)
    assert linked.stdout.strip() == "1"  # a deep link still wins
