"""Train the paper's TopK SAEs with SAELens's MultiSAETrainer; the LR grid.

Every hook's SAE trains in lockstep from one activation stream (one LM forward feeds all
layers). The training loop, LR schedule, dead-latent tracking and checkpoints are
SAELens's; ours is the architecture (model.py) and the data (data/store.py). The paper's
training choices (b_pre <- geometric median of the first batch, Adam eps 6.25e-10 and torch's
fused kernel, unit-norm decoder rows after every step) belong to the architecture
(training_choices.py), so SAELens's own ``LanguageModelSAETrainingRunner`` trains the same SAE
(tests/test_runner.py). SAELens clips the global gradient norm to 1.0; under Adam a per-step rescaling of the whole
gradient changes almost nothing (Adam divides by the gradient's running RMS), so we keep it.

What to train is the recipe's ``sae:`` section (:class:`sae_bilingual.config.SAESpec`, with a
number as ``lr``); :class:`TrainRun` holds the facts of one run that the recipe does not.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import logging
import math
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import torch
from sae_lens.config import LoggingConfig, SAETrainerConfig
from sae_lens.training import multi_sae_trainer
from sae_lens.training.multi_sae_trainer import MultiSAETrainer

from sae_bilingual.config import SAESpec
from sae_bilingual.defaults import DEFAULT_LR_GRID
from sae_bilingual.errors import ConfigError, DataError, ExtraMissingError
from sae_bilingual.sae.files import save_sae
from sae_bilingual.sae.kernels import release_step_workspace
from sae_bilingual.sae.model import PaperTopKSAE, PaperTopKTrainingSAE, make_metadata, to_inference
from sae_bilingual.sae.topk_config import PaperTopKTrainingSAEConfig

log = logging.getLogger(__name__)

ADAM_BETAS = (0.9, 0.999)
"""Adam's betas (torch's defaults, the original code's)."""
WANDB_PROJECT = "sae-bilingual"
"""Weights & Biases project of a run with ``wandb=True``."""


