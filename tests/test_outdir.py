"""The output folder: one study at a time, nothing of another live process deleted, no
write through a vanished temp folder or a planted symlink, no study in a folder of
unrelated files (issue 21, items 1 and 3, 'symlink-safe unit replacement')."""

from __future__ import annotations

import copy
import errno
import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sae_bilingual.cli import main
from sae_bilingual.config import Recipe, from_dict
from sae_bilingual.data import store
from sae_bilingual.errors import OutputError
from sae_bilingual.io import atomic_dir, atomic_write_text
from sae_bilingual.sae import train
from sae_bilingual.study import outdir
from sae_bilingual.study.outdir import check_output_dir, output_lock, prepare_output_dir, read_lock
from sae_bilingual.study.run import run_study
from sae_bilingual.study.unit import Unit
from sae_bilingual.errors import ConfigError
from tests.bad_input_fixtures import snapshot, names_problem_and_fix, recipe, run_fails

REPO = Path(__file__).resolve().parents[1]
SMOKE = yaml.safe_load((REPO / "recipes" / "smoke.yaml").read_text())
HOLD_LOCK = (  # another run, as the lock protocol sees it (plain Python: starts in milliseconds)
    "import fcntl, json, os, socket, sys, time\n"
    "from pathlib import Path\n"
    "out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)\n"
    "f = open(out / '.sae_bilingual.lock', 'a+')\n"
    "fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
    "f.truncate(0)\n"
    "f.write(json.dumps({'pid': os.getpid(), 'host': socket.gethostname(),\n"
    "                    'started': time.strftime('%Y-%m-%dT%H:%M:%S')}))\n"
    "f.flush()\n"
    "print('locked', flush=True)\n"
    "time.sleep(300)\n"
)


