"""Bad inputs: writes that cannot complete (sae_bilingual/io.py: atomic_write_json, atomic_dir).

Moved from the catalogue of bad inputs (tests/bad_input_fixtures.py has its helpers)."""

from __future__ import annotations

import errno
import os

import pytest

from sae_bilingual.errors import OutputError
from tests.bad_input_fixtures import names_problem_and_fix


def test_atomic_write_into_unwritable_place(tmp_path):
    from sae_bilingual.io import atomic_write_json

    f = tmp_path / "a_file"
    f.write_text("x")
    with pytest.raises(OutputError) as e:
        atomic_write_json(f / "sub" / "x.json", {"a": 1})
    names_problem_and_fix(e.value, "cannot write", fix=("writable output directory",))


def test_disk_full_during_write_keeps_old_file(tmp_path, monkeypatch):
    from sae_bilingual import io as sio

    target = tmp_path / "summary.json"
    sio.atomic_write_json(target, {"old": True})
    before = target.read_bytes()
    real_fdopen = os.fdopen

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(data[: len(data) // 2])  # part of it lands, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(sio.os, "fdopen", lambda fd, *a, **k: Full(real_fdopen(fd, *a, **k)))
    with pytest.raises(OutputError) as e:
        sio.atomic_write_json(target, {"new": list(range(1000))})
    monkeypatch.undo()
    names_problem_and_fix(e.value, str(target), "No space left", fix=("free disk space",))
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]  # no temp left


def test_disk_full_inside_atomic_dir_keeps_old_dir(tmp_path):
    from sae_bilingual.io import atomic_dir

    d = tmp_path / "sae"
    d.mkdir()
    (d / "cfg.json").write_text("old")
    with pytest.raises(OSError):
        with atomic_dir(d) as tmp:
            (tmp / "cfg.json").write_text("new")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert (d / "cfg.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sae"]

