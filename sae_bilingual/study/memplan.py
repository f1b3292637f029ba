"""One work unit's memory, from shapes alone, and the LM passes its layers need to fit.

A unit trains one SAE per layer from one LM forward per batch. When the SAEs of all its
layers (weights, gradients, Adam state, step outputs) do not fit the device beside the LM, or
their shuffle buffers do not fit the host, the layers are split into groups, each trained
from its own pass over the same windows. Each hook then sees the same batches in the same
order (the store's random stream ignores which hooks it serves) and its SAE starts from the
same seed (``train.hook_seed``), so the SAEs and tables are bit for bit those of one pass;
only the LM time grows.

Memory sits in two places, each with its budget (``max_memory``, ``max_host_memory``): the
device that runs the LM and the SAEs, and the host RAM that holds this process, the
tokenised windows, the LM while it is converted at load, the shuffle buffers (one per layer
of a pass) and, in the analysis, the evaluation labels and one layer's codes (the evaluation
itself streams: ``analysis.stream``). On a CPU device both are one RAM and are added. The
estimate is made from the model's config and the recipe, before anything is loaded: the large
terms (LM weights, SAE state, buffers, codes) are exact byte counts of the tensors the code
allocates; transient activations are upper estimates, and the analysis working set is a
measured multiple of the codes (``ANALYSIS_WORKSET_FACTOR``). Plans use ``PLAN_FRACTION`` of
each budget, leaving room for the CUDA context, allocator slack and estimation error;
``benchmarks/bench_unit_memory.py`` checks the predicted peak against a measured one.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch

from sae_bilingual.analysis.stream import EVAL_ENCODE_BATCH
from sae_bilingual.config import Recipe
from sae_bilingual.layers import hook_for_layer, stop_at_layer_for
from sae_bilingual.lm_loss import chunk_positions
from sae_bilingual.study.membudget import host_memory_budget, memory_budget, process_rss

log = logging.getLogger(__name__)

PLAN_FRACTION = 0.9
"""Share of the memory budget a plan fills."""
CE_BATCH_WINDOWS = 64
"""Windows per CE-metrics forward (sae.metrics.ce_metrics_many's batch_size)."""
PHASES = ("load", "train", "analyse")
"""A unit's phases, in order; their memory does not overlap (each frees the last's transients)."""
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def fmt_bytes(n: float) -> str:
    """'7.57 GB' style (powers of 10, as parse_bytes reads them)."""
    for unit, div in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f} {unit}"
    return f"{int(n)} B"


