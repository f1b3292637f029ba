"""Where a work unit lives on disk, and which of its layers are still to do.

A work unit is one (model, checkpoint). Its layers live in
``<out>/units/<family>/iter_NNNNNNN/L<layer:02d>`` (the checkpoint folder name is
:func:`~sae_bilingual.models.catalogue.iter_dirname`). This module alone builds that path
and parses it back; the study, executors, torchrun driver, manifest, lineage and report ask
it. Why: the format used to be rebuilt in ~15 places.

It also holds the one resume rule: a layer is finished when
:func:`~sae_bilingual.study.artefacts.layer_finished` says so (its ``summary.json`` parses
and its artefacts still match their checksums), and :meth:`Unit.missing_layers` lists the
others, for the study and the torchrun driver alike.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sae_bilingual.errors import OutputError
from sae_bilingual.models.catalogue import iter_dirname
from sae_bilingual.study.artefacts import layer_finished
from sae_bilingual.study.layout import UNITS_DIR

SAFE_PATH_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
_ITER_RE = re.compile(r"^iter_(\d+)$")
_LAYER_RE = re.compile(r"^L(\d+)$")


def layer_dirname(layer: int) -> str:
    """Folder name of a paper layer inside its unit: ``L`` + 2-digit layer."""
    return f"L{int(layer):02d}"


def unit_id(family: str, iteration: int) -> str:
    """A unit's id in logs and the manifest, e.g. ``toy/iter_0000120``."""
    return f"{family}/{iter_dirname(iteration)}"


def layer_id(iteration: int, layer: int) -> str:
    """A layer's id within its model, e.g. ``iter_0000120/L02`` (its path under the model's folder)."""
    return f"{iter_dirname(iteration)}/{layer_dirname(layer)}"


def layer_path(out: str | os.PathLike, family: str, iteration: int, layer: int) -> Path:
    """A layer folder's path, unchecked (for readers; writers use :meth:`Unit.layer_dir`)."""
    return Path(out) / UNITS_DIR / family / layer_id(iteration, layer)


def is_safe_path_part(name: object) -> bool:
    """True for a name usable as one directory level under the output dir: no '/', no '..',
    no leading dot (the one rule for model names and family ids)."""
    return isinstance(name, str) and bool(SAFE_PATH_PART.fullmatch(name)) and ".." not in name


def check_path_part(name: str, what: str = "model family") -> str:
    """:func:`is_safe_path_part`, or an error naming what the name is for."""
    if not is_safe_path_part(name):
        raise OutputError(
            f"{what} name {name!r} cannot be used as a directory name under the output dir "
            "(it would write outside units/<family>/); use letters, digits, '.', '_', '+', '-' only"
        )
    return name


def check_no_symlinks(out: Path, path: Path) -> Path:
    """``path`` (inside ``out``) with no symlink between ``out`` and it; else OutputError.

    Why: a link planted inside the output folder would make a unit's writes (and the
    replacement of its SAE folder) land outside it.
    """
    rel = path.relative_to(out)
    cur = out
    for part in rel.parts:
        cur = cur / part
        if cur.is_symlink():
            raise OutputError(
                f"{cur} is a symlink (to {os.readlink(cur)}); unit folders must be plain folders inside the "
                "output folder. Remove the link, then rerun"
            )
    return path


@dataclass
class Unit:
    """One (model, checkpoint) and the paper layers to analyse there.

    ``family`` is the model's id in outputs: its recipe ``name``, by default the family's
    canonical name (units/<family>/iter_NNNNNNN/L<layer>).
    """

    model_index: int
    family: str
    iteration: int
    tokens: int
    layers: list[int]

    @property
    def id(self) -> str:
        return unit_id(self.family, self.iteration)

    def dir(self, out: str | os.PathLike) -> Path:
        """The unit's folder; refuses a name escaping ``out`` or a symlink on the way."""
        out = Path(out)
        return check_no_symlinks(out, out / UNITS_DIR / check_path_part(self.family) / iter_dirname(self.iteration))

    def layer_dir(self, out: str | os.PathLike, layer: int) -> Path:
        """A layer's folder, checked like :meth:`dir`."""
        return check_no_symlinks(Path(out), self.dir(out) / layer_dirname(layer))

    def missing_layers(self, out: str | os.PathLike) -> list[int]:
        """The unit's layers not finished in ``out`` (the one resume rule), in unit order."""
        return [l for l in self.layers if not layer_finished(self.layer_dir(out, l))]


@dataclass(frozen=True)
class LayerDir:
    """A layer folder found on disk, parsed back into its unit's coordinates."""

    family: str
    iteration: int
    layer: int
    path: Path

    @property
    def unit_id(self) -> str:
        return unit_id(self.family, self.iteration)


def parse_layer_dir(path: str | os.PathLike) -> LayerDir | None:
    """``.../units/<family>/iter_NNNNNNN/L<layer>`` -> its coordinates; None for another path."""
    path = Path(path)
    it, ly = _ITER_RE.match(path.parent.name), _LAYER_RE.match(path.name)
    if it is None or ly is None or path.parent.parent.parent.name != UNITS_DIR:
        return None
    return LayerDir(path.parent.parent.name, int(it.group(1)), int(ly.group(1)), path)


def layer_dirs(out: str | os.PathLike, *, family: str | None = None, layer: int | None = None,
               having: Sequence[str] = ()) -> list[LayerDir]:
    """The layer folders of a study, sorted by path; optionally of one model (``family``) or
    one ``layer``, and only those holding every file named in ``having`` (relative paths)."""
    root = Path(out) / UNITS_DIR
    found = []
    for p in sorted((root / family).glob("iter_*/L*") if family else root.glob("*/iter_*/L*")):
        d = parse_layer_dir(p)
        if d is None or not p.is_dir() or (layer is not None and d.layer != int(layer)):
            continue
        if all((p / name).exists() for name in having):
            found.append(d)
    return found
