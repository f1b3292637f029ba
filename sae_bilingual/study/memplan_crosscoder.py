"""A crosscoder unit's memory, from shapes alone (the crosscoder's half of memplan.py).

A crosscoder unit is one layer over C checkpoints: the aligned store runs the C LMs one at
a time over the same windows, each filling its slice of one host buffer of rows x C x d
(data/crosscoder_store.py), then one crosscoder of C*d inputs and n latents trains from that
buffer, then the evaluation rows (also C x d each) are encoded for the analysis. Phases do not
overlap, as in memplan.py: "collect" (one LM on the device, the buffer filling on the host),
"train" (crosscoder weights, gradients, Adam state and step workspace on the device) and
"analyse" (crosscoder weights, an encode chunk, the evaluation rows and their codes). The byte
counts are those of the tensors the code allocates; the units are memplan's
(:class:`~sae_bilingual.study.memplan.Component`, powers of 10 in :func:`fmt_bytes`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from sae_bilingual.analysis.stream import EVAL_ENCODE_BATCH
from sae_bilingual.config import Recipe
from sae_bilingual.config_crosscoder import crosscoder_targets
from sae_bilingual.study.memplan import DTYPE_BYTES, Component, LMShape, fmt_bytes, lm_weight_bytes, pass_peak
from sae_bilingual.study.context import StudyContext

__all__ = ["CrosscoderShape", "crosscoder_components", "crosscoder_params", "crosscoder_peak",
           "crosscoder_memory_lines", "describe_crosscoder_memory"]

LABEL_BYTES = 32
"""Bytes of one row's labels (lang, token_id, doc_id, position: int64 each)."""


def crosscoder_params(d_in: int, d_sae: int) -> int:
    """Parameters of an acausal crosscoder over ``d_in`` = C*d inputs: W_enc, W_dec, b_dec
    (one per input), b_enc (one per latent) and the inference threshold."""
    return 2 * d_in * d_sae + d_in + d_sae + 1


@dataclass(frozen=True)
class CrosscoderShape:
    """What a crosscoder unit's memory depends on beside the LM: C, d, n, K, B, rows."""

    n_checkpoints: int
    d_model: int
    d_sae: int
    k: int
    batch_size: int
    train_rows: int
    eval_rows: int

    @classmethod
    def from_recipe(cls, recipe: Recipe, d_model: int, n_checkpoints: int) -> CrosscoderShape:
        """From the recipe's ``crosscoder:`` and ``data:`` sections (rows: ``crosscoder.tokens``
        or the study's training tokens; the evaluation rows are the study's)."""
        cc, data = recipe.crosscoder, recipe.data
        n_lang = len(data.languages)
        return cls(n_checkpoints, d_model, cc.d_sae or cc.expansion * d_model, cc.k, cc.batch_size,
                   cc.tokens or data.train_tokens_per_lang * n_lang, data.eval_tokens_per_lang * n_lang)


def crosscoder_components(recipe: Recipe, lm: LMShape, s: CrosscoderShape) -> list[Component]:
    """What one crosscoder unit holds per phase (``fixed`` bytes; one layer, so no per-hook term)."""
    T = recipe.data.context
    lm_b, buf_b = DTYPE_BYTES[recipe.dtype], DTYPE_BYTES[recipe.data.buffer_dtype]
    Cd, n, B, EB = s.n_checkpoints * s.d_model, s.d_sae, s.batch_size, EVAL_ENCODE_BATCH
    P = crosscoder_params(Cd, n)
    chunk = recipe.data.lm_batch_size * (T - 1)
    weights = lm_weight_bytes(lm, lm_b)
    lm_batch = recipe.data.lm_batch_size * T * lm_b * (6 * lm.d_model + 3 * lm.d_mlp) \
        + 2 * recipe.data.lm_batch_size * lm.n_heads * T * T * 4
    buffer = s.train_rows * (Cd * buf_b + LABEL_BYTES)
    return [
        Component(f"one LM at a time ({recipe.dtype} weights; C = {s.n_checkpoints} loaded in turn)", "device",
                  "collect", fixed=weights),
        Component(f"LM batch ({recipe.data.lm_batch_size} x {T} tokens)", "device", "collect", fixed=lm_batch),
        Component(f"aligned buffer ({s.train_rows:,} rows x C*d = {Cd:,} in {recipe.data.buffer_dtype} + labels)",
                  "host", "collect", fixed=buffer + chunk * s.d_model * 4),
        Component(f"aligned buffer ({s.train_rows:,} rows x {Cd:,})", "host", "train", fixed=buffer),
        Component(f"crosscoder weights + grads + Adam state ({Cd:,} x {n:,}, float32)", "device", "train",
                  fixed=16 * P),
        Component(f"crosscoder step ({B:,} rows: batch, reconstruction, {B:,} x {n:,} pre-activations + "
                  f"BatchTopK selection)", "device", "train", fixed=3 * B * Cd * 4 + 2 * B * n * 4 + B * s.k * 12),
        Component(f"evaluation rows ({s.eval_rows:,} x {Cd:,} float32 + labels)", "host", "analyse",
                  fixed=s.eval_rows * (Cd * 4 + LABEL_BYTES)),
        Component("crosscoder weights for analysis (float32)", "device", "analyse", fixed=4 * P),
        Component(f"encode chunk ({EB:,} rows: input, dense code, reconstruction)", "device", "analyse",
                  fixed=EB * (2 * Cd + n) * 4),
        Component(f"codes of the evaluation rows (<= 2K = {2 * s.k} per row, and the analysis working set)",
                  "host", "analyse", fixed=s.eval_rows * 2 * s.k * 8 * 8),
    ]


def crosscoder_peak(recipe: Recipe, lm: LMShape, s: CrosscoderShape) -> dict[str, int]:
    """Peak bytes {'device', 'host'} over the phases (on a CPU device both are one RAM: 'device')."""
    return pass_peak(crosscoder_components(recipe, lm, s), 0, torch.device(recipe.device).type == "cpu")


def describe_crosscoder_memory(recipe: Recipe, lm: LMShape, s: CrosscoderShape, layer: int) -> list[str]:
    """Dry-run lines: the unit's shape, then its peak device and host bytes."""
    p = crosscoder_peak(recipe, lm, s)
    merged = torch.device(recipe.device).type == "cpu"
    host = "" if merged else f", host RAM {fmt_bytes(p['host'])}"
    return [f"  crosscoder layer {layer}: C = {s.n_checkpoints} checkpoints x d = {s.d_model} -> n = {s.d_sae:,} "
            f"latents (k = {s.k}), {s.train_rows:,} aligned rows; peak {'RAM' if merged else 'device'} "
            f"{fmt_bytes(p['device'])}{host} (buffer {fmt_bytes(s.train_rows * s.n_checkpoints * s.d_model * DTYPE_BYTES[recipe.data.buffer_dtype])})"]


def crosscoder_memory_lines(recipe: Recipe, plan: Any, ctx: StudyContext) -> list[str]:
    """The dry run's crosscoder lines (none while ``crosscoder.enabled`` is false)."""
    cc = recipe.crosscoder
    if not cc.enabled:
        return []
    fam = ctx.family(cc.model)
    lm = LMShape.from_hf_config(fam.hf_config)
    lines = [f"crosscoder memory plan (model {cc.model}, device {recipe.device}):"]
    for layer, units in crosscoder_targets(cc, plan.units, lm.n_layers):
        s = CrosscoderShape.from_recipe(recipe, lm.d_model, len(units))
        lines += describe_crosscoder_memory(recipe, lm, s, layer)
    return lines
