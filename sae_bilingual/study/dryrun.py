"""``study --dry-run``: the plan, its memory and its LM passes, before anything is downloaded.

Why: a researcher sizes a 3.7B study (how many LM passes per unit fit an 80 GB GPU) before
fetching six checkpoints and a corpus. Inputs the recipe names but this machine lacks (model
sources, tokenizers, data files, COMET) are listed as warnings instead of stopping the plan:
a model whose source is missing is planned from its family's built-in shape (the LLM-jp-3
size table) with the checkpoints the recipe names. The checks that need the inputs
(tokenizing the corpus, vocabulary, COMET) are skipped then, and a real run still fails fast
on the first missing input.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sae_bilingual.config import Recipe
from sae_bilingual.errors import ConfigError
from sae_bilingual.models.catalogue import Checkpoint, CheckpointCatalogue
from sae_bilingual.models.registry import HFConfigShape, get_family
from sae_bilingual.study.memplan import (
    PLAN_FRACTION,
    LMShape,
    describe_unit_plan,
    fmt_bytes,
    fmt_layers,
    plan_unit,
    unit_components,
)
from sae_bilingual.study.membudget import host_memory_budget, memory_budget
from sae_bilingual.study.memplan_crosscoder import crosscoder_memory_lines
from sae_bilingual.study.preflight import check_k_below_n
from sae_bilingual.study.time_estimate import time_estimate_lines
from sae_bilingual.study.unit import check_path_part
from sae_bilingual.study.context import StudyContext

log = logging.getLogger(__name__)

_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def _local_missing(path: str, may_be_repo: bool = False) -> bool:
    """A local path that does not exist (a Hub repo id 'owner/name' is not local when allowed)."""
    p = Path(path).expanduser()
    if p.exists():
        return False
    return not (may_be_repo and _REPO_ID.fullmatch(path) and not path.startswith((".", "/", "~")))


def missing_inputs(recipe: Recipe) -> list[str]:
    """The local inputs the recipe names that do not exist here, one sentence each."""
    out = []
    for i, m in enumerate(recipe.models):
        if m.source and _local_missing(m.source, may_be_repo=True):
            out.append(f"models[{i}].source {m.source} does not exist")
        if m.tokenizer and _local_missing(m.tokenizer, may_be_repo=True):
            out.append(f"models[{i}].tokenizer {m.tokenizer} does not exist")
    d = recipe.data
    if d.corpus == "text":
        for name, paths in (("paths", d.paths), ("eval_paths", d.eval_paths)):
            out += [f"data.{name}.{lang} {p} does not exist" for lang, p in paths.items() if _local_missing(p)]
    if d.corpus == "hf" and d.hf_name and _local_missing(d.hf_name, may_be_repo=True):
        out.append(f"data.hf_name {d.hf_name} does not exist")
    a = recipe.analysis
    if a.embedding_source == "model" and a.embedding_model and a.embedding_model.source \
            and _local_missing(a.embedding_model.source, may_be_repo=True):
        out.append(f"analysis.embedding_model.source {a.embedding_model.source} does not exist")
    iv = recipe.intervention
    if iv.enabled:
        out += [f"intervention.pairs_paths.{lang} {p} does not exist" for lang, p in iv.pairs_paths.items()
                if _local_missing(p)]
        out += [f"intervention.{k} {getattr(iv, k)} does not exist" for k in ("comet_python", "comet_model")
                if getattr(iv, k) and _local_missing(getattr(iv, k))]
    return out


@dataclass
class OfflineFamily(HFConfigShape):
    """A model family known by its shape only: enough to plan units and memory, not to run."""

    name: str
    hf_config: Any
    _catalogue: CheckpointCatalogue

    def catalogue(self, source: Any = None) -> CheckpointCatalogue:
        return self._catalogue


def _named_iterations(spec: Any, tokens_per_iteration: int) -> tuple[list[int], bool]:
    """Iterations the recipe names for a model (and whether it names them all)."""
    if spec.checkpoint_tokens:
        return [max(0, round(t / tokens_per_iteration)) for t in spec.checkpoint_tokens], True
    ck = spec.checkpoints
    if isinstance(ck, int):
        return [ck], True
    if isinstance(ck, list):
        return list(ck), True
    s = str(ck).strip().lower()
    if s.isdigit():
        return [int(s)], True
    return [], s == "final"


def offline_family(recipe: Recipe, index: int, warnings: list[str]) -> OfflineFamily:
    """The family of ``models[index]`` from its built-in shape, with the checkpoints the recipe names."""
    spec = recipe.models[index]
    extra = {k: getattr(spec, k) for k in ("tokens_per_step", "name") if getattr(spec, k) is not None}
    try:
        fam = get_family(spec.family, source=None, **extra)
    except Exception as e:  # noqa: BLE001  e.g. 'toy' and 'hf' need a source
        raise ConfigError(f"models[{index}].source {spec.source} does not exist, and family {spec.family!r} "
                          f"has no built-in shape to plan from ({e}); give an existing source to plan it") from e
    cfg = getattr(fam, "default_config", None)
    tpi = getattr(fam, "tokens_per_iteration", None) or 0
    if cfg is None:
        raise ConfigError(f"models[{index}].source {spec.source} does not exist, and family {spec.family!r} has "
                          "no built-in shape table; give an existing source (or Hub repo) to plan it")
    its, complete = _named_iterations(spec, tpi or 1)
    final = int(getattr(fam, "final_iteration", None) or max(its, default=0))
    iv = recipe.intervention
    mid = [iv.mid_checkpoint] if iv.enabled and iv.model == index and iv.mid_checkpoint is not None else []
    if not complete:
        warnings.append(f"models[{index}].checkpoints {spec.checkpoints!r}: the checkpoints of a missing source "
                        f"cannot be listed; planned with the final one (iteration {final}) only")
    cks = [Checkpoint(i, i * tpi, None) for i in sorted(set(its) | {final} | set(mid))]
    cat = CheckpointCatalogue(cks, note=f"planned offline from the {fam.name} shape table")
    return OfflineFamily(name=fam.name, hf_config=cfg, _catalogue=cat)


@dataclass
class DryRunInputs:
    """What a dry run plans from: families standing in for missing sources, and the warnings."""

    families: dict[int, Any] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def dry_run_inputs(recipe: Recipe) -> DryRunInputs:
    """Missing inputs, and offline families for the models whose source is missing."""
    out = DryRunInputs(missing=missing_inputs(recipe))
    for i, spec in enumerate(recipe.models):
        if spec.source and _local_missing(spec.source, may_be_repo=True):
            out.families[i] = offline_family(recipe, i, out.warnings)
    return out


def describe_plan(plan: Any, recipe: Recipe) -> str:
    """The units, SAEs and LM tokens of a plan (the top of ``--dry-run``)."""
    lines = [f"study {recipe.name!r} -> {recipe.output_dir}"]
    for u in plan.units:
        lines.append(f"  {u.id:<40} tokens={u.tokens:>16,}  layers={fmt_layers(u.layers)}")
    if plan.lr_grid is not None:
        lines.append(f"  LR grid: {len(recipe.sae.lr_grid)} SAEs at {plan.lr_grid.id} layer {plan.lr_grid.layers[0]}")
    lm = plan.lm_tokens_per_unit * (len(plan.units) + (plan.lr_grid is not None))
    lines.append(
        f"total: {len(plan.units)} units, {plan.n_saes} SAEs"
        + (f" (+{len(recipe.sae.lr_grid)} LR-grid SAEs)" if plan.lr_grid else "")
        + f", ~{lm:,} LM tokens per pass over every unit (see the memory plan for passes per unit)"
    )
    lines.extend(f"note: {n}" for n in plan.notes)
    return "\n".join(lines)


def describe_memory(recipe: Recipe, plan: Any, ctx: StudyContext, *, logits_chunk_tokens: int | None = None) -> list[str]:
    """The memory plan of every unit: components per model, then passes and peak per unit."""
    budget, source = memory_budget(recipe)
    host, host_source = host_memory_budget(recipe)
    head = (f"memory plan (device {recipe.device}, budget {fmt_bytes(budget)} from {source}" if budget else
            f"memory plan (device {recipe.device}: {source}; set max_memory, e.g. --set max_memory=80GB, "
            "to plan the device")
    head += (f"; host RAM budget {fmt_bytes(host)} from {host_source}" if host else "; host RAM unknown")
    lines = [head + f"; each planned to {PLAN_FRACTION:.0%})"]
    shown: set[int] = set()
    total_passes = 0
    for u in plan.units:
        shape = LMShape.from_hf_config(ctx.family(u.model_index).hf_config)
        if u.model_index not in shown:
            shown.add(u.model_index)
            lines.append(f"  {u.family}: d_model {shape.d_model:,}, {shape.n_layers} layers, vocab {shape.d_vocab:,}; "
                         f"LM {recipe.dtype}, SAEs float32, store buffers {recipe.data.buffer_dtype}")
            lines.append(f"    {'component':<104} {'where':<6} {'phase':<7} {'per pass':>10} {'per layer':>10}")
            for c in unit_components(recipe, shape, logits_chunk_tokens=logits_chunk_tokens):
                if c.name.startswith(("this process", "tokenised windows")) and c.phase != "train":
                    continue  # held in every phase: listed once
                lines.append(f"    {c.name:<104} {c.where:<6} {c.phase:<7} {fmt_bytes(c.fixed) if c.fixed else '-':>10} "
                             f"{fmt_bytes(c.per_hook) if c.per_hook else '-':>10}")
        p = plan_unit(recipe, shape, u.layers, budget, source, host_budget=host, host_source=host_source,
                      logits_chunk_tokens=logits_chunk_tokens)
        total_passes += p.passes
        lines.append(f"  {u.id}: {describe_unit_plan(p)}")
        if not p.fits:
            lines.append(f"    warning: one layer per pass needs {fmt_bytes(p.peak['device'])} on the device and "
                         f"{fmt_bytes(p.peak['host'])} of host RAM, more than {PLAN_FRACTION:.0%} of a budget; lower "
                         "sae.batch_size / data.buffer_vectors / data.eval_tokens_per_lang, or data.buffer_dtype: "
                         "bfloat16")
    if plan.units:
        lm = sum(plan_unit(recipe, LMShape.from_hf_config(ctx.family(u.model_index).hf_config), u.layers, budget,
                           source, host_budget=host, logits_chunk_tokens=logits_chunk_tokens).lm_cost()
                 for u in plan.units)
        lines.append(f"  all units: {total_passes} LM passes for {len(plan.units)} units "
                     f"(LM work {lm:.2f} x one full-depth pass over every unit's tokens)")
    return lines


def describe_dry_run(recipe: Recipe, plan: Any, ctx: StudyContext, inputs: DryRunInputs, *, estimate_time: bool = False) -> str:
    """The whole ``--dry-run`` text: plan, memory plan, (time estimate,) warnings about missing inputs."""
    for u in plan.units:
        check_path_part(u.family)
    for i, spec in enumerate(recipe.models):
        check_k_below_n(recipe, ctx.family(i).d_model, spec.family)
    lines = [describe_plan(plan, recipe), *describe_memory(recipe, plan, ctx), *crosscoder_memory_lines(recipe, plan, ctx)]
    if estimate_time:
        lines += time_estimate_lines(recipe, plan, ctx)
    lines += [f"warning: {m}" for m in inputs.missing]
    lines += [f"warning: {w}" for w in inputs.warnings]
    if inputs.missing:
        lines.append("warning: inputs are missing: the checks that read them (corpus, tokenizer, vocabulary, "
                     "COMET) were skipped, and a real run stops at the first one")
    return "\n".join(lines)
