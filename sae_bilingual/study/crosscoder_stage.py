"""The study's crosscoder stage: one BatchTopK crosscoder per listed layer across C checkpoints.

Runs after the per-checkpoint units and the lineage stage (it compares with both). For each
layer of ``crosscoder:`` it builds the aligned rows (data/crosscoder_store.py: the C
checkpoints loaded one at a time over the study's own windows), trains the crosscoder
(sae/crosscoder_train.py), and writes under ``crosscoders/<model>/L<layer>/``:

- ``crosscoder/`` cfg.json + sae_weights.safetensors (SAELens layout, ``SAE.load_from_disk``);
- ``latents.parquet``: one row per latent (analysis/crosscoder.py: shares, emergence, class
  per slice, ground-truth columns and exclusive real/artefact on the toy world);
- ``lineage_comparison.parquet`` (and ``tables/crosscoder_<model>_L<layer>_lineage.csv``):
  each latent's emergence vs the lineage birth of its best-matching final SAE feature;
- ``summary.json`` LAST: FVU per slice beside the per-checkpoint SAEs' FVU, counts. A layer
  is finished when its summary.json exists and records the same settings (the resume rule of
  the units: rerunning skips it; a killed layer is redone from the start, deterministically).

The figure ``figures/crosscoder_<model>_L<layer>.{png,svg}`` shows latent emergence over
training tokens by class; ``tables/crosscoder_summary.csv`` lists every layer's summary.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from sae_bilingual.analysis.codes import Codes
from sae_bilingual.analysis.crosscoder import (
    codes_from_sparse,
    exclusive_reality,
    latent_table,
    lineage_birth,
    lineage_comparison,
)
from sae_bilingual.analysis.features import analyse_features
from sae_bilingual.analysis.ground_truth import score_ground_truth
from sae_bilingual.analysis.semantic import clusters_from_ground_truth
from sae_bilingual.config_crosscoder import crosscoder_targets
from sae_bilingual.data.crosscoder_store import AlignedRows, collect_aligned_sets, windows_for_tokens
from sae_bilingual.io import atomic_write_json, atomic_write_text, save_parquet
from sae_bilingual.layers import hook_for_layer
from sae_bilingual.report.figures_crosscoder import fig_crosscoder_emergence
from sae_bilingual.report.plotting import slug
from sae_bilingual.sae.crosscoder_config import PaperCrosscoderConfig
from sae_bilingual.sae.crosscoder_train import eval_crosscoder, save_crosscoder, train_crosscoder
from sae_bilingual.sae.files import load_sae
from sae_bilingual.study.layer_analysis import token_script
from sae_bilingual.study.pipeline import _torch_dtype
from sae_bilingual.study.layout import FEATURES_FILE, tables_dir
from sae_bilingual.study.unit import layer_dirname
from sae_bilingual.study.context import StudyContext

log = logging.getLogger(__name__)

__all__ = ["crosscoder_dir", "run_all_crosscoders", "run_crosscoder"]

ENCODE_CHUNK = 8192
"""Evaluation rows encoded at once."""


def crosscoder_dir(out: Path, model: str, layer: int) -> Path:
    """Where the crosscoder of ``model``'s ``layer`` lives in a study folder."""
    return Path(out) / "crosscoders" / model / layer_dirname(layer)


def _settings(ctx: StudyContext, units: list[Any], lr: float) -> dict[str, Any]:
    """What decides a crosscoder: a finished one with other settings is redone."""
    cc = ctx.recipe.crosscoder
    return {"iterations": [u.iteration for u in units], "k": cc.k, "d_sae": cc.d_sae, "expansion": cc.expansion,
            "lr": lr, "tokens": cc.tokens, "batch_size": cc.batch_size, "seed": ctx.recipe.seed,
            "emergence_threshold": cc.emergence_threshold, "extra": cc.extra}


def _encode_codes(model: Any, al: AlignedRows, languages: tuple[str, ...]) -> Codes:
    """The crosscoder's codes of every evaluation row, a chunk at a time (the sparse encode)."""
    vals, idx = [], []
    dev = model.W_enc.device
    for s in range(0, al.rows.shape[0], ENCODE_CHUNK):
        v, i = model.encode_sparse(al.rows[s:s + ENCODE_CHUNK].to(dev))
        vals.append(v.cpu())
        idx.append(i.cpu())
    return codes_from_sparse(torch.cat(vals), torch.cat(idx), int(model.cfg.d_sae), al.labels, languages)


def _sae_rows(out: Path, units: list[Any], layer: int) -> tuple[list[dict[str, Any]], list[pd.DataFrame]]:
    """The per-checkpoint SAEs' summary rows and feature tables at ``layer``."""
    rows, feats = [], []
    for u in units:
        d = u.layer_dir(out, layer)
        rows.append(json.loads((d / "summary.json").read_text(encoding="utf-8")))
        feats.append(pd.read_parquet(d / FEATURES_FILE))
    return rows, feats


