"""Manifest: a corrupt or missing manifest is rebuilt from the layers' summary.json files."""

from __future__ import annotations

import json
from pathlib import Path

from sae_bilingual.study.manifest import Manifest


def _finish_layer(out: Path, family: str, iteration: int, layer: int) -> None:
    d = out / "units" / family / f"iter_{iteration:07d}" / f"L{layer:02d}"
    d.mkdir(parents=True)
    (d / "summary.json").write_text(json.dumps({"layer": layer, "iteration": iteration}))


def test_rebuild_from_disk_after_corruption(tmp_path: Path) -> None:
    _finish_layer(tmp_path, "toy", 10, 1)
    _finish_layer(tmp_path, "toy", 10, 2)
    _finish_layer(tmp_path, "toy", 20, 1)
    # a layer killed half-way: directory without summary.json
    (tmp_path / "units" / "toy" / "iter_0000020" / "L02").mkdir()
    (tmp_path / "manifest.json").write_text('{"units": {"toy/iter_00')  # truncated write
    m = Manifest.open(tmp_path, "abc")
    assert m.layer_done("toy/iter_0000010", 1) and m.layer_done("toy/iter_0000010", 2)
    assert m.layer_done("toy/iter_0000020", 1)
    assert not m.layer_done("toy/iter_0000020", 2)
    assert json.loads((tmp_path / "manifest.json").read_text())["units"]  # rewritten whole


def test_marks_persist(tmp_path: Path) -> None:
    m = Manifest.open(tmp_path, "h1")
    m.mark_layer("toy/iter_0000000", 3)
    m.mark_unit("toy/iter_0000000", "done", seconds=1.5)
    again = Manifest.open(tmp_path, "h1")
    assert again.layer_done("toy/iter_0000000", 3)
    assert again.units["toy/iter_0000000"]["status"] == "done"
    assert again.recipe_hash == "h1"


def test_atomic_writes_get_ordinary_permissions(tmp_path: Path) -> None:
    # mkstemp creates 0600 files; artefacts (reports, tables) must be readable like open()'s
    import os

    from sae_bilingual.io import atomic_dir, atomic_write_text

    mask = os.umask(0o022)
    try:
        f = atomic_write_text(tmp_path / "report.html", "x")
        with atomic_dir(tmp_path / "sae") as d:
            (d / "cfg.json").write_text("{}")
    finally:
        os.umask(mask)
    assert f.stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "sae").stat().st_mode & 0o777 == 0o755
