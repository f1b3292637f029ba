"""Pre-train a tiny LLM-jp-shaped Llama on the toy corpus, saving log-spaced checkpoints.

Why: the paper follows SAE features over pre-training checkpoints. With a model we train
ourselves we control the data (bilingual share, concept recurrence) and can save as many
early checkpoints as we like. The architecture copies LLM-jp-3's structural choices (no
biases, untied embeddings, RMSNorm eps 1e-5, RoPE theta 10000, SwiGLU) so the same
loading path (HF `LlamaForCausalLM` -> HookedTransformer) serves both.

Checkpoints are HF directories ``iter_NNNNNNN`` (iteration = optimizer step) holding
safetensors weights + tokenizer files; ``catalogue.json`` at the root maps iterations to
tokens and held-out loss.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast
from transformers.utils import logging as hf_logging

from sae_bilingual.io import atomic_dir, atomic_write_json
from sae_bilingual.models.catalogue import iter_dirname
from sae_bilingual.models.llmjp import llmjp_structure_config
from sae_bilingual.world.config import WorldConfig
from sae_bilingual.world.tokenizer import BOS, EOS, PAD

log = logging.getLogger(__name__)


def checkpoint_steps(steps: int, n: int) -> list[int]:
    """``n`` log-spaced optimizer steps from 0 to ``steps`` (both included).

    Why log-spaced: the paper's phases happen early; most of the change is in the first
    few percent of training. Collisions at small steps are filled with the next free
    step so exactly ``min(n, steps + 1)`` checkpoints are returned.
    """
    n = min(n, steps + 1)
    if n <= 1:
        return [steps]
    raw = np.unique(np.round(np.geomspace(1, steps, n - 1)).astype(int))
    out = {0, *raw.tolist(), steps}
    s = 1
    while len(out) < n:  # fill in small steps that rounding merged
        out.add(s)
        s += 1
    return sorted(out)


def make_model(cfg: WorldConfig, vocab_size: int) -> LlamaForCausalLM:
    """A freshly initialised tiny Llama with LLM-jp-3's structural choices."""
    hf_cfg = llmjp_structure_config(
        vocab_size=vocab_size, d_model=cfg.d_model, d_mlp=cfg.d_mlp, n_layers=cfg.n_layers, n_heads=cfg.n_heads,
        max_position_embeddings=max(128, cfg.context), bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD,
        initializer_range=0.02,
    )
    torch.manual_seed(cfg.seed)
    model = LlamaForCausalLM(hf_cfg)
    model.generation_config.pad_token_id = PAD
    return model


def pad_windows(ids: list[list[int]], context: int) -> torch.Tensor:
    """Right-pad (and cut) token lists to a LongTensor [N, context] filled with PAD."""
    out = torch.full((len(ids), context), PAD, dtype=torch.long)
    for i, row in enumerate(ids):  # once per corpus, not on the training hot path
        row = row[:context]
        out[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
    return out


def _labels(x: torch.Tensor) -> torch.Tensor:
    y = x.clone()
    y[x == PAD] = -100  # padding is not predicted
    return y


@torch.no_grad()
def eval_loss(model: LlamaForCausalLM, windows: torch.Tensor, batch: int = 64) -> float:
    """Mean next-token cross-entropy over non-pad targets of ``windows`` [N, T]."""
    model.eval()
    tot, n = 0.0, 0
    for i in range(0, len(windows), batch):
        x = windows[i : i + batch]  # (B, T)
        y = _labels(x)
        logits = model(input_ids=x).logits[:, :-1]  # (B, T-1, V)
        tgt = y[:, 1:]
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), ignore_index=-100, reduction="sum"
        )
        tot += float(loss)
        n += int((tgt != -100).sum())
    model.train()
    return tot / max(n, 1)


def effective_threads(requested: int) -> int:
    """Threads to train with: ``requested``, but 1 when the CPUs are already oversubscribed.

    Why: measured on the 2-core dev machine under a load average of ~9, a training step
    took 0.5 s with one thread and 4-15 s with two (OpenMP threads spin-waiting for a
    core). On an idle machine two threads are faster, so this only backs off under load.
    """
    if requested <= 1:
        return max(1, requested)
    try:
        load = os.getloadavg()[0]
    except OSError:
        return requested
    ncpu = os.cpu_count() or 1
    if load >= ncpu:
        log.warning("load average %.1f >= %d CPUs: training with 1 thread instead of %d", load, ncpu, requested)
        return 1
    return requested


