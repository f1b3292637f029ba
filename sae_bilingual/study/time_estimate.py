"""``study --dry-run --estimate-time``: seconds per unit, from kernels timed on this device.

Why: the memory plan says whether a 3.7B unit fits; a researcher also needs to know whether
it takes an hour or a day before booking a GPU node. The estimate times the study's own
kernels at the recipe's shapes on ``recipe.device`` (one random transformer block of the
model's shape, the unembedding, one SAE training step, the SAE encoder and
:func:`analyse_features` on synthetic codes) and multiplies by the work the plan implies.
Each probe is capped at about :data:`PROBE_FLOPS` and scaled linearly, so a 3.7B shape is
probed in seconds, and a small shape is probed at its real size (its overheads included).

Not counted: loading the checkpoint, the token-cluster graph (once per embedding
checkpoint), the translation-pair encoding, and writing the artefacts.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sae_lens.saes.sae import TrainStepInput
from transformer_lens import HookedTransformerConfig
from transformer_lens.components.transformer_block import TransformerBlock

from sae_bilingual.analysis.codes import Codes
from sae_bilingual.analysis.features import analyse_features
from sae_bilingual.config import Recipe
from sae_bilingual.errors import ConfigError
from sae_bilingual.io import save_parquet
from sae_bilingual.layers import hook_for_layer, stop_at_layer_for
from sae_bilingual.sae.model import new_paper_sae
from sae_bilingual.study.collect import free_cycles, long_lived_objects_frozen
from sae_bilingual.study.membudget import host_memory_budget, memory_budget
from sae_bilingual.study.memplan import LMShape, plan_unit
from sae_bilingual.study.context import StudyContext

PROBE_FLOPS = 2e10
"""Floating-point work of one probe call (about 0.2 s at 100 GFLOP/s); larger shapes are
probed on fewer rows and scaled linearly."""

ANALYSIS_PROBE_TOKENS = 20_000
"""Evaluation vectors of the synthetic codes :func:`analyse_features` is timed on."""

STAGES = ("LM train pass", "SAE training", "eval LM + encode", "CE metrics", "analysis", "garbage collection")
"""The stages of a unit the estimate covers, in the order a unit runs them."""


@dataclass(frozen=True)
class DeviceRates:
    """Seconds per unit of work of each kernel, measured on one device at one recipe's shapes."""

    block_per_token: float
    """One transformer block's forward, per token."""
    unembed_per_token: float
    """The unembedding and log-softmax, per token."""
    sae_step: float
    """One SAE training step at the recipe's batch size (forward, backward, clip, Adam)."""
    encode_per_token: float
    """The SAE's TopK encoder, per vector."""
    analysis_per_token: float
    """A layer's analysis and its files, per evaluation vector."""
    collect: float
    """One ``collect.free_cycles()`` with this process's objects frozen, as during the units
    (the pipeline runs one after training and one per analysed layer)."""


@dataclass(frozen=True)
class UnitTimeEstimate:
    """Estimated seconds of one unit, per stage (:data:`STAGES`)."""

    seconds: dict[str, float]

    @property
    def total(self) -> float:
        return float(sum(self.seconds.values()))

    def describe(self) -> str:
        parts = ", ".join(f"{k} {_fmt_seconds(v)}" for k, v in self.seconds.items())
        return f"~{_fmt_seconds(self.total)} ({parts})"


def _fmt_seconds(s: float) -> str:
    if s < 120:
        return f"{s:.2g} s" if s < 10 else f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h" if s < 172_800 else f"{s / 86_400:,.0f} days"


def _fmt_rate(s: float) -> str:
    """A kernel's seconds in us, ms or s (three significant digits)."""
    return f"{s * 1e6:.3g} us" if s < 1e-3 else (f"{s * 1e3:.3g} ms" if s < 1 else f"{s:.3g} s")


def _median_seconds(fn: Callable[[], Any], device: torch.device, repeats: int = 5, warmup: int = 2) -> float:
    """Median wall seconds of ``fn()`` after ``warmup`` calls (a process's first calls of a
    kernel were up to 30x slower on a CPU); a GPU is synchronised."""
    def once() -> float:
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t
    for _ in range(warmup):
        once()
    return statistics.median(once() for _ in range(repeats))


