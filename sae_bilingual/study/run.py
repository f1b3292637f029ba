"""The study: plan work units from a recipe, run them resumably, stack the results.

A work unit is one (model, checkpoint): one LM pass per batch feeds every requested layer,
one SAE per layer trains in lockstep, then each layer is analysed. A layer is finished
when its ``summary.json`` exists (written last, atomically); rerunning the same command
skips finished layers, and a unit killed half-way is redone from the start (training is
deterministic from the seed, so the result is the same).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sae_bilingual.study.artefacts import collect_summary, write_unit_summary  # noqa: F401  (public here too)
from sae_bilingual.study.artefacts import layer_finished as _summary_ok
from sae_bilingual.config import Recipe, recipe_to_dict
from sae_bilingual.study.controls import control_recipe
from sae_bilingual.study.dryrun import describe_dry_run, describe_plan, dry_run_inputs
from sae_bilingual.errors import ConfigError
from sae_bilingual.study.executors import UnitJob, get_executor
from sae_bilingual.report.release import export_release
from sae_bilingual.hub import check_hub_access
from sae_bilingual.io import atomic_write_json, atomic_write_text
from sae_bilingual.layers import hook_for_layer, parse_layers
from sae_bilingual.report.neuronpedia import export_all_neuronpedia  # noqa: F401  (moved there; cli imports it from here)
from sae_bilingual.study.outdir import (  # noqa: F401  (prepare_output_dir, recipe_hash: public here too)
    check_no_symlinks,
    check_not_in_use,
    check_output_dir,
    output_lock,
    prepare_output_dir,
    recipe_hash,
)
from sae_bilingual.study.preflight import check_model_names, check_path_part, preflight
from sae_bilingual.study.timing import TIMINGS_FILE, StageTimer, append_timings

log = logging.getLogger(__name__)


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
        return f"{self.family}/iter_{self.iteration:07d}"

    def dir(self, out: Path) -> Path:
        """The unit's folder; refuses a name escaping ``out`` or a symlink on the way."""
        out = Path(out)
        return check_no_symlinks(out, out / "units" / check_path_part(self.family) / f"iter_{self.iteration:07d}")

    def layer_dir(self, out: Path, layer: int) -> Path:
        return check_no_symlinks(Path(out), self.dir(out) / f"L{layer:02d}")


@dataclass
class Plan:
    """What a recipe will run: units, the LR-grid unit and sizes for --dry-run."""

    units: list[Unit]
    n_layers: dict[str, int]
    d_model: dict[str, int]
    lm_tokens_per_unit: int
    lr_grid: Unit | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def n_saes(self) -> int:
        return sum(len(u.layers) for u in self.units)

    def describe(self, recipe: Recipe) -> str:
        """Human-readable plan for ``--dry-run`` (units, SAEs, LM tokens; dryrun.py)."""
        return describe_plan(self, recipe)


# --------------------------------------------------------------------------- planning


class StudyContext:
    """Everything built once per study and shared by its units (world, corpus, windows)."""

    def __init__(self, recipe: Recipe, progress: bool = True, families: dict[int, Any] | None = None):
        self.recipe = recipe
        self.progress = progress
        self._world = None
        self._families: dict[int, Any] = dict(families or {})  # given: stand-ins (dry run)
        self._windows: dict[str, Any] = {}
        self.cluster_cache: dict[tuple[int, int], Any] = {}

    # -- model sources
    @property
    def world(self):
        """The toy world, built (or loaded from cache) on first use."""
        if self._world is None:
            from sae_bilingual.world import WorldConfig, build_world

            spec = self.recipe.world
            try:
                cfg = _replace(WorldConfig.from_preset(spec.preset), spec.overrides)
            except TypeError as e:
                raise ConfigError(f"world.overrides: {e}") from e
            self._world = build_world(cfg, progress=self.progress)
        return self._world

    def family(self, index: int):
        """The model family of ``recipe.models[index]``."""
        if index not in self._families:
            from sae_bilingual.models.registry import get_family

            spec = self.recipe.models[index]
            source = spec.source
            if spec.family == "toy" and source is None:
                source = str(self.world.root)
            extra = {k: getattr(spec, k) for k in ("revision", "tokenizer", "tokens_per_step", "name")
                     if getattr(spec, k) is not None}
            self._families[index] = get_family(spec.family, source=source, **extra)
        return self._families[index]

    def tokenizer(self, index: int = 0):
        return self.family(index).tokenizer()

    # -- data
    def documents(self):
        """``datasets.DatasetDict`` with train/eval splits of labelled documents."""
        data = self.recipe.data
        if data.corpus == "toy":
            return self.world.corpus
        from datasets import DatasetDict

        from sae_bilingual.data import corpus

        if data.corpus == "text":
            if not data.paths:
                raise ConfigError("data.paths: corpus 'text' needs {language: file} paths")
            chars = corpus.doc_chars_for(data.context)
            train = corpus.load_text_corpus(data.paths, max_chars=chars)
            if data.eval_paths:
                return DatasetDict(train=train, eval=corpus.load_text_corpus(data.eval_paths, max_chars=chars))
        else:
            if not data.hf_name:
                raise ConfigError("data.hf_name: corpus 'hf' needs a dataset name or local path")
            train = corpus.from_hf_dataset(
                data.hf_name, split=data.hf_split, text_field=data.hf_text_field, lang_field=data.hf_lang_field,
                max_chars=corpus.doc_chars_for(data.context),
            )
        # hold out documents for evaluation in proportion to the token budgets
        share = data.eval_tokens_per_lang / (data.train_tokens_per_lang + data.eval_tokens_per_lang)
        split = train.train_test_split(test_size=max(0.01, min(0.5, share)), seed=self.recipe.seed)
        return DatasetDict(train=split["train"], eval=split["test"])

    def windows(self, split: str, index: int = 0):
        """Token windows for ``split`` ('train' or 'eval'), identical for every unit."""
        if split not in self._windows:
            from sae_bilingual.data.corpus import make_windows

            data = self.recipe.data
            budget = data.train_tokens_per_lang if split == "train" else data.eval_tokens_per_lang
            self._windows[split] = make_windows(
                self.documents()[split],
                self.tokenizer(index),
                context=data.context,
                tokens_per_lang=budget,
                languages=tuple(data.languages),
                seed=self.recipe.seed + (0 if split == "train" else 1),
            )
        return self._windows[split]


