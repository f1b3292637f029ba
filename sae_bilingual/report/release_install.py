"""Putting a release folder in place without losing what the user keeps there.

Why: a release folder is often a Hub clone (``.git/``, ``.gitattributes``, notes, eval
results). Swapping the whole folder deleted those files. So a release is built in a hidden
sibling folder and then moved in file by file: files an earlier export wrote (listed in
:data:`OWNED_FILE`, or found from its ``pretrained_saes.yaml``) are replaced or removed,
everything else stays. While files move, ``pretrained_saes.yaml`` is absent (so nothing
loads a half-replaced release) and the owned list covers old and new files; a rerun of a
killed export finishes the job and deletes the dead export's hidden folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import yaml
from safetensors import SafetensorError

from sae_bilingual.errors import OutputError
from sae_bilingual.io import atomic_write_json, fix_modes, owner_tag, temp_owner
from sae_bilingual.sae.convert import SAE_FILES
from sae_bilingual.study.layout import RECIPE_FILE
from sae_bilingual.study.outdir import is_leftover

RELEASE_FILE = "pretrained_saes.yaml"
CARD_FILE = "README.md"
OWNED_FILE = ".sae_bilingual_export.json"
"""In a release folder: the files `sae-bilingual export` wrote there (all else is the user's)."""


def is_release_folder(out: Path) -> bool:
    """A folder an export wrote (or was writing when it was killed)."""
    return (out / RELEASE_FILE).exists() or (out / OWNED_FILE).exists()


def owned_files(out: Path) -> set[str]:
    """Paths (relative, '/'-separated) in ``out`` that an earlier export wrote."""
    owned: set[str] = set()
    with contextlib.suppress(OSError, ValueError, TypeError):
        owned |= set(json.loads((out / OWNED_FILE).read_text(encoding="utf-8"))["files"])
    with contextlib.suppress(OSError, yaml.YAMLError, AttributeError, TypeError):
        doc = yaml.safe_load((out / RELEASE_FILE).read_text(encoding="utf-8")) or {}
        owned |= {RELEASE_FILE, CARD_FILE, RECIPE_FILE}
        for entry in doc.values():
            owned |= {f"{s['path']}/{f}" for s in entry.get("saes", []) for f in SAE_FILES}
    return owned


def remove_export_leftovers(out: Path) -> list[Path]:
    """Delete the hidden build folders of killed exports into ``out``."""
    removed = []
    if out.parent.is_dir():
        for p in out.parent.iterdir():
            if p.name.startswith(f".{out.name}.") and temp_owner(p.name) and p.is_dir() \
                    and not p.is_symlink() and is_leftover(p):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    return removed


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() or p.is_symlink())


def install_release(tmp: Path, out: Path) -> None:
    """Move the release built in ``tmp`` into ``out``, keeping files no export wrote."""
    new = [f for f in _files(tmp) if f != OWNED_FILE]
    atomic_write_json(tmp / OWNED_FILE, {"files": new})
    if not out.exists():
        os.replace(tmp, out)
        return
    old = owned_files(out)
    atomic_write_json(out / OWNED_FILE, {"files": sorted(old | set(new)), "in_progress": True})
    (out / RELEASE_FILE).unlink(missing_ok=True)  # not loadable while mixed
    for rel in sorted(old - set(new)):
        (out / rel).unlink(missing_ok=True)
        for parent in (out / rel).parents:  # drop folders the old release alone used
            if parent == out:
                break
            try:
                parent.rmdir()
            except OSError:  # not empty (or gone)
                break
    for rel in [f for f in new if f != RELEASE_FILE] + [RELEASE_FILE, OWNED_FILE]:
        if (tmp / rel).exists():
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp / rel, out / rel)
    shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def staged_release(out: Path) -> Iterator[Path]:
    """Yield a hidden sibling folder to build the release in; install it on success.

    A failure while building (a full disk, say) leaves the earlier release as it was and
    is one :class:`OutputError`.
    """
    remove_export_leftovers(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.{owner_tag()}.", suffix=".tmp", dir=out.parent))
    except OSError as e:
        raise OutputError(f"cannot create the release folder {out}: {e.strerror or e}; "
                          "choose a folder you can write") from e
    try:
        yield tmp
        fix_modes(tmp)
    except (OSError, SafetensorError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(f"writing the release {out} failed ({getattr(e, 'strerror', None) or e}); "
                          "the earlier release there is untouched. Free disk space, then rerun the export") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    install_release(tmp, out)