def _lr_at(step: int, cfg: WorldConfig) -> float:
    """Linear warm-up then cosine decay to ``min_lr_ratio`` of the peak."""
    warm = max(1, int(cfg.warmup_frac * cfg.steps))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    t = (step - warm) / max(1, cfg.steps - warm)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def save_checkpoint(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, root: Path, iteration: int) -> Path:
    """Write one HF checkpoint dir (safetensors + config + tokenizer) atomically."""
    path = root / iter_dirname(iteration)
    bar_was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # one "Writing model shards" bar per checkpoint is noise
    try:
        with atomic_dir(path) as tmp:
            model.save_pretrained(str(tmp))
            tokenizer.save_pretrained(str(tmp))
    finally:
        if bar_was_on:
            hf_logging.enable_progress_bar()
    return path


def pretrain(
    cfg: WorldConfig,
    tokenizer: PreTrainedTokenizerFast,
    train: torch.Tensor,
    eval_windows: torch.Tensor,
    root: Path,
    *,
    progress: bool = True,
) -> dict[str, Any]:
    """Train from scratch on ``train`` windows [N, T]; save checkpoints under ``root``.

    Returns {"loss_curve": [{"step", "loss", "lr"}...], "checkpoints": [{"iteration",
    "tokens", "loss"}...], "seconds": float}. ``catalogue.json`` is written to ``root``.
    """
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(effective_threads(cfg.threads))
    try:
        return _pretrain(cfg, tokenizer, train, eval_windows, root, progress=progress)
    finally:
        torch.set_num_threads(prev_threads)


def _pretrain(cfg: WorldConfig, tokenizer: PreTrainedTokenizerFast, train: torch.Tensor, eval_windows: torch.Tensor,
              root: Path, *, progress: bool) -> dict[str, Any]:
    t0 = time.perf_counter()
    model = make_model(cfg, len(tokenizer))
    n_params = sum(p.numel() for p in model.parameters())
    log.info("toy LM: %d layers, d_model %d, %.2fM parameters, %d steps x %d x %d tokens",
             cfg.n_layers, cfg.d_model, n_params / 1e6, cfg.steps, cfg.batch_size, train.shape[1])
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8,
    )
    tokens_per_iteration = cfg.batch_size * train.shape[1]
    save_at = set(checkpoint_steps(cfg.steps, cfg.n_checkpoints))
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    order = torch.randperm(len(train), generator=gen)
    cursor = 0
    curve: list[dict[str, float]] = []
    ckpts: list[dict[str, Any]] = []

    def checkpoint(step: int) -> None:
        loss = eval_loss(model, eval_windows)
        save_checkpoint(model, tokenizer, root, step)
        ckpts.append({"iteration": step, "tokens": step * tokens_per_iteration, "loss": round(loss, 5)})
        log.info("checkpoint %s: held-out loss %.4f (%.0f s)", iter_dirname(step), loss,
                 time.perf_counter() - t0)

    model.train()
    if 0 in save_at:
        checkpoint(0)
    bar = tqdm(range(1, cfg.steps + 1), desc="pretrain toy LM", disable=not progress, mininterval=2.0)
    for step in bar:
        if cursor + cfg.batch_size > len(order):  # new epoch
            order = torch.randperm(len(train), generator=gen)
            cursor = 0
        x = train[order[cursor : cursor + cfg.batch_size]]  # (B, T)
        cursor += cfg.batch_size
        lr = _lr_at(step - 1, cfg)
        for g in opt.param_groups:
            g["lr"] = lr
        loss = model(input_ids=x, labels=_labels(x)).loss  # mean over non-pad targets
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        loss_f = float(loss.detach())
        curve.append({"step": step, "loss": round(loss_f, 5), "lr": lr})
        if progress and step % 10 == 0:
            bar.set_postfix(loss=f"{loss_f:.3f}")
        if step in save_at:
            checkpoint(step)
    seconds = time.perf_counter() - t0
    atomic_write_json(root / "catalogue.json", {"tokens_per_iteration": tokens_per_iteration, "checkpoints": ckpts})
    log.info("pre-training done in %.1f s; held-out loss %.3f -> %.3f", seconds, ckpts[0]["loss"], ckpts[-1]["loss"])
    return {"loss_curve": curve, "checkpoints": ckpts, "seconds": seconds, "n_params": n_params,
            "tokens_per_iteration": tokens_per_iteration}
