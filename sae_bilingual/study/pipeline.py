"""What one work unit does: LM pass -> SAEs -> codes -> feature table -> summary.

Kept apart from planning (plan.py), resume (unit.py, manifest.py) and the study's driver
(run.py) so each reads top to bottom. The store, the SAE trainer and the streamed
evaluation are called through their modules (``store.collect_activations``,
``train.train_saes``, ``stream.stream_eval``): tests replace them there to prove that no LM
pass or SAE step runs.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors import safe_open

from sae_bilingual.study.layout import FEATURES_FILE, tables_dir
from sae_bilingual import __version__
from sae_bilingual.analysis import stream
from sae_bilingual.analysis.codes import Codes
from sae_bilingual.analysis.examples import top_examples
from sae_bilingual.analysis.features import analyse_features, script_of_tokens, summarise
from sae_bilingual.analysis.ground_truth import score_ground_truth
from sae_bilingual.analysis.semantic import (
    TokenGraph,
    clusters_from_ground_truth,
    token_clusters_from_embeddings,
    token_graph_from_embeddings,
)
from sae_bilingual.data import store
from sae_bilingual.errors import DataError
from sae_bilingual.io import atomic_write_json, atomic_write_text, save_parquet
from sae_bilingual.layers import hook_for_layer
from sae_bilingual.models.registry import get_family
from sae_bilingual.sae import train
from sae_bilingual.sae.files import load_sae, save_sae
from sae_bilingual.sae.metrics import ce_metrics_many
from sae_bilingual.sae.train import TrainRun
from sae_bilingual.study import alignment_stage
from sae_bilingual.study.artefacts import write_unit_summary
from sae_bilingual.study.collect import free_cycles
from sae_bilingual.study.context import StudyContext
from sae_bilingual.study.faults import crash_point
from sae_bilingual.study.memplan import unit_groups
from sae_bilingual.study.plan import select_checkpoints
from sae_bilingual.study.schemas import check_summary_row, write_features
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


def run_unit(ctx: StudyContext, unit: Unit, layers: list[int], out: Path, *, lr: float) -> None:
    """Train, save and analyse the SAEs of ``layers`` at one checkpoint (each stage timed).

    The layers are trained in as few LM passes as fit the memory budget (memplan.py); each
    pass trains and analyses its group, with the results of training all layers at once.
    """
    groups = unit_groups(ctx.recipe, ctx.family(unit.model_index).hf_config, layers, unit.id)
    timer = StageTimer(unit.id)
    model = timer.call("model load", _load_model, ctx, unit)
    load_per_layer = timer.seconds["model load"] / len(layers)
    for group in groups:
        _train_and_analyse(ctx, unit, model, group, out, lr=lr, load_per_layer=load_per_layer)
        free_cycles()


def _train_and_analyse(ctx: StudyContext, unit: Unit, model: Any, layers: list[int], out: Path, *, lr: float,
                       load_per_layer: float) -> None:
    """One LM pass: train the SAEs of ``layers`` from one store, then analyse each layer."""
    timer = StageTimer(unit.id if len(layers) == len(unit.layers) else f"{unit.id} layers {layers}")
    hooks = [hook_for_layer(l) for l in layers]
    with timer.stage("LM + SAE training"):
        spec, run = dataclasses.replace(ctx.recipe.sae, lr=lr), _train_run(ctx, unit)
        acts_store = _store(ctx, unit, model, hooks, run.batch_size(spec))
        metas = {hook_for_layer(l): _metadata(ctx, unit, l) for l in layers}
        init = warm_start_saes(ctx, unit, layers, out) if ctx.recipe.sae.warm_start else None
        saes = train.train_saes(acts_store, hooks, spec, run, metas, init_from=init)
        del acts_store
    free_cycles()  # the shuffle buffers belong to training only (memplan.PHASES)
    crash_point("trained")
    eval_windows = ctx.windows("eval", unit.model_index)
    ev = timer.call("eval LM + encode", stream.stream_eval, model, {h: saes[h] for h in hooks}, eval_windows,
                    spool_dir=out / "cache" / "eval_codes" / unit.id, lm_batch_size=ctx.recipe.data.lm_batch_size,
                    device=ctx.recipe.device, progress=ctx.progress)
    labels, pairs = ev.labels, timer.call("pairs LM + encode", alignment_stage.encode_pairs, ctx, unit, model,
                                          {h: saes[h] for h in hooks}, out)
    clusters = timer.call("clusters", token_clusters, ctx, unit, labels)
    ce_windows = _first_docs_per_lang(eval_windows, ctx.recipe.analysis.ce_docs_per_lang)
    ce = timer.call("CE metrics", ce_metrics_many, model, [saes[h] for h in hooks], ce_windows,  # one clean pass
                    budget_bytes=int(ctx.recipe.data.logits_budget_mb * 2**20))
    shared = {"seconds_load": load_per_layer,
              **{f"seconds_{UNIT_STAGES[k]}": v / len(layers) for k, v in timer.seconds.items()}}
    for layer, hook in zip(layers, hooks):
        with timer.stage(f"layer {layer} analysis"):
            t1 = time.perf_counter()
            ldir = unit.layer_dir(out, layer)
            ldir.mkdir(parents=True, exist_ok=True)
            sae = saes[hook]
            save_sae(sae, ldir / "sae")
            metrics = {**ev.metrics[hook], **ce[hook]}
            codes = ev.codes(hook, tuple(ctx.recipe.data.languages))
            row = analyse_layer(ctx, unit, layer, sae, codes, clusters, ldir, pairs)
            del codes
            free_cycles()
            ev.spools[hook].remove()
            row.update({k: v if isinstance(v, str) else float(v) for k, v in metrics.items() if np.isscalar(v)})
            md = sae.cfg.metadata
            row.update({k: md[k] for k in ("warm_start", "train_loss_final", "train_loss_first_tenth",
                                            "train_steps_to_final", "aux_k_coefficient") if k in md})
            # the unit's shared stages split evenly over its layers + this layer's own analysis
            row.update({k: round(v, 2) for k, v in shared.items()})
            row["seconds_analysis"] = round(time.perf_counter() - t1, 2)
            row["seconds"] = round(sum(shared.values()) + row["seconds_analysis"], 2)
            write_unit_summary(ldir, row)
        crash_point("layer")
    _remove_empty_dirs(out / "cache" / "eval_codes" / unit.id, stop=out / "cache")
    timer.log_split()


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


def input_embeddings(fam: Any, ck: Any) -> torch.Tensor:
    """The input embedding matrix [vocab, d] of a checkpoint, read alone from its safetensors
    when possible (a 3.7B model need not be loaded whole for its 1.2 GB of embeddings)."""
    name = "model.embed_tokens.weight"
    for f in sorted(Path(ck.path).glob("*.safetensors")) if ck.path else []:
        with safe_open(str(f), framework="pt") as st:
            if name in st.keys():
                return st.get_tensor(name).float()
    model = fam.load(ck, device="cpu", dtype=torch.float32)
    return model.W_E.detach().float()


def _embedding_checkpoint(ctx: StudyContext, unit: Unit) -> tuple[Any, Any]:
    """(family, checkpoint) whose input embeddings cluster the tokens of ``unit``."""
    a = ctx.recipe.analysis
    if a.embedding_source == "model":
        em = a.embedding_model
        fam = get_family(em.family, source=em.source, **({"revision": em.revision} if em.revision else {}))
        cat = fam.catalogue()
        return fam, cat.final if em.checkpoint == "final" else cat.select(iteration=int(em.checkpoint))
    fam = ctx.family(unit.model_index)
    cat = fam.catalogue()
    return fam, cat.final if a.embedding_source == "final" else cat.select(iteration=unit.iteration)


@dataclass
class SemanticClusters:
    """What H_sem is computed from, for one unit."""

    embeddings: TokenGraph | np.ndarray
    """The cosine > threshold graph over the eval set's token ids (the analysis forms each
    feature's clusters C_i from its own tokens, the paper), or with ``analysis.cluster_scope:
    global`` one global clustering of those ids."""
    threshold: float
    """The cosine threshold in force."""
    ground_truth: np.ndarray | None = None
    """Toy world only: token id -> ground-truth concept (a partition the paper never had)."""


def token_clusters(ctx: StudyContext, unit: Unit, labels: Any) -> SemanticClusters:
    """Semantic clusters of the token ids of the eval set, from the configured embeddings
    (built once per embedding checkpoint and study)."""
    a = ctx.recipe.analysis
    fam, ck = _embedding_checkpoint(ctx, unit)
    key = (fam.name, str(fam.source), ck.iteration)
    if key not in ctx.cluster_cache:
        emb = input_embeddings(fam, ck)
        token_ids = np.unique(labels.token_id.numpy())
        threshold = cluster_threshold(ctx, emb.shape[1])
        if a.cluster_scope == "feature":
            graph = token_graph_from_embeddings(emb, threshold=threshold, token_ids=token_ids)
        else:
            graph = token_clusters_from_embeddings(emb, threshold=threshold, token_ids=token_ids)
        ctx.cluster_cache[key] = (graph, threshold)
    graph, threshold = ctx.cluster_cache[key]
    gt = clusters_from_ground_truth(ctx.world.ground_truth["concept"]) if ctx.recipe.data.corpus == "toy" else None
    return SemanticClusters(graph, threshold, gt)


PAPER_EMBEDDING_DIM = 3072
"""Width of the LLM-jp-3 3.7B input embeddings the paper clusters tokens with."""


def cluster_threshold(ctx: StudyContext, d_embedding: int) -> float:
    """The cosine threshold in force (optionally scaled to the embedding width)."""
    a = ctx.recipe.analysis
    if a.cluster_threshold_scaling:
        return float(a.cluster_threshold * (PAPER_EMBEDDING_DIM / d_embedding) ** 0.5)
    return float(a.cluster_threshold)


def token_script(ctx: StudyContext) -> np.ndarray | None:
    """Token id -> language index when the recipe labels entries by script, else None."""
    if ctx.recipe.analysis.language_rule != "script":
        return None
    tok = ctx.tokenizer()
    return script_of_tokens(tok.convert_ids_to_tokens(list(range(len(tok)))), tuple(ctx.recipe.data.languages))


def analyse_layer(ctx: StudyContext, unit: Unit, layer: int, sae: Any, codes: Codes, clusters: SemanticClusters,
                  ldir: Path, pairs: alignment_stage.PairCodes | None = None) -> dict[str, Any]:
    """Codes (+ the translation pairs' codes) -> per-feature table (+ examples) -> summary row for one SAE."""
    a = ctx.recipe.analysis
    languages = tuple(ctx.recipe.data.languages)
    codes.save(ldir / "codes.safetensors")
    scripts = token_script(ctx)
    gt = clusters.ground_truth
    use_gt = a.cluster_method == "ground_truth" and gt is not None
    df = analyse_features(codes, sae.cfg.d_sae, token_clusters=gt if use_gt else clusters.embeddings, cfg=a,
                          token_script=scripts)
    row: dict[str, Any] = {}
    if gt is not None:
        if not use_gt:
            gt_df = analyse_features(codes, sae.cfg.d_sae, token_clusters=gt, cfg=a, token_script=scripts)
            df["R_gt"] = gt_df["R"]
            row["mean_R_gt"] = float(gt_df.loc[~gt_df["dead"], "R"].mean())
        gt_cols, gt_scores = score_ground_truth(codes, df, ctx.world.ground_truth, cfg=a)
        for c in gt_cols.columns:
            df[c] = gt_cols[c]
        row.update({k: v for k, v in gt_scores.items() if np.isscalar(v)})
    row.update(alignment_stage.add_to_table(ctx, df, pairs, hook_for_layer(layer)))
    tok = ctx.tokenizer(unit.model_index)
    df["top_tokens"] = [[tok.convert_ids_to_tokens(int(t)) for t in ids] for ids in df["top_token_ids"]]
    write_features(df, ldir / FEATURES_FILE)
    browse = _browser_features(df, a.n_browser_features, languages)
    examples = top_examples(codes, None, browse, n_examples=a.n_examples, tokenizer=tok)
    atomic_write_json(ldir / "examples.json", examples)
    fam = ctx.family(unit.model_index)
    row.update({
        "model": unit.family, "size": unit.family, "iteration": unit.iteration, "tokens": unit.tokens,
        "layer": layer, "hook": hook_for_layer(layer), "n_layers": fam.n_layers, "n_tokens": codes.n,
        "d_sae": sae.cfg.d_sae, "k": sae.cfg.k, "cluster_threshold": clusters.threshold,
        "cluster_scope": a.cluster_scope,
    })
    row.update(summarise(df, languages))
    check_summary_row(row, languages)
    return row


def _browser_features(df: pd.DataFrame, n: int, languages: tuple[str, ...]) -> list[int]:
    """A balanced pick of live features per class for the browser (most active first)."""
    live = df[~df["dead"]]
    classes = list(languages) + ["mixed"]
    per = max(1, n // len(classes))
    picks: list[int] = []
    for c in classes:
        sub = live[live["cls"] == c].sort_values("n_active", ascending=False)
        picks.extend(int(i) for i in sub.index[:per])
    return picks


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
