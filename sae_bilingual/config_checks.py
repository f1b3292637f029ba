"""Load-time checks of a recipe that its field types cannot express.

Why here and not later: a count of 0 (``intervention.draws``), a NaN learning rate or an
unknown condition used to pass validation and then give an empty table, a NaN SAE or a
misleading error hours later, after the output folder existed. Everything that needs no
model or data is checked when the recipe is read; :mod:`sae_bilingual.study.preflight` checks
the rest before any work. :func:`check_k` and :func:`parse_bytes` are shared with the SAE
config and the memory plan, so each rule is written once.
"""

from __future__ import annotations

import logging
import math
import os
import re
from pathlib import Path
from typing import Any

from sae_bilingual.config_crosscoder import check_crosscoder
from sae_bilingual.errors import ConfigError
from sae_bilingual.io import host_tag
from sae_bilingual.study.unit import is_safe_path_part

log = logging.getLogger(__name__)

"""A model id usable as one folder level under units/."""
DEVICE = re.compile(r"(cpu|cuda|mps|xpu)(:\d+)?")
MAX_SEED = 2**32 - 1
"""Largest recipe seed: every generator the study seeds (torch, numpy, datasets) takes it plus its offsets."""
_BYTE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def check_recipe(recipe: Any) -> None:
    """The root's load-time checks (the sections check themselves); raises ConfigError naming the field."""
    _check_seed(recipe.seed)
    _check_paths(recipe)
    check_crosscoder(recipe)
    _check_device(recipe.device)
    default_model_ids(recipe)
    _warn_programs(recipe)