def _replace(cfg: Any, overrides: dict[str, Any]) -> Any:
    import dataclasses

    names = {f.name for f in dataclasses.fields(cfg)}
    bad = sorted(set(overrides) - names)
    if bad:
        raise ConfigError(f"world.overrides.{bad[0]}: unknown world field; valid: {', '.join(sorted(names))}")
    return dataclasses.replace(cfg, **overrides)


def select_checkpoints(spec, catalogue) -> list:
    """Checkpoints named by a ModelSpec: 'all', 'final', 'log-spaced N', iterations, tokens."""
    if spec.checkpoint_tokens:
        return _unique([catalogue.select(tokens=t) for t in spec.checkpoint_tokens])
    ck = spec.checkpoints
    if isinstance(ck, str):
        s = ck.strip().lower()
        if s == "all":
            return list(catalogue.checkpoints)
        if s == "final":
            return [catalogue.final]
        if s.startswith("log-spaced"):
            try:
                n = int(s.split()[-1])
            except ValueError:
                raise ConfigError(f"models[].checkpoints: {ck!r}: write 'log-spaced N' with an integer N") from None
            return list(catalogue.log_spaced(n))
        if s.isdigit():
            return [catalogue.select(iteration=int(s))]
        raise ConfigError(
            f"models[].checkpoints: cannot read {ck!r}; use 'all', 'final', 'log-spaced N', "
            "an iteration or a list of iterations"
        )
    its = [ck] if isinstance(ck, int) else list(ck)
    return _unique([catalogue.select(iteration=i) for i in its])


def _unique(cks: list) -> list:
    seen, out = set(), []
    for c in cks:
        if c.iteration not in seen:
            seen.add(c.iteration)
            out.append(c)
    return sorted(out, key=lambda c: c.iteration)


