"""What one work unit does: LM pass -> SAEs -> codes -> feature table -> summary.

Kept apart from ``study.py`` (planning, resume, manifest) so each reads top to bottom.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sae_bilingual import __version__
from sae_bilingual.io import atomic_dir, atomic_write_json, atomic_write_text
from sae_bilingual.layers import hook_for_layer
from sae_bilingual.memplan import unit_groups
from sae_bilingual.models.generic import is_paper_model
from sae_bilingual.models.registry import get_family
from sae_bilingual.semantic import (
    TokenGraph,
    clusters_from_ground_truth,
    token_clusters_from_embeddings,
    token_graph_from_embeddings,
)

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _torch_dtype(name: str) -> torch.dtype:
    return _DTYPES[name]


def train_config(ctx, lr: float, n_vectors: int):
    """SAETrainConfig from the recipe; one pass over ``n_vectors`` training vectors."""
    from sae_bilingual.train import SAETrainConfig

    s = ctx.recipe.sae
    return SAETrainConfig(
        k=s.k,
        d_sae=s.d_sae,
        expansion=s.expansion,
        lr=lr,
        batch_size=min(s.batch_size, n_vectors),
        total_training_tokens=n_vectors,
        warmup_steps=s.warmup_steps,
        adam_eps=s.adam_eps,
        seed=ctx.recipe.seed,
        device=ctx.recipe.device,
        checkpoint_every=s.checkpoint_every,
        aux_k_coefficient=s.aux_k_coefficient,
        dead_feature_window=s.dead_feature_window,
        wandb=ctx.recipe.wandb,
    )


def _metadata(ctx, unit, layer: int) -> dict[str, Any]:
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


def _load_model(ctx, unit):
    fam = ctx.family(unit.model_index)
    ck = fam.catalogue().select(iteration=unit.iteration)
    return fam.load(ck, device=ctx.recipe.device, dtype=_torch_dtype(ctx.recipe.dtype))


def _store(ctx, unit, model, hooks: list[str], batch_size: int, out: Path | None = None):
    """A shuffling store over the study's training windows: one LM pass feeds all ``hooks``."""
    from sae_bilingual.store import ActivationStore

    data = ctx.recipe.data
    cache = {}
    if data.activation_cache and out is not None:
        cache = {"cache_dir": out / "cache" / "activations",
                 "cache_id": {"unit": unit.id, "hooks": hooks, "seed": ctx.recipe.seed,
                              "context": data.context, "train_tokens_per_lang": data.train_tokens_per_lang}}
    return ActivationStore(
        model, ctx.windows("train", unit.model_index), hooks,
        batch_size=batch_size,
        buffer_vectors=data.buffer_vectors,
        lm_batch_size=data.lm_batch_size,
        seed=ctx.recipe.seed,
        device=ctx.recipe.device,
        **cache,
    )


def run_unit(ctx, unit, layers: list[int], out: Path, *, lr: float) -> None:
    """Train, save and analyse the SAEs of ``layers`` at one checkpoint.

    The layers are trained in as few LM passes as fit the memory budget (memplan.py); each
    pass trains and analyses its group, with the results of training all layers at once.
    """
    groups = unit_groups(ctx.recipe, ctx.family(unit.model_index).hf_config, layers, unit.id)
    model = _load_model(ctx, unit)
    for group in groups:
        _train_and_analyse(ctx, unit, model, group, out, lr=lr)


