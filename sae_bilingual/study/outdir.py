"""The output folder of a study: who may write there, and what a start may clean up.

Why: two runs on one folder corrupted each other for good (the second deleted the first's
in-progress cache, the first then swapped a cache without those shards into place). So:

* one run at a time: :func:`output_lock` takes an exclusive ``flock`` on
  ``<out>/.sae_bilingual.lock`` and records pid, host and start time there; a second run
  is refused with that record; the kernel drops the lock when its holder dies, so a stale
  lock of a dead process is simply taken over;
* a start deletes only temporary files of dead processes (names carry ``pid@host``);
* a folder of unrelated files is not a study folder: refused unless ``--force``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sae_bilingual.config import Recipe, dump_recipe, recipe_to_dict
from sae_bilingual.errors import ConfigError, OutputError
from sae_bilingual.io import atomic_write_text, host_tag, is_temp_name, owner_tag, temp_owner
from sae_bilingual.study.layout import RECIPE_FILE
from sae_bilingual.study.manifest import Manifest

log = logging.getLogger(__name__)

LOCK_NAME = ".sae_bilingual.lock"
MANIFEST_NAME = "manifest.json"
FOREIGN_TEMP_AGE_S = 24 * 3600
"""Temporary files of another host (or of no known owner) are deleted only when this old."""


# --------------------------------------------------------------------------- the lock


def read_lock(out: Path) -> dict[str, Any]:
    """The holder record in ``out``'s lock file ({} when absent or unreadable)."""
    try:
        rec = json.loads((Path(out) / LOCK_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return rec if isinstance(rec, dict) else {}


def make_output_dir(out: Path) -> Path:
    """Create ``out`` (and parents); a clear error when it cannot be written."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write_probe.{owner_tag()}.probe.tmp"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise OutputError(
            f"output_dir {out} is not writable ({e.strerror or e}); set `output_dir` in the recipe "
            "or pass --output-dir to a directory you can write"
        ) from e
    return out


def _holder_text(rec: dict[str, Any]) -> str:
    if not rec:
        return "another process (no record)"
    return f"pid {rec.get('pid')} on host {rec.get('host')} (since {rec.get('started')})"


@contextlib.contextmanager
def output_lock(out: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Hold ``out`` exclusively for the ``with`` block; yields this holder's record.

    Raises :class:`OutputError` naming the holder (pid, host, start time) when another
    run holds it. Not re-entrant: a second ``output_lock`` on the same folder, even in this
    process, is refused.
    """
    out = make_output_dir(Path(out))
    path = out / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                yield from _record_only_lock(out, path)  # a filesystem without flock
                return
            raise _in_use(out, read_lock(out)) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the file was replaced between open and lock: lock the new one
    previous = read_lock(out)
    if previous.get("pid") not in (None, os.getpid()):
        log.info("taking over the lock of %s: its holder %s is gone", out, _holder_text(previous))
    record = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        os.fsync(fd)
        yield record
    finally:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # released cleanly: no holder (the file stays: see module doc)
        os.close(fd)


def check_not_in_use(out: str | os.PathLike) -> None:
    """Fail fast, before planning, when another run holds ``out`` (creates nothing)."""
    path = Path(out) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # no lock file yet: nobody holds it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise _in_use(Path(out), read_lock(Path(out))) from None
    finally:
        os.close(fd)  # (releases the probe's lock, if it got it)


def _in_use(out: Path, rec: dict[str, Any]) -> OutputError:
    return OutputError(f"output folder {out} is in use by another sae-bilingual run: {_holder_text(rec)}. "
                       "Wait for it to finish (or stop it), or pass another --output-dir")


def _record_only_lock(out: Path, path: Path) -> Iterator[dict[str, Any]]:
    """Fallback where flock is unsupported: the record alone, created with O_EXCL.

    A record of a dead process on this host is stale and replaced; one of another host
    cannot be checked and is honoured (delete the file if that run is gone).
    """
    log.warning("%s: the filesystem has no file locks; guarding the folder with a pid record only", out)
    rec = read_lock(out)
    if rec and (rec.get("host") != socket.gethostname() or _alive(int(rec.get("pid", -1)))):
        raise _in_use(out, rec)
    path.unlink(missing_ok=True)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise _in_use(out, read_lock(out)) from None
    record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    try:
        os.write(fd, (json.dumps(record) + "\n").encode())
        os.close(fd)
        yield record
    finally:
        path.unlink(missing_ok=True)


# --------------------------------------------------------------------------- what is in the folder


def is_study_folder(out: Path) -> bool:
    """A folder a study wrote (it has a manifest)."""
    return (out / MANIFEST_NAME).exists()


def check_output_dir(out: str | os.PathLike, force: bool = False) -> None:
    """Refuse a folder that holds files but is not a study folder (unless ``force``)."""
    out = Path(out)
    if not out.exists() or force or is_study_folder(out):
        return
    if not out.is_dir():
        raise OutputError(f"output_dir {out} is a file; pass --output-dir to a folder")
    theirs = sorted(p.name for p in out.iterdir() if p.name != LOCK_NAME and temp_owner(p.name) is None)
    if theirs:
        shown = ", ".join(theirs[:5]) + (", ..." if len(theirs) > 5 else "")
        raise OutputError(
            f"output_dir {out} is not empty and not a study folder (no {MANIFEST_NAME}; it holds {shown}); "
            "a study would overwrite files there. Pass another --output-dir, or --force to write into it anyway"
        )


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_leftover(path: Path, now: float | None = None) -> bool:
    """True for a temporary file/dir whose writer is certainly gone."""
    now = time.time() if now is None else now
    owner = temp_owner(path.name)
    if owner is not None and owner[1] == host_tag():
        return not _alive(owner[0])
    try:  # another host's (or an unknown writer's): only when long untouched
        return now - path.lstat().st_mtime > FOREIGN_TEMP_AGE_S
    except OSError:
        return False


def remove_crash_leftovers(out: Path) -> list[Path]:
    """Delete temporary files/dirs (``.<name>.*.tmp``) of writes whose process died.

    Never follows symlinks; a live process's temporary files (this host) are kept, and so
    are another host's until :data:`FOREIGN_TEMP_AGE_S` old. Returns what was deleted.
    """
    removed: list[Path] = []
    now = time.time()
    for root, dirs, files in os.walk(out, followlinks=False):
        for name in [d for d in dirs if is_temp_name(d)] + [f for f in files if is_temp_name(f)]:
            p = Path(root) / name
            if not is_leftover(p, now):
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
        dirs[:] = [d for d in dirs if not is_temp_name(d)]
    if removed:
        log.info("removed %d temporary leftovers of crashed writes under %s", len(removed), out)
    return removed


# --------------------------------------------------------------------------- preparing it


def _non_default(d: Any, default: Any) -> Any:
    """The parts of ``d`` that differ from ``default`` (so new fields keep old hashes)."""
    if isinstance(d, dict) and isinstance(default, dict):
        return {k: _non_default(v, default.get(k)) for k, v in d.items() if k not in default or v != default[k]}
    if isinstance(d, list) and isinstance(default, list) and d and isinstance(d[0], dict) and default:
        return [_non_default(x, default[0]) for x in d]
    return d


def recipe_hash(recipe: Recipe) -> str:
    """Hash of the fields that change results and differ from the defaults.

    Output dir, executor, name and docs are left out; so are defaults, so that a later
    version adding a field (with a default) still resumes an old study.
    """
    d = _non_default(recipe_to_dict(recipe), recipe_to_dict(Recipe()))
    for k in ("output_dir", "executor", "name", "expected_gpu_hours", "wandb", "export", "max_memory"):
        d.pop(k, None)
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def prepare_output_dir(recipe: Recipe, force: bool = False) -> tuple[Path, Manifest]:
    """Create/validate the output dir; refuse a foreign folder or a different study's.

    Call it holding :func:`output_lock` (``run_study`` does): it deletes crash leftovers.
    """
    out = Path(recipe.output_dir)
    check_output_dir(out, force)
    make_output_dir(out)
    remove_crash_leftovers(out)
    h = recipe_hash(recipe)
    manifest = Manifest.open(out, h)
    if manifest.recipe_hash != h and manifest.units and not force:
        raise ConfigError(
            f"{out} holds results of a different recipe (hash {manifest.recipe_hash}, this one {h}); "
            "use another output_dir, or pass --force to mix them"
        )
    manifest.recipe_hash = h
    manifest.save()  # first: from now on the folder is a study folder
    atomic_write_text(out / RECIPE_FILE, dump_recipe(recipe))
    return out, manifest

