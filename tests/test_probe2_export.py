"""Second adversarial probe (issue 30): `export` keeps the user's files in a release folder,
cleans up after a killed export, refuses a running study and reports a full disk in one line."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import SafetensorError

from sae_bilingual.io import owner_tag, temp_owner
from sae_bilingual.report.release import export_release
from sae_bilingual.sae.files import save_sae
from sae_bilingual.sae.model import PaperTopKSAE, make_metadata
from sae_bilingual.sae.topk_config import PaperTopKSAEConfig
from sae_bilingual.study.outdir import output_lock
from tests.test_probe2_config import one_error


def fake_study(root: Path, layers: tuple[int, ...] = (1, 2)) -> Path:
    """A study folder with tiny finished SAEs (d_in 8, d_sae 16) at toy/iter_0000010/L<layer>."""
    for layer in layers:
        ldir = root / "units" / "toy" / "iter_0000010" / f"L{layer:02d}"
        cfg = PaperTopKSAEConfig(d_in=8, d_sae=16, k=2, metadata=make_metadata(
            hook_name=f"blocks.{layer - 1}.hook_resid_post", model_name="toy", checkpoint_iteration=10))
        sae = PaperTopKSAE(cfg)
        with torch.no_grad():
            for p in sae.parameters():
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(layer)))
        save_sae(sae, ldir / "sae")
        (ldir / "summary.json").write_text(json.dumps({"k": 2, "d_sae": 16, "n_features": 16, "n_dead": 0,
                                                       "fvu": 0.5, "hook": cfg.metadata.hook_name}))
    (root / "recipe.yaml").write_text(yaml.safe_dump({"name": "fake", "data": {"languages": ["en", "ja"]}}))
    (root / "manifest.json").write_text("{}")
    return root


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_reexport_keeps_the_users_files(tmp_path: Path) -> None:
    study = fake_study(tmp_path / "study")
    rel = tmp_path / "rel"
    export_release(study, rel)
    mine = {".git/HEAD": b"ref: refs/heads/main\n", ".gitattributes": b"*.safetensors filter=lfs\n",
            "NOTES.md": b"my notes\n", "eval/results.csv": b"a,b\n1,2\n"}
    for name, data in mine.items():
        (rel / name).parent.mkdir(parents=True, exist_ok=True)
        (rel / name).write_bytes(data)
    export_release(study, rel)
    tree = _tree(rel)
    assert {k: tree.get(k) for k in mine} == mine
    assert "toy/iter_0000010/L02/sae_weights.safetensors" in tree


def test_reexport_removes_what_only_the_earlier_export_wrote(tmp_path: Path) -> None:
    study = fake_study(tmp_path / "study", layers=(1, 2))
    rel = tmp_path / "rel"
    export_release(study, rel)
    (rel / "NOTES.md").write_text("mine")
    fresh = fake_study(tmp_path / "study2", layers=(1,))
    export_release(fresh, rel)
    assert not (rel / "toy" / "iter_0000010" / "L02").exists()  # the layer the new study lacks
    assert (rel / "NOTES.md").read_text() == "mine"
    doc = yaml.safe_load((rel / "pretrained_saes.yaml").read_text())
    assert [s["id"] for s in next(iter(doc.values()))["saes"]] == ["iter_0000010/L01"]


def test_weights_are_as_readable_as_every_other_file(tmp_path: Path) -> None:
    study = fake_study(tmp_path / "study")
    rel = tmp_path / "rel"
    export_release(study, rel)
    mask = os.umask(0)
    os.umask(mask)
    want = 0o666 & ~mask
    for p in [*rel.rglob("*.safetensors"), *study.rglob("*.safetensors")]:
        assert stat.S_IMODE(p.stat().st_mode) == want, p


def test_export_refuses_a_study_that_is_running(tmp_path: Path, capsys) -> None:
    study = fake_study(tmp_path / "study")
    with output_lock(study):
        line = one_error(["export", str(study), str(tmp_path / "rel")], capsys)
    assert "in use by another sae-bilingual run" in line
    assert not (tmp_path / "rel").exists()


def test_the_studys_own_export_stage_is_not_refused_by_its_lock(tmp_path: Path) -> None:
    """Before: a study with export.enabled ended 'in use by another sae-bilingual run' (itself)."""
    study = fake_study(tmp_path / "study")
    with output_lock(study):  # as run_study holds it
        export_release(study, tmp_path / "rel", from_study=True)
    assert (tmp_path / "rel" / "pretrained_saes.yaml").is_file()


def test_a_killed_exports_hidden_folder_is_removed_by_the_next(tmp_path: Path) -> None:
    study = fake_study(tmp_path / "study")
    rel = tmp_path / "rel"
    dead = tmp_path / f".rel.{2**22 + 12345}@{owner_tag().split('@')[1]}.abc.tmp"
    (dead / "toy").mkdir(parents=True)
    (dead / "toy" / "big.safetensors").write_bytes(b"x" * 100)
    export_release(study, rel)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rel", "study"]


def test_a_kill_mid_install_leaves_a_release_folder_the_rerun_finishes(tmp_path: Path, monkeypatch) -> None:
    study = fake_study(tmp_path / "study")
    rel = tmp_path / "rel"
    export_release(study, rel)
    reference = _tree(rel)
    (rel / "NOTES.md").write_text("mine")
    moves = []

    rename = os.rename

    def replace(src, dst):
        if not Path(src).name.endswith(".tmp"):  # a file of the release moving in (not an atomic write)
            if len(moves) == 2:
                raise KeyboardInterrupt  # stands in for the kill, two files into the install
            moves.append(dst)
        rename(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        export_release(study, rel)
    monkeypatch.undo()
    assert rel.is_dir() and not (rel / "pretrained_saes.yaml").exists()  # nothing loads a half release
    assert (rel / "NOTES.md").read_text() == "mine"
    export_release(study, rel)
    tree = _tree(rel)
    assert tree.pop("NOTES.md") == b"mine"
    assert tree.keys() == reference.keys()
    # (the "killed" build folder is this live process's, so it is kept: see the test above)
    assert all(temp_owner(p.name)[0] == os.getpid() for p in tmp_path.iterdir() if p.name.startswith("."))


def test_a_full_disk_is_one_line_and_the_earlier_release_stays(tmp_path: Path, monkeypatch, capsys) -> None:
    study = fake_study(tmp_path / "study")
    rel = tmp_path / "rel"
    export_release(study, rel)
    before = _tree(rel)
    import sae_lens.saes.sae as sae_module

    def full(*a, **k):
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                              'message: "No space left on device" })')

    monkeypatch.setattr(sae_module, "save_file", full)
    line = one_error(["export", str(study), str(rel)], capsys)
    assert "No space left on device" in line and "untouched" in line and "Free disk space" in line
    assert _tree(rel) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
