"""Where work units run: in this process (default), as Ray tasks, or as SLURM jobs.

A job is a plain, picklable :class:`UnitJob` (the recipe as a dict, the unit, the layers
still missing, the output dir and the LR). Whatever runs it rebuilds its own
:class:`~sae_bilingual.study.StudyContext` (the toy world and token windows come from
the cache, deterministic from the seed) and writes the layer artefacts atomically into
the shared output dir. Workers never touch the manifest: the driver marks layers done as
jobs return, and the ``summary.json`` files on disk stay the single source of truth — so a
study can move between executors and resume.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UnitJob:
    """Everything a worker needs to run one unit, as plain data."""

    recipe: dict[str, Any]
    unit: dict[str, Any]
    layers: tuple[int, ...]
    out: str
    lr: float


@dataclass(frozen=True)
class UnitResult:
    unit_id: str
    layers: tuple[int, ...]
    seconds: float


def run_job(job: UnitJob) -> UnitResult:
    """Run one unit from plain data (the function every executor calls)."""
    import time

    from sae_bilingual import pipeline
    from sae_bilingual.config import Recipe, from_dict
    from sae_bilingual.study import StudyContext, Unit

    t0 = time.time()
    recipe = from_dict(Recipe, job.recipe).validate()
    ctx = StudyContext(recipe, progress=False)
    unit = Unit(**job.unit)
    pipeline.run_unit(ctx, unit, list(job.layers), Path(job.out), lr=job.lr)
    return UnitResult(unit.id, job.layers, time.time() - t0)


class Executor(Protocol):
    """Runs jobs; yields results as they finish (any order)."""

    def run(self, jobs: Sequence[UnitJob], fn: Callable[[UnitJob], UnitResult] = run_job) -> Iterator[UnitResult]: ...


class LocalExecutor:
    """Sequential, in this process, sharing one context (no world/window rebuilds)."""

    def __init__(self, ctx: Any = None):
        self.ctx = ctx

    def run(self, jobs: Sequence[UnitJob], fn: Callable[[UnitJob], UnitResult] = run_job) -> Iterator[UnitResult]:
        import time

        from sae_bilingual import pipeline
        from sae_bilingual.study import Unit

        for job in jobs:
            if self.ctx is None or fn is not run_job:
                yield fn(job)
                continue
            t0 = time.time()
            unit = Unit(**job.unit)
            pipeline.run_unit(self.ctx, unit, list(job.layers), Path(job.out), lr=job.lr)
            yield UnitResult(unit.id, job.layers, time.time() - t0)


_EXECUTORS: dict[str, Callable[..., Executor]] = {"local": LocalExecutor}


def register_executor(name: str, factory: Callable[..., Executor]) -> None:
    """Make ``executor: <name>`` available to recipes."""
    _EXECUTORS[name] = factory


def get_executor(name: str, **kwargs: Any) -> Executor:
    """The executor a recipe names; unknown names list the available ones."""
    if name not in _EXECUTORS:
        from sae_bilingual.errors import ConfigError

        raise ConfigError(f"executor {name!r} is unknown; available: {', '.join(sorted(_EXECUTORS))}")
    return _EXECUTORS[name](**kwargs)