@dataclass(frozen=True)
class LMShape:
    """The sizes of a decoder-only LM that its memory depends on (read from its HF config)."""

    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_mlp: int
    d_vocab: int
    n_ctx: int
    gated_mlp: bool = True

    @classmethod
    def from_hf_config(cls, cfg: Any) -> LMShape:
        """From a transformers config (Llama names first; GPT-NeoX/BLOOM spellings as fallbacks)."""
        def get(*names: str, default: Any = None) -> Any:
            return next((getattr(cfg, n) for n in names if getattr(cfg, n, None) is not None), default)

        d = int(get("hidden_size", "n_embd", "d_model"))
        heads = int(get("num_attention_heads", "n_head"))
        return cls(n_layers=int(get("num_hidden_layers", "n_layer", "num_layers")), d_model=d, n_heads=heads,
                   n_kv_heads=int(get("num_key_value_heads", default=heads)),
                   d_head=int(get("head_dim", default=d // heads)),
                   d_mlp=int(get("intermediate_size", "n_inner", "ffn_dim", default=4 * d)),
                   d_vocab=int(cfg.vocab_size), n_ctx=int(get("max_position_embeddings", "n_positions", default=2048)),
                   gated_mlp=str(get("hidden_act", "activation_function", default="")) == "silu")


def lm_weight_bytes(s: LMShape, dtype_bytes: int) -> int:
    """Parameters and buffers of the HookedTransformer the study loads (Llama layout of
    TransformerLens: untied W_E/W_U, zero biases kept as tensors, rotary tables per layer)."""
    attn = (s.n_heads + 2 * s.n_kv_heads) * s.d_head * (s.d_model + 1) + s.n_heads * s.d_head * s.d_model + s.d_model
    mlp = (3 if s.gated_mlp else 2) * s.d_model * s.d_mlp + s.d_mlp + s.d_model
    per_layer = attn + mlp + 2 * s.d_model + 2 * s.n_ctx * s.d_head  # + ln1, ln2 + rotary sin/cos
    n = 2 * s.d_vocab * s.d_model + s.d_vocab + s.d_model + s.n_layers * per_layer
    return n * dtype_bytes + 4 * s.n_layers  # + one float32 IGNORE scalar per attention layer


def sae_params(d_in: int, d_sae: int) -> int:
    """Parameters of one paper TopK SAE: W_enc, W_dec and b_pre (b_dec); the paper has no b_enc."""
    return 2 * d_in * d_sae + d_in


@dataclass(frozen=True)
class Component:
    """Bytes one part of a unit holds at once: ``fixed`` per pass plus ``per_hook`` per layer trained in it."""

    name: str
    where: str  # "device" or "host"
    phase: str  # "train" or "analyse"
    fixed: int = 0
    per_hook: int = 0

    def bytes(self, n_hooks: int) -> int:
        return self.fixed + n_hooks * self.per_hook


ANALYSIS_WORKSET_FACTOR = 6
"""Bytes the per-feature analysis of one layer holds beside its codes, per code entry (M x K),
as a multiple of 8 bytes: sorted copies, masks and the token/feature keys of the active set
(measured with benchmarks/bench_unit_memory.py)."""


def unit_components(recipe: Recipe, shape: LMShape, *, logits_chunk_tokens: int | None = None,
                    baseline: int | None = None) -> list[Component]:
    """What one unit holds, per phase (LM load, training, analysis), from the recipe and the LM's shape.

    ``logits_chunk_tokens``: positions whose logits are alive at once in the CE metrics
    (default: as many as ``data.logits_budget_mb`` allows, as ``lm_loss`` cuts them);
    ``baseline``: the process's resident bytes before the unit (default: measured now).
    """
    data, sae = recipe.data, recipe.sae
    lm_b = DTYPE_BYTES[recipe.dtype]
    buf_b = DTYPE_BYTES[data.buffer_dtype]
    d, T = shape.d_model, data.context
    n = sae.d_sae or sae.expansion * d
    B, K = sae.batch_size, sae.k
    n_eval = data.eval_tokens_per_lang * len(data.languages)
    n_windows = math.ceil((data.train_tokens_per_lang + data.eval_tokens_per_lang) / (T - 1)) * len(data.languages)
    chunk = data.lm_batch_size * (T - 1)  # vectors of one LM batch
    logits_tokens = logits_chunk_tokens or chunk_positions(shape.d_vocab, int(data.logits_budget_mb * 2**20))
    P = sae_params(d, n)
    EB = EVAL_ENCODE_BATCH

    def forward(windows: int) -> tuple[int, int]:
        """(transient activations of one no-grad block, one saved residual) for a batch of windows."""
        tok = windows * T
        act = tok * lm_b * (6 * d + 2 * (shape.n_heads + shape.n_kv_heads) * shape.d_head + 3 * shape.d_mlp)
        return act + 2 * windows * shape.n_heads * T * T * 4, tok * d * lm_b

    lm_fwd, lm_saved = forward(data.lm_batch_size)
    ce_fwd, ce_saved = forward(CE_BATCH_WINDOWS)
    weights = lm_weight_bytes(shape, lm_b)
    always = [Component("this process before the unit (Python, torch, libraries, corpus)", "host", p,
                        fixed=process_rss() if baseline is None else baseline) for p in PHASES]
    always += [Component(f"tokenised windows (~{n_windows:,} x {T} token ids, train + eval)", "host", p,
                         fixed=n_windows * (T + 3) * 8) for p in PHASES]
    return always + [
        Component("LM load: the HF model's weights, converted on the host (transient)", "host", "load",
                  fixed=weights),
        Component(f"LM weights ({recipe.dtype})", "device", "load", fixed=weights),
        Component(f"LM weights ({recipe.dtype})", "device", "train", fixed=weights),
        Component(f"LM batch ({data.lm_batch_size} x {T} tokens; + saved residual per layer)", "device", "train",
                  fixed=lm_fwd, per_hook=lm_saved),
        Component("SAE weights + grads + Adam state (per layer, float32)", "device", "train",
                  per_hook=16 * P + 8 * n + n),
        Component(f"SAE step outputs kept until all layers stepped (per layer, batch {B:,})", "device", "train",
                  per_hook=2 * B * d * 4 + B * K * 24),
        Component(f"SAE step workspace (one layer at a time: {B:,} x {n:,} pre-activations)", "device", "train",
                  fixed=B * n * 4 + 3 * B * d * 4),
        Component(f"store buffer (per layer: {data.buffer_vectors:,} vectors in {data.buffer_dtype} "
                  f"+ one LM chunk + one batch)", "host", "train", fixed=data.buffer_vectors * 65,
                  per_hook=data.buffer_vectors * d * buf_b + 2 * chunk * d * 4 + 2 * B * d * 4),
        Component(f"LM weights ({recipe.dtype})", "device", "analyse", fixed=weights),
        Component("SAE weights for analysis (per layer, float32)", "device", "analyse", per_hook=4 * P),
        Component(f"eval LM batch ({data.lm_batch_size} x {T} tokens; per layer: its residual, unit vectors and "
                  f"<= {EB:,} + one batch re-cut rows)", "device", "analyse",
                  fixed=lm_fwd + (EB + chunk) * d * 4, per_hook=lm_saved + (EB + 2 * chunk) * d * 4),
        Component(f"SAE encode workspace ({EB:,} x {n:,} pre-activations + dense code)", "device", "analyse",
                  fixed=2 * EB * n * 4 + EB * d * 4),
        Component(f"CE batch ({CE_BATCH_WINDOWS} x {T} tokens; + cached residual per layer)", "device", "analyse",
                  fixed=ce_fwd, per_hook=ce_saved),
        Component(f"logits chunk ({logits_tokens:,} tokens x {shape.d_vocab:,} vocab: float32 logits + log-softmax)",
                  "device", "analyse", fixed=2 * logits_tokens * shape.d_vocab * 4),
        Component(f"eval labels ({n_eval:,} vectors; codes stream to disk, nothing per layer held)", "host",
                  "analyse", fixed=n_eval * 32 * 2),
        Component(f"analysis of one layer at a time ({n_eval:,} x K={K} codes, their file copy, the "
                  "per-feature working set)", "host", "analyse",
                  fixed=n_eval * K * 8 * (2 + ANALYSIS_WORKSET_FACTOR) + n_eval * 32),
    ]


def pass_peak(components: list[Component], n_hooks: int, merged: bool) -> dict[str, int]:
    """Peak bytes of one pass of ``n_hooks`` layers: {'device', 'host'} (phases do not overlap).

    ``merged``: the device is the host's RAM (CPU), so the 'device' figure is the sum of both.
    """
    peak = {"device": 0, "host": 0}
    for phase in {c.phase for c in components}:
        got = {w: sum(c.bytes(n_hooks) for c in components if c.phase == phase and c.where == w)
               for w in ("device", "host")}
        if merged:
            got = {"device": got["device"] + got["host"], "host": 0}
        peak = {w: max(peak[w], got[w]) for w in peak}
    return peak


def split_balanced(layers: list[int], n_groups: int) -> list[list[int]]:
    """``layers`` (sorted) in ``n_groups`` contiguous groups whose sizes differ by at most one."""
    layers = sorted(layers)
    q, r = divmod(len(layers), n_groups)
    out, s = [], 0
    for g in range(n_groups):
        size = q + (g < r)
        out.append(layers[s:s + size])
        s += size
    return [g for g in out if g]


@dataclass
class UnitPlan:
    """How one unit's layers are trained: groups (one LM pass each) and their peak memory."""

    groups: list[list[int]]
    peak: dict[str, int]
    """Peak of the largest group: {'device', 'host'} bytes ('host' 0 when merged into 'device')."""
    budget: int | None
    budget_source: str
    merged: bool
    fits: bool
    """False when even one layer per pass exceeds a budget (the plan then uses one per pass)."""
    host_budget: int | None = None
    host_source: str = ""

    @property
    def passes(self) -> int:
        return len(self.groups)

    def lm_cost(self) -> float:
        """LM forward work relative to one pass over every layer (a pass stops at its deepest layer)."""
        full = stop_at_layer_for([hook_for_layer(max(l for g in self.groups for l in g))])
        return sum(stop_at_layer_for([hook_for_layer(max(g))]) for g in self.groups) / full


def _fits(peak: dict[str, int], budget: int | None, host_budget: int | None, merged: bool) -> bool:
    """Whether a pass's peak stays within ``PLAN_FRACTION`` of every budget that applies."""
    if merged:  # one RAM: the tighter of the two budgets given
        limits = [b for b in (budget, host_budget) if b is not None]
        return not limits or peak["device"] <= PLAN_FRACTION * min(limits)
    return ((budget is None or peak["device"] <= PLAN_FRACTION * budget)
            and (host_budget is None or peak["host"] <= PLAN_FRACTION * host_budget))


def plan_unit(recipe: Recipe, shape: LMShape, layers: list[int], budget: int | None = None,
              budget_source: str = "", *, host_budget: int | None = None, host_source: str = "",
              logits_chunk_tokens: int | None = None, baseline: int | None = None) -> UnitPlan:
    """As few contiguous layer groups as keep every pass within ``PLAN_FRACTION`` of both the
    device ``budget`` and the ``host_budget`` (None: that side is not limited)."""
    comps = unit_components(recipe, shape, logits_chunk_tokens=logits_chunk_tokens, baseline=baseline)
    merged = torch.device(recipe.device).type == "cpu"
    layers = sorted(layers)
    extra = {"host_budget": host_budget, "host_source": host_source}
    if (budget is None and host_budget is None) or not layers:
        return UnitPlan([layers], pass_peak(comps, len(layers), merged), budget, budget_source, merged, True, **extra)
    k = max((k for k in range(1, len(layers) + 1) if _fits(pass_peak(comps, k, merged), budget, host_budget, merged)),
            default=0)
    groups = split_balanced(layers, math.ceil(len(layers) / max(k, 1)))
    peak = pass_peak(comps, max(len(g) for g in groups), merged)
    return UnitPlan(groups, peak, budget, budget_source, merged, k > 0, **extra)


def fmt_layers(layers: list[int]) -> str:
    """'1-14' for a run of consecutive layers, else '1,3,5'."""
    if len(layers) > 2 and layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}-{layers[-1]}"
    return ",".join(map(str, layers))


def describe_unit_plan(p: UnitPlan) -> str:
    """One line: passes, layers per pass, peak memory and the LM cost."""
    where = "RAM (device = host)" if p.merged else "device"
    host = "" if p.merged else f", host RAM {fmt_bytes(p.peak['host'])}"
    groups = " | ".join(fmt_layers(g) for g in p.groups)
    return (f"{p.passes} LM pass{'es' if p.passes > 1 else ''} ({groups}); peak {where} "
            f"{fmt_bytes(p.peak['device'])}{host}; LM time {p.passes} x one forward "
            f"({p.lm_cost():.2f} x one full-depth pass: a pass stops at its deepest layer)")


def unit_groups(recipe: Recipe, hf_config: Any, layers: list[int], unit_id: str = "unit") -> list[list[int]]:
    """The layer groups of one unit on this machine now (called before the LM is loaded)."""
    budget, source = memory_budget(recipe)
    host, host_source = host_memory_budget(recipe)
    plan = plan_unit(recipe, LMShape.from_hf_config(hf_config), layers, budget, source,
                     host_budget=host, host_source=host_source)
    if not plan.fits:
        log.warning("%s: one layer per LM pass needs ~%s on the device and ~%s of host RAM, more than %.0f%% of "
                    "the budgets (%s from %s, %s from %s); running one layer per pass anyway. Lower sae.batch_size, "
                    "data.buffer_vectors (or data.buffer_dtype: bfloat16), data.eval_tokens_per_lang or "
                    "data.lm_batch_size, or use a machine with more memory", unit_id, fmt_bytes(plan.peak["device"]),
                    fmt_bytes(plan.peak["host"]), 100 * PLAN_FRACTION, fmt_bytes(budget or 0), source,
                    fmt_bytes(host or 0), host_source)
    if plan.passes > 1:
        log.info("%s: memory plan %s (device budget %s from %s, host %s from %s)", unit_id, describe_unit_plan(plan),
                 fmt_bytes(budget or 0), source, fmt_bytes(host or 0), host_source)
    return plan.groups
