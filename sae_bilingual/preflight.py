"""Checks a planned study must pass before any LM forward or SAE step.

Why a separate pass: the recipe schema (config.py) cannot know a model's width, its
vocabulary or whether the COMET environment exists, and the planner only resolves names.
Everything here is cheap next to the study (reading configs, tokenizing the corpus, which
the study does anyway and caches), so a bad input fails in seconds, before the output
directory is touched, with one error naming the problem and the fix.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from sae_bilingual.errors import ConfigError, OutputError

log = logging.getLogger(__name__)

SAFE_PATH_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


def check_path_part(name: str, what: str = "model family") -> str:
    """A name used as one directory level under the output dir: no '/', no '..', no leading dot."""
    if not isinstance(name, str) or not SAFE_PATH_PART.fullmatch(name) or ".." in name:
        raise OutputError(
            f"{what} name {name!r} cannot be used as a directory name under the output dir "
            "(it would write outside units/<family>/); use letters, digits, '.', '_', '+', '-' only"
        )
    return name


def check_k_below_n(recipe: Any, d_model: int, family: str) -> None:
    """TopK needs K < n latents (n = d_sae or expansion x d_model)."""
    s = recipe.sae
    n = s.d_sae or s.expansion * int(d_model)
    if s.k >= n:
        how = f"sae.d_sae = {s.d_sae}" if s.d_sae else f"sae.expansion x d_model = {s.expansion} x {d_model}"
        raise ConfigError(
            f"sae.k = {s.k} must be smaller than the number of latents n = {n} ({how}) for {family}; "
            "lower sae.k or raise sae.expansion / sae.d_sae"
        )


def check_comet(recipe: Any) -> None:
    """COMET requested (intervention.comet_python / comet_model) -> both must exist now."""
    iv = recipe.intervention
    if iv.enabled and (iv.comet_python or iv.comet_model):
        from sae_bilingual.comet_bridge import comet_model_path, comet_python

        comet_python(iv.comet_python)
        comet_model_path(iv.comet_model)


def preflight(recipe: Any, plan: Any, ctx: Any) -> None:
    """Run every pre-study check on a resolved plan; raises a SaeBilingualError subclass.

    ``plan``: the :class:`~sae_bilingual.study.Plan`; ``ctx``: its StudyContext (world,
    families, windows are built and cached there, so the study reuses them).
    """
    from sae_bilingual.store import check_token_ids

    for unit in plan.units:
        check_path_part(unit.family)
    for i, spec in enumerate(recipe.models):
        fam = ctx.family(i)
        check_k_below_n(recipe, fam.d_model, spec.family)
    check_comet(recipe)
    indices = sorted({u.model_index for u in plan.units}) or [0]
    for split in ("train", "eval"):
        for i in indices:
            w = ctx.windows(split, i)  # raises DataError: empty, one language, budget > corpus
            vocab = getattr(ctx.family(i).hf_config, "vocab_size", None)
            check_token_ids(w, vocab)
