"""Where work units run: in this process (default), as Ray tasks, or as SLURM jobs.

A job is a plain, picklable :class:`UnitJob` (the recipe as a dict, the
:class:`~sae_bilingual.study.unit.Unit`, the layers still missing, the output dir and the
LR). Whatever runs it rebuilds its own
:class:`~sae_bilingual.study.context.StudyContext` (the toy world and token windows come from
the cache, deterministic from the seed) and writes the layer artefacts atomically into
the shared output dir. Workers never touch the manifest: the driver marks layers done as
jobs return, and the ``summary.json`` files on disk stay the single source of truth — so a
study can move between executors and resume.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from sae_bilingual.config import Recipe, from_dict
from sae_bilingual.errors import ConfigError, ExtraMissingError, SaeBilingualError
from sae_bilingual.study import pipeline
from sae_bilingual.study.context import StudyContext
from sae_bilingual.study.unit import Unit

log = logging.getLogger(__name__)

OPTIONS_ENV = "SAE_BILINGUAL_EXECUTOR_OPTIONS"


@dataclass(frozen=True)
class UnitJob:
    """Everything a worker needs to run one unit, as picklable data."""

    recipe: dict[str, Any]
    unit: Unit
    layers: tuple[int, ...]
    out: str
    lr: float


@dataclass(frozen=True)
class UnitResult:
    unit_id: str
    layers: tuple[int, ...]
    seconds: float


def run_job(job: UnitJob, ctx: StudyContext | None = None) -> UnitResult:
    """Run one unit (the function every executor calls); ``ctx``: the study's context when
    the job runs in the study's process, else one is rebuilt from the job's recipe."""
    t0 = time.time()
    if ctx is None:
        ctx = StudyContext(from_dict(Recipe, job.recipe).validate(), progress=False)
    pipeline.run_unit(ctx, job.unit, list(job.layers), Path(job.out), lr=job.lr)
    return UnitResult(job.unit.id, job.layers, time.time() - t0)


class Executor(Protocol):
    """Runs jobs; yields results as they finish (any order)."""

    def run(self, jobs: Sequence[UnitJob], fn: Callable[[UnitJob], UnitResult] = run_job) -> Iterator[UnitResult]: ...


class LocalExecutor:
    """Sequential, in this process, sharing one context (no world/window rebuilds)."""

    def __init__(self, ctx: StudyContext | None = None):
        self.ctx = ctx

    def run(self, jobs: Sequence[UnitJob], fn: Callable[[UnitJob], UnitResult] = run_job) -> Iterator[UnitResult]:
        for job in jobs:
            yield run_job(job, self.ctx) if fn is run_job else fn(job)


# --------------------------------------------------------------------------- scale-out


class UnitFailedError(SaeBilingualError, RuntimeError):
    """One or more units failed on a remote executor (the others were kept)."""


def executor_options() -> dict[str, Any]:
    """Executor keyword arguments from ``$SAE_BILINGUAL_EXECUTOR_OPTIONS`` (a JSON object).

    The recipe names the executor (``executor: ray``); where it runs (Ray address, SLURM
    partition, GPUs per unit...) belongs to the machine, not the study, so it comes from the
    environment: e.g. ``SAE_BILINGUAL_EXECUTOR_OPTIONS='{"slurm_partition": "gpu"}'``.
    """
    raw = os.environ.get(OPTIONS_ENV, "").strip()
    if not raw:
        return {}
    try:
        opts = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ConfigError(f"${OPTIONS_ENV} is not JSON ({e}); write an object such as "
                          '\'{"cluster": "local"}\'') from None
    if not isinstance(opts, dict):
        raise ConfigError(f"${OPTIONS_ENV} must be a JSON object of keyword arguments, got {raw!r}")
    return opts


def _wants_gpu(job: UnitJob) -> bool:
    return str(job.recipe.get("device", "cpu")).startswith("cuda")


def _forwarded_env() -> dict[str, str]:
    """Environment a remote worker needs to find the same caches and data as the driver."""
    keys = [k for k in os.environ if k.startswith("SAE_BILINGUAL_") and k != OPTIONS_ENV]
    keys += [k for k in ("HF_HOME", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE") if k in os.environ]
    return {k: os.environ[k] for k in keys}


def _raise_failures(failures: list[tuple[str, BaseException]], total: int) -> None:
    if not failures:
        return
    lines = "\n".join(f"  {uid}: {type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
                      for uid, e in failures)
    raise UnitFailedError(
        f"{len(failures)} of {total} units failed:\n{lines}\n"
        "Finished units are kept; fix the cause and rerun the same command to resume."
    ) from failures[0][1]


def _apply(fn: Callable[[UnitJob], UnitResult], job: UnitJob) -> UnitResult:
    return fn(job)


class RayExecutor:
    """Each unit is a Ray task: one GPU when the recipe's device is cuda, else CPUs.

    Joins the running Ray cluster (``ray.init()`` reads ``$RAY_ADDRESS``; ``address="auto"``
    on a node of a cluster) or starts a local one. A worker that dies (OOM, preemption,
    ``kill -9``) has its unit retried up to ``max_retries`` times; the retry redoes the whole
    unit, overwriting any partial artefacts atomically. Workers only write their units'
    layer directories; this (driver) process owns the manifest.
    """

    def __init__(self, *, address: str | None = None, num_gpus: float = 1, num_cpus: float = 1,
                 max_retries: int = 3, init_kwargs: dict[str, Any] | None = None):
        self.address = address
        self.num_gpus = num_gpus
        self.num_cpus = num_cpus
        self.max_retries = max_retries
        self.init_kwargs = dict(init_kwargs or {})

    def _ray(self) -> Any:
        try:
            import ray
        except ImportError as e:
            raise ExtraMissingError("Ray executor", "pip install 'sae-bilingual[ray]'") from e
        if not ray.is_initialized():
            kw = dict(self.init_kwargs)
            if self.address:
                kw["address"] = self.address
            kw.setdefault("runtime_env", {"env_vars": _forwarded_env()})
            ray.init(**kw)
        return ray

    def options(self, job: UnitJob) -> dict[str, Any]:
        """Ray task options for one unit (resources and retries)."""
        gpu = _wants_gpu(job)
        return {"num_gpus": self.num_gpus if gpu else 0, "num_cpus": self.num_cpus,
                "max_retries": self.max_retries, "retry_exceptions": False,
                "name": f"unit:{job.unit.id}"}

    def run(self, jobs: Sequence[UnitJob], fn: Callable[[UnitJob], UnitResult] = run_job) -> Iterator[UnitResult]:
        if not jobs:
            return
        ray = self._ray()
        remote = ray.remote(_apply)  # any picklable callable (ray.remote wants a plain function)
        pending = {remote.options(**self.options(j)).remote(fn, j): j for j in jobs}
        log.info("submitted %d units to Ray (%s)", len(pending), ray.cluster_resources())
        failures: list[tuple[str, BaseException]] = []
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                job = pending.pop(ref)
                try:
                    yield ray.get(ref)
                except (ray.exceptions.RayError, SaeBilingualError) as e:
                    log.error("unit %s failed: %s", job.unit.id, e)
                    failures.append((job.unit.id, e))
        _raise_failures(failures, len(jobs))


class _Requeueable:
    """The job function as submitit sees it: preempted/timed-out jobs are requeued whole."""

    def __init__(self, fn: Callable[[UnitJob], UnitResult], threads: int | None = None):
        self.fn = fn
        self.threads = threads

    def __call__(self, job: UnitJob) -> UnitResult:
        if self.threads:
            torch.set_num_threads(self.threads)  # the job's CPU share, not every core of the node
        return self.fn(job)

    def checkpoint(self, job: UnitJob) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(self, job)


class SubmititExecutor:
    """Units as one SLURM job array through ``submitit.AutoExecutor``.

    ``cluster=None`` picks SLURM when ``sbatch`` is on PATH, else local processes;
    ``"local"`` (subprocesses) and ``"debug"`` (in this process) serve tests. Logs and
    pickles go to ``<output_dir>/submitit`` unless ``folder`` is given. Every other keyword
    (``slurm_partition``, ``slurm_account``, ``timeout_min``, ``slurm_array_parallelism``,
    ``mem_gb``, ``cpus_per_task``...) is passed to ``update_parameters``. A job killed by
    preemption or its time limit is requeued (``max_num_timeout`` times) and redoes its unit.
    """

    def __init__(self, *, cluster: str | None = None, folder: str | None = None, timeout_min: int = 24 * 60,
                 gpus_per_node: int | None = None, cpus_per_task: int = 4, max_num_timeout: int = 3,
                 poll_s: float = 5.0, **parameters: Any):
        self.cluster = cluster
        self.folder = folder
        self.parameters = {"timeout_min": timeout_min, "cpus_per_task": cpus_per_task, **parameters}
        self.gpus_per_node = gpus_per_node
        self.max_num_timeout = max_num_timeout
        self.poll_s = poll_s

    def executor(self, jobs: Sequence[UnitJob]) -> Any:
        """The configured ``submitit.AutoExecutor`` for these jobs."""
        try:
            import submitit
        except ImportError as e:
            raise ExtraMissingError("submitit (SLURM) executor", "pip install 'sae-bilingual[slurm]'") from e
        folder = Path(self.folder) if self.folder else Path(jobs[0].out) / "submitit"
        ex = submitit.AutoExecutor(folder=folder, cluster=self.cluster, slurm_max_num_timeout=self.max_num_timeout)
        gpus = self.gpus_per_node if self.gpus_per_node is not None else (1 if _wants_gpu(jobs[0]) else 0)
        params: dict[str, Any] = {**self.parameters, "name": f"sae-bilingual-{jobs[0].recipe.get('name', 'study')}"}
        if gpus:
            params["gpus_per_node"] = gpus
        ex.update_parameters(**params)
        return ex

    def run(self, jobs: Sequence[UnitJob], fn: Callable[[UnitJob], UnitResult] = run_job) -> Iterator[UnitResult]:
        if not jobs:
            return
        ex = self.executor(jobs)
        submitted = ex.map_array(_Requeueable(fn, self.parameters.get("cpus_per_task")), list(jobs))
        log.info("submitted %d units as %s job array %s (logs: %s)", len(jobs), ex.cluster,
                 submitted[0].job_id.split("_")[0], ex.folder)
        pending = dict(zip(range(len(jobs)), submitted))
        failures: list[tuple[str, BaseException]] = []
        while pending:
            # debug jobs run inside result(); others are polled
            done = [i for i, j in pending.items() if ex.cluster == "debug" or j.done()]
            if not done:
                time.sleep(self.poll_s)
                continue
            for i in done:
                sjob = pending.pop(i)
                try:
                    yield sjob.result()
                except Exception as e:  # submitit re-raises the worker's error or FailedJobError
                    uid = jobs[i].unit.id
                    log.error("unit %s failed (job %s, logs %s): %s", uid, sjob.job_id, sjob.paths.stderr, e)
                    failures.append((uid, e))
        _raise_failures(failures, len(jobs))


def _ray_factory(**kwargs: Any) -> RayExecutor:
    return RayExecutor(**{**executor_options(), **kwargs})


def _submitit_factory(**kwargs: Any) -> SubmititExecutor:
    return SubmititExecutor(**{**executor_options(), **kwargs})


_EXECUTORS: dict[str, Callable[..., Executor]] = {"local": LocalExecutor}


def register_executor(name: str, factory: Callable[..., Executor]) -> None:
    """Make ``executor: <name>`` available to recipes."""
    _EXECUTORS[name] = factory


def get_executor(name: str, **kwargs: Any) -> Executor:
    """The executor a recipe names; unknown names list the available ones."""
    if name not in _EXECUTORS:
        raise ConfigError(f"executor {name!r} is unknown; available: {', '.join(sorted(_EXECUTORS))}")
    return _EXECUTORS[name](**kwargs)


register_executor("ray", _ray_factory)
register_executor("submitit", _submitit_factory)
