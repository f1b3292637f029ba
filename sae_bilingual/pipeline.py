"""What one work unit does: LM pass -> SAEs -> codes -> feature table -> summary.

Kept apart from ``study.py`` (planning, resume, manifest) so each reads top to bottom.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sae_bilingual import __version__
from sae_bilingual.io import atomic_dir, atomic_write_json, atomic_write_text
from sae_bilingual.layers import hook_for_layer

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _torch_dtype(name: str) -> torch.dtype:
    return _DTYPES[name]


def train_config(ctx, d_model: int, lr: float, n_vectors: int):
    """SAETrainConfig from the recipe for a model of width ``d_model``."""
    from sae_bilingual.train import SAETrainConfig

    s = ctx.recipe.sae
    d_sae = s.d_sae or s.expansion * d_model
    return SAETrainConfig(
        k=s.k,
        d_sae=d_sae,
        lr=lr,
        batch_size=min(s.batch_size, n_vectors),
        total_training_tokens=n_vectors,
        warmup_steps=s.warmup_steps,
        adam_eps=s.adam_eps,
        seed=ctx.recipe.seed,
        device=ctx.recipe.device,
        checkpoint_every=s.checkpoint_every,
        wandb=ctx.recipe.wandb,
    )


def _metadata(ctx, unit, layer: int) -> dict[str, Any]:
    spec = ctx.recipe.models[unit.model_index]
    data = ctx.recipe.data
    return {
        "model_name": spec.family,
        "model_source": spec.source or ("toy-world" if spec.family == "toy" else spec.family),
        "checkpoint_iteration": unit.iteration,
        "checkpoint_tokens": unit.tokens,
        "hook_name": hook_for_layer(layer),
        "paper_layer": layer,
        "corpus": data.corpus,
        "languages": list(data.languages),
        "train_tokens_per_lang": data.train_tokens_per_lang,
        "context_size": data.context,
        "seed": ctx.recipe.seed,
        "sae_bilingual_version": __version__,
    }


def _train_layers(ctx, unit, layers: list[int], lr_by_key: dict[str, float], progress: bool):
    """Train one SAE per key from ONE stream of LM activations; returns (model, saes)."""
    from sae_bilingual.store import ActivationStore
    from sae_bilingual.train import train_saes

    fam = ctx.family(unit.model_index)
    ck = fam.catalogue().select(iteration=unit.iteration)
    model = fam.load(ck, device=ctx.recipe.device, dtype=_torch_dtype(ctx.recipe.dtype))
    windows = ctx.windows("train", unit.model_index)
    data = ctx.recipe.data
    hooks = sorted({hook_for_layer(l) for l in layers})
    store = ActivationStore(
        model, windows, hooks,
        batch_size=ctx.recipe.sae.batch_size,
        buffer_vectors=data.buffer_vectors,
        lm_batch_size=data.lm_batch_size,
        seed=ctx.recipe.seed,
    )
    return model, store


def run_unit(ctx, unit, layers: list[int], out: Path, *, lr: float, manifest, progress: bool = True) -> None:
    """Train, save and analyse the SAEs of ``layers`` at one checkpoint."""
    from sae_bilingual.store import collect_activations
    from sae_bilingual.train import evaluate_sae, train_saes

    t0 = time.time()
    model, store = _train_layers(ctx, unit, layers, {}, progress)
    hooks = [hook_for_layer(l) for l in layers]
    cfg = train_config(ctx, model.cfg.d_model, lr, store.n_vectors)
    metas = {hook_for_layer(l): _metadata(ctx, unit, l) for l in layers}
    saes = train_saes(store, hooks, cfg, metas, progress=progress)
    t_train = time.time() - t0
    eval_windows = ctx.windows("eval", unit.model_index)
    acts, labels = collect_activations(model, eval_windows, hooks, batch_size=ctx.recipe.data.lm_batch_size)
    clusters = token_clusters(ctx, unit, labels)
    for layer, hook in zip(layers, hooks):
        t1 = time.time()
        ldir = unit.layer_dir(out, layer)
        ldir.mkdir(parents=True, exist_ok=True)
        sae = saes[hook]
        with atomic_dir(ldir / "sae") as tmp:
            sae.save_model(tmp)
        metrics = evaluate_sae(sae, acts[hook], model=model, windows=eval_windows, hook=hook)
        row = analyse_layer(ctx, unit, layer, sae, acts[hook], labels, eval_windows, clusters, ldir)
        row.update({k: float(v) for k, v in metrics.items() if np.isscalar(v)})
        row["seconds"] = round(t_train / len(layers) + time.time() - t1, 2)
        from sae_bilingual.study import write_unit_summary

        write_unit_summary(ldir / "summary.json", row)
        manifest.mark_layer(unit.id, layer)
    del model, saes, acts


def token_clusters(ctx, unit, labels) -> dict[str, np.ndarray]:
    """Semantic clusters of the token ids that occur in the eval set.

    'embeddings': connected components of cosine > threshold over input embeddings of the
    configured model (the paper: the final/largest model). On the toy world we also
    return the ground-truth concept clusters, which the paper never had.
    """
    from sae_bilingual.analysis import clusters_from_ground_truth, token_clusters_from_embeddings

    a = ctx.recipe.analysis
    fam = ctx.family(unit.model_index)
    cat = fam.catalogue()
    ck = cat.final if a.embedding_source == "final" else cat.select(iteration=unit.iteration)
    key = ("emb", unit.model_index, ck.iteration)
    cache = ctx.__dict__.setdefault("_cluster_cache", {})
    if key not in cache:
        model = fam.load(ck, device="cpu", dtype=torch.float32)
        emb = model.W_E.detach().float().numpy()
        cache[key] = token_clusters_from_embeddings(emb, threshold=a.cluster_threshold, method="connected_components")
        del model
    out = {"embeddings": cache[key]}
    if ctx.recipe.data.corpus == "toy":
        gt = ctx.world.ground_truth
        out["ground_truth"] = clusters_from_ground_truth(gt)
    return out


def analyse_layer(ctx, unit, layer, sae, vectors, labels, windows, clusters, ldir: Path) -> dict[str, Any]:
    """Codes -> per-feature table (+ examples) -> summary row for one SAE."""
    from sae_bilingual.analysis import AnalysisConfig, analyse_features, encode_to_codes, summarise, top_examples
    from sae_bilingual.io import save_parquet

    a = ctx.recipe.analysis
    languages = tuple(ctx.recipe.data.languages)
    codes = encode_to_codes(sae, vectors, labels, languages=languages)
    codes.save(ldir / "codes.safetensors")
    acfg = AnalysisConfig(
        act_threshold=a.act_threshold, lang_threshold=a.lang_threshold,
        language_rule=a.language_rule, span_rule=a.span_rule,
    )
    primary = "ground_truth" if a.cluster_method == "ground_truth" and "ground_truth" in clusters else "embeddings"
    df = analyse_features(codes, sae.cfg.d_sae, token_clusters=clusters[primary], cfg=acfg)
    row: dict[str, Any] = {}
    if "ground_truth" in clusters and primary != "ground_truth":
        gt_df = analyse_features(codes, sae.cfg.d_sae, token_clusters=clusters["ground_truth"], cfg=acfg)
        df["R_gt"] = gt_df["R"]
        row["mean_R_gt"] = float(gt_df.loc[~gt_df["dead"], "R"].mean())
    if ctx.recipe.data.corpus == "toy":
        from sae_bilingual.ground_truth import score_features

        gt_scores, gt_cols = score_features(codes, df, ctx.world.ground_truth, cfg=acfg)
        for c, v in gt_cols.items():
            df[c] = v
        row.update(gt_scores)
    save_parquet(df, ldir / "features.parquet")
    tok = ctx.tokenizer(unit.model_index)
    live = df.index[~df["dead"]]
    browse = _browser_features(df, a.n_browser_features, languages)
    examples = top_examples(codes, windows, browse, n_examples=a.n_examples, tokenizer=tok)
    atomic_write_json(ldir / "examples.json", examples)
    spec = ctx.recipe.models[unit.model_index]
    row.update({
        "model": spec.family, "size": spec.family, "iteration": unit.iteration, "tokens": unit.tokens,
        "layer": layer, "hook": hook_for_layer(layer), "n_live_check": int(len(live)),
    })
    row.update(summarise(df, languages))
    return row


def _browser_features(df, n: int, languages) -> list[int]:
    """A balanced pick of live features per class for the browser (most active first)."""
    live = df[~df["dead"]]
    classes = list(languages) + ["mixed"]
    per = max(1, n // len(classes))
    picks: list[int] = []
    for c in classes:
        sub = live[live["cls"] == c].sort_values("n_active", ascending=False)
        picks.extend(int(i) for i in sub.index[:per])
    return picks


def run_lr_grid(ctx, unit, out: Path, progress: bool = True) -> float:
    """Train one SAE per LR on the final checkpoint's middle layer; pick the lowest val MSE."""
    import pandas as pd

    from sae_bilingual.io import save_parquet

    path = out / "tables" / "lr_grid.csv"
    if path.exists():
        df = pd.read_csv(path)
        if set(df["lr"]) == set(ctx.recipe.sae.lr_grid):
            return float(df.loc[df["val_mse"].idxmin(), "lr"])
    from sae_bilingual.store import collect_activations
    from sae_bilingual.train import lr_grid

    model, store = _train_layers(ctx, unit, unit.layers, {}, progress)
    hook = hook_for_layer(unit.layers[0])
    eval_acts, _ = collect_activations(model, ctx.windows("eval", unit.model_index), [hook],
                                       batch_size=ctx.recipe.data.lm_batch_size)
    cfg = train_config(ctx, model.cfg.d_model, ctx.recipe.sae.lr_grid[0], store.n_vectors)
    df, best = lr_grid(store, hook, eval_acts[hook], ctx.recipe.sae.lr_grid, cfg, progress=progress)
    df["model"], df["iteration"], df["layer"] = unit.family, unit.iteration, unit.layers[0]
    atomic_write_text(path, df.to_csv(index=False))
    save_parquet(df, out / "tables" / "lr_grid.parquet")
    return float(best)


