"""The recipe's ``crosscoder:`` section: one dictionary shared by a layer's checkpoints (issue 27).

Why a module of its own: config.py holds the study's schema and is at its size limit; this
section is read by the crosscoder stage only (:mod:`sae_bilingual.study.crosscoder_stage`).
:func:`check_crosscoder` runs with the recipe's other load-time checks and raises a
:class:`~sae_bilingual.errors.ConfigError` naming the bad field (``crosscoder.k``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Union

from sae_bilingual.errors import ConfigError
from sae_bilingual.layers import parse_layers

EMERGENCE_THRESHOLD = 0.5
"""Default ``crosscoder.emergence_threshold``: a latent is alive at checkpoint c when its decoder
norm share at c exceeds 0.5 / C, half the share (1/C) of a latent present equally everywhere.
Why half the uniform share: a latent spread over all C checkpoints passes it everywhere even
when its norms differ by 2x, while one that lives at a single checkpoint (share ~1 there, ~0
elsewhere) passes it only there. For C = 2 it is share > 0.25, i.e. the other checkpoint's
norm is below a third of this one's; Minder et al. 2025 call a pair latent exclusive at a
relative norm below 0.1 — ours is looser, so it counts more latents as exclusive, not fewer."""


@dataclass
class CrosscoderSpec:
    """``crosscoder:``: a BatchTopK acausal crosscoder over C checkpoints of each listed layer."""

    enabled: bool = False
    """Run the crosscoder stage after the per-checkpoint units and the lineage stage."""
    model: int = 0
    """Index into ``models`` whose checkpoints the crosscoder spans."""
    layers: Union[str, list[int]] = "mid"
    """Paper layer numbers (1..n_layers), or "mid" (the middle layer of the model)."""
    checkpoints: Union[str, list[int]] = "study"
    """Iterations to span (>= 2, each analysed by the study), or "study": all the study's checkpoints."""
    k: int = 32
    """Latents kept per row on average (BatchTopK keeps k x B over a batch of B rows)."""
    expansion: int = 4
    """Latents n = expansion x d_model, unless ``d_sae`` is given."""
    d_sae: int | None = None
    """Number of latents (overrides ``expansion``)."""
    lr: Union[float, str] = "sae"
    """Learning rate, or "sae": the study's ``sae.lr`` (the LR the grid picked when "grid")."""
    tokens: int | None = None
    """Aligned rows to train on (each row = one token at every checkpoint); None: the study's
    training windows once (data.train_tokens_per_lang x languages)."""
    batch_size: int = 256
    """Rows per training step."""
    emergence_threshold: float = EMERGENCE_THRESHOLD
    """Alive at c when the decoder norm share at c > emergence_threshold / C (see EMERGENCE_THRESHOLD)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Further keyword arguments of ``train_crosscoder`` (e.g. warmup_steps)."""


def _bad(name: str, msg: str) -> ConfigError:
    return ConfigError(f"crosscoder.{name}: {msg}")


def check_crosscoder(recipe: Any) -> None:
    """Load-time checks of ``recipe.crosscoder`` (nothing is checked while it is disabled
    beyond the types, so a recipe may carry a section it does not run)."""
    c = recipe.crosscoder
    if not c.enabled:
        return
    for name in ("k", "expansion", "batch_size"):
        v = getattr(c, name)
        if v <= 0:
            raise _bad(name, f"must be a positive integer, got {v}")
    if c.d_sae is not None and c.d_sae <= 0:
        raise _bad("d_sae", f"must be a positive integer or null, got {c.d_sae}")
    if c.d_sae is not None and c.k > c.d_sae:
        raise _bad("k", f"k = {c.k} is larger than d_sae = {c.d_sae}; lower k or raise d_sae")
    if c.tokens is not None and c.tokens <= 0:
        raise _bad("tokens", f"must be a positive integer or null, got {c.tokens}")
    if isinstance(c.lr, str):
        if c.lr != "sae":
            raise _bad("lr", f"must be a number > 0 or 'sae' (the study's sae.lr), got {c.lr!r}")
    elif not (math.isfinite(c.lr) and c.lr > 0):
        raise _bad("lr", f"must be a finite number > 0, got {c.lr}")
    if not (math.isfinite(c.emergence_threshold) and 0 < c.emergence_threshold < 1):
        raise _bad("emergence_threshold", f"must lie in (0, 1) (a fraction of the uniform share 1/C; "
                   f"default {EMERGENCE_THRESHOLD}), got {c.emergence_threshold}")
    if isinstance(c.layers, str):
        if c.layers != "mid":
            raise _bad("layers", f"must be a list of paper layer numbers or 'mid', got {c.layers!r}")
    elif not c.layers or any(l < 1 for l in c.layers):
        raise _bad("layers", f"must list paper layer numbers >= 1 (blocks.{{l-1}}), got {c.layers}")
    if isinstance(c.checkpoints, str):
        if c.checkpoints != "study":
            raise _bad("checkpoints", f"must be a list of iterations or 'study', got {c.checkpoints!r}")
    elif len(set(c.checkpoints)) < 2 or len(set(c.checkpoints)) != len(c.checkpoints):
        raise _bad("checkpoints", f"needs >= 2 distinct iterations, got {c.checkpoints}")
    if not 0 <= c.model < len(recipe.models):
        raise _bad("model", f"{c.model} is not an index into models (0..{len(recipe.models) - 1})")


def crosscoder_targets(spec: CrosscoderSpec, units: list[Any], n_layers: int) -> list[tuple[int, list[Any]]]:
    """[(paper layer, the study's units it spans, by iteration)] for an enabled section.

    ``units``: the study plan's units (``model_index``, ``iteration``, ``layers``). Raises a
    ConfigError naming ``crosscoder.checkpoints`` / ``crosscoder.layers`` when the section asks
    for a checkpoint or layer the study does not analyse (the stage compares with its SAEs)."""
    from_model = sorted((u for u in units if u.model_index == spec.model), key=lambda u: u.iteration)
    if spec.checkpoints == "study":
        chosen = from_model
    else:
        have = {u.iteration: u for u in from_model}
        missing = [it for it in spec.checkpoints if it not in have]
        if missing:
            raise _bad("checkpoints", f"{missing} are not checkpoints of the study's model {spec.model} "
                       f"(it analyses {sorted(have)})")
        chosen = [have[it] for it in sorted(spec.checkpoints)]
    if len(chosen) < 2:
        raise _bad("checkpoints", f"a crosscoder spans >= 2 checkpoints; the study has {len(chosen)} of model "
                   f"{spec.model}")
    layers = parse_layers(spec.layers, n_layers)
    out = []
    for layer in layers:
        if any(layer not in u.layers for u in chosen):
            raise _bad("layers", f"layer {layer} is not analysed at every spanned checkpoint "
                       f"(the study's layers: {chosen[0].layers})")
        out.append((layer, chosen))
    return out
