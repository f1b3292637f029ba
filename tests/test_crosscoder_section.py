"""The report's crosscoder section and the release entries, from a hand-made crosscoder folder."""

from __future__ import annotations

import json

import pandas as pd

from sae_bilingual.report.crosscoder_section import crosscoder_body, crosscoder_controls_table, crosscoder_release


def _study(tmp_path):
    d = tmp_path / "crosscoders" / "toy" / "L02"
    (d / "crosscoder").mkdir(parents=True)
    (d / "crosscoder" / "cfg.json").write_text("{}")
    (d / "crosscoder" / "sae_weights.safetensors").write_bytes(b"x")
    s = {"model": "toy", "layer": 2, "n_checkpoints": 2, "d_sae": 64, "sae_total_latents": 64, "l0": 8.0,
         "fvu": 0.25, "n_live": 50, "n_mixed": 7, "n_exclusive": 3, "exclusive_kinds": {"real": 1, "artefact": 2},
         "slices": [{"iteration": 0, "tokens": 0, "fvu": 0.2, "sae_fvu": 0.18, "ratio": 1.11},
                    {"iteration": 9, "tokens": 90, "fvu": 0.3, "sae_fvu": 0.25, "ratio": 1.2}]}
    (d / "summary.json").write_text(json.dumps(s))
    (tmp_path / "tables").mkdir()
    pd.DataFrame({"latent": [0, 1, 2], "cls": ["en", "mixed", "mixed"], "relation": ["same", "later", "same"]}
                 ).to_csv(tmp_path / "tables" / "crosscoder_toy_L02_lineage.csv", index=False)
    return tmp_path


def test_body_lists_slices_counts_and_lineage(tmp_path):
    study = _study(tmp_path)
    body = crosscoder_body(study, lambda p: "FIG", lambda df, max_rows=1000: df.to_html())
    assert "layer 2" in body and "0.18" in body and "exclusive_artefact" in body and "later" in body
    assert crosscoder_body(tmp_path / "nothing", lambda p: "", lambda df, **k: "") == ""


def test_release_copies_and_lists(tmp_path):
    study = _study(tmp_path / "s")
    out = tmp_path / "out"
    doc, lines = crosscoder_release(study, out, "rel", "u/rel")
    assert (out / "toy/crosscoder/L02/cfg.json").exists() and (out / "toy/crosscoder/L02/sae_weights.safetensors").exists()
    e = doc["rel-toy-crosscoder"]["saes"][0]
    assert e["path"] == "toy/crosscoder/L02" and e["checkpoint_iterations"] == [0, 9]
    assert e["fvu_per_checkpoint"] == [0.2, 0.3] and e["variance_explained"] == 0.75
    assert any("## Crosscoders" in l for l in lines) and any("`toy/crosscoder/L02`" in l for l in lines)


def test_controls_table_by_hand(tmp_path):
    study = _study(tmp_path)
    s = json.loads((study / "crosscoders/toy/L02/summary.json").read_text())
    s.update(seconds=6.0, max_fvu_ratio=1.2, n_mixed_bilingual_concept=4, mixed_bilingual_emerged={"0": 0, "9": 4})
    (study / "crosscoders/toy/L02/summary.json").write_text(json.dumps(s))
    for it, sec in ((0, 1.0), (9, 2.0)):
        d = study / "units" / "toy" / f"iter_{it:07d}" / "L02"
        d.mkdir(parents=True)
        (d / "summary.json").write_text(json.dumps({"seconds": sec}))
    t = crosscoder_controls_table({"w": study})
    r = t.iloc[0]
    assert r["time_ratio"] == 2.0 and r["first_mixed_bilingual_iteration"] == 9 and r["max_fvu_ratio"] == 1.2
    assert r["fvu_ratio_per_slice"] == "1.11 1.20" and r["exclusive_artefact"] == 2