def _rows_for(flops_per_row: float, most: int, least: int = 1) -> int:
    """Rows a probe runs: as many as :data:`PROBE_FLOPS` allows, within [least, most]."""
    return int(max(least, min(most, PROBE_FLOPS // max(1.0, flops_per_row))))


def block_config(shape: LMShape, n_ctx: int, device: str, dtype: torch.dtype) -> HookedTransformerConfig:
    """A one-block TransformerLens config of the model's shape (Llama layout: RMSNorm, rotary)."""
    return HookedTransformerConfig(
        n_layers=1, d_model=shape.d_model, d_head=shape.d_head, n_heads=shape.n_heads, d_mlp=shape.d_mlp,
        d_vocab=shape.d_vocab, n_ctx=n_ctx, act_fn="silu" if shape.gated_mlp else "gelu",
        gated_mlp=shape.gated_mlp, normalization_type="RMS", positional_embedding_type="rotary",
        rotary_dim=shape.d_head, n_key_value_heads=shape.n_kv_heads if shape.n_kv_heads != shape.n_heads else None,
        device=device, dtype=dtype)


@torch.no_grad()
def _block_rate(shape: LMShape, context: int, lm_batch: int, device: torch.device, dtype: torch.dtype) -> float:
    """Seconds per token of one random transformer block of the model's shape."""
    block = TransformerBlock(block_config(shape, context, str(device), dtype), 0).to(device=device, dtype=dtype)
    for p in block.parameters():
        p.normal_(std=0.02)  # torch.empty may hold denormals, which are slow on a CPU
    rows = _rows_for(2 * sum(p.numel() for p in block.parameters()) * context, lm_batch)
    x = torch.randn(rows, context, shape.d_model, device=device, dtype=dtype)
    return _median_seconds(lambda: block(x), device) / (rows * context)


@torch.no_grad()
def _unembed_rate(shape: LMShape, most_tokens: int, device: torch.device, dtype: torch.dtype) -> float:
    """Seconds per token of the unembedding and a float32 log-softmax."""
    w_u = torch.randn(shape.d_model, shape.d_vocab, device=device, dtype=dtype) * 0.02
    n = _rows_for(2 * shape.d_model * shape.d_vocab, most_tokens, least=16)
    h = torch.randn(n, shape.d_model, device=device, dtype=dtype)
    return _median_seconds(lambda: torch.log_softmax((h @ w_u).float(), dim=-1), device) / n


def _sae_rates(d: int, n: int, k: int, batch: int, device: torch.device) -> tuple[float, float]:
    """(seconds per training step at ``batch``, encoder seconds per vector)."""
    sae: Any = new_paper_sae(d, k=k, d_sae=n, training=True, device=str(device), dtype="float32")
    opt = torch.optim.Adam(sae.parameters(), lr=1e-4)
    rows = _rows_for(6 * d * n, batch, least=min(batch, 64))
    x = torch.nn.functional.normalize(torch.randn(rows, d, device=device), dim=-1)

    def step() -> None:
        out = sae.training_forward_pass(TrainStepInput(sae_in=x, coefficients=sae.get_coefficients(),
                                                       dead_neuron_mask=None, n_training_steps=0,
                                                       is_logging_step=False))
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
    t_step = _median_seconds(step, device) * batch / rows
    m = _rows_for(2 * d * n, 8192, least=64)
    xe = torch.nn.functional.normalize(torch.randn(m, d, device=device), dim=-1)
    with torch.no_grad():
        t_encode = _median_seconds(lambda: sae.encode(xe), device) / m
    return t_step, t_encode


def synthetic_codes(m: int, n: int, k: int, vocab: int, languages: tuple[str, ...], seed: int = 0) -> Codes:
    """``m`` vectors of ``k`` distinct random latents each, over ``vocab`` token ids and
    documents of 64 tokens alternating in language (a stand-in for a layer's codes)."""
    rng = np.random.default_rng(seed)
    steps = rng.integers(1, max(2, n // k), size=(m, k))  # distinct: k steps below n // k sum below n
    idx = (rng.integers(0, n, size=(m, 1)) + np.cumsum(steps, axis=1)) % n
    doc = np.arange(m) // 64
    return Codes(idx=idx.astype(np.int32), val=rng.random((m, k), dtype=np.float32) + 0.01,
                 token_id=rng.zipf(1.3, size=m) % vocab, lang=doc % len(languages), doc_id=doc,
                 position=np.arange(m) % 64, languages=languages)


def _analysis_rate(recipe: Recipe, n: int, k: int, vocab: int) -> float:
    """Seconds per vector of a layer's analysis on synthetic codes with random clusters:
    :func:`analyse_features`, then the codes file and the feature table written (to a
    temporary folder)."""
    languages = tuple(recipe.data.languages)
    m = min(ANALYSIS_PROBE_TOKENS, recipe.data.eval_tokens_per_lang * len(languages))
    codes = synthetic_codes(m, n, k, vocab, languages)
    rng = np.random.default_rng(1)
    clusters = rng.integers(0, max(2, vocab // 8), size=vocab)
    script = rng.integers(0, len(languages), size=vocab) if recipe.analysis.language_rule == "script" else None
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        df = analyse_features(codes, n, token_clusters=clusters, cfg=recipe.analysis, token_script=script)
        codes.save(Path(tmp) / "codes.safetensors")
        save_parquet(df.drop(columns=["top_token_ids"]), Path(tmp) / "features.parquet")
        return (time.perf_counter() - t) / m


def measure_rates(recipe: Recipe, shape: LMShape) -> DeviceRates:
    """Time every kernel of a unit on ``recipe.device`` at the recipe's shapes."""
    device = torch.device(recipe.device)
    dtype = getattr(torch, recipe.dtype)
    context = min(recipe.data.context, shape.n_ctx)
    t_block = _block_rate(shape, context, recipe.data.lm_batch_size, device, dtype)
    t_unembed = _unembed_rate(shape, recipe.data.lm_batch_size * context, device, dtype)
    n = recipe.sae.n_latents(shape.d_model)
    t_step, t_encode = _sae_rates(shape.d_model, n, recipe.sae.k, recipe.sae.batch_size, device)
    t_analysis = _analysis_rate(recipe, n, recipe.sae.k, shape.d_vocab)
    with long_lived_objects_frozen():  # as the units run (collect.py)
        t_collect = _median_seconds(free_cycles, torch.device("cpu"))
    return DeviceRates(t_block, t_unembed, t_step, t_encode, t_analysis, t_collect)


def estimate_unit(recipe: Recipe, shape: LMShape, groups: list[list[int]], rates: DeviceRates) -> UnitTimeEstimate:
    """Seconds of one unit whose layers are trained in the LM passes ``groups``.

    Per pass over a group: the LM runs the training and evaluation tokens through the blocks
    up to the group's deepest layer; each layer's SAE takes training_vectors / batch steps
    and encodes the evaluation vectors; the CE metrics run one clean full-depth pass and, per
    layer, a spliced and a zero-ablated pass from that layer on (seven unembeddings per
    token: the clean loss, and per condition its loss and the two sides of its KL).
    """
    data, n_langs = recipe.data, len(recipe.data.languages)
    train_tokens, eval_tokens = data.train_tokens_per_lang * n_langs, data.eval_tokens_per_lang * n_langs
    ce_tokens = n_langs * min(recipe.analysis.ce_docs_per_lang * min(data.context, shape.n_ctx),
                              data.eval_tokens_per_lang)  # the first ce_docs_per_lang eval windows
    steps = max(1, train_tokens // min(recipe.sae.batch_size, train_tokens))
    s: dict[str, float] = dict.fromkeys(STAGES, 0.0)
    for g in groups:
        blocks = stop_at_layer_for([hook_for_layer(max(g))])
        s["LM train pass"] += train_tokens * blocks * rates.block_per_token
        s["SAE training"] += len(g) * steps * rates.sae_step
        s["eval LM + encode"] += eval_tokens * (blocks * rates.block_per_token + len(g) * rates.encode_per_token)
        later_blocks = sum(2 * (shape.n_layers - layer) for layer in g)
        s["CE metrics"] += ce_tokens * ((shape.n_layers + later_blocks) * rates.block_per_token
                                        + (1 + 6 * len(g)) * rates.unembed_per_token
                                        + len(g) * rates.encode_per_token)
        s["analysis"] += len(g) * eval_tokens * rates.analysis_per_token
        s["garbage collection"] += (2 + len(g)) * rates.collect
    return UnitTimeEstimate(s)


def time_estimate_lines(recipe: Recipe, plan: Any, ctx: StudyContext) -> list[str]:
    """The ``--estimate-time`` block of the dry run: the rates measured per model, then each
    unit's estimate (its LM passes as the memory plan groups them) and the study's total."""
    if torch.device(recipe.device).type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--estimate-time times the kernels on device {recipe.device!r}, which this machine does "
                          "not have: run the dry run on the machine that will run the study, or add "
                          "--set device=cpu to estimate the CPU's time")
    budget, source = memory_budget(recipe)
    host, _ = host_memory_budget(recipe)
    lines = [f"time estimate (kernels timed on {recipe.device}, {recipe.dtype} LM, float32 SAEs; "
             "not counted: model loads, token clusters, translation pairs, saving the SAEs)"]
    rates: dict[int, DeviceRates] = {}
    total = 0.0
    for u in plan.units:
        shape = LMShape.from_hf_config(ctx.family(u.model_index).hf_config)
        if u.model_index not in rates:
            rates[u.model_index] = r = measure_rates(recipe, shape)
            lines.append(f"  {u.family}: block {_fmt_rate(r.block_per_token)}/token, unembed "
                         f"{_fmt_rate(r.unembed_per_token)}/token, SAE step {_fmt_rate(r.sae_step)}, encode "
                         f"{_fmt_rate(r.encode_per_token)}/vector, analysis {_fmt_rate(r.analysis_per_token)}/vector, "
                         f"gc.collect {_fmt_rate(r.collect)}")
        groups = plan_unit(recipe, shape, u.layers, budget, source, host_budget=host).groups
        est = estimate_unit(recipe, shape, groups, rates[u.model_index])
        total += est.total
        lines.append(f"  {u.id}: {est.describe()}")
    if plan.lr_grid is not None:
        u = plan.lr_grid
        shape = LMShape.from_hf_config(ctx.family(u.model_index).hf_config)
        one = estimate_unit(recipe, shape, [u.layers[:1]], rates.get(u.model_index) or measure_rates(recipe, shape))
        grid = len(recipe.sae.lr_grid) * sum(one.seconds[k] for k in STAGES[:3])  # a store and an eval pass per LR
        total += grid
        lines.append(f"  LR grid: ~{_fmt_seconds(grid)} ({len(recipe.sae.lr_grid)} x (LM train pass, SAE training, "
                     "eval LM + encode) at one layer)")
    lines.append(f"  all units: ~{_fmt_seconds(total)}")
    return lines
