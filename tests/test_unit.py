"""The unit layout (study/unit.py): one place builds units/<family>/iter_NNNNNNN/L<layer>,
parses it back and decides which layers are still to do (issue 18)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sae_bilingual.errors import OutputError
from sae_bilingual.study.artefacts import write_unit_summary
from sae_bilingual.study.manifest import Manifest
from sae_bilingual.study.unit import (
    LayerDir,
    Unit,
    layer_dirs,
    layer_id,
    layer_path,
    parse_layer_dir,
)
from sae_bilingual.errors import SaeBilingualError


def test_paths_and_ids_follow_the_documented_format(tmp_path):
    unit = Unit(0, "llm-jp-3-1.8b", 988240, 2_072_000_000_000, [1, 12])
    assert unit.id == "llm-jp-3-1.8b/iter_0988240"
    assert unit.dir(tmp_path) == tmp_path / "units" / "llm-jp-3-1.8b" / "iter_0988240"
    assert unit.layer_dir(tmp_path, 1) == tmp_path / "units" / "llm-jp-3-1.8b" / "iter_0988240" / "L01"
    assert unit.layer_dir(tmp_path, 12).name == "L12"
    assert layer_path(tmp_path, "toy", 120, 2) == tmp_path / "units" / "toy" / "iter_0000120" / "L02"
    assert layer_id(120, 2) == "iter_0000120/L02"
    with pytest.raises(OutputError, match="cannot be used as a directory name"):
        Unit(0, "../escape", 1, 0, [1]).dir(tmp_path)


def test_a_layer_folder_parses_back_to_its_unit(tmp_path):
    unit = Unit(3, "toy", 61, 0, [1, 2])
    d = parse_layer_dir(unit.layer_dir(tmp_path, 2))
    assert d == LayerDir("toy", 61, 2, tmp_path / "units" / "toy" / "iter_0000061" / "L02")
    assert d.unit_id == unit.id
    for other in ("units/toy/iter_0000061/sae", "units/toy/final/L01", "elsewhere/toy/iter_0000061/L01"):
        assert parse_layer_dir(tmp_path / other) is None, other


def test_layer_dirs_lists_only_layer_folders_in_path_order(tmp_path):
    def make(rel: str, *files: str) -> None:
        (tmp_path / "units" / rel).mkdir(parents=True)
        for f in files:
            (tmp_path / "units" / rel / f).write_text("x")

    make("toy/iter_0000120/L02", "features.parquet")
    make("toy/iter_0000015/L01", "features.parquet", "codes.safetensors")
    make("toy/iter_0000015/L02")
    make("b-model/iter_0000007/L01", "features.parquet")
    make("toy/iter_0000015/.L03.123@host.ab.tmp", "features.parquet")  # a crash leftover
    make("toy/notes/L01", "features.parquet")
    (tmp_path / "units" / "toy" / "iter_0000120" / "L09").write_text("a file, not a layer folder")
    got = [(d.family, d.iteration, d.layer) for d in layer_dirs(tmp_path)]
    assert got == [("b-model", 7, 1), ("toy", 15, 1), ("toy", 15, 2), ("toy", 120, 2)]
    assert [(d.iteration, d.layer) for d in layer_dirs(tmp_path, family="toy", having=("features.parquet",))] \
        == [(15, 1), (120, 2)]
    assert [d.iteration for d in layer_dirs(tmp_path, layer=2)] == [15, 120]
    assert [d.layer for d in layer_dirs(tmp_path, having=("features.parquet", "codes.safetensors"))] == [1]
    assert layer_dirs(tmp_path / "no_study") == []


def test_missing_layers_and_the_manifest_rebuild_agree(tmp_path):
    unit = Unit(0, "toy", 120, 0, [1, 2, 3])
    for layer in (1, 3):
        ldir = unit.layer_dir(tmp_path, layer)
        ldir.mkdir(parents=True)
        (ldir / "features.parquet").write_bytes(b"x" * 10)
        write_unit_summary(ldir, {"model": "toy", "iteration": 120, "layer": layer})
    (unit.layer_dir(tmp_path, 2)).mkdir()  # started, never finished
    assert unit.missing_layers(tmp_path) == [2]
    (unit.layer_dir(tmp_path, 3) / "features.parquet").write_bytes(b"y" * 10)  # damaged since
    assert unit.missing_layers(tmp_path) == [2, 3]
    m = Manifest.open(tmp_path, "h")  # no manifest.json: rebuilt from the summaries on disk
    assert m.units == {"toy/iter_0000120": {"status": "partial", "layers": {"1": "done", "3": "done"}}}
    assert json.loads((tmp_path / "manifest.json").read_text())["units"] == m.units


def test_mark_finished_adds_what_the_driver_did_not_see(tmp_path):
    unit = Unit(0, "toy", 120, 0, [1, 2, 3])
    m = Manifest(Path(tmp_path) / "manifest.json", "h")
    m.mark_layer(unit.id, 1)
    m.mark_finished(unit, missing=[3])
    assert m.units[unit.id]["layers"] == {"1": "done", "2": "done"}


# ======== bad inputs (moved from test_bad_inputs.py): unit directories cannot escape (study/unit.py)


def test_unit_dir_refuses_escape(tmp_path):
    from sae_bilingual.study.unit import Unit

    with pytest.raises(SaeBilingualError):
        Unit(0, "../../outside", 1, 1, [1]).dir(tmp_path)