def plan_study(recipe: Recipe, ctx: StudyContext | None = None, run_preflight: bool = True) -> Plan:
    """Resolve checkpoints and layers for every model: fails fast on bad names or ranges
    (and, with ``run_preflight``, on inputs the study cannot use: preflight.py)."""
    ctx = ctx or StudyContext(recipe)
    check_hub_access(recipe)  # before any family or corpus reaches for the network
    units: list[Unit] = []
    n_layers: dict[str, int] = {}
    d_model: dict[str, int] = {}
    lr_unit = None
    names = check_model_names(recipe, [ctx.family(i).name for i in range(len(recipe.models))])
    for i, spec in enumerate(recipe.models):
        fam = ctx.family(i)
        name = names[i]
        n_layers[name], d_model[name] = fam.n_layers, fam.d_model
        layers = parse_layers(spec.layers, fam.n_layers)
        catalogue = fam.catalogue()
        for ck in select_checkpoints(spec, catalogue):
            units.append(Unit(i, name, ck.iteration, ck.tokens, layers))
        if recipe.sae.lr == "grid" and lr_unit is None:
            final = catalogue.final
            lr_unit = Unit(i, name, final.iteration, final.tokens, [fam.n_layers // 2])
    n_langs = len(recipe.data.languages)
    lm_tokens = (recipe.data.train_tokens_per_lang + recipe.data.eval_tokens_per_lang) * n_langs
    plan = Plan(units, n_layers, d_model, lm_tokens, lr_unit)
    if recipe.intervention.enabled:
        iv = recipe.intervention
        spec = recipe.models[iv.model]
        fam = ctx.family(iv.model)
        layer = parse_layers(iv.layer, fam.n_layers)
        if len(layer) != 1:
            raise ConfigError(f"intervention.layer: name one layer, got {iv.layer!r}")
        analysed = {(u.model_index, u.iteration): u.layers for u in units}
        final = fam.catalogue().final
        if layer[0] not in analysed.get((iv.model, final.iteration), []):
            raise ConfigError(
                f"intervention.layer {layer[0]}: the study must analyse that layer at the final "
                f"checkpoint (iteration {final.iteration}) of {spec.family}; add it to models[{iv.model}].layers"
            )
        if iv.mid_checkpoint is not None:
            fam.catalogue().select(iteration=iv.mid_checkpoint)  # raises naming the choices
        plan.notes.append(f"intervention at layer {layer[0]} ({hook_for_layer(layer[0])})")
    if run_preflight:
        preflight(recipe, plan, ctx)
    return plan


# --------------------------------------------------------------------------- running


def run_study(recipe: Recipe, *, dry_run: bool = False, progress: bool = True, force: bool = False) -> Path | str:
    """Run (or resume) a whole study; returns the report path (or the plan text on dry run).

    The output folder is checked (not a folder of unrelated files) and locked for the whole
    run: a second study on it fails naming this one."""
    if not dry_run:
        check_not_in_use(recipe.output_dir)  # in seconds, not after planning
    if dry_run:  # plans from shapes where inputs are missing, listing them (dryrun.py)
        inputs = dry_run_inputs(recipe)
        ctx = StudyContext(recipe, progress=progress, families=inputs.families)
        plan = plan_study(recipe, ctx, run_preflight=not inputs.missing)
        return describe_dry_run(recipe, plan, ctx, inputs)
    timer = StageTimer("study")  # one log line per stage; the split ends the run and the report
    ctx = StudyContext(recipe, progress=progress)
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
    from tqdm.auto import tqdm

    out, manifest = prepare_output_dir(recipe, force=force)
    if uses_world(recipe):
        write_world_tables(ctx.world, out)
    from sae_bilingual.study import pipeline

    lr = recipe.sae.lr
    if plan.lr_grid is not None:
        lr = timer.call("LR grid", pipeline.run_lr_grid, ctx, plan.lr_grid, out, progress=progress)
    jobs = []
    for unit in plan.units:
        missing = [l for l in unit.layers if not _summary_ok(unit, out, l)]
        for l in set(unit.layers) - set(missing):  # finished before a kill the driver did not see
            if not manifest.layer_done(unit.id, l):
                manifest.mark_layer(unit.id, l)
        if missing:
            jobs.append(UnitJob(recipe_to_dict(recipe), dataclasses.asdict(unit), tuple(missing), str(out), float(lr)))
    if len(jobs) < len(plan.units):
        log.info("resuming: %d of %d units already finished", len(plan.units) - len(jobs), len(plan.units))
    executor = get_executor(recipe.executor, **({"ctx": ctx} if recipe.executor == "local" else {}))
    for job in jobs:
        manifest.mark_unit(f"{job.unit['family']}/iter_{job.unit['iteration']:07d}", "queued")
    bar = tqdm(total=len(jobs), desc="units", unit="unit", disable=not progress)
    with timer.stage("units"):
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
        from sae_bilingual.study.intervention_stage import run_intervention

        timer.call("intervention", run_intervention, ctx, plan, out, progress=progress)
    from sae_bilingual.report.figures import make_all_figures
    from sae_bilingual.study.lineage_stage import run_all_lineage
    from sae_bilingual.report.html import write_report

    timer.call("lineage", run_all_lineage, out)
    timer.call("figures", make_all_figures, out)
    timer.call("neuronpedia", export_all_neuronpedia, out)
    append_timings(timer, out / "tables" / TIMINGS_FILE)  # before the report, which shows it
    report = timer.call("report", write_report, out, make_figures=False)
    if recipe.export.enabled:
        timer.call("export", export_release, out, recipe.export.path or out / "release",
                   release=recipe.export.release, repo_id=recipe.export.repo_id)
    append_timings(timer, out / "tables" / TIMINGS_FILE)
    timer.log_split()
    log.info("study finished in %.1f s: %d SAEs, report %s", timer.elapsed(), len(summary), report)
    return report


def write_world_tables(world, out: Path) -> None:  # noqa: ANN001 (World: heavy import)
    """The toy world's build facts and loss curve under ``tables/``, for the report.

    world.json (config, timings, sizes), world_loss.csv (step, loss, lr per optimizer step),
    world_checkpoints.csv (iteration, tokens, held-out loss of each saved checkpoint).
    """
    import pandas as pd

    meta = {k: v for k, v in world.meta.items() if k not in ("loss_curve", "checkpoints")}
    atomic_write_json(out / "tables" / "world.json", meta)
    atomic_write_text(out / "tables" / "world_loss.csv", world.loss_curve.to_csv(index=False))
    ck = pd.DataFrame(world.meta["checkpoints"])
    atomic_write_text(out / "tables" / "world_checkpoints.csv", ck.to_csv(index=False))