def run_intervention(ctx, plan, out: Path, progress: bool = True):
    """Table 1 / Table 4: inject final-model features into the mid checkpoint."""
    import pandas as pd
    from sae_lens import SAE

    from sae_bilingual.evaluation import aggregate_table, run_intervention_table
    from sae_bilingual.layers import parse_layers

    iv = ctx.recipe.intervention
    path = out / "tables" / "intervention.csv"
    if path.exists():
        return pd.read_csv(path)
    fam = ctx.family(iv.model)
    cat = fam.catalogue()
    final = cat.final
    if iv.mid_checkpoint is not None:
        mid = cat.select(iteration=iv.mid_checkpoint)
    else:
        analysed = sorted(u.iteration for u in plan.units if u.model_index == iv.model)
        mid = cat.select(iteration=analysed[len(analysed) // 2])
    layer = parse_layers(iv.layer, fam.n_layers)[0]
    spec = ctx.recipe.models[iv.model]
    from sae_bilingual.study import Unit

    final_unit = Unit(iv.model, spec.family, final.iteration, final.tokens, [layer])
    ldir = final_unit.layer_dir(out, layer)
    sae = SAE.load_from_disk(str(ldir / "sae"))
    features = pd.read_parquet(ldir / "features.parquet")
    dtype = _torch_dtype(ctx.recipe.dtype)
    final_model = fam.load(final, device=ctx.recipe.device, dtype=dtype)
    mid_model = fam.load(mid, device=ctx.recipe.device, dtype=dtype)
    pairs = ctx.world.translation_pairs if ctx.recipe.data.corpus == "toy" else None
    table = run_intervention_table(
        final_model, mid_model, sae, features, layer,
        conditions=tuple(iv.conditions), alphas=tuple(iv.alphas), ms=tuple(iv.ms), scale_m=iv.scale_m,
        n_draws=iv.draws, seed=ctx.recipe.seed, windows=ctx.windows("eval", iv.model),
        eval_docs_per_lang=iv.eval_docs_per_lang, pairs=pairs, n_pairs=iv.translation_pairs,
        few_shot=iv.few_shot, max_new_tokens=iv.max_new_tokens, scale=iv.scale, add_bias=iv.add_bias,
        comet_python=iv.comet_python, comet_model=iv.comet_model, progress=progress,
    )
    table["mid_iteration"], table["final_iteration"], table["layer"] = mid.iteration, final.iteration, layer
    agg = aggregate_table(table)
    atomic_write_text(out / "tables" / "intervention_draws.csv", table.to_csv(index=False))
    atomic_write_text(out / "tables" / "intervention.md", agg.to_markdown() if hasattr(agg, "to_markdown") else agg.to_string())
    atomic_write_text(path, agg.to_csv(index=True))
    return agg