def at_least(value: Any, low: int | float, name: str, example: str) -> None:
    """``value >= low`` (a number, not a bool), else an error naming the field and an example."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= low:
        raise ConfigError(f"{name} must be >= {low}, got {value!r}; e.g. {name.split('.')[-1]}: {example}")


def finite_positive(value: Any, name: str, example: str) -> None:
    """A finite number > 0, else an error naming the field and an example."""
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ConfigError(f"{name} must be a finite number > 0, got {value!r}; e.g. {name.split('.')[-1]}: {example}")


def _check_seed(seed: int) -> None:
    at_least(seed, 0, "seed", "0")
    if seed > MAX_SEED:  # torch's generators take < 2^63: an overflow mid-run otherwise
        raise ConfigError(f"seed = {seed} is too large: use a whole number from 0 to {MAX_SEED} (2^32 - 1)")


def positive(value: int | float, name: str) -> None:
    """``value > 0``, else an error naming the field."""
    if not value > 0:  # also refuses NaN
        raise ConfigError(f"{name} must be positive, got {value}")


def check_k(k: int, n: int, *, k_name: str = "k", n_from: str = "d_sae", fix: str = "raise d_sae") -> None:
    """A TopK SAE keeps k of its n latents: 1 <= k < n, the one rule for every check of k.

    k = n would keep every latent (no sparsity: the TopK is then a dense code). The recipe
    (load time, when d_sae is given), the preflight (n = expansion x d_model) and the SAE
    configs all call this; ``k_name``/``n_from``/``fix`` word the error for the caller's fields.
    """
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < n:
        raise ConfigError(f"{k_name} = {k!r} must be at least 1 and smaller than the number of latents "
                          f"n = {n} ({n_from}): a TopK SAE keeps k of its n latents; lower {k_name} or {fix}")


def check_norm_mode(mode: str, modes: tuple[str, ...], architecture: str, hint: str) -> None:
    """An SAE config's ``normalize_activations`` is one its architecture handles, else an error
    listing them (SAELens's base check does not know 'unit_norm')."""
    if mode not in modes:
        raise ConfigError(f"normalize_activations={mode!r} is not supported by {architecture}; "
                          f"choose one of {list(modes)} ({hint})")


def parse_bytes(value: int | float | str, field: str = "max_memory") -> int:
    """Bytes from an int or a string like '80GB', '80 GiB', '512MB', '1.5e11' (GB = 10^9, GiB = 2^30)."""
    if isinstance(value, bool):
        raise ConfigError(f"{field}: expected bytes or a size like '80GB', got {value!r}")
    if isinstance(value, (int, float)):
        n = float(value)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", str(value))
        unit = m.group(2).lower() if m else None
        if m is None or unit not in _BYTE_UNITS:
            raise ConfigError(f"{field}: cannot read {value!r} as a size; write bytes or e.g. '80GB', "
                              "'40GiB', '512MB' (GB = 10^9 bytes, GiB = 2^30)")
        n = float(m.group(1)) * _BYTE_UNITS[unit]
    if not math.isfinite(n) or n <= 0:
        raise ConfigError(f"{field}: must be a positive size, got {value!r}")
    return int(n)


def _check_paths(recipe: Any) -> None:
    """An empty output folder name (which would silently mean the current folder), paths too long."""
    if not str(recipe.output_dir).strip():
        raise ConfigError("output_dir is empty; name the study's folder, e.g. --output-dir runs/my-study")
    check_path_length(recipe.output_dir, "output_dir")
    if recipe.export.path:
        check_release_path(recipe.export.path, "export.path")


PATH_ROOM = 1024
"""Bytes of path a study needs below its output folder (units/<model>/iter_*/L*/..., temp names)."""


def _limits(path: Path) -> tuple[int, int]:
    """(longest file name, longest path) in bytes where ``path`` lives (POSIX defaults if unknown)."""
    for a in (path, *path.parents):
        try:
            if a.is_dir():
                return os.pathconf(a, "PC_NAME_MAX"), os.pathconf(a, "PC_PATH_MAX")
        except (OSError, ValueError):
            continue
    return 255, 4096


def check_path_length(path: str, field: str, beside: int = 0) -> None:
    """A folder the study will create fits the filesystem's name and path limits (else an
    ENAMETOOLONG traceback after planning); ``beside``: bytes a temporary sibling adds to its name."""
    p = Path(str(path)).expanduser().absolute()
    name_max, path_max = _limits(p.parent)
    for i, part in enumerate(p.parts):
        allowed = name_max - (beside if i == len(p.parts) - 1 else 0)
        if len(os.fsencode(part)) > allowed:
            raise ConfigError(f"{field}: the folder name {part[:24]}... is {len(os.fsencode(part))} bytes long, but "
                              f"this filesystem allows {allowed} here; choose a shorter name")
    n = len(os.fsencode(str(p)))
    if n > path_max - PATH_ROOM:
        raise ConfigError(f"{field}: the path is {n} bytes long; paths here may have {path_max} bytes and the study "
                          f"needs about {PATH_ROOM} below it: choose a path under {path_max - PATH_ROOM} bytes")


def check_release_path(path: str, field: str) -> None:
    """``check_path_length`` for a release folder, which is built in a hidden sibling
    ``.<name>.<pid@host>.<random>.tmp`` whose name is longer than the folder's."""
    check_path_length(path, field, beside=len(host_tag()) + 32)


def _check_device(device: str) -> None:
    if not isinstance(device, str) or not DEVICE.fullmatch(device.strip()):
        raise ConfigError(f"device {device!r} is not a torch device; use cpu, cuda, cuda:N or mps")


def canonical_family(family: str) -> str:
    """The output id a family name gets by default ('llm-jp/llm-jp-3-1.8B' -> 'llm-jp-3-1.8b')."""
    key = str(family).strip().lower()
    return key[len("llm-jp/"):] if key.startswith("llm-jp/") else key


def default_model_ids(recipe: Any, family_names: list[str] | None = None) -> list[str | None]:
    """Each model entry's output id (``name``, else its family's canonical name).

    ``family_names``: the families' own names once loaded (the planner passes them); at
    load time the recipe spelling is canonicalised. Two entries with one id would write
    the same units/<id>/ folders: refused, naming both entries. (At load time an unnamed
    ``family: hf`` entry is left to the planner, which knows the id its source gives.)
    """
    ids: list[str | None] = []
    seen: dict[str, int] = {}
    for i, spec in enumerate(recipe.models):
        if spec.name is not None and not is_safe_path_part(spec.name):
            raise ConfigError(f"models[{i}].name {spec.name!r} cannot be a folder name under units/; use "
                              "letters, digits, '.', '_', '+', '-' only, e.g. name: toy-a")
        if spec.name is not None:
            mid = spec.name
        elif family_names is not None:
            mid = family_names[i]
        elif canonical_family(spec.family) == "hf":
            ids.append(None)  # its default id comes from its source (models.generic.default_name)
            continue
        else:
            mid = canonical_family(spec.family)
        if mid in seen:
            j = seen[mid]
            raise ConfigError(
                f"models[{j}] and models[{i}] would both write units/{mid}/ (same id {mid!r}); give each "
                f"a distinct `name:`, e.g. name: {mid}-a and name: {mid}-b"
            )
        seen[mid] = i
        ids.append(mid)
    return ids


def _warn_programs(recipe: Any) -> None:
    iv = recipe.intervention
    for field, what in (("comet_python", "a program the study runs"),
                        ("comet_model", "a checkpoint COMET loads with pickle (it can run code)")):
        value = getattr(iv, field)
        if value:
            log.warning(
                "recipe field intervention.%s = %r names %s: a recipe with this field is code, not data; "
                "run it only if you trust who wrote it (or leave the field out and set $SAE_BILINGUAL_COMET_%s "
                "in your own environment)", field, value, what, "PYTHON" if field == "comet_python" else "MODEL")