def _train_and_analyse(ctx, unit, model, layers: list[int], out: Path, *, lr: float) -> None:
    """One LM pass: train the SAEs of ``layers`` from one store, then analyse each layer."""
    from sae_bilingual.sae import save_sae
    from sae_bilingual.store import collect_activations
    from sae_bilingual.study import write_unit_summary
    from sae_bilingual.train import ce_metrics_many, reconstruction_metrics, train_saes

    t0 = time.time()
    hooks = [hook_for_layer(l) for l in layers]
    n_train = ctx.windows("train", unit.model_index).n_vectors
    cfg = train_config(ctx, lr, n_train)
    store = _store(ctx, unit, model, hooks, cfg.batch_size)
    metas = {hook_for_layer(l): _metadata(ctx, unit, l) for l in layers}
    # SAELens training checkpoints (optimizer state included) when the recipe asks for them;
    # a killed unit is still redone from the start (deterministic), not resumed from these.
    ckpt_dir = unit.dir(out) / "training" if ctx.recipe.sae.checkpoint_every else None
    init = warm_start_saes(ctx, unit, layers, out) if ctx.recipe.sae.warm_start else None
    saes = train_saes(store, hooks, cfg, metas, save_dir=ckpt_dir, init_from=init)
    t_train = time.time() - t0
    eval_windows = ctx.windows("eval", unit.model_index)
    acts, labels = collect_activations(model, eval_windows, hooks, batch_size=ctx.recipe.data.lm_batch_size,
                                       device=ctx.recipe.device)
    clusters = token_clusters(ctx, unit, labels)
    ce_windows = _first_docs_per_lang(eval_windows, ctx.recipe.analysis.ce_docs_per_lang)
    ce = ce_metrics_many(model, [saes[h] for h in hooks], ce_windows)  # one clean pass for all layers
    for layer, hook in zip(layers, hooks):
        t1 = time.time()
        ldir = unit.layer_dir(out, layer)
        ldir.mkdir(parents=True, exist_ok=True)
        sae = saes[hook]
        save_sae(sae, ldir / "sae")
        metrics = {**reconstruction_metrics(sae, acts[hook]), **ce[hook]}
        row = analyse_layer(ctx, unit, layer, sae, acts[hook], labels, clusters, ldir)
        row.update({k: float(v) for k, v in metrics.items() if np.isscalar(v)})
        md = sae.cfg.metadata
        row.update({k: md[k] for k in ("warm_start", "train_loss_final", "train_loss_first_tenth",
                                        "train_steps_to_final", "aux_k_coefficient") if k in md})
        row["seconds"] = round(t_train / len(layers) + time.time() - t1, 2)
        write_unit_summary(ldir / "summary.json", row)


def warm_start_saes(ctx, unit, layers: list[int], out: Path) -> dict[str, Any]:
    """The previous analysed checkpoint's trained SAEs of ``layers`` ({hook: SAE}), or {} at the
    first checkpoint. They are read from disk, so a resumed study warm-starts exactly as an
    uninterrupted one."""
    from sae_bilingual.errors import DataError
    from sae_bilingual.sae import load_sae
    from sae_bilingual.study import select_checkpoints

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


def input_embeddings(fam, ck) -> torch.Tensor:
    """The input embedding matrix [vocab, d] of a checkpoint, read alone from its safetensors
    when possible (a 3.7B model need not be loaded whole for its 1.2 GB of embeddings)."""
    from safetensors import safe_open

    name = "model.embed_tokens.weight"
    for f in sorted(Path(ck.path).glob("*.safetensors")) if ck.path else []:
        with safe_open(str(f), framework="pt") as st:
            if name in st.keys():
                return st.get_tensor(name).float()
    model = fam.load(ck, device="cpu", dtype=torch.float32)
    return model.W_E.detach().float()


def _embedding_checkpoint(ctx, unit):
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


def token_clusters(ctx, unit, labels) -> SemanticClusters:
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


def cluster_threshold(ctx, d_embedding: int) -> float:
    """The cosine threshold in force (optionally scaled to the embedding width)."""
    a = ctx.recipe.analysis
    if a.cluster_threshold_scaling:
        return float(a.cluster_threshold * (PAPER_EMBEDDING_DIM / d_embedding) ** 0.5)
    return float(a.cluster_threshold)


def analysis_config(ctx):
    """AnalysisConfig from the recipe's analysis section."""
    from sae_bilingual.analysis import AnalysisConfig

    a = ctx.recipe.analysis
    cfg = AnalysisConfig(threshold_ratio=a.act_threshold, lang_threshold=a.lang_threshold,
                         lang_rule=a.language_rule, span_mode=a.span_rule)
    if a.language_rule == "script":
        from sae_bilingual.analysis import script_of_tokens

        tok = ctx.tokenizer()
        pieces = tok.convert_ids_to_tokens(list(range(len(tok))))
        cfg.token_script = script_of_tokens(pieces, tuple(ctx.recipe.data.languages))
    return cfg


