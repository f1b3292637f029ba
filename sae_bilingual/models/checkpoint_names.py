"""Training step (and token count, when written there) from a checkpoint's folder or revision name.

Public releases name their checkpoints in a handful of ways; each pattern below is one that a
released family uses (sources in docs/models.md):

==========================================  ======================================  ==========
name                                        who writes it                           tokens
==========================================  ======================================  ==========
``iter_0010000``                            Megatron / LLM-jp conversions, toy      --
``step1000``, ``step-1000``, ``step_1000``  Pythia revisions, many trainers         --
``step1000-tokens4B``                       OLMo / OLMo-2 revisions                 4e9
``stage1-step150-tokens1B``                 OLMo-2 revisions (stage 1)              1e9
``step-001000-2BT``                         HuggingFaceFW ablation models           2e9
``global_step1000``                         DeepSpeed / BLOOM intermediate          --
``checkpoint-1000``                         HF Trainer                              --
``ckpt_356``                                LLM360 Amber (checkpoint index)         --
``base_55k``                                CroissantLLM repos (k = 1000 steps)     --
==========================================  ======================================  ==========

Token counts written in a name are rounded by their authors (to 1B); the family's exact
tokens-per-step, when known, wins over them (see :class:`~sae_bilingual.models.generic.HFFamily`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_UNITS = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "T": 10**12}

PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("iter", re.compile(r"^iter_(?P<step>\d+)$")),
    ("olmo", re.compile(r"^(?:stage1-)?step(?P<step>\d+)-tokens(?P<tokens>\d+)(?P<unit>[KMBT])$")),
    ("fineweb", re.compile(r"^step-(?P<step>\d+)-(?P<tokens>\d+)(?P<unit>[KMBT])T$")),
    ("step", re.compile(r"^(?:global_)?step[-_]?(?P<step>\d+)$")),
    ("checkpoint", re.compile(r"^checkpoint-(?P<step>\d+)$")),
    ("ckpt", re.compile(r"^ckpt_(?P<step>\d+)$")),
    ("k-steps", re.compile(r"^(?:base_)?(?P<kstep>\d+)k$")),
)
"""(kind, regex) tried in order; a name matching none is not a checkpoint."""


@dataclass(frozen=True)
class ParsedName:
    """What a checkpoint name says."""

    step: int
    """Training step (iteration) of the checkpoint."""
    tokens: int | None
    """Training tokens written in the name (rounded by its authors), else None."""
    kind: str
    """Which pattern matched (a key of :data:`PATTERNS`)."""


def parse_checkpoint_name(name: str) -> ParsedName | None:
    """The step (and tokens) a checkpoint folder / Hub revision name encodes, or None."""
    for kind, rx in PATTERNS:
        m = rx.match(name.strip())
        if not m:
            continue
        groups = m.groupdict()
        step = int(groups["kstep"]) * 1000 if groups.get("kstep") else int(groups["step"])
        tokens = None
        if groups.get("tokens") is not None:
            tokens = int(groups["tokens"]) * _UNITS[groups.get("unit") or ""]
        return ParsedName(step, tokens, kind)
    return None


def describe_patterns() -> str:
    """One line naming the accepted checkpoint name forms, for error messages."""
    return ("iter_NNNNNNN, stepN / step-N / step_N / global_stepN, stepN-tokensMB, "
            "stage1-stepN-tokensMB, step-N-MBT, checkpoint-N, ckpt_N, base_Nk")
