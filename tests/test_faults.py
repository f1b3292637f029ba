"""The test-only kill and hold points (study/faults.py) do what the resume tests rely on."""

from __future__ import annotations

import threading
import time

import pytest

from sae_bilingual.errors import ConfigError
from sae_bilingual.study import faults


@pytest.fixture(autouse=True)
def fresh_counts(monkeypatch):
    monkeypatch.setattr(faults, "_passed", faults.Counter())
    for env in (faults.CRASH_ENV, faults.HOLD_ENV, faults.RELEASE_ENV):
        monkeypatch.delenv(env, raising=False)


def test_hold_waits_at_the_nth_pass_until_the_release_file_exists(tmp_path, monkeypatch):
    release = tmp_path / "go"
    monkeypatch.setenv(faults.HOLD_ENV, "layer:2")
    monkeypatch.setenv(faults.RELEASE_ENV, str(release))
    faults.crash_point("layer")  # first pass: not held
    faults.crash_point("trained")  # another point: not held
    done = threading.Event()
    worker = threading.Thread(target=lambda: (faults.crash_point("layer"), done.set()))
    worker.start()
    time.sleep(0.3)
    assert not done.is_set(), "the second pass of 'layer' did not wait"
    release.touch()
    worker.join(timeout=5)
    assert done.is_set()
    faults.crash_point("layer")  # third pass: held only once


def test_hold_without_a_release_file_names_the_missing_variable(monkeypatch):
    monkeypatch.setenv(faults.HOLD_ENV, "trained:1")
    with pytest.raises(ConfigError, match=faults.RELEASE_ENV):
        faults.crash_point("trained")


@pytest.mark.parametrize("spec", ["nowhere:1", "layer:x"])
def test_a_bad_point_names_the_points(monkeypatch, spec):
    monkeypatch.setenv(faults.CRASH_ENV, spec)
    with pytest.raises(ConfigError, match="lr_grid, trained, layer"):
        faults.crash_point("layer")
