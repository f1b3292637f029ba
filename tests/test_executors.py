"""Executors (local, Ray, submitit) and multi-rank training of one unit.

The slow tests run the smoke study (or one of its units) through each way of running and
compare with the in-process reference run of ``conftest.smoke_study``: every summary
column except timings, every ``features.parquet`` and the SAE weights must be identical.
"""

from __future__ import annotations

import dataclasses
import json
import re
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from sae_bilingual.errors import ConfigError, ExtraMissingError
from sae_bilingual.study.executors import (
    OPTIONS_ENV,
    RayExecutor,
    SubmititExecutor,
    UnitJob,
    UnitResult,
    executor_options,
    get_executor,
    run_job,
)
from sae_bilingual.study.distributed import split_layers
from sae_bilingual.study.unit import Unit

REPO = Path(__file__).resolve().parents[1]
TIMING = ("seconds",)  # every seconds* column: the unit's stage times


# --------------------------------------------------------------------------- helpers


def _assert_same_tables(ref: Path, out: Path) -> None:
    a, b = (pd.read_csv(d / "tables" / "summary.csv") for d in (ref, out))
    a, b = (df.drop(columns=[c for c in df.columns if c.startswith(TIMING)]) for df in (a, b))
    assert len(a) > 0
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    fa = sorted(p.relative_to(ref) for p in ref.glob("units/*/*/L*/features.parquet"))
    fb = sorted(p.relative_to(out) for p in out.glob("units/*/*/L*/features.parquet"))
    assert fa == fb and len(fa) == len(a)
    for p in fa:
        pd.testing.assert_frame_equal(pd.read_parquet(ref / p), pd.read_parquet(out / p), check_exact=True)


def _assert_same_layer(ref_ldir: Path, ldir: Path) -> None:
    from safetensors.torch import load_file

    wa = load_file(ref_ldir / "sae" / "sae_weights.safetensors")
    wb = load_file(ldir / "sae" / "sae_weights.safetensors")
    assert sorted(wa) == sorted(wb)
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"{ldir.name} {k} differs"
    pd.testing.assert_frame_equal(pd.read_parquet(ref_ldir / "features.parquet"),
                                  pd.read_parquet(ldir / "features.parquet"), check_exact=True)


def _recipe(out: Path, **over):
    from sae_bilingual.config import load_recipe

    return load_recipe(REPO / "recipes" / "smoke.yaml", {"output_dir": str(out), **over})


def _final_unit_job(ref: Path, out: Path) -> UnitJob:
    """The smoke study's last unit as a job, at the LR the reference run chose."""
    from sae_bilingual.config import recipe_to_dict
    from sae_bilingual.study.plan import plan_study

    recipe = _recipe(out)
    unit = plan_study(recipe).units[-1]
    grid = pd.read_csv(ref / "tables" / "lr_grid.csv")
    lr = float(grid.loc[grid["val_mse"].idxmin(), "lr"])
    return UnitJob(recipe_to_dict(recipe), unit, tuple(unit.layers), str(out), lr)


# --------------------------------------------------------------------------- fast


def test_split_layers_contiguous_balanced():
    assert split_layers([1, 2, 3, 4, 5], 2) == [[1, 2, 3], [4, 5]]
    assert split_layers(list(range(28)), 8) == [list(range(s, e)) for s, e in
                                                 [(0, 4), (4, 8), (8, 12), (12, 16), (16, 19), (19, 22), (22, 25), (25, 28)]]
    assert split_layers([7], 3) == [[7], [], []]
    with pytest.raises(ConfigError):
        split_layers([1], 0)


def test_executor_options_from_env(monkeypatch):
    monkeypatch.delenv(OPTIONS_ENV, raising=False)
    assert executor_options() == {}
    monkeypatch.setenv(OPTIONS_ENV, '{"cluster": "debug", "timeout_min": 5}')
    ex = get_executor("submitit")
    assert isinstance(ex, SubmititExecutor) and ex.cluster == "debug" and ex.parameters["timeout_min"] == 5
    monkeypatch.setenv(OPTIONS_ENV, "cluster=debug")
    with pytest.raises(ConfigError, match="JSON"):
        get_executor("submitit")
    monkeypatch.setenv(OPTIONS_ENV, "[1]")
    with pytest.raises(ConfigError, match="object"):
        get_executor("ray")
    with pytest.raises(ConfigError, match="local, ray, submitit"):
        get_executor("dask")


