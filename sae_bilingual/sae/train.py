"""Train the paper's TopK SAEs with SAELens's MultiSAETrainer; eval metrics; LR grid.

Every hook's SAE trains in lockstep from one activation stream (one LM forward feeds all
layers). The training loop, LR schedule, dead-latent tracking and checkpoints are
SAELens's; ours is the architecture (sae.py), the data (store.py) and three adjustments
made on SAELens's own objects rather than by forking its loop:
  * Adam eps = 6.25e-10 (original code), and torch's fused kernel, are set on each per-SAE
    optimiser after construction;
  * b_pre is initialised to the geometric median of the first batch, which is then still
    used for training (the stream is re-chained);
  * decoder rows are re-normalised inside the SAE's training forward (see sae.py) and once
    more at the end.
SAELens clips the global gradient norm to 1.0; under Adam a per-step rescaling of the whole
gradient changes almost nothing (Adam divides by the gradient's running RMS), so we keep it.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sae_bilingual.ce import ce_metrics, ce_metrics_many  # noqa: F401  (re-exported: they used to live here)
from sae_bilingual.errors import ConfigError, DataError, ExtraMissingError
from sae_bilingual.sae.model import (
    PaperTopKSAE,
    PaperTopKTrainingSAE,
    PaperTopKTrainingSAEConfig,
    make_metadata,
    save_sae,
    to_inference,
)

log = logging.getLogger(__name__)


@dataclass
class SAETrainConfig:
    """How to train one SAE per hook (paper defaults)."""

    k: int = 32
    """latents kept per token (paper: 32)"""
    d_sae: int | None = None
    """number of latents; None = expansion * d_in"""
    expansion: int = 16
    """d_sae / d_in when d_sae is None (paper: 32768 / 2048 = 16)"""
    lr: float = 5e-4
    """Adam learning rate (paper grid 1e-4..5e-3, chosen per model size)"""
    batch_size: int = 32768
    """vectors per step (paper: 32768); the store must yield this size"""
    total_training_tokens: int | None = None
    """vectors to train on (paper: 100M); or give total_steps"""
    total_steps: int | None = None
    """optimiser steps; overrides total_training_tokens"""
    warmup_steps: int = 500
    """linear LR warm-up (paper: 500); clamped to a tenth of a short run"""
    adam_eps: float = 6.25e-10
    """Adam epsilon of the original code"""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """Adam betas"""
    fused_adam: bool = True
    """torch's fused Adam kernel (CPU and CUDA); False = SAELens's default per-tensor Adam"""
    seed: int = 0
    """seed for SAE initialisation"""
    device: str = "cpu"
    """device for the SAEs"""
    dtype: str = "float32"
    """SAE parameter dtype"""
    fast: bool = True
    """sparse training step (False = dense reference; same maths)"""
    geometric_median_sample: int = 4096
    """vectors of the first batch used for the geometric-median b_pre"""
    wandb: bool = False
    """log to Weights & Biases (needs the `wandb` extra)"""
    wandb_project: str = "sae-bilingual"
    """W&B project when wandb is on"""
    checkpoint_every: int = 0
    """save a SAELens checkpoint every this many steps (0 = never)"""
    dead_feature_window: int = 1000
    """steps without firing after which SAELens calls a latent dead"""
    aux_k_coefficient: float = 0.0
    """weight of the auxiliary-K loss on dead latents: a deviation from the paper (0 = off; auxk.py)"""
    extra: dict[str, Any] = field(default_factory=dict)
    """free-form provenance copied into each SAE's metadata"""

    def steps(self) -> int:
        """Number of optimiser steps this config asks for."""
        if self.total_steps is not None:
            n = int(self.total_steps)
        elif self.total_training_tokens is not None:
            n = int(self.total_training_tokens) // self.batch_size
        else:
            raise ConfigError("give total_steps or total_training_tokens (paper: 100M tokens)")
        if n < 1:
            raise ConfigError(f"the run has {n} steps: total_training_tokens must be >= batch_size "
                              f"({self.batch_size})")
        return n

    def warmup(self) -> int:
        """Warm-up steps, clamped to a tenth of the run for short (test) runs."""
        return min(self.warmup_steps, self.steps() // 10)


def _hook_dirname(hook: str) -> str:
    return hook.replace("/", "_")


def hook_seed(seed: int, hook: str) -> int:
    """Seed of one hook's SAE initialisation: depends on (seed, hook) only.

    Why: a resumed study retrains only the layers that are missing; if the SAEs drew their
    initial weights one after another from a single seeded stream, a layer's SAE would
    depend on which other layers happened to train beside it, and a resumed run would not
    reproduce an uninterrupted one.
    """
    import zlib

    return (int(seed) * 1_000_003 + zlib.crc32(hook.encode("utf-8"))) % (2**63 - 1)


def convergence(losses: Sequence[float], tolerance: float = 0.1) -> dict[str, float]:
    """How fast a training run converged, from its per-step losses.

    ``train_loss_final`` is the mean loss of the last tenth of the steps;
    ``train_steps_to_final`` the first step whose running mean (window: a twentieth of the
    run) is within ``tolerance`` (10 %) of it; ``train_loss_first_tenth`` the mean loss of
    the first tenth. Why: a warm start should show up as fewer steps to converge and a
    lower early loss.
    """
    import numpy as np

    x = np.asarray(losses, dtype=np.float64)
    if x.size == 0:
        raise DataError("no training losses recorded")
    tenth = max(1, x.size // 10)
    final = float(x[-tenth:].mean())
    w = max(1, x.size // 20)
    running = np.convolve(x, np.ones(w) / w, mode="valid")  # running[i] = mean of x[i : i + w]
    hit = np.flatnonzero(running <= (1 + tolerance) * final)
    steps = int(hit[0] + w) if hit.size else int(x.size)
    return {"train_loss_final": final, "train_loss_first_tenth": float(x[:tenth].mean()),
            "train_steps_to_final": steps}


def train_saes(store: Iterator[Mapping[str, torch.Tensor]], hooks: Sequence[str], cfg: SAETrainConfig,
               metadata_by_hook: Mapping[str, Mapping[str, Any]] | None = None,
               save_dir: str | Path | None = None,
               init_from: Mapping[str, PaperTopKSAE] | None = None) -> dict[str, PaperTopKSAE]:
    """Train one paper TopK SAE per hook, in lockstep, through SAELens's MultiSAETrainer.

    ``store`` yields ``{hook: Tensor[batch_size, d]}`` (e.g. :class:`ActivationStore`).
    ``init_from`` gives, per hook, an SAE to start from (warm start) instead of the paper's
    initialisation. Returns inference SAEs (decoder rows unit-norm) whose metadata carries
    ``warm_start`` and the run's :func:`convergence`; with ``save_dir`` each is saved in
    SAELens layout under ``save_dir/<hook>/``.
    """
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.training.multi_sae_trainer import MultiSAETrainer

    hooks = list(hooks)
    if not hooks:
        raise ConfigError("no hooks to train; pass e.g. ['blocks.5.hook_resid_post']")
    first = next(iter(store))
    if isinstance(first, tuple):
        raise ConfigError("the store yields (acts, labels); build it with with_labels=False for training")
    missing = [h for h in hooks if h not in first]
    if missing:
        raise DataError(f"the store has no activations for {missing}; it holds {sorted(first)}")
    bs = int(first[hooks[0]].shape[0])
    if bs != cfg.batch_size:
        raise ConfigError(f"the store yields batches of {bs} vectors but cfg.batch_size={cfg.batch_size}; "
                          "make them equal")
    steps = cfg.steps()
    saes: dict[str, PaperTopKTrainingSAE] = {}
    for h in hooks:
        torch.manual_seed(hook_seed(cfg.seed, h))  # independent of the other hooks trained now
        d_in = int(first[h].shape[-1])
        md = make_metadata(hook_name=h, seed=cfg.seed, k=cfg.k, lr=cfg.lr, aux_k_coefficient=cfg.aux_k_coefficient,
                           training_tokens=steps * cfg.batch_size, **cfg.extra,
                           **dict((metadata_by_hook or {}).get(h, {})))
        scfg = PaperTopKTrainingSAEConfig(d_in=d_in, d_sae=cfg.d_sae or cfg.expansion * d_in, k=cfg.k,
                                          device=cfg.device, dtype=cfg.dtype, fast=cfg.fast,
                                          aux_k_coefficient=cfg.aux_k_coefficient, metadata=md)
        sae = PaperTopKTrainingSAE(scfg)
        if init_from and h in init_from:
            sae.init_from(init_from[h])
        else:
            sae.init_b_pre(first[h][: cfg.geometric_median_sample].to(sae.device))
        saes[h] = sae

    logger = LoggingConfig(log_to_wandb=False)
    if cfg.wandb:
        try:
            import wandb
        except ImportError as e:  # pragma: no cover
            raise ExtraMissingError("wandb logging", "pip install 'sae-bilingual[wandb]'") from e
        wandb.init(project=cfg.wandb_project, config=cfg.__dict__)
        logger = LoggingConfig(log_to_wandb=True, wandb_project=cfg.wandb_project)
    ckpt_path = None
    n_ckpt = 0
    if cfg.checkpoint_every and save_dir is not None:
        n_ckpt = max(0, steps // cfg.checkpoint_every - 1)
        ckpt_path = str(Path(save_dir) / "checkpoints")
    tcfg = SAETrainerConfig(
        total_training_samples=steps * cfg.batch_size, train_batch_size_samples=cfg.batch_size,
        lr=cfg.lr, lr_end=cfg.lr, lr_scheduler_name="constant", lr_warm_up_steps=cfg.warmup(),
        adam_beta1=cfg.adam_betas[0], adam_beta2=cfg.adam_betas[1], device=cfg.device,
        dead_feature_window=cfg.dead_feature_window, feature_sampling_window=max(1, steps),
        n_checkpoints=n_ckpt, checkpoint_path=ckpt_path, logger=logger)
    trainer = MultiSAETrainer(tcfg, saes=dict(saes), hook_names={h: h for h in hooks},
                              data_provider=itertools.chain([first], store))
    for t in trainer.trainers.values():
        for g in t.optimizer.param_groups:
            g["eps"] = cfg.adam_eps
            # torch's fused Adam: one kernel per step instead of ~10 per tensor (~1 ms of a
            # 6 ms toy step on 2 cores); same update up to float rounding. Set before the
            # first step, when the optimiser has no state yet.
            g["fused"] = cfg.fused_adam
    log.info("training %d SAE(s) for %d steps of %d vectors", len(hooks), steps, cfg.batch_size)
    trainer.fit()
    out: dict[str, PaperTopKSAE] = {}
    for h, sae in saes.items():
        sae.normalize_decoder_()
        inf = to_inference(sae)
        inf.cfg.metadata.n_training_steps = steps
        inf.cfg.metadata.warm_start = bool(init_from and h in init_from)
        for key, value in convergence(torch.stack(sae.loss_history).float().tolist()).items():
            inf.cfg.metadata[key] = value
        out[h] = inf
        if save_dir is not None:
            save_sae(inf, Path(save_dir) / _hook_dirname(h))
    return out


@torch.no_grad()
def reconstruction_metrics(sae: PaperTopKSAE, x_unit: torch.Tensor, batch_size: int = 8192) -> dict[str, float]:
    """MSE (sum over d, mean over vectors), FVU, L0 and dead latents on unit-norm vectors."""
    if x_unit.shape[0] == 0:
        raise DataError("no evaluation vectors")
    se = 0.0
    l0 = 0.0
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
    dev = sae.W_enc.device
    for s in range(0, x_unit.shape[0], batch_size):
        u = x_unit[s:s + batch_size].to(dev, sae.W_enc.dtype)
        idx, val = sae.encode_topk(u)
        z = torch.zeros(u.shape[0], sae.cfg.d_sae, dtype=u.dtype, device=dev).scatter_(-1, idx, val)
        rec = sae.decode_normalized(z)
        se += float((rec - u).pow(2).sum())
        l0 += float((val != 0).sum())
        fired[idx[val != 0].reshape(-1).cpu()] = True
    M = x_unit.shape[0]
    x64 = x_unit.to(torch.float64)
    var = float((x64 - x64.mean(0)).pow(2).sum())
    return {"mse": se / M, "fvu": se / var if var > 0 else float("nan"), "l0": l0 / M,
            "n_dead": int((~fired).sum()), "n_live": int(fired.sum())}


def evaluate_sae(sae: PaperTopKSAE, x_unit: torch.Tensor, model: Any = None, windows: Any = None,
                 **ce_kw: Any) -> dict[str, float]:
    """Summary metrics: mse, fvu, l0, n_dead, n_live (+ CE clean/SAE/zero, CE recovered with a model)."""
    out = reconstruction_metrics(sae, x_unit)
    if model is not None and windows is not None:
        out.update(ce_metrics(model, sae, windows, **ce_kw))
    return out


def lr_grid(make_store: Callable[[], Iterator[Mapping[str, torch.Tensor]]], hook: str,
            cfg: SAETrainConfig, val_vectors: torch.Tensor,
            lrs: Sequence[float] = (1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3)) -> tuple[Any, float]:
    """Train one SAE per learning rate on the same stream; pick the lowest validation MSE.

    Returns (DataFrame with columns lr, val_mse, fvu; best lr). Paper: chosen on the final
    checkpoint's middle layer.
    """
    import dataclasses

    import pandas as pd

    rows = []
    for lr in lrs:
        c = dataclasses.replace(cfg, lr=float(lr))
        sae = train_saes(make_store(), [hook], c)[hook]
        m = reconstruction_metrics(sae, val_vectors)
        rows.append({"lr": float(lr), "val_mse": m["mse"], "fvu": m["fvu"]})
        log.info("lr %.1e: val mse %.5f", lr, m["mse"])
    df = pd.DataFrame(rows)
    finite = df[df["val_mse"].map(math.isfinite)]
    if finite.empty:
        raise DataError("every learning rate diverged (non-finite validation MSE)")
    best = float(finite.loc[finite["val_mse"].idxmin(), "lr"])
    return df, best