@dataclass(frozen=True)
class TrainRun:
    """The facts of one training run that the recipe's ``sae:`` section does not hold.

    The run is one pass over ``n_vectors`` training vectors (the batch is clamped to them), or
    ``total_steps`` optimiser steps when given.
    """

    n_vectors: int | None = None
    """Training vectors the store yields in one pass; or give total_steps."""
    total_steps: int | None = None
    """Optimiser steps; overrides n_vectors."""
    seed: int = 0
    """Seed of the SAEs' initialisation (per hook, see :func:`hook_seed`)."""
    device: str = "cpu"
    """Device of the SAEs."""
    dtype: str = "float32"
    """SAE parameter dtype."""
    wandb: bool = False
    """Log to Weights & Biases (needs the `wandb` extra)."""
    progress: bool = True
    """Show SAELens's training bar (``-q`` turns it off)."""

    def batch_size(self, spec: SAESpec) -> int:
        """Vectors per step: ``spec.batch_size``, at most ``n_vectors`` (a small study's whole set)."""
        return min(spec.batch_size, self.n_vectors) if self.n_vectors is not None else spec.batch_size

    def steps(self, spec: SAESpec) -> int:
        """Number of optimiser steps this run takes."""
        if self.total_steps is not None:
            n = int(self.total_steps)
        elif self.n_vectors is not None:
            n = int(self.n_vectors) // self.batch_size(spec)
        else:
            raise ConfigError("give the run's total_steps or n_vectors (the paper: 100M vectors)")
        if n < 1:
            raise ConfigError(f"the run has {n} steps: n_vectors must be >= the batch size "
                              f"({self.batch_size(spec)})")
        return n

    def warmup(self, spec: SAESpec) -> int:
        """Warm-up steps, clamped to a tenth of the run for short (test) runs."""
        return min(spec.warmup_steps, self.steps(spec) // 10)


def paper_training_config(spec: SAESpec, d_in: int, **kw: Any) -> PaperTopKTrainingSAEConfig:
    """The training SAE config of ``spec`` (a recipe's ``sae:`` section) for inputs of width d_in.

    Why: the one mapping from the recipe to the architecture's fields, shared by
    :func:`train_saes` and a :class:`sae_lens.LanguageModelSAERunnerConfig`'s ``sae=``.
    ``kw``: further config fields (device, dtype, metadata, ...).
    """
    # fused Adam: one kernel per step instead of ~10 per tensor (~1 ms of a 6 ms toy step on 2 cores)
    return PaperTopKTrainingSAEConfig(d_in=int(d_in), d_sae=spec.n_latents(d_in), k=spec.k, fast=spec.fast,
                                      aux_k_coefficient=spec.aux_k_coefficient, adam_eps=spec.adam_eps,
                                      fused_adam=spec.fused_adam,
                                      geometric_median_sample=spec.geometric_median_sample, **kw)


def _hook_dirname(hook: str) -> str:
    return hook.replace("/", "_")


def hook_seed(seed: int, hook: str) -> int:
    """Seed of one hook's SAE initialisation: depends on (seed, hook) only.

    Why: a resumed study retrains only the layers that are missing; if the SAEs drew their
    initial weights one after another from a single seeded stream, a layer's SAE would
    depend on which other layers happened to train beside it, and a resumed run would not
    reproduce an uninterrupted one.
    """
    return (int(seed) * 1_000_003 + zlib.crc32(hook.encode("utf-8"))) % (2**63 - 1)


def convergence(losses: Sequence[float], tolerance: float = 0.1) -> dict[str, float]:
    """How fast a training run converged, from its per-step losses.

    ``train_loss_final`` is the mean loss of the last tenth of the steps;
    ``train_steps_to_final`` the first step whose running mean (window: a twentieth of the
    run) is within ``tolerance`` (10 %) of it; ``train_loss_first_tenth`` the mean loss of
    the first tenth. Why: a warm start should show up as fewer steps to converge and a
    lower early loss.
    """
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


@contextlib.contextmanager
def _training_bar(show: bool, module: Any = multi_sae_trainer) -> Iterator[None]:
    """MultiSAETrainer.fit (SAETrainer.fit: ``module`` = sae_trainer) opens its own tqdm bar with
    no switch; hide it for quiet runs."""
    if show:
        yield
        return
    bar = module.tqdm
    module.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        module.tqdm = bar


def _trainer_config(spec: SAESpec, run: TrainRun, steps: int, batch_size: int) -> SAETrainerConfig:
    """SAELens's trainer settings for the paper's run: constant LR after warm-up, the paper's Adam betas,
    no checkpoints; wandb only when the run asks for it."""
    assert not isinstance(spec.lr, str)  # train_saes refuses an unresolved 'grid'
    logger = LoggingConfig(log_to_wandb=False)
    if run.wandb:
        try:
            import wandb  # optional extra
        except ImportError as e:  # pragma: no cover
            raise ExtraMissingError("wandb logging", "pip install 'sae-bilingual[wandb]'") from e
        wandb.init(project=WANDB_PROJECT, config={**dataclasses.asdict(spec), **dataclasses.asdict(run)})
        logger = LoggingConfig(log_to_wandb=True, wandb_project=WANDB_PROJECT)
    return SAETrainerConfig(
        total_training_samples=steps * batch_size, train_batch_size_samples=batch_size,
        lr=spec.lr, lr_end=spec.lr, lr_scheduler_name="constant", lr_warm_up_steps=run.warmup(spec),
        adam_beta1=ADAM_BETAS[0], adam_beta2=ADAM_BETAS[1], device=run.device,
        dead_feature_window=spec.dead_feature_window, feature_sampling_window=max(1, steps),
        n_checkpoints=0, checkpoint_path=None, logger=logger)


def train_saes(store: Iterator[Mapping[str, torch.Tensor]], hooks: Sequence[str], spec: SAESpec, run: TrainRun,
               metadata_by_hook: Mapping[str, Mapping[str, Any]] | None = None,
               save_dir: str | Path | None = None,
               init_from: Mapping[str, PaperTopKSAE] | None = None) -> dict[str, PaperTopKSAE]:
    """Train one paper TopK SAE per hook, in lockstep, through SAELens's MultiSAETrainer.

    ``store`` yields ``{hook: Tensor[batch_size, d]}`` (e.g. :class:`ActivationStore`) with
    ``run.batch_size(spec)`` vectors per batch; ``spec.lr`` must be a number (resolve a
    'grid' with :func:`lr_grid` first). ``init_from`` gives, per hook, an SAE to start from
    (warm start) instead of the paper's initialisation. Returns inference SAEs (decoder rows
    unit-norm) whose metadata carries ``warm_start`` and the run's :func:`convergence`; with
    ``save_dir`` each is saved in SAELens layout under ``save_dir/<hook>/``.
    """
    if isinstance(spec.lr, str):
        raise ConfigError(f"sae.lr is {spec.lr!r}: train_saes needs a number; choose it with lr_grid first")
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
    batch_size = run.batch_size(spec)
    if bs != batch_size:
        raise ConfigError(f"the store yields batches of {bs} vectors but the run's batch size is {batch_size} "
                          "(sae.batch_size, at most the run's n_vectors); make them equal")
    steps = run.steps(spec)
    saes: dict[str, PaperTopKTrainingSAE] = {}
    for h in hooks:
        torch.manual_seed(hook_seed(run.seed, h))  # independent of the other hooks trained now
        d_in = int(first[h].shape[-1])
        md = make_metadata(hook_name=h, seed=run.seed, k=spec.k, lr=spec.lr, aux_k_coefficient=spec.aux_k_coefficient,
                           training_tokens=steps * batch_size, **dict((metadata_by_hook or {}).get(h, {})))
        sae = PaperTopKTrainingSAE(paper_training_config(spec, d_in, device=run.device, dtype=run.dtype,
                                                         metadata=md))
        if init_from and h in init_from:
            sae.init_from(init_from[h])  # else b_pre is initialised on the first batch
        saes[h] = sae

    trainer = MultiSAETrainer(_trainer_config(spec, run, steps, batch_size), saes=dict(saes), hook_names={h: h for h in hooks},
                              data_provider=cast(Iterator[dict[str, torch.Tensor]], itertools.chain([first], store)))
    log.info("training %d SAE(s) for %d steps of %d vectors", len(hooks), steps, batch_size)
    with _training_bar(run.progress):
        trainer.fit()
    release_step_workspace()
    out: dict[str, PaperTopKSAE] = {}
    for h, sae in saes.items():
        inf = to_inference(sae)
        inf.cfg.metadata.n_training_steps = steps
        inf.cfg.metadata.warm_start = bool(init_from and h in init_from)
        for key, value in convergence(torch.stack(sae.loss_history).float().tolist()).items():
            inf.cfg.metadata[key] = value
        out[h] = inf
        if save_dir is not None:
            save_sae(inf, Path(save_dir) / _hook_dirname(h))
    return out


def lr_grid(make_store: Callable[[], Iterator[Mapping[str, torch.Tensor]]], hook: str,
            spec: SAESpec, run: TrainRun, evaluate: Callable[[Any], Mapping[str, float]],
            lrs: Sequence[float] = DEFAULT_LR_GRID) -> tuple[pd.DataFrame, float]:
    """Train one SAE per learning rate on the same stream; pick the lowest validation MSE.

    ``evaluate(sae)`` gives the SAE's validation metrics (``mse``, ``fvu``), e.g.
    :func:`sae_bilingual.sae.metrics.reconstruction_metrics` on held-out vectors, or the
    study's streamed evaluation. Returns (DataFrame with columns lr, val_mse, fvu; best lr).
    Paper: chosen on the final checkpoint's middle layer.
    """
    rows = []
    for lr in lrs:
        sae = train_saes(make_store(), [hook], dataclasses.replace(spec, lr=float(lr)), run)[hook]
        m = evaluate(sae)
        rows.append({"lr": float(lr), "val_mse": m["mse"], "fvu": m["fvu"]})
        log.info("lr %.1e: val mse %.5f", lr, m["mse"])
    df = pd.DataFrame(rows)
    finite = df.loc[df["val_mse"].map(math.isfinite)]
    if finite.empty:
        raise DataError("every learning rate diverged (non-finite validation MSE)")
    best = float(finite.loc[finite["val_mse"].idxmin(), "lr"])
    return df, best