def test_ray_resources_follow_device():
    ex = RayExecutor(num_gpus=1, num_cpus=4, max_retries=2)
    job = UnitJob({"device": "cuda"}, Unit(0, "toy", 5, 0, [1]), (1,), "/x", 1e-3)
    assert ex.options(job)["num_gpus"] == 1 and ex.options(job)["max_retries"] == 2
    cpu = dataclasses.replace(job, recipe={"device": "cpu"})
    assert ex.options(cpu)["num_gpus"] == 0 and ex.options(cpu)["num_cpus"] == 4
    assert ex.options(cpu)["name"] == "unit:toy/iter_0000005"


@pytest.mark.parametrize("name,module,extra", [("ray", "ray", "[ray]"), ("submitit", "submitit", "[slurm]")])
def test_missing_package_names_the_extra(monkeypatch, tmp_path, name, module, extra):
    monkeypatch.delenv(OPTIONS_ENV, raising=False)
    monkeypatch.setitem(sys.modules, module, None)  # makes `import <module>` raise ImportError
    job = UnitJob({"device": "cpu"}, Unit(0, "toy", 0, 0, [1]), (1,), str(tmp_path), 1e-3)
    with pytest.raises(ExtraMissingError, match=rf"pip install 'sae-bilingual{re.escape(extra)}'"):
        list(get_executor(name).run([job]))


def test_local_executor_runs_each_job_through_run_job(tmp_path, monkeypatch):
    """One code path for a unit: LocalExecutor hands its shared context to run_job."""
    from sae_bilingual.config import recipe_to_dict
    from sae_bilingual.study import pipeline
    from sae_bilingual.study.context import StudyContext
    from sae_bilingual.study.executors import LocalExecutor

    calls = []

    def record(ctx, unit, layers, out, *, lr):
        calls.append((ctx, unit.id, layers, out, lr))

    monkeypatch.setattr(pipeline, "run_unit", record)
    recipe = _recipe(tmp_path)
    jobs = [UnitJob(recipe_to_dict(recipe), Unit(0, "toy", it, 0, [1, 2]), (2,), str(tmp_path), 1e-3) for it in (5, 9)]
    shared = StudyContext(recipe, progress=False)
    results = list(LocalExecutor(shared).run(jobs))
    assert [(r.unit_id, r.layers) for r in results] == [("toy/iter_0000005", (2,)), ("toy/iter_0000009", (2,))]
    assert calls == [(shared, "toy/iter_0000005", [2], tmp_path, 1e-3), (shared, "toy/iter_0000009", [2], tmp_path, 1e-3)]
    calls.clear()
    list(LocalExecutor().run(jobs))  # no shared context: each job builds one from its recipe
    assert [type(c[0]) for c in calls] == [StudyContext, StudyContext] and calls[0][0] is not calls[1][0]
    assert calls[0][0].recipe.output_dir == recipe.output_dir and calls[0][0].recipe.seed == recipe.seed
    calls.clear()
    custom = list(LocalExecutor(shared).run(jobs[:1], fn=lambda j: UnitResult("custom", j.layers, 0.0)))
    assert [r.unit_id for r in custom] == ["custom"] and calls == []


# --------------------------------------------------------------------------- slow


