"""Train, evaluate, save and load the BatchTopK crosscoder (:mod:`sae_bilingual.sae.crosscoder`).

Training is SAELens's ``SAETrainer`` (Adam, warm-up, grad-norm clip, dead-latent counters), fed
batches of aligned rows [B, C*d]; the paper's choices come with the architecture as for the
SAEs (b_dec per checkpoint <- geometric median of the first batch, Adam eps 6.25e-10, decoder
rows renormalised after every step and when saved; warm-up clamped to a tenth of a short run as
:meth:`sae_bilingual.sae.train.TrainRun.warmup`). Evaluation is :class:`ReconstructionStats`
per checkpoint slice, so a slice's FVU means what a per-checkpoint SAE's FVU means.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import torch
from sae_lens.config import LoggingConfig, SAETrainerConfig
from sae_lens.saes.sae import SAE
from sae_lens.training import sae_trainer
from sae_lens.training.sae_trainer import SAETrainer

from sae_bilingual.errors import ConfigError, DataError
from sae_bilingual.io import atomic_dir
from sae_bilingual.sae.batchtopk_kernels import release_crosscoder_workspace
from sae_bilingual.sae.crosscoder import PaperCrosscoder, PaperCrosscoderTraining, to_inference
from sae_bilingual.sae.crosscoder_config import PaperCrosscoderConfig, PaperCrosscoderTrainingConfig
from sae_bilingual.sae.files import load_sae
from sae_bilingual.sae.metrics import ReconstructionStats
from sae_bilingual.sae.train import ADAM_BETAS, _training_bar, convergence

log = logging.getLogger(__name__)

Rows = torch.Tensor | Iterable[torch.Tensor]


def _training_config(cfg: PaperCrosscoderConfig | PaperCrosscoderTrainingConfig, device: str
                     ) -> PaperCrosscoderTrainingConfig:
    if isinstance(cfg, PaperCrosscoderTrainingConfig):
        return replace(cfg, device=device)
    if not isinstance(cfg, PaperCrosscoderConfig):
        raise ConfigError(f"cfg must be a PaperCrosscoder(Training)Config, got {type(cfg).__name__}")
    names = {f.name for f in fields(PaperCrosscoderTrainingConfig)}
    return PaperCrosscoderTrainingConfig(**{f.name: getattr(cfg, f.name) for f in fields(cfg)
                                            if f.name in names and f.name != "device"}, device=device)


def batches(rows: Rows, batch_size: int, seed: int = 0) -> Iterator[torch.Tensor]:
    """Batches of exactly ``batch_size`` rows: from a tensor [N, C*d], endless seeded shuffled
    passes (a short last batch topped up from the next pass); from an iterable of [b, C*d]
    tensors, its rows in order, re-cut to ``batch_size`` (a short tail is dropped)."""
    if isinstance(rows, torch.Tensor):
        N = int(rows.shape[0])
        if N == 0:
            raise DataError("train_crosscoder got no rows")
        gen = torch.Generator().manual_seed(int(seed))
        order = torch.zeros(0, dtype=torch.long)
        while True:
            while order.shape[0] < batch_size:
                order = torch.cat([order, torch.randperm(N, generator=gen)])
            yield rows.index_select(0, order[:batch_size].to(rows.device))
            order = order[batch_size:]
    held: list[torch.Tensor] = []
    n_held = 0
    for chunk in rows:
        if chunk.shape[0] == batch_size and not held:
            yield chunk
            continue
        held.append(chunk)
        n_held += int(chunk.shape[0])
        while n_held >= batch_size:
            cat = torch.cat(held)
            yield cat[:batch_size]
            held, n_held = [cat[batch_size:]], n_held - batch_size


def train_crosscoder(rows: Rows, cfg: PaperCrosscoderConfig | PaperCrosscoderTrainingConfig, *, lr: float,
                     steps: int | None = None, tokens: int | None = None, batch_size: int = 4096, seed: int = 0,
                     device: str = "cpu", warmup_steps: int = 500, autocast: bool = False,
                     dead_feature_window: int = 1000, progress: bool = False,
                     calibration_steps: int | None = None) -> tuple[PaperCrosscoder, dict[str, Any]]:
    """Train one BatchTopK crosscoder on aligned rows; returns (inference crosscoder, stats).

    ``rows``: a tensor [N, C*d] (shuffled, cycled) or an iterable of [b, C*d] batches. The run
    is ``steps`` optimiser steps, or ``tokens // batch_size``. ``seed`` fixes the
    initialisation and the shuffle. The inference threshold is the mean of the smallest kept
    activation over the last ``calibration_steps`` steps (None: a tenth of the run, at most
    100; 0: keep the in-training EMA). Why: the EMA (rate 0.01) lags ~100 steps behind the
    falling activations of a short run, and its threshold then keeps far fewer than k latents
    per row (measured: L0 13 for k = 48 after 155 steps; the mean: benchmarks/README.md).
    ``stats``: steps, batch_size, lr, warmup_steps, seconds, threshold (and threshold_ema), the
    training convergence (:func:`sae_bilingual.sae.train.convergence`), l0 and dead latents
    over SAELens's last sparsity window.
    """
    if steps is None:
        if tokens is None:
            raise ConfigError("give train_crosscoder steps or tokens")
        steps = int(tokens) // int(batch_size)
    if steps < 1:
        raise ConfigError(f"the run has {steps} steps: tokens must be >= batch_size ({batch_size})")
    tcfg_sae = _training_config(cfg, device)
    torch.manual_seed(int(seed))
    cc = PaperCrosscoderTraining(tcfg_sae)
    data = batches(rows, int(batch_size), seed)
    first = next(data, None)
    if first is None:
        raise DataError(f"the rows give no batch of {batch_size}; lower batch_size or give more rows")
    if first.shape[-1] != cc.cfg.d_in:
        raise DataError(f"rows have width {first.shape[-1]} but the crosscoder reads d_in = {cc.cfg.d_in} "
                        f"({cc.cfg.n_checkpoints} checkpoints x d_model {cc.cfg.d_model})")
    warmup = min(int(warmup_steps), steps // 10)
    tcfg = SAETrainerConfig(
        total_training_samples=steps * batch_size, train_batch_size_samples=batch_size, lr=lr, lr_end=lr,
        lr_scheduler_name="constant", lr_warm_up_steps=warmup, adam_beta1=ADAM_BETAS[0],
        adam_beta2=ADAM_BETAS[1], device=device, autocast=autocast, dead_feature_window=dead_feature_window,
        feature_sampling_window=max(1, steps), n_checkpoints=0, checkpoint_path=None,
        logger=LoggingConfig(log_to_wandb=False))
    trainer = SAETrainer(tcfg, sae=cc, data_provider=_counted(itertools.chain([first], data), steps))
    t0 = time.perf_counter()
    with _training_bar(progress, sae_trainer):
        trainer.fit()
    seconds = time.perf_counter() - t0
    release_crosscoder_workspace()
    out = to_inference(cc)
    ema = float(cc.threshold)
    n_cal = calibrate_threshold(cc, out, calibration_steps)
    stats: dict[str, Any] = {"steps": steps, "batch_size": int(batch_size), "lr": float(lr), "warmup_steps": warmup,
                             "seconds": seconds, "threshold": float(out.threshold), "threshold_ema": ema,
                             "calibration_steps": n_cal,
                             "l0": out.cfg.metadata.get("l0"), "n_dead": out.cfg.metadata.get("num_dead_features")}
    stats.update(convergence(torch.stack(cc.loss_history).float().tolist()))
    out.cfg.metadata.n_training_steps = steps
    for key in ("train_loss_final", "train_steps_to_final"):
        out.cfg.metadata[key] = stats[key]
    return out, stats


@torch.no_grad()
def calibrate_threshold(trained: PaperCrosscoderTraining, out: PaperCrosscoder,
                        calibration_steps: int | None = None) -> int:
    """Set ``out.threshold`` to the mean smallest kept activation of ``trained``'s last
    ``calibration_steps`` training steps (None: a tenth of its steps, at most 100; 0: leave the
    EMA). Returns the number of steps averaged. Why: see :func:`train_crosscoder`."""
    hist = trained.kept_min_history
    n = max(1, min(100, len(hist) // 10)) if calibration_steps is None else int(calibration_steps)
    last = [v for v in hist[-n:] if v > 0] if n > 0 else []
    if last:
        out.threshold.fill_(sum(last) / len(last))
    return len(last)


def _counted(it: Iterator[torch.Tensor], steps: int) -> Iterator[torch.Tensor]:
    """The first ``steps`` batches, with an error naming the shortfall if the rows run out."""
    for i in range(steps):
        b = next(it, None)
        if b is None:
            raise DataError(f"the rows ran out after {i} batches; the run needs {steps} "
                            "(give more rows, fewer steps/tokens, or a tensor, which is cycled)")
        yield b


@torch.no_grad()
def eval_crosscoder(model: PaperCrosscoder, rows: torch.Tensor, batch_size: int = 4096) -> dict[str, Any]:
    """Per-checkpoint reconstruction metrics of ``model`` on rows [N, C*d] (inference rule).

    ``slices``: one :class:`ReconstructionStats` result per checkpoint slice (mse, fvu, ...,
    in the slice's unit space), ``l0`` (mean active latents per row), ``n_dead`` (never active),
    ``fvu`` (the whole row's FVU). Why per slice: the issue judges the crosscoder by each
    checkpoint's FVU against that checkpoint's own SAE.
    """
    C, d, n = model.cfg.n_checkpoints, model.cfg.d_model, model.cfg.d_sae
    if rows.shape[0] == 0:
        raise DataError("no evaluation rows")
    per = [ReconstructionStats(n) for _ in range(C)]
    whole = ReconstructionStats(n)
    fired = torch.zeros(n, dtype=torch.bool)
    l0 = 0
    dev = model.W_enc.device
    for s in range(0, rows.shape[0], batch_size):
        u = model.unit_input(rows[s:s + batch_size].to(dev))
        rec, counts, cols = model.reconstruct(u)
        fired[cols.cpu()] = True
        l0 += int(counts.sum())
        e, v = torch.zeros(u.shape[0], 0, dtype=torch.int64), torch.zeros(u.shape[0], 0)  # l0: counted here
        whole.update(u, rec, e, v)
        for c in range(C):  # C slices, not features or tokens
            per[c].update(u[:, c * d:(c + 1) * d], rec[:, c * d:(c + 1) * d], e, v)
    keep = ("mse", "fvu", "explained_variance", "cossim", "l2_ratio")
    slices = [{k: p.result()[k] for k in keep} for p in per]
    return {"slices": slices, "fvu": whole.result()["fvu"], "l0": l0 / int(rows.shape[0]),
            "n_dead": int((~fired).sum())}


def eval_fvu_per_checkpoint(model: PaperCrosscoder, rows: torch.Tensor, batch_size: int = 4096) -> list[float]:
    """FVU of each checkpoint's slice of ``rows`` [N, C*d] (see :func:`eval_crosscoder`)."""
    return [s["fvu"] for s in eval_crosscoder(model, rows, batch_size)["slices"]]


def save_crosscoder(model: PaperCrosscoder | PaperCrosscoderTraining, path: str | Path) -> Path:
    """Save atomically in SAELens's layout (cfg.json + sae_weights.safetensors); a training
    crosscoder is saved as its inference copy. ``SAE.load_from_disk(path)`` reads it back."""
    if isinstance(model, PaperCrosscoderTraining):
        model = to_inference(model)
    with atomic_dir(path) as tmp:
        model.save_model(tmp)
    return Path(path)


def load_crosscoder(path: str | Path, device: str = "cpu") -> PaperCrosscoder:
    """:func:`sae_bilingual.sae.files.load_sae` (errors naming the bad file), checked to be a crosscoder."""
    sae: SAE = load_sae(path, device=device)
    if not isinstance(sae, PaperCrosscoder):
        raise DataError(f"{path} holds a {type(sae).__name__} ({sae.cfg.architecture()}), not a paper_crosscoder")
    return sae