def analyse_layer(ctx, unit, layer, sae, vectors, labels, clusters, ldir: Path) -> dict[str, Any]:
    """Codes -> per-feature table (+ examples) -> summary row for one SAE."""
    from sae_bilingual.analysis import analyse_features, summarise
    from sae_bilingual.examples import top_examples
    from sae_bilingual.codes import encode_to_codes
    from sae_bilingual.io import save_parquet

    a = ctx.recipe.analysis
    languages = tuple(ctx.recipe.data.languages)
    codes = encode_to_codes(sae, vectors, labels, languages=languages)
    codes.save(ldir / "codes.safetensors")
    acfg = analysis_config(ctx)
    gt = clusters.ground_truth
    use_gt = a.cluster_method == "ground_truth" and gt is not None
    df = analyse_features(codes, sae.cfg.d_sae, token_clusters=gt if use_gt else clusters.embeddings, cfg=acfg)
    row: dict[str, Any] = {}
    if gt is not None:
        if not use_gt:
            gt_df = analyse_features(codes, sae.cfg.d_sae, token_clusters=gt, cfg=acfg)
            df["R_gt"] = gt_df["R"]
            row["mean_R_gt"] = float(gt_df.loc[~gt_df["dead"], "R"].mean())
        from sae_bilingual.ground_truth import score_ground_truth

        gt_cols, gt_scores = score_ground_truth(codes, df, ctx.world.ground_truth, cfg=acfg)
        for c in gt_cols.columns:
            df[c] = gt_cols[c]
        row.update({k: v for k, v in gt_scores.items() if np.isscalar(v)})
    tok = ctx.tokenizer(unit.model_index)
    df["top_tokens"] = [[tok.convert_ids_to_tokens(int(t)) for t in ids] for ids in df["top_token_ids"]]
    save_parquet(df, ldir / "features.parquet")
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
    from sae_bilingual.store import collect_activations
    from sae_bilingual.train import lr_grid

    grid = list(ctx.recipe.sae.lr_grid)
    path = out / "tables" / "lr_grid.csv"
    if path.exists():
        df = pd.read_csv(path)
        if sorted(df["lr"]) == sorted(grid):
            return float(df.loc[df["val_mse"].idxmin(), "lr"])
    model = _load_model(ctx, unit)
    hook = hook_for_layer(unit.layers[0])
    eval_acts, _ = collect_activations(model, ctx.windows("eval", unit.model_index), [hook],
                                       batch_size=ctx.recipe.data.lm_batch_size, device=ctx.recipe.device)
    cfg = train_config(ctx, grid[0], ctx.windows("train", unit.model_index).n_vectors)
    df, best = lr_grid(lambda: _store(ctx, unit, model, [hook], cfg.batch_size, out), hook, cfg, eval_acts[hook], grid)
    df["model"], df["iteration"], df["layer"] = unit.family, unit.iteration, unit.layers[0]
    save_parquet(df, out / "tables" / "lr_grid.parquet")
    atomic_write_text(path, df.to_csv(index=False))  # last: its presence marks the grid done
    return float(best)


def run_intervention(ctx, plan, out: Path, progress: bool = True):
    """Table 1 / Table 4: inject final-model features into the mid checkpoint."""
    import pandas as pd

    from sae_bilingual.evaluation import aggregate_table, compare_with_paper, run_intervention_table, table1, table4, to_markdown
    from sae_bilingual.layers import parse_layers
    from sae_bilingual.sae import load_sae
    from sae_bilingual.study import Unit

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
    name = next(u.family for u in plan.units if u.model_index == iv.model)  # the model's output name
    ldir = Unit(iv.model, name, final.iteration, final.tokens, [layer]).layer_dir(out, layer)
    sae = load_sae(ldir / "sae", device=ctx.recipe.device)
    features = pd.read_parquet(ldir / "features.parquet")
    dtype = _torch_dtype(ctx.recipe.dtype)
    final_model = fam.load(final, device=ctx.recipe.device, dtype=dtype)
    mid_model = fam.load(mid, device=ctx.recipe.device, dtype=dtype)
    windows = ctx.windows("eval", iv.model)
    windows = _first_docs_per_lang(windows, iv.eval_docs_per_lang)
    pairs = _translation_pairs(ctx)
    if pairs is not None:
        pairs = pairs.iloc[: iv.translation_pairs + iv.few_shot].reset_index(drop=True)
    comet = True if (iv.comet_python or iv.comet_model) else None
    ms = _feasible_ms(features, iv, sae.cfg.d_sae)
    draws = run_intervention_table(
        final_model, mid_model, sae, features, layer,
        conditions=tuple(iv.conditions), alpha=list(iv.alphas), m=ms, n_draws=iv.draws,
        seed=ctx.recipe.seed, windows=windows, pairs=pairs, languages=tuple(ctx.recipe.data.languages),
        few_shot=iv.few_shot, max_new_tokens=iv.max_new_tokens, tokenizer=ctx.tokenizer(iv.model),
        template=_translation_template(ctx),
        scale=iv.scale, add_bias=iv.add_bias, scale_m_to_sae=False, comet=comet,
        comet_kwargs={"python": iv.comet_python, "model_path": iv.comet_model} if comet else None,
    )
    draws["mid_iteration"], draws["final_iteration"], draws["layer"] = mid.iteration, final.iteration, layer
    agg = aggregate_table(draws)
    variant = decoder_variant(iv.add_bias, iv.scale)
    draws["decoder"] = agg["decoder"] = variant
    md = [f"Injected: alpha * D(mask * E(X_full)) with {variant}.", "",
          "## Table 1", to_markdown(table1(agg)), "", "## Table 4 (PPL all, relative to none)", to_markdown(table4(agg))]
    if is_paper_model(fam):  # the paper's numbers are for LLM-jp-3 3.7B only
        md += ["", "## Beside the paper", compare_with_paper(agg)]
    atomic_write_text(out / "tables" / "intervention_draws.csv", draws.to_csv(index=False))
    atomic_write_text(out / "tables" / "intervention.md", "\n".join(md) + "\n")
    atomic_write_text(path, agg.to_csv(index=False))
    return agg