def _recipe(out: Path) -> Recipe:
    d = copy.deepcopy(SMOKE)
    d["output_dir"] = str(out)
    return from_dict(Recipe, d).validate()


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _refusal(out: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The OutputError message of a study on ``out`` that must stop before any LM or SAE work."""
    monkeypatch.setattr(store, "collect_activations", lambda *a, **k: pytest.fail("LM ran"))
    monkeypatch.setattr(train, "train_saes", lambda *a, **k: pytest.fail("SAE trained"))
    with pytest.raises(OutputError) as e:
        run_study(_recipe(out), progress=False)
    return str(e.value)


def _host_tag() -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in socket.gethostname()) or "host"


@pytest.fixture
def holder(tmp_path):
    """Another process holding the lock of ``tmp_path / 'study'``; yields (out, process)."""
    out = tmp_path / "study"
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    if line != "locked":
        proc.kill()
        pytest.fail(f"the lock holder did not start: {line!r} {proc.stderr.read()[-2000:]}")
    yield out, proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


@pytest.fixture
def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.fixture
def live_pid():
    p = subprocess.Popen(["sleep", "300"])
    yield p.pid
    p.kill()
    p.wait()


# ------------------------------------------------------------------------------- the lock


def test_second_study_names_the_lock_holder(world_cache, holder, monkeypatch):

    out, proc = holder
    before = _snapshot(out)
    msg = _refusal(out, monkeypatch)
    for word in (str(out), f"pid {proc.pid}", socket.gethostname(), "since", "--output-dir"):
        assert word in msg, f"{word!r} not in: {msg}"
    assert _snapshot(out) == before


def test_a_dead_holders_lock_is_taken_over(holder):

    out, proc = holder
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert read_lock(out)["pid"] == proc.pid  # its record stays behind...
    with output_lock(out):  # ...but the lock itself died with it
        assert read_lock(out)["pid"] == os.getpid()
        with pytest.raises(OutputError, match=f"pid {os.getpid()}"):
            with output_lock(out):  # not re-entrant: a second holder in this process is refused too
                pass


def test_cli_report_refused_while_a_study_holds_the_folder(holder, capsys):

    out, proc = holder
    (out / "manifest.json").write_text('{"recipe_hash": "x", "units": {}}')
    assert main(["report", str(out)]) == 2
    assert f"pid {proc.pid}" in capsys.readouterr().err
    assert not (out / "report.html").exists()


# ------------------------------------------------------------------------------- temp files


def test_start_keeps_temp_files_of_live_processes(world_cache, tmp_path, live_pid, dead_pid):
    """Before: every `.*.tmp` under the folder was deleted, another live run's cache included."""

    out = tmp_path / "study"
    prepare_output_dir(_recipe(out))
    cache = out / "cache" / "activations"
    live = cache / f".abcd.{live_pid}@{_host_tag()}.x1y2.tmp"
    dead = cache / f".abcd.{dead_pid}@{_host_tag()}.z3w4.tmp"
    for d in (live, dead):
        d.mkdir(parents=True)
        (d / "shard_00000.safetensors").write_bytes(b"x")
    dead_file = out / "tables" / f".summary.csv.{dead_pid}@{_host_tag()}.q9.tmp"
    dead_file.parent.mkdir(exist_ok=True)
    dead_file.write_text("half")
    prepare_output_dir(_recipe(out))
    assert (live / "shard_00000.safetensors").exists(), "a live process's temp folder was deleted"
    assert not dead.exists() and not dead_file.exists(), "crash leftovers of a dead process were kept"


def test_temp_names_carry_their_owner(tmp_path):

    seen = []
    with atomic_dir(tmp_path / "d") as tmp:
        seen.append(tmp.name)
        atomic_write_text(tmp / "a.txt", "a")
    assert f".{os.getpid()}@{_host_tag()}." in seen[0], seen


def test_write_into_a_vanished_temp_folder_is_refused(tmp_path):
    """Before: the write recreated the deleted temp folder and the half result was swapped in."""

    target = tmp_path / "cache"
    with pytest.raises(OutputError) as e:
        with atomic_dir(target) as tmp:
            atomic_write_text(tmp / "shard_00000.txt", "first")
            shutil.rmtree(tmp)  # another process deletes our temp folder
            atomic_write_text(tmp / "shard_00001.txt", "second")
    assert "vanished" in str(e.value)
    assert not target.exists() and not list(tmp_path.iterdir())


def test_replaced_temp_folder_is_not_swapped_in(tmp_path):

    target = tmp_path / "cache"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(OutputError) as e:
        with atomic_dir(target) as tmp:
            (tmp / "a.txt").write_text("a")
            shutil.rmtree(tmp)
            tmp.mkdir()  # recreated by someone else, without our files
            (tmp / "b.txt").write_text("b")
    assert "vanished" in str(e.value) or "replaced" in str(e.value)
    assert (target / "old.txt").read_text() == "old" and not (target / "b.txt").exists()


# ------------------------------------------------------------------------------- symlinks


def test_symlinked_unit_path_is_refused(tmp_path):

    out, outside = tmp_path / "study", tmp_path / "elsewhere"
    (outside / "sae").mkdir(parents=True)
    (outside / "sae" / "precious.txt").write_text("keep")
    (out / "units" / "toy" / "iter_0000120").mkdir(parents=True)
    (out / "units" / "toy" / "iter_0000120" / "L01").symlink_to(outside, target_is_directory=True)
    unit = Unit(0, "toy", 120, 0, [1])
    with pytest.raises(OutputError) as e:
        unit.layer_dir(out, 1)
    assert "symlink" in str(e.value) and "L01" in str(e.value)
    assert (outside / "sae" / "precious.txt").read_text() == "keep"


def test_atomic_dir_refuses_a_symlink_target(tmp_path):

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep")
    link = tmp_path / "sae"
    link.symlink_to(outside, target_is_directory=True)
    with pytest.raises(OutputError, match="symlink"):
        with atomic_dir(link) as tmp:
            (tmp / "cfg.json").write_text("{}")
    assert link.is_symlink() and (outside / "precious.txt").read_text() == "keep"


# ------------------------------------------------------------------------------- item 3


def test_study_refuses_a_folder_of_unrelated_files(world_cache, tmp_path, monkeypatch):
    """Before: recipe.yaml, tables/summary.csv and *.tmp of the folder were overwritten, rc 0."""

    out = tmp_path / "mine"
    (out / "tables").mkdir(parents=True)
    (out / "recipe.yaml").write_text("my own notes\n")
    (out / "tables" / "summary.csv").write_text("a,b\n1,2\n")
    (out / ".draft.tmp").write_text("keep me")
    before = _snapshot(out)
    msg = _refusal(out, monkeypatch)
    assert str(out) in msg and "not a study folder" in msg and "--force" in msg, msg
    assert _snapshot(out) == before
    prepare_output_dir(_recipe(out), force=True)  # the user insists
    assert (out / "manifest.json").exists()


def test_empty_or_study_folders_are_accepted(world_cache, tmp_path):

    empty = tmp_path / "empty"
    empty.mkdir()
    prepare_output_dir(_recipe(empty))
    prepare_output_dir(_recipe(empty))  # now a study folder: resumable
    assert (empty / "manifest.json").exists() and (empty / "recipe.yaml").exists()


def test_lock_file_alone_does_not_make_a_folder_foreign(tmp_path):

    out = tmp_path / "s"
    with output_lock(out):
        pass
    check_output_dir(out, force=False)  # only our lock file: still usable


def test_without_flock_a_pid_record_guards_the_folder(tmp_path, monkeypatch, dead_pid):
    """Filesystems without flock (some NFS setups): an O_EXCL record of pid + host instead."""


    def no_flock(*a, **k):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    out = tmp_path / "s"
    out.mkdir()
    (out / outdir.LOCK_NAME).write_text(json.dumps({"pid": dead_pid, "host": socket.gethostname(),
                                                    "started": "earlier"}))
    with outdir.output_lock(out):  # a dead holder's record is taken over
        assert outdir.read_lock(out)["pid"] == os.getpid()
        with pytest.raises(OutputError, match=f"pid {os.getpid()}"):
            with outdir.output_lock(out):
                pass
    assert not (out / outdir.LOCK_NAME).exists()


# ======== bad inputs (moved from test_bad_inputs.py): refused output directories (study/outdir.py)


def test_different_recipe_in_same_output_dir_is_refused(world, tmp_path, no_lm_no_sae):
    from sae_bilingual.study.outdir import prepare_output_dir

    out = tmp_path / "s"
    prepare_output_dir(recipe(out))
    (out / "manifest.json").write_text(json.dumps({"recipe_hash": "other", "units": {"toy/iter_0000001": {}}}))
    before = snapshot(out)
    with pytest.raises(ConfigError) as e:
        prepare_output_dir(recipe(out, **{"sae.k": 4}))
    names_problem_and_fix(e.value, "different recipe", fix=("another output_dir", "--force"))
    assert snapshot(out) == before


def test_output_dir_not_writable(world, tmp_path, no_lm_no_sae):
    """Root ignores chmod, so the output dir sits under a regular file."""
    f = tmp_path / "a_file"
    f.write_text("not a dir")
    err = run_fails(recipe(f / "out"), OutputError)
    names_problem_and_fix(err, str(f / "out"), "not writable", fix=("--output-dir",))
    assert f.read_text() == "not a dir"

