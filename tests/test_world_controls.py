"""The control worlds: code-switching (bilingual concepts certainly exist) and disjoint
concept sets (none can exist) — their ground truth, and what the analysis finds in them."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from sae_bilingual.config import load_recipe
from sae_bilingual.study.controls import controls_table
from sae_bilingual.errors import ConfigError
from sae_bilingual.study.run import run_study
from sae_bilingual.world import PRESETS, WorldConfig
from sae_bilingual.world.generator import GeneratorConfig, generate_documents
from sae_bilingual.world.lexicon import build_lexicon, vocabulary

SMOKE = Path(__file__).resolve().parents[1] / "recipes" / "smoke.yaml"


def _ground_truth(lex) -> dict[str, tuple[str, int]]:
    return {surface: (lang, concept) for surface, lang, concept, _, _ in vocabulary(lex)}


def test_codeswitch_forms_keep_their_concept_and_language():
    lex = build_lexicon(90)
    gt = _ground_truth(lex)
    docs = generate_documents(lex, GeneratorConfig(seed=0, codeswitch_rate=0.5), 60)
    switched = {"en": 0, "ja": 0}
    for d in docs:
        for tok, concept, tok_lang in zip(d.tokens, d.concepts, d.token_langs):
            assert gt[tok] == ((tok_lang, concept) if concept >= 0 else (tok_lang, -1)), (d.lang, tok)
            switched[d.lang] += tok_lang != d.lang
    assert switched["en"] > 20 and switched["ja"] > 20  # both directions switch
    # both surface forms of one concept occur in the same document language
    forms = pd.DataFrame([(d.lang, t, c) for d in docs for t, c in zip(d.tokens, d.concepts) if c >= 0],
                         columns=["doc_lang", "tok", "concept"])
    per = forms.groupby(["doc_lang", "concept"])["tok"].nunique()
    assert (per >= 2).sum() > 10
    # rate 0 is the default world, token for token
    a = generate_documents(lex, GeneratorConfig(seed=0), 40)
    b = generate_documents(lex, GeneratorConfig(seed=0, codeswitch_rate=0.0), 40)
    assert [d.tokens for d in a] == [d.tokens for d in b]


def test_disjoint_languages_share_no_concept():
    lex = build_lexicon(90)
    docs = generate_documents(lex, GeneratorConfig(seed=0, disjoint=True, bilingual_share=0.0), 400)
    used = {lang: {c for d in docs if d.lang == lang for c in d.concepts if c >= 0} for lang in ("en", "ja")}
    assert used["en"] and used["ja"] and not used["en"] & used["ja"]
    pos = {c.id: c.pos for c in lex.concepts}
    for lang in ("en", "ja"):  # every template stays usable: nouns, verbs, adjectives in each language
        assert {"verb", "adj", "place"} <= {pos[c] for c in used[lang]}
    with pytest.raises(ConfigError, match="bilingual_share"):
        generate_documents(lex, GeneratorConfig(seed=0, disjoint=True, bilingual_share=0.2), 5)


def test_presets():
    assert WorldConfig.from_preset("codeswitch").codeswitch_rate > 0
    dj = WorldConfig.from_preset("disjoint")
    assert dj.disjoint and dj.bilingual_share == 0
    keys = {name: WorldConfig.from_preset(name).key() for name in PRESETS}
    assert len(set(keys.values())) == len(PRESETS)
    assert WorldConfig.tiny(codeswitch_rate=0.5).key() != WorldConfig.tiny().key()
    with pytest.raises(ConfigError, match="preset"):
        WorldConfig.from_preset("nope")
    with pytest.raises(ConfigError, match="bilingual_share"):
        WorldConfig(disjoint=True)


@pytest.fixture(scope="module")
def controls_study(world_cache, tmp_path_factory) -> Path:
    """The smoke recipe at its final checkpoint with both control worlds beside it."""
    out = tmp_path_factory.mktemp("controls") / "study"
    recipe = load_recipe(SMOKE, {
        "output_dir": str(out), "controls": ["codeswitch", "disjoint"],
        "models": [{"family": "toy", "checkpoints": "final", "layers": "all"}],
        "sae.lr": 0.005, "intervention.enabled": False,
    })
    run_study(recipe, progress=False)
    return out


@pytest.mark.slow
def test_tiny_positive_control_finds_bilingual_concepts(controls_study):
    s = pd.read_csv(controls_study / "controls" / "codeswitch" / "tables" / "summary.csv")
    assert s["gt_n_bilingual_concept"].max() >= 1, s[["layer", "frac_mixed", "gt_n_mixed", "gt_n_bilingual_concept"]]
    world = json.loads((controls_study / "controls" / "codeswitch" / "tables" / "world.json").read_text())
    assert world["config"]["codeswitch_rate"] == PRESETS["codeswitch"]["codeswitch_rate"]
    assert world["config"]["n_layers"] == WorldConfig.tiny().n_layers  # the study's tiny world, switched


@pytest.mark.slow
def test_tiny_negative_control_finds_none(controls_study):
    s = pd.read_csv(controls_study / "controls" / "disjoint" / "tables" / "summary.csv")
    assert (s["gt_n_bilingual_concept"] == 0).all() and (s["gt_mixed_precision"].fillna(0) == 0).all()


@pytest.mark.slow
def test_report_shows_controls_beside_the_study(controls_study):
    table = controls_table(controls_study)
    assert sorted(table["world"].unique()) == ["codeswitch", "disjoint", "study"]
    assert len(table) == 3 * WorldConfig.tiny().n_layers
    html = (controls_study / "report.html").read_text(encoding="utf-8")
    section = html.split('<section id="controls">')[1].split("</section>")[0]
    assert "codeswitch" in section and "disjoint" in section and "gt_mixed_precision" in section
    assert "toy world: default" in html  # the browser and world section name the world
