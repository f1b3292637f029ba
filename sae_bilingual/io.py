"""Atomic artefact writes: write to a temporary sibling, fsync, then rename.

A crash (SIGKILL, power loss, full disk) leaves either the old file or the new one,
never half of one, so a resumed study can trust whatever it finds on disk.

Temporary names carry their owner (``.<name>.<pid>@<host>.<random>.tmp``) so that a run
cleaning up crash leftovers deletes only those of dead processes (:func:`temp_owner`), and
a temporary folder that vanishes mid-write (another process deleted it) is never silently
recreated: the write fails instead of swapping a half result into place.
"""

from __future__ import annotations

import contextlib
import functools
import io as _io
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from safetensors.torch import save

from sae_bilingual.errors import OutputError


TEMP_OWNER = re.compile(r"\.(\d+)@([A-Za-z0-9_-]+)\.[^./]+\.tmp$")
"""Owner part of a temporary name: ``.<name>.<pid>@<host>.<random>.tmp``."""


@functools.lru_cache(maxsize=1)
def host_tag() -> str:
    """This machine's name as it appears in temporary names (letters, digits, '-', '_')."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname()) or "host"


def owner_tag() -> str:
    """``<pid>@<host>`` of this process (read at each call: workers fork)."""
    return f"{os.getpid()}@{host_tag()}"


def temp_owner(name: str) -> tuple[int, str] | None:
    """(pid, host) of a temporary file/dir name written by this module, else None."""
    m = TEMP_OWNER.search(name)
    return (int(m.group(1)), m.group(2)) if m else None


def is_temp_name(name: str) -> bool:
    """Names of temporary files/dirs (``.<name>.<...>.tmp``)."""
    return name.startswith(".") and name.endswith(".tmp")


def _vanished(path: Path) -> OutputError:
    return OutputError(
        f"the temporary folder {path} vanished mid-write (another process deleted it?); nothing was "
        "put in place. Make sure only one study uses this output folder, then rerun: finished work is kept."
    )


def _make_parent(path: Path) -> None:
    """Create the missing folders above ``path``, but never a temporary folder that vanished."""
    missing = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
    gone = [p for p in missing if is_temp_name(p.name)]
    if gone:
        raise _vanished(gone[-1])
    path.parent.mkdir(parents=True, exist_ok=True)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _umask() -> int:
    """The process umask (mkstemp/mkdtemp ignore it: their 0600/0700 would hide artefacts
    such as report.html from other users, so we apply open()'s usual mode ourselves)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fix_modes(root: str | os.PathLike) -> None:
    """Give every file under ``root`` open()'s usual mode (0666 & ~umask): SAELens and
    safetensors write ``sae_weights.safetensors`` 0600, unreadable to other users."""
    mode = 0o666 & ~_umask()
    for p in Path(root).rglob("*"):
        if p.is_file() and not p.is_symlink():
            os.chmod(p, mode)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same dir + rename)."""
    path = Path(path)
    try:
        _make_parent(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{owner_tag()}.", suffix=".tmp", dir=path.parent)
    except FileNotFoundError as e:  # the parent existed a moment ago
        if any(is_temp_name(p.name) for p in (path.parent, *path.parent.parents)):
            raise _vanished(path.parent) from e
        raise OutputError(f"cannot write {path}: {e.strerror or e}. Choose a writable output directory "
                          "(recipe field `output_dir` or --output-dir).") from e
    except OSError as e:
        raise OutputError(
            f"cannot write {path}: {e.strerror or e}. Choose a writable output directory "
            "(recipe field `output_dir` or --output-dir)."
        ) from e
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise OutputError(
            f"writing {path} failed ({e.strerror or e}); nothing was replaced. "
            "Free disk space or pick another output directory, then rerun: finished work is kept."
        ) from e
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomic UTF-8 text write."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    """Atomic JSON write (UTF-8, non-ASCII kept readable; indent None: one line)."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False, default=str) + "\n")


def canonical_safetensors(blob: bytes) -> bytes:
    """The same safetensors file with its JSON header keys sorted (byte-reproducible).

    Why: safetensors writes the ``__metadata__`` map in hash order, which changes from one
    process to the next, so two identical results would differ byte for byte and a resumed
    study could not be checked against an uninterrupted one. The tensor data and offsets
    are untouched; the header is padded with spaces to 8 bytes as safetensors does.
    """
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + n].decode("utf-8"))
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + blob[8 + n :]


def atomic_save_safetensors(
    tensors: dict[str, Any], path: str | os.PathLike, metadata: dict[str, str] | None = None
) -> Path:
    """Save torch tensors as safetensors atomically (header in a canonical key order)."""
    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return atomic_write_bytes(path, canonical_safetensors(save(contiguous, metadata=metadata)))


def save_parquet(df: Any, path: str | os.PathLike) -> Path:
    """Save a pandas DataFrame to Parquet atomically."""
    buf = _io.BytesIO()
    df.to_parquet(buf, index=True)
    return atomic_write_bytes(path, buf.getvalue())


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Build a directory in a temporary sibling and move it into place on success.

    An existing ``path`` is replaced only after the new one is complete, by renames inside
    its parent folder. A symlink at ``path`` is refused (replacing it would act on the
    link's target), and so is a temporary folder that another process deleted or replaced.
    """
    path = Path(path)
    if path.is_symlink():
        raise OutputError(f"{path} is a symlink; refusing to replace it (it could point outside the "
                          "output folder). Remove the link, then rerun.")
    try:
        _make_parent(path)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{owner_tag()}.", suffix=".tmp", dir=path.parent))
        os.chmod(tmp, 0o777 & ~_umask())
        marker = tmp / _MARKER
        marker.write_text(owner_tag())
        ident = _identity(marker)
    except OutputError:
        raise
    except OSError as e:
        raise OutputError(
            f"cannot create {path}: {e.strerror or e}. Choose a writable output directory."
        ) from e
    try:
        yield tmp
        if _identity(marker) != ident:  # (a folder's own inode can be reused by a new one)
            raise _vanished(tmp)
        marker.unlink()
        fix_modes(tmp)
        for child in tmp.rglob("*"):
            if child.is_file():
                with open(child, "rb") as f:
                    os.fsync(f.fileno())
        if path.exists() or path.is_symlink():
            if path.is_symlink():
                raise OutputError(f"{path} became a symlink while it was being rebuilt; refusing to replace it")
            old = path.with_name(f".{path.name}.{owner_tag()}.old.tmp")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # ours, or a stand-in under our unique name
        raise


_MARKER = ".atomic_dir_owner"
"""File inside a folder being built: proves at the end that the folder is still ours."""


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of ``path`` itself, None when it is gone."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)