def _comparison(out: Path, model: Any, table: pd.DataFrame, units: list[Any], layer: int) -> pd.DataFrame | None:
    """Emergence vs lineage birth, when the lineage stage ran on this layer and ends at the
    crosscoder's last checkpoint (else None, logged)."""
    stem = f"lineage_{slug(units[0].family)}_L{int(layer):02d}"
    tab, sj = tables_dir(out) / f"{stem}.csv", tables_dir(out) / f"{stem}_summary.json"
    if not (tab.exists() and sj.exists()):
        log.info("crosscoder L%02d: no lineage table %s; the lineage comparison is skipped", layer, tab)
        return None
    summ = json.loads(sj.read_text(encoding="utf-8"))
    final = units[-1]
    if int(summ["final_iteration"]) != final.iteration:
        log.info("crosscoder L%02d ends at iteration %d, the lineage at %s; comparison skipped", layer,
                 final.iteration, summ["final_iteration"])
        return None
    anc = pd.read_csv(tab)
    birth = lineage_birth(anc, summ["iterations"], float(summ["threshold"]))
    first = anc.drop_duplicates("feature").set_index("feature")
    origin = first["origin"].reindex(np.arange(len(birth))).fillna("").to_numpy() if "origin" in first else None
    sae = load_sae(final.layer_dir(out, layer) / "sae")
    dec = sae.W_dec.detach().float().cpu()
    return lineage_comparison(table, model.W_dec_per_checkpoint[:, -1, :].detach().float().cpu(), dec, birth,
                              origin, summ["iterations"])


def run_crosscoder(ctx: StudyContext, layer: int, units: list[Any], out: Path, lr: float) -> dict[str, Any]:
    """Train, save and analyse the crosscoder of ``layer`` over ``units`` (by iteration)."""
    cc, recipe = ctx.recipe.crosscoder, ctx.recipe
    folder = crosscoder_dir(out, units[0].family, layer)
    settings = _settings(ctx, units, lr)
    done = folder / "summary.json"
    if done.exists():
        prev = json.loads(done.read_text(encoding="utf-8"))
        if prev.get("settings") == json.loads(json.dumps(settings)):
            log.info("crosscoder %s L%02d already finished", units[0].family, layer)
            return prev
    t0 = time.perf_counter()
    fam = ctx.family(cc.model)
    cat = fam.catalogue()
    hook = hook_for_layer(layer)
    languages = tuple(recipe.data.languages)
    train_w = windows_for_tokens(ctx.windows("train", cc.model), cc.tokens)
    eval_w = ctx.windows("eval", cc.model)

    def load(c: int) -> Any:
        return fam.load(cat.select(iteration=units[c].iteration), device=recipe.device,
                        dtype=_torch_dtype(recipe.dtype))

    train, ev = collect_aligned_sets(load, len(units), [train_w, eval_w], hook,
                                     lm_batch_size=recipe.data.lm_batch_size, device=recipe.device,
                                     dtype=_torch_dtype(recipe.data.buffer_dtype))
    t_collect = time.perf_counter() - t0
    C, d = len(units), train.d_model
    n = cc.d_sae or cc.expansion * d
    cfg = PaperCrosscoderConfig(d_in=C * d, d_sae=n, d_model=d, n_checkpoints=C, k=cc.k, device=recipe.device)
    model, stats = train_crosscoder(train.rows, cfg, lr=lr, tokens=cc.tokens or int(train.rows.shape[0]),
                                    batch_size=cc.batch_size, seed=recipe.seed, device=recipe.device, **cc.extra)
    del train
    md = {"model_name": units[0].family, "paper_layer": int(layer), "hook_name": hook,
          "checkpoint_iterations": [u.iteration for u in units], "checkpoint_tokens": [u.tokens for u in units],
          "languages": list(languages)}
    for k, v in md.items():
        model.cfg.metadata[k] = v
    save_crosscoder(model, folder / "crosscoder")
    t1 = time.perf_counter()
    metrics = eval_crosscoder(model, ev.rows)
    codes = _encode_codes(model, ev, languages)
    acfg = ctx.recipe.analysis
    gt = ctx.world.ground_truth if recipe.data.corpus == "toy" else None
    clusters = clusters_from_ground_truth(gt["concept"]) if gt is not None else None
    feats = analyse_features(codes, n + 1, token_clusters=clusters, cfg=acfg, token_script=token_script(ctx))  # n + 1: the padding latent
    if gt is not None:
        gt_cols, _ = score_ground_truth(codes, feats, gt, cfg=acfg)
        feats = feats.join(gt_cols)
    feats = feats.iloc[:n]
    table = latent_table(model.decoder_norms().cpu(), feats, [u.iteration for u in units], [u.tokens for u in units],
                         cc.emergence_threshold)
    sae_rows, sae_feats = _sae_rows(out, units, layer)
    if gt is not None and all("dominant_concept" in f.columns for f in sae_feats):
        table["exclusive_kind"] = exclusive_reality(table, sae_feats)
    save_parquet(table.drop(columns=["top_token_ids"], errors="ignore"), folder / "latents.parquet")
    comp = _comparison(out, model, table, units, layer)
    stem = f"crosscoder_{slug(units[0].family)}_L{int(layer):02d}"
    if comp is not None:
        save_parquet(comp, folder / "lineage_comparison.parquet")
        atomic_write_text(tables_dir(out) / f"{stem}_lineage.csv", comp.to_csv(index=False))
    fig_crosscoder_emergence(table, [u.tokens for u in units], f"{units[0].family}, layer {layer}: crosscoder "
                             f"latents alive by each checkpoint (C = {C}, n = {n})", out / "figures", stem)
    summary = _summary(table, metrics, sae_rows, stats, comp, units, layer, n, C)
    summary.update(settings=settings, seconds_collect=round(t_collect, 2), seconds_analysis=round(
        time.perf_counter() - t1, 2), seconds=round(time.perf_counter() - t0, 2))
    atomic_write_json(done, summary)  # last: marks the layer finished
    return summary


