"""What one work unit does: per LM pass, train -> encode -> analyse -> write (:class:`UnitStages`).

Kept apart from planning (plan.py), resume (unit.py, manifest.py) and the study's driver
(run.py) so each reads top to bottom. Each stage takes its inputs and returns its outputs
(the SAEs, an :class:`EncodedPass`, a :class:`~sae_bilingual.study.layer_analysis.LayerAnalysis`);
tests inject stages through ``run_study(..., unit_stages=...)``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import torch

from sae_bilingual import __version__
from sae_bilingual.analysis import stream
from sae_bilingual.analysis.codes import Codes
from sae_bilingual.data import store
from sae_bilingual.errors import DataError
from sae_bilingual.io import atomic_write_json, atomic_write_text, save_parquet
from sae_bilingual.layers import hook_for_layer
from sae_bilingual.sae import train
from sae_bilingual.sae.files import load_sae, save_sae
from sae_bilingual.sae.metrics import ce_metrics_many
from sae_bilingual.sae.train import TrainRun
from sae_bilingual.study import alignment_stage
from sae_bilingual.study.artefacts import write_unit_summary
from sae_bilingual.study.collect import free_cycles
from sae_bilingual.study.context import StudyContext
from sae_bilingual.study.layer_analysis import LayerAnalysis, SemanticClusters, analyse_layer, token_clusters
from sae_bilingual.study.layout import FEATURES_FILE, tables_dir
from sae_bilingual.study.faults import crash_point
from sae_bilingual.study.memplan import unit_groups
from sae_bilingual.study.plan import select_checkpoints
from sae_bilingual.study.schemas import write_features
from sae_bilingual.study.timing import StageTimer
from sae_bilingual.study.unit import Unit

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _torch_dtype(name: str) -> torch.dtype:
    return _DTYPES[name]


def _train_run(ctx, unit) -> TrainRun:
    """The run's own facts: one pass over the unit's training vectors (the SAE settings are
    the recipe's ``sae:`` section itself)."""
    return TrainRun(n_vectors=ctx.windows("train", unit.model_index).n_vectors, seed=ctx.recipe.seed,
                    device=ctx.recipe.device, wandb=ctx.recipe.wandb, progress=ctx.progress)


def _metadata(ctx: StudyContext, unit: Unit, layer: int) -> dict[str, Any]:
    spec = ctx.recipe.models[unit.model_index]
    data = ctx.recipe.data
    return {
        "model_name": unit.family,
        "model_family": spec.family,
        "model_source": spec.source or ("toy-world" if spec.family == "toy" else spec.family),
        "checkpoint_iteration": unit.iteration,
        "checkpoint_tokens": unit.tokens,
        "paper_layer": layer,
        "corpus": data.corpus,
        "languages": list(data.languages),
        "train_tokens_per_lang": data.train_tokens_per_lang,
        "context_size": data.context,
        "sae_bilingual_version": __version__,
    }


def _load_model(ctx: StudyContext, unit: Unit) -> Any:
    fam = ctx.family(unit.model_index)
    ck = fam.catalogue().select(iteration=unit.iteration)
    return fam.load(ck, device=ctx.recipe.device, dtype=_torch_dtype(ctx.recipe.dtype))


def _store(ctx: StudyContext, unit: Unit, model: Any, hooks: list[str], batch_size: int,
           out: Path | None = None) -> store.ActivationStore:
    """A shuffling store over the study's training windows: one LM pass feeds all ``hooks``."""
    data = ctx.recipe.data
    cache = {}
    if data.activation_cache and out is not None:
        cache = {"cache_dir": out / "cache" / "activations",
                 "cache_id": {"unit": unit.id, "hooks": hooks, "seed": ctx.recipe.seed,
                              "context": data.context, "train_tokens_per_lang": data.train_tokens_per_lang,
                              **({"buffer_dtype": data.buffer_dtype} if data.buffer_dtype != "float32" else {})}}
    return store.ActivationStore(
        model, ctx.windows("train", unit.model_index), hooks,
        batch_size=batch_size,
        buffer_vectors=data.buffer_vectors,
        lm_batch_size=data.lm_batch_size,
        seed=ctx.recipe.seed,
        device=ctx.recipe.device,
        dtype=_torch_dtype(data.buffer_dtype),
        **cache,
    )


UNIT_STAGES = {"model load": "load", "LM + SAE training": "train", "eval LM + encode": "eval_acts",
               "clusters": "clusters", "CE metrics": "ce", "pairs LM + encode": "align"}
"""A unit's shared stages -> their ``seconds_<name>`` column in the summary (per layer)."""


@dataclass
class EncodedPass:
    """What the encode stage leaves for the layers of one LM pass."""

    eval: stream.StreamedEval
    """The evaluation windows' labels, reconstruction metrics and code spools, per hook."""
    pairs: alignment_stage.PairCodes
    """The translation pairs' codes per hook (empty when alignment is off)."""
    clusters: SemanticClusters
    """The token clusters H_sem uses."""
    ce: dict[str, dict[str, Any]]
    """hook -> CE and KL metrics of its SAE's splice."""


def train_stage(ctx: StudyContext, unit: Unit, model: Any, layers: list[int], out: Path, lr: float) -> dict[str, Any]:
    """Train the SAEs of ``layers`` from one LM pass over the training windows: {hook: SAE}."""
    hooks = [hook_for_layer(l) for l in layers]
    spec, run = dataclasses.replace(ctx.recipe.sae, lr=lr), _train_run(ctx, unit)
    acts_store = _store(ctx, unit, model, hooks, run.batch_size(spec))
    metas = {hook_for_layer(l): _metadata(ctx, unit, l) for l in layers}
    init = warm_start_saes(ctx, unit, layers, out) if ctx.recipe.sae.warm_start else None
    return train.train_saes(acts_store, hooks, spec, run, metas, init_from=init)


def encode_stage(ctx: StudyContext, unit: Unit, model: Any, saes: dict[str, Any], out: Path,
                 timer: StageTimer) -> EncodedPass:
    """Encode the evaluation windows and the translation pairs with every SAE of the pass
    (codes spooled to disk), cluster their tokens, and measure each splice's CE."""
    eval_windows = ctx.windows("eval", unit.model_index)
    ev = timer.call("eval LM + encode", stream.stream_eval, model, saes, eval_windows,
                    spool_dir=out / "cache" / "eval_codes" / unit.id, lm_batch_size=ctx.recipe.data.lm_batch_size,
                    device=ctx.recipe.device, progress=ctx.progress)
    pairs = timer.call("pairs LM + encode", alignment_stage.encode_pairs, ctx, unit, model, saes, out)
    clusters = timer.call("clusters", token_clusters, ctx, unit, ev.labels)
    ce_windows = _first_docs_per_lang(eval_windows, ctx.recipe.analysis.ce_docs_per_lang)
    ce = timer.call("CE metrics", ce_metrics_many, model, list(saes.values()), ce_windows,  # one clean pass
                    budget_bytes=int(ctx.recipe.data.logits_budget_mb * 2**20))
    return EncodedPass(ev, pairs, clusters, ce)


def write_stage(ldir: Path, sae: Any, codes: Codes, analysis: LayerAnalysis, row: dict[str, Any]) -> None:
    """A layer's files: SAE, codes, feature table, examples, then summary.json (last: it marks the layer done)."""
    ldir.mkdir(parents=True, exist_ok=True)
    save_sae(sae, ldir / "sae")
    codes.save(ldir / "codes.safetensors")
    write_features(analysis.features, ldir / FEATURES_FILE)
    atomic_write_json(ldir / "examples.json", analysis.examples)
    write_unit_summary(ldir, row)


@dataclass(frozen=True)
class UnitStages:
    """The stages of one LM pass of a unit, in order: train -> encode -> analyse -> write.

    Each takes its inputs as arguments and returns its outputs; a test replaces one with
    ``dataclasses.replace(UnitStages(), train=...)`` and passes it to ``run_study(...,
    unit_stages=...)`` instead of patching modules.
    """

    train: Callable[..., dict[str, Any]] = train_stage
    encode: Callable[..., EncodedPass] = encode_stage
    analyse: Callable[..., LayerAnalysis] = analyse_layer
    write: Callable[..., None] = write_stage


def run_unit(ctx: StudyContext, unit: Unit, layers: list[int], out: Path, *, lr: float,
             stages: UnitStages | None = None) -> None:
    """Train, save and analyse the SAEs of ``layers`` at one checkpoint (each stage timed).

    The layers are trained in as few LM passes as fit the memory budget (memplan.py); each
    pass trains and analyses its group, with the results of training all layers at once.
    ``stages``: default ``ctx.unit_stages`` (the study's own unless a test injected others).
    """
    chosen: UnitStages = stages or ctx.unit_stages or UnitStages()
    groups = unit_groups(ctx.recipe, ctx.family(unit.model_index).hf_config, layers, unit.id)
    timer = StageTimer(unit.id)
    model = timer.call("model load", _load_model, ctx, unit)
    load_per_layer = timer.seconds["model load"] / len(layers)
    for group in groups:
        run_pass(ctx, unit, model, group, out, chosen, lr=lr, load_per_layer=load_per_layer)
        free_cycles()


def run_pass(ctx: StudyContext, unit: Unit, model: Any, layers: list[int], out: Path, stages: UnitStages, *,
             lr: float, load_per_layer: float) -> None:
    """One LM pass: the stages over the SAEs of ``layers``, each layer written as it is analysed."""
    timer = StageTimer(unit.id if len(layers) == len(unit.layers) else f"{unit.id} layers {layers}")
    saes = timer.call("LM + SAE training", stages.train, ctx, unit, model, layers, out, lr)
    free_cycles()  # the shuffle buffers belong to training only (memplan.PHASES)
    crash_point("trained")
    enc = stages.encode(ctx, unit, model, saes, out, timer)
    shared = {"seconds_load": load_per_layer,
              **{f"seconds_{UNIT_STAGES[k]}": v / len(layers) for k, v in timer.seconds.items()}}
    for layer in layers:
        hook = hook_for_layer(layer)
        with timer.stage(f"layer {layer} analysis"):
            t1 = time.perf_counter()
            codes = enc.eval.codes(hook, tuple(ctx.recipe.data.languages))
            analysis = stages.analyse(ctx, unit, layer, saes[hook], codes, enc.clusters, enc.pairs)
            row = {**analysis.row, **_layer_metrics(saes[hook], {**enc.eval.metrics[hook], **enc.ce[hook]}),
                   **{k: round(v, 2) for k, v in shared.items()}}  # the pass's stages split evenly over its layers
            row["seconds_analysis"] = round(time.perf_counter() - t1, 2)
            row["seconds"] = round(sum(shared.values()) + row["seconds_analysis"], 2)
            stages.write(unit.layer_dir(out, layer), saes[hook], codes, analysis, row)
            del codes
            free_cycles()
            enc.eval.spools[hook].remove()
        crash_point("layer")
    _remove_empty_dirs(out / "cache" / "eval_codes" / unit.id, stop=out / "cache")
    timer.log_split()


def _layer_metrics(sae: Any, metrics: dict[str, Any]) -> dict[str, Any]:
    """The summary columns from the evaluation (scalars; floats unless text) and the SAE's training metadata."""
    row = {k: v if isinstance(v, str) else float(cast(float, v)) for k, v in metrics.items() if np.isscalar(v)}
    md = sae.cfg.metadata
    row.update({k: md[k] for k in ("warm_start", "train_loss_final", "train_loss_first_tenth",
                                    "train_steps_to_final", "aux_k_coefficient") if k in md})
    return row


def _remove_empty_dirs(folder: Path, stop: Path) -> None:
    """Remove ``folder`` and its parents up to ``stop`` while they are empty (the eval spools'
    folders; another rank's spools still there keep theirs)."""
    while folder != stop and folder.is_dir():
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent


def warm_start_saes(ctx: StudyContext, unit: Unit, layers: list[int], out: Path) -> dict[str, Any]:
    """The previous analysed checkpoint's trained SAEs of ``layers`` ({hook: SAE}), or {} at the
    first checkpoint. They are read from disk, so a resumed study warm-starts exactly as an
    uninterrupted one."""
    spec = ctx.recipe.models[unit.model_index]
    earlier = [c for c in select_checkpoints(spec, ctx.family(unit.model_index).catalogue())
               if c.iteration < unit.iteration]
    if not earlier:
        return {}
    prev = dataclasses.replace(unit, iteration=earlier[-1].iteration, tokens=earlier[-1].tokens)
    init = {}
    for layer in layers:
        path = prev.layer_dir(out, layer) / "sae"
        if not (path / "cfg.json").exists():
            raise DataError(f"sae.warm_start: {unit.id} layer {layer} starts from the SAE of {prev.id}, "
                            f"but {path} does not exist; run the study's units in checkpoint order "
                            "(executor: local), or turn warm_start off")
        init[hook_for_layer(layer)] = load_sae(path, device=ctx.recipe.device)
    log.info("warm start: %s from %s (%d layers)", unit.id, prev.id, len(init))
    return init


def run_lr_grid(ctx: StudyContext, unit: Unit, out: Path) -> float:
    """Train one SAE per LR on the final checkpoint's middle layer; pick the lowest val MSE."""
    grid = list(ctx.recipe.sae.lr_grid)
    path = tables_dir(out) / "lr_grid.csv"
    if path.exists():
        df = pd.read_csv(path)
        if sorted(df["lr"]) == sorted(grid):
            return float(df.loc[df["val_mse"].idxmin(), "lr"])
    model = _load_model(ctx, unit)
    hook = hook_for_layer(unit.layers[0])
    eval_windows = ctx.windows("eval", unit.model_index)

    def validate(sae: Any) -> dict[str, float]:  # one streamed pass over the eval windows per LR
        return stream.stream_eval(model, {hook: sae}, eval_windows, lm_batch_size=ctx.recipe.data.lm_batch_size,
                                  device=ctx.recipe.device).metrics[hook]

    spec, run = ctx.recipe.sae, _train_run(ctx, unit)
    df, best = train.lr_grid(lambda: _store(ctx, unit, model, [hook], run.batch_size(spec), out), hook, spec, run,
                             validate, grid)
    df["model"], df["iteration"], df["layer"] = unit.family, unit.iteration, unit.layers[0]
    save_parquet(df, tables_dir(out) / "lr_grid.parquet")
    atomic_write_text(path, df.to_csv(index=False))  # last: its presence marks the grid done
    crash_point("lr_grid")
    return float(best)


def _first_docs_per_lang(windows: Any, n: int) -> Any:
    """The first ``n`` eval windows of each language (same tokens for every condition)."""
    keep = torch.cat([torch.nonzero(windows.lang == i).flatten()[:n] for i in range(len(windows.languages))])
    return windows.subset(keep.sort().values)