@pytest.fixture(scope="module")
def ray_local(world_cache):
    """A 2-CPU local Ray; started after SAE_BILINGUAL_CACHE is set so workers inherit it."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    # the test module is not importable from Ray's workers: ship its functions by value
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_study_matches_local(smoke_study, ray_local, tmp_path):
    from sae_bilingual.study.run import run_study

    ref, _ = smoke_study
    out = tmp_path / "ray"
    run_study(_recipe(out, executor="ray"), progress=False)
    _assert_same_tables(ref, out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert all(u["status"] == "done" for u in manifest["units"].values())


def _dies_once(job: UnitJob, marker: str) -> UnitResult:
    """First attempt: finish one layer of the unit, then the worker process dies."""
    m = Path(marker)
    with open(m, "a") as f:
        f.write(f"{os.getpid()}\n")
    if len(m.read_text().split()) == 1:
        run_job(dataclasses.replace(job, layers=job.layers[:1]))
        os._exit(1)
    return run_job(job)


@pytest.mark.slow
def test_ray_killed_worker_unit_is_retried(smoke_study, ray_local, tmp_path):
    import functools

    ref, _ = smoke_study
    out = tmp_path / "ray_kill"
    job = _final_unit_job(ref, out)
    marker = tmp_path / "attempts"
    results = list(RayExecutor(max_retries=2).run([job], fn=functools.partial(_dies_once, marker=str(marker))))
    pids = marker.read_text().split()
    assert len(pids) == 2 and pids[0] != pids[1], pids  # a second worker process redid the unit
    assert [r.layers for r in results] == [job.layers]
    for layer in job.layers:
        _assert_same_layer(job.unit.layer_dir(ref, layer), job.unit.layer_dir(out, layer))


@pytest.mark.slow
def test_submitit_local_study_matches_local(smoke_study, monkeypatch, tmp_path):
    pytest.importorskip("submitit")
    from sae_bilingual.study.run import run_study

    ref, _ = smoke_study
    out = tmp_path / "submitit"
    monkeypatch.setenv(OPTIONS_ENV, json.dumps({"cluster": "local", "cpus_per_task": 1, "timeout_min": 10,
                                                "poll_s": 0.5}))
    run_study(_recipe(out, executor="submitit"), progress=False)
    _assert_same_tables(ref, out)
    assert list((out / "submitit").glob("*_result.pkl")), "jobs did not run through submitit"


@pytest.mark.slow
def test_torchrun_driver_resumes_by_the_study_rule(smoke_study, tmp_path, monkeypatch):
    """Before (issue 18): the torchrun driver also wanted a layer's manifest entry, so a layer
    finished on disk but not yet in the manifest (a kill between the two) was trained again."""
    import shutil

    from sae_bilingual.study import pipeline
    from sae_bilingual.study.distributed import run_unit_distributed
    from sae_bilingual.study.outdir import recipe_hash

    ref, _ = smoke_study
    out = tmp_path / "copy"
    shutil.copytree(ref, out)
    recipe = _recipe(out)
    unit = _final_unit_job(ref, out).unit
    shutil.rmtree(unit.layer_dir(out, 2))
    (out / "manifest.json").write_text(json.dumps({"recipe_hash": recipe_hash(recipe), "units": {}}))
    trained = []

    def restore(ctx, u, layers, out_dir, *, lr):  # stands in for training: the reference's files
        trained.append((u.id, list(layers)))
        for layer in layers:
            shutil.copytree(u.layer_dir(ref, layer), u.layer_dir(out_dir, layer))

    monkeypatch.setattr(pipeline, "run_unit", restore)
    assert run_unit_distributed(recipe, unit.id) == [2]
    assert trained == [(unit.id, [2])]
    entry = json.loads((out / "manifest.json").read_text())["units"][unit.id]
    assert entry["status"] == "done" and sorted(entry["layers"]) == ["1", "2"]


@pytest.mark.slow
def test_torchrun_two_ranks_same_saes_as_one_process(smoke_study, tmp_path):
    ref, _ = smoke_study
    out = tmp_path / "dist"
    job = _final_unit_job(ref, out)
    assert len(job.layers) >= 2  # else nothing is split
    from sae_bilingual.study.outdir import prepare_output_dir

    prepare_output_dir(_recipe(out))  # a study folder (a foreign one would be refused)
    (out / "tables").mkdir(parents=True)
    (out / "tables" / "lr_grid.csv").write_text((ref / "tables" / "lr_grid.csv").read_text())
    unit_id = job.unit.id
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "sae_bilingual.study.distributed", str(REPO / "recipes" / "smoke.yaml"),
           "--unit", unit_id, "--output-dir", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"layers {split_layers(list(job.layers), 2)[0]} of {list(job.layers)}" in proc.stderr
    for layer in job.layers:
        _assert_same_layer(job.unit.layer_dir(ref, layer), job.unit.layer_dir(out, layer))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["units"][unit_id]["status"] == "done"
    assert sorted(manifest["units"][unit_id]["layers"]) == sorted(str(l) for l in job.layers)