def _summary(table: pd.DataFrame, metrics: dict[str, Any], sae_rows: list[dict[str, Any]], stats: dict[str, Any],
             comp: pd.DataFrame | None, units: list[Any], layer: int, n: int, C: int) -> dict[str, Any]:
    """The layer's numbers: FVU per slice vs its SAE, latent counts by class, exclusivity."""
    live = table["emergence_index"] >= 0
    mixed = live & (table["cls"].astype(str) == "mixed")
    sae_fvu = [float(r["fvu"]) if r.get("fvu") is not None else float("nan") for r in sae_rows]
    slices = [{"iteration": u.iteration, "tokens": u.tokens, "fvu": float(s["fvu"]), "sae_fvu": f,
               "ratio": float(s["fvu"]) / f if f else float("nan")}
              for u, s, f in zip(units, metrics["slices"], sae_fvu)]
    out: dict[str, Any] = {
        "model": units[0].family, "layer": int(layer), "n_checkpoints": C, "d_sae": n,
        "sae_total_latents": int(sum(int(r.get("d_sae", 0)) for r in sae_rows)),
        "fvu": float(metrics["fvu"]), "l0": float(metrics["l0"]), "n_dead": int(metrics["n_dead"]),
        "slices": slices, "max_fvu_ratio": max(s["ratio"] for s in slices),
        "n_live": int(live.sum()), "n_mixed": int(mixed.sum()),
        "n_exclusive": int(table["exclusive"].sum()),
        "emerged": {str(u.iteration): int((table["emergence_index"] == c).sum()) for c, u in enumerate(units)},
        "train_seconds": round(float(stats.get("seconds", 0.0)), 2), "train_steps": int(stats.get("steps", 0)),
    }
    if "bilingual_concept" in table.columns:
        bc = live & table["bilingual_concept"].astype(bool)
        out["n_bilingual_concept"] = int(bc.sum())
        out["n_mixed_bilingual_concept"] = int((bc & mixed).sum())
        out["mixed_bilingual_emerged"] = {str(u.iteration): int(((table["emergence_index"] == c) & bc & mixed).sum())
                                          for c, u in enumerate(units)}
    if "exclusive_kind" in table.columns:
        out["exclusive_kinds"] = {k: int((table["exclusive_kind"] == k).sum()) for k in ("real", "artefact", "unknown")}
    if comp is not None:
        out["lineage_relation"] = {k: int((comp["relation"] == k).sum()) for k in ("same", "earlier", "later")}
    return out


def run_all_crosscoders(ctx: StudyContext, plan: Any, out: Path, lr: float) -> list[dict[str, Any]]:
    """Every layer of an enabled ``crosscoder:`` section (none while disabled); writes
    ``tables/crosscoder_summary.csv``. ``lr``: the study's SAE learning rate (``crosscoder.lr: sae``)."""
    cc = ctx.recipe.crosscoder
    if not cc.enabled:
        return []
    lr_cc = float(lr) if cc.lr == "sae" else float(cc.lr)
    targets = crosscoder_targets(cc, plan.units, ctx.family(cc.model).n_layers)
    rows = [run_crosscoder(ctx, layer, units, Path(out), lr_cc) for layer, units in targets]
    flat = pd.DataFrame([{k: v for k, v in r.items() if not isinstance(v, (dict, list))} for r in rows])
    atomic_write_text(tables_dir(out) / "crosscoder_summary.csv", flat.to_csv(index=False))
    return rows
