"""The study: plan work units from a recipe, run them resumably, stack the results.

A work unit is one (model, checkpoint): one LM pass per batch feeds every requested layer,
one SAE per layer trains in lockstep, then each layer is analysed. A layer is finished
when its ``summary.json`` exists (written last, atomically) and its artefacts still match
their checksums (unit.py, artefacts.py); rerunning the same command skips finished layers,
and a unit killed half-way is redone from the start (training is deterministic from the
seed, so the result is the same).

Layers of the study package, bottom up (each imports only those below it): unit (layout,
resume rule) -> context (world, families, windows) -> plan (units of a recipe) -> pipeline
(one unit) and intervention_stage -> executors (where units run) -> run (this driver) and
distributed (one unit over torchrun ranks).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from sae_bilingual.study.collect import long_lived_objects_frozen
from sae_bilingual.study.layout import WORLD_META, tables_dir
from sae_bilingual.study.lineage_stage import run_all_lineage
from sae_bilingual.config import Recipe, recipe_to_dict
from sae_bilingual.io import atomic_write_json, atomic_write_text
from sae_bilingual.report.figures import make_all_figures
from sae_bilingual.report.html import write_report
from sae_bilingual.report.neuronpedia import export_all_neuronpedia
from sae_bilingual.report.release import export_release, study_release_folder
from sae_bilingual.study import pipeline
from sae_bilingual.study.context import StudyContext
from sae_bilingual.study.crosscoder_stage import run_all_crosscoders
from sae_bilingual.study.controls import control_recipe
from sae_bilingual.study.dryrun import describe_dry_run, dry_run_inputs
from sae_bilingual.study.executors import UnitJob, get_executor
from sae_bilingual.study.intervention_stage import run_intervention
from sae_bilingual.study.outdir import check_not_in_use, check_output_dir, output_lock, prepare_output_dir
from sae_bilingual.study.plan import Plan, plan_study
from sae_bilingual.study.preflight import check_toy_budget
from sae_bilingual.study.summary import collect_summary
from sae_bilingual.study.timing import TIMINGS_FILE, StageTimer, append_timings
from sae_bilingual.world import World

log = logging.getLogger(__name__)


def run_study(recipe: Recipe, *, dry_run: bool = False, progress: bool = True, force: bool = False,
              estimate_time: bool = False, unit_stages: pipeline.UnitStages | None = None) -> Path | str:
    """Run (or resume) a whole study; returns the report path (or the plan text on dry run,
    with seconds per unit from kernels timed on this device when ``estimate_time``).
    ``unit_stages``: stages the units run in this process instead of the study's own (tests).

    The output folder is checked (not a folder of unrelated files) and locked for the whole
    run: a second study on it fails naming this one."""
    check_toy_budget(recipe)  # before the toy world is built, also for a dry run
    if not dry_run:
        check_not_in_use(recipe.output_dir)  # in seconds, not after planning
    if dry_run:  # plans from shapes where inputs are missing, listing them (dryrun.py)
        inputs = dry_run_inputs(recipe)
        ctx = StudyContext(recipe, progress=progress, families=inputs.families)
        plan = plan_study(recipe, ctx, run_preflight=not inputs.missing)
        return describe_dry_run(recipe, plan, ctx, inputs, estimate_time=estimate_time)
    timer = StageTimer("study")  # one log line per stage; the split ends the run and the report
    ctx = StudyContext(recipe, progress=progress, unit_stages=unit_stages)
    if uses_world(recipe):
        timer.call("world", lambda: ctx.world)  # built, or loaded from the cache
    plan = timer.call("plan", plan_study, recipe, ctx)
    check_output_dir(recipe.output_dir, force)  # before the lock file is created there
    with output_lock(recipe.output_dir):
        return _run_locked(recipe, ctx, plan, timer, progress, force)


def uses_world(recipe: Recipe) -> bool:
    """Whether the study needs the toy world built (a toy model with a `source` does not)."""
    return recipe.data.corpus == "toy" or any(spec.family == "toy" and spec.source is None for spec in recipe.models)


def _run_locked(recipe: Recipe, ctx: StudyContext, plan: Plan, timer: StageTimer, progress: bool,
                force: bool) -> Path:
    """The study, with the output folder held by this process."""
    out, manifest = prepare_output_dir(recipe, force=force)
    if uses_world(recipe):
        write_world_tables(ctx.world, out)
    lr = recipe.sae.lr
    if plan.lr_grid is not None:
        with long_lived_objects_frozen():
            lr = timer.call("LR grid", pipeline.run_lr_grid, ctx, plan.lr_grid, out)
    jobs = []
    for unit in plan.units:
        missing = unit.missing_layers(out)
        manifest.mark_finished(unit, missing)
        if missing:
            jobs.append(UnitJob(recipe_to_dict(recipe), unit, tuple(missing), str(out), float(lr)))
    if len(jobs) < len(plan.units):
        log.info("resuming: %d of %d units already finished", len(plan.units) - len(jobs), len(plan.units))
    executor = get_executor(recipe.executor, **({"ctx": ctx} if recipe.executor == "local" else {}))
    for job in jobs:
        manifest.mark_unit(job.unit.id, "queued")
    bar = tqdm(total=len(jobs), desc="units", unit="unit", disable=not progress)
    with timer.stage("units"), long_lived_objects_frozen():
        for result in executor.run(jobs):
            for layer in result.layers:
                manifest.mark_layer(result.unit_id, layer)
            manifest.mark_unit(result.unit_id, "done", seconds=round(result.seconds, 2))
            bar.update(1)
            bar.set_postfix_str(result.unit_id)
    bar.close()
    summary = timer.call("summary", collect_summary, out)
    for name in recipe.controls:  # the same units on a control world, beside the study (controls.py)
        timer.call(f"control {name}", run_study, control_recipe(recipe, name, out), progress=progress, force=force)
    if recipe.intervention.enabled:
        timer.call("intervention", run_intervention, ctx, plan, out)
    timer.call("lineage", run_all_lineage, out)
    timer.call("crosscoder", run_all_crosscoders, ctx, plan, out, lr)  # after the units and the lineage it compares with
    timer.call("figures", make_all_figures, out)
    timer.call("neuronpedia", export_all_neuronpedia, out)
    append_timings(timer, tables_dir(out) / TIMINGS_FILE)  # before the report, which shows it
    report = timer.call("report", write_report, out, make_figures=False)
    if recipe.export.enabled:
        timer.call("export", export_release, out, study_release_folder(out, recipe.export.path),
                   release=recipe.export.release, repo_id=recipe.export.repo_id, from_study=True)
    append_timings(timer, tables_dir(out) / TIMINGS_FILE)
    timer.log_split()
    log.info("study finished in %.1f s: %d SAEs, report %s", timer.elapsed(), len(summary), report)
    return report


def write_world_tables(world: World, out: Path) -> None:
    """The toy world's build facts and loss curve under ``tables/``, for the report.

    world.json (config, timings, sizes), world_loss.csv (step, loss, lr per optimizer step),
    world_checkpoints.csv (iteration, tokens, held-out loss of each saved checkpoint).
    """
    meta = {k: v for k, v in world.meta.items() if k not in ("loss_curve", "checkpoints")}
    atomic_write_json(tables_dir(out) / WORLD_META, meta)
    atomic_write_text(tables_dir(out) / "world_loss.csv", world.loss_curve.to_csv(index=False))
    ck = pd.DataFrame(world.meta["checkpoints"])
    atomic_write_text(tables_dir(out) / "world_checkpoints.csv", ck.to_csv(index=False))


