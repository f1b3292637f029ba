"""A study killed during SAE training and again during analysis resumes to the same result.

Runs the smoke study in subprocesses (shared world cache, one thread each): once without
interruption (the reference), then in a second dir killed at two deterministic points with
``$SAE_BILINGUAL_CRASH_AFTER`` (study/faults.py: the process ends itself with exit status
137 and no cleanup, as a SIGKILL would): (1) right after the first unit's SAEs are trained,
before any of their files is written; (2) right after the first layer of a unit is finished,
while the rest of that unit is not; then to completion. Asserts that the run completes,
that the layer finished before the last run was not recomputed (its summary.json mtime is
unchanged), and that every result file equals the reference
(``benchmarks/soak.py::compare_outputs``: tables without timing columns, features.parquet,
codes/SAE safetensors bytes).

A layer counts as finished when its summary.json exists and its artefacts match their
checksums, whatever the manifest says (the driver marks the manifest only when a whole unit
returns), so a kill between two layers of one unit does not retrain the first.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from sae_bilingual.study.faults import CRASH_ENV, HOLD_ENV, KILLED_STATUS, RELEASE_ENV

REPO = Path(__file__).resolve().parents[1]
BUILD_WORLD = ("from sae_bilingual.world import WorldConfig, build_world; "
               "build_world(WorldConfig.tiny(), progress=False)")
RECIPE = "recipes/smoke.yaml"
TIMEOUT = 600


def _soak():
    spec = importlib.util.spec_from_file_location("soak", REPO / "benchmarks" / "soak.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    cache = os.environ.get("SAE_BILINGUAL_CACHE") or str(tmp_path_factory.mktemp("cache"))
    e = dict(os.environ, SAE_BILINGUAL_CACHE=cache, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    subprocess.run([sys.executable, "-c", BUILD_WORLD], cwd=REPO, env=e,
                   check=True, capture_output=True, timeout=TIMEOUT)
    return e


def _cmd(out: Path) -> list[str]:
    return [sys.executable, "-m", "sae_bilingual.cli", "study", RECIPE, "--output-dir", str(out), "-q"]


def _run(out: Path, env: dict[str, str]) -> None:
    p = subprocess.run(_cmd(out), cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert p.returncode == 0, p.stderr[-3000:]


def _crash_after(out: Path, env: dict[str, str], point: str) -> None:
    """Run the study until it ends itself at ``point`` (``<name>:<n>``, study/faults.py)."""
    p = subprocess.run(_cmd(out), cwd=REPO, env={**env, CRASH_ENV: point}, capture_output=True, text=True,
                       timeout=TIMEOUT)
    assert p.returncode == KILLED_STATUS, f"exit {p.returncode}, not the kill at {point}: {p.stderr[-3000:]}"


def _summaries(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.glob("units/*/*/L*/summary.json")}


def _run_with_an_intruder(out: Path, env: dict[str, str]) -> None:
    """Run the study while a second `study` on the same folder is started: the second must
    exit non-zero naming the first (pid, host, start time), and the first must finish (its
    output is the reference the killed-and-resumed run below is compared with, so it also
    shows that the intruder changed nothing). The first waits after its first training
    (study/faults.py) until the second has been refused, so a fast first run cannot finish
    before the second starts."""
    log_path = out.with_name(out.name + ".stderr")
    release = out.with_name(out.name + ".release")
    hold = {**env, HOLD_ENV: "trained:1", RELEASE_ENV: str(release)}
    with open(log_path, "w") as log:
        first = subprocess.Popen(_cmd(out), cwd=REPO, env=hold, stdout=subprocess.DEVNULL, stderr=log)
    lock, t0 = out / ".sae_bilingual.lock", time.time()
    try:
        while True:  # wait until the first run owns the folder
            try:
                if json.loads(lock.read_text())["pid"] == first.pid:
                    break
            except (OSError, ValueError, KeyError):
                pass
            if (out / "manifest.json").exists() and not lock.exists():
                break  # (a version without a lock)
            assert first.poll() is None, log_path.read_text()[-3000:]
            assert time.time() - t0 < TIMEOUT, "the first study never took the folder"
            time.sleep(0.05)
        second = subprocess.run(_cmd(out), cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT)
        assert second.returncode != 0, "a second study ran on a folder in use"
        last = second.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and "Traceback" not in second.stderr, second.stderr[-3000:]
        for word in (f"pid {first.pid}", socket.gethostname(), "since"):
            assert word in last, last
        release.touch()
        assert first.wait(timeout=TIMEOUT) == 0, log_path.read_text()[-3000:]
    finally:
        release.touch()
        if first.poll() is None:
            first.kill()
        first.wait()


@pytest.mark.slow
def test_killed_twice_resumes_to_the_uninterrupted_result(tmp_path: Path, env: dict[str, str]) -> None:
    soak = _soak()
    ref, out = tmp_path / "clean", tmp_path / "killed"
    _run_with_an_intruder(ref, env)
    first_iter = int(pd.read_csv(ref / "tables" / "summary.csv")["iteration"].min())

    # 1. the first unit's SAEs are trained (the LR grid is done), none of their files written
    _crash_after(out, env, "trained:1")
    assert (out / "tables" / "lr_grid.csv").exists()
    assert _summaries(out) == {} and not list(out.glob("units/*/*/L*/sae"))

    # 2. the first layer of the first unit is finished, its second layer is not
    _crash_after(out, env, "layer:1")
    finished = _summaries(out)
    assert sorted(finished) == [f"units/toy/iter_{first_iter:07d}/L01/summary.json"]
    assert not (out / "report.html").exists()

    # 3. resume to completion
    _run(out, env)
    assert (out / "report.html").exists()
    after = _summaries(out)
    assert len(after) == len(_summaries(ref)) > len(finished)
    diffs = soak.compare_outputs(ref, out)
    assert not diffs, "resumed study differs from the uninterrupted one:\n" + "\n".join(diffs)
    recomputed = sorted(k for k in finished if after[k] != finished[k])
    assert not recomputed, f"finished layers recomputed: {recomputed}"
