"""A finished layer is trusted on resume only if its artefacts still match the sizes and
checksums its summary.json recorded (issue 21: a features.parquet corrupted on disk after
its unit finished made every later run crash in lineage)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd

from sae_bilingual.study.artefacts import write_unit_summary
from sae_bilingual.study.summary import collect_summary
from sae_bilingual.study.unit import Unit


def _finished_layer(out: Path) -> tuple[Unit, Path]:
    unit = Unit(0, "toy", 120, 0, [1])
    ldir = unit.layer_dir(out, 1)
    (ldir / "sae").mkdir(parents=True)
    (ldir / "sae" / "cfg.json").write_text('{"d_in": 4}')
    (ldir / "sae" / "sae_weights.safetensors").write_bytes(b"\x01" * 64)
    (ldir / "codes.safetensors").write_bytes(b"\x02" * 128)
    pd.DataFrame({"cls": ["en", "ja"]}).to_parquet(ldir / "features.parquet")
    (ldir / "examples.json").write_text("{}")
    write_unit_summary(ldir, {"model": "toy", "iteration": 120, "layer": 1, "mean_R": 0.5})
    return unit, ldir


def test_summary_records_size_and_sha256_of_every_artefact(tmp_path):
    _, ldir = _finished_layer(tmp_path)
    row = json.loads((ldir / "summary.json").read_text())
    files = row["artefacts"]
    assert set(files) == {"sae/cfg.json", "sae/sae_weights.safetensors", "codes.safetensors",
                          "features.parquet", "examples.json"}
    for rel, rec in files.items():
        blob = (ldir / rel).read_bytes()
        assert rec == {"size": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}


def test_a_layer_with_a_damaged_artefact_is_not_finished(tmp_path):
    unit, ldir = _finished_layer(tmp_path)
    assert unit.missing_layers(tmp_path) == []
    feats = ldir / "features.parquet"
    blob = bytearray(feats.read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # same size, one byte flipped
    feats.write_bytes(bytes(blob))
    assert unit.missing_layers(tmp_path) == [1]
    feats.write_bytes(bytes(blob[:-10]))  # truncated
    assert unit.missing_layers(tmp_path) == [1]
    feats.unlink()  # gone
    assert unit.missing_layers(tmp_path) == [1]


def test_summary_without_checksums_is_still_trusted(tmp_path):
    """Studies written before checksums existed resume as before."""
    unit, ldir = _finished_layer(tmp_path)
    row = json.loads((ldir / "summary.json").read_text())
    del row["artefacts"]
    (ldir / "summary.json").write_text(json.dumps(row))
    assert unit.missing_layers(tmp_path) == []


def test_checksums_stay_out_of_the_summary_table(tmp_path):
    _finished_layer(tmp_path)
    df = collect_summary(tmp_path)
    assert "artefacts" not in df.columns and df["mean_R"].tolist() == [0.5]