def decoder_variant(add_bias: bool, scale: str) -> str:
    """How the injected vector was decoded, in words for tables and the report."""
    d = "D(z) = W_dec z + b_pre (the paper's decoder)" if add_bias else "D(z) = W_dec z without b_pre (not the paper's)"
    s = "rescaled by ||X_full|| (residual scale)" if scale == "residual" else "left in unit-norm space"
    return f"{d}, {s}"


def _feasible_ms(features, iv, d_sae: int) -> list[int]:
    """Mask sizes per recipe m: scaled to this SAE's n, capped at the smallest class.

    Every class must be drawn with the same m for the comparison to be fair; a small SAE
    may have fewer live Mixed features than the scaled m, so we cap (and say so).
    """
    from sae_bilingual.intervention import scale_m

    classes = [c for c in iv.conditions if c != "none"]
    counts = features.loc[~features["dead"], "cls"].value_counts()
    smallest = min(int(counts.get(c, 0)) for c in classes) if classes else 0
    out = []
    for m in iv.ms:
        want = scale_m(m, d_sae) if iv.scale_m else m
        if want > smallest:
            log.warning("intervention m=%d (scaled %d) exceeds the smallest class (%d live features; %s): "
                        "using m=%d for every class", m, want, smallest, dict(counts), smallest)
            want = smallest
        out.append(want)
    if min(out, default=0) < 1:
        from sae_bilingual.errors import DataError

        raise DataError(f"intervention: a class in {classes} has no live features ({dict(counts)}); "
                        "train a larger SAE or drop that condition")
    return out


def _first_docs_per_lang(windows, n: int):
    """The first ``n`` eval windows of each language (same tokens for every condition)."""
    keep = torch.cat([torch.nonzero(windows.lang == i).flatten()[:n] for i in range(len(windows.languages))])
    return windows.subset(keep.sort().values)


def _translation_pairs(ctx):
    """Parallel test pairs: files named in the recipe, else the toy world's own, else none."""
    import pandas as pd

    iv = ctx.recipe.intervention
    if iv.pairs_paths:
        cols = {}
        for lang, path in iv.pairs_paths.items():
            lines = Path(path).read_text(encoding="utf-8").splitlines()
            cols[lang] = [l.replace(" ", "") if lang in iv.unspace_languages else l.strip() for l in lines]
        lengths = {lang: len(v) for lang, v in cols.items()}
        if len(set(lengths.values())) != 1:
            from sae_bilingual.errors import DataError

            raise DataError(f"intervention.pairs_paths are not line-aligned: {lengths} lines")
        return pd.DataFrame(cols)
    if ctx.recipe.data.corpus == "toy":
        return ctx.world.translation_pairs
    return None


def _translation_template(ctx):
    """The toy world has no 'English:' tokens: its bilingual documents are bare sentence
    pairs, so the prompt is the same form ("src tgt src tgt src") and generation stops at
    the target sentence's end mark."""
    from sae_bilingual.evaluation import PromptTemplate

    if ctx.recipe.data.corpus == "toy" and not ctx.recipe.intervention.pairs_paths:
        return PromptTemplate(shot="{src} {tgt} ", query="{src}", stops=("。", "."))
    return PromptTemplate()
