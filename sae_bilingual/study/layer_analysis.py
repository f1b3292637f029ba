"""The analyse stage of a unit: one layer's codes -> its feature table, examples and summary row.

Pure: it reads the codes, the token clusters and the translation pairs it is given and
returns a :class:`LayerAnalysis`; the pipeline's write stage puts it on disk. The token
clusters (H_sem's semantic clusters) are built here too, once per embedding checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from sae_bilingual.analysis.codes import Codes
from sae_bilingual.analysis.examples import top_examples
from sae_bilingual.analysis.features import analyse_features, summarise
from sae_bilingual.analysis.token_script import script_of_tokens
from sae_bilingual.analysis.ground_truth import score_ground_truth
from sae_bilingual.analysis.semantic import (
    TokenGraph,
    clusters_from_ground_truth,
    token_clusters_from_embeddings,
    token_graph_from_embeddings,
)
from sae_bilingual.defaults import PAPER_EMBEDDING_DIM
from sae_bilingual.layers import hook_for_layer
from sae_bilingual.models.embeddings import input_embeddings
from sae_bilingual.models.registry import get_family
from sae_bilingual.study import alignment_stage
from sae_bilingual.study.context import StudyContext
from sae_bilingual.study.schemas import check_summary_row
from sae_bilingual.study.unit import Unit


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


@dataclass
class LayerAnalysis:
    """What the analyse stage returns for one layer's SAE (the write stage stores it)."""

    features: pd.DataFrame
    """One row per feature (features.parquet)."""
    examples: dict[str, list[dict[str, Any]]]
    """Top activating contexts of the browser's features (examples.json)."""
    row: dict[str, Any]
    """The layer's summary row, without the reconstruction, CE and timing columns."""


def _embedding_checkpoint(ctx: StudyContext, unit: Unit) -> tuple[Any, Any]:
    """(family, checkpoint) whose input embeddings cluster the tokens of ``unit``."""
    a = ctx.recipe.analysis
    if a.embedding_source == "model":
        em = a.embedding_model
        assert em is not None  # AnalysisSpec.validate requires it for embedding_source: model
        fam = get_family(em.family, source=em.source, **({"revision": em.revision} if em.revision else {}))
        cat = fam.catalogue()
        return fam, cat.final if em.checkpoint == "final" else cat.select(iteration=int(em.checkpoint))
    fam = ctx.family(unit.model_index)
    cat = fam.catalogue()
    return fam, cat.final if a.embedding_source == "final" else cat.select(iteration=unit.iteration)


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
                  pairs: alignment_stage.PairCodes | None = None) -> LayerAnalysis:
    """Codes (+ the translation pairs' codes) -> per-feature table, examples and summary row of one SAE."""
    a = ctx.recipe.analysis
    languages = tuple(ctx.recipe.data.languages)
    scripts = token_script(ctx)
    gt = clusters.ground_truth
    use_gt = a.cluster_method == "ground_truth" and gt is not None
    df = analyse_features(codes, sae.cfg.d_sae, token_clusters=gt if use_gt else clusters.embeddings, cfg=a,
                          token_script=scripts, more_clusters={"gt": gt} if gt is not None and not use_gt else None)
    row: dict[str, Any] = {}
    if "R_gt" in df:
        row["mean_R_gt"] = float(df.loc[~df["dead"], "R_gt"].mean())
    if gt is not None:
        gt_cols, gt_scores = score_ground_truth(codes, df, ctx.world.ground_truth, cfg=a)
        for c in gt_cols.columns:
            df[c] = gt_cols[c]
        row.update({k: v for k, v in gt_scores.items() if np.isscalar(v)})
    row.update(alignment_stage.add_to_table(ctx, df, pairs, hook_for_layer(layer)))
    tok = ctx.tokenizer(unit.model_index)
    df["top_tokens"] = [[tok.convert_ids_to_tokens(int(t)) for t in ids] for ids in df["top_token_ids"]]
    browse = _browser_features(df, a.n_browser_features, languages)
    examples = top_examples(codes, None, browse, n_examples=a.n_examples, tokenizer=tok)
    fam = ctx.family(unit.model_index)
    row.update({
        "model": unit.family, "size": unit.family, "iteration": unit.iteration, "tokens": unit.tokens,
        "layer": layer, "hook": hook_for_layer(layer), "n_layers": fam.n_layers, "n_tokens": codes.n,
        "d_sae": sae.cfg.d_sae, "k": sae.cfg.k, "cluster_threshold": clusters.threshold,
        "cluster_scope": a.cluster_scope,
    })
    row.update(summarise(df, languages))
    check_summary_row(row, languages)
    return LayerAnalysis(df, examples, row)


def _browser_features(df: pd.DataFrame, n: int, languages: tuple[str, ...]) -> list[int]:
    """A balanced pick of live features per class for the browser (most active first)."""
    live = df.loc[~df["dead"].astype(bool)]
    classes = list(languages) + ["mixed"]
    per = max(1, n // len(classes))
    picks: list[int] = []
    for c in classes:
        sub = live[live["cls"] == c].sort_values("n_active", ascending=False)
        picks.extend(int(i) for i in sub.index[:per])
    return picks
