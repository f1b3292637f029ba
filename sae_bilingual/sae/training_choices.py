"""The paper's training choices, made on the SAE and on torch's own optimiser hooks, so that
every trainer trains the same SAE: SAELens's ``LanguageModelSAETrainingRunner`` and
``SAETrainer``, the study's ``MultiSAETrainer`` (:func:`sae_bilingual.sae.train.train_saes`)
and a plain torch loop.

* First training step (:func:`first_step`): b_pre <- geometric median of the first batch's
  first ``geometric_median_sample`` vectors (in the SAE's unit-norm input space), decoder
  rows rescaled to unit norm. b_pre is kept when weights were loaded (``load_state_dict``),
  warm-started (``init_from``) or set with ``init_b_pre``.
* Before every optimiser step: ``eps`` = the SAE config's ``adam_eps`` (the original code's
  6.25e-10; torch's default is 1e-8) and, before the first one, ``fused`` = ``fused_adam``.
  SAELens's trainer builds ``Adam(sae.parameters(), lr, betas)`` with no eps setting, so this
  is done by a global ``torch.optim`` step pre-hook on every optimiser whose parameter groups
  hold a registered SAE's decoder (Adam-family groups only: those with an ``eps`` key).
* After every optimiser step: decoder rows rescaled to unit norm (the paper keeps them
  unit-norm), so a trained SAE is unit-norm in memory, not only once saved.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch.optim.optimizer import (
    Optimizer,
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

from sae_bilingual.sae.kernels import geometric_median

_SAES: weakref.WeakSet[Any] = weakref.WeakSet()
"""Live training SAEs whose optimisers get the paper's choices."""
_OWNED: weakref.WeakKeyDictionary[Optimizer, tuple[int, list[tuple[int, weakref.ref[Any]]]]] = (
    weakref.WeakKeyDictionary())
"""Per optimiser: its number of groups, and (group index, SAE) for each group that holds a
registered SAE's decoder."""
_HOOKS: list[Any] = []


def register_training_sae(sae: Any) -> None:
    """Make every optimiser that steps ``sae``'s parameters use the paper's choices (idempotent)."""
    if sae in _SAES:
        return
    _SAES.add(sae)
    sae.register_load_state_dict_post_hook(_loaded)
    if not _HOOKS:
        _HOOKS.append(register_optimizer_step_pre_hook(_before_step))
        _HOOKS.append(register_optimizer_step_post_hook(_after_step))


def _loaded(module: Any, incompatible_keys: Any) -> None:  # module: the registered training SAE
    module.b_pre_pending = False  # loaded weights keep their b_pre (resume, from_pretrained_path)


def _owned(opt: Optimizer) -> list[tuple[int, weakref.ref[Any]]]:
    n_groups, found = _OWNED.get(opt, (-1, []))
    if n_groups != len(opt.param_groups):  # first step, or a group was added since
        found = []
        for i, group in enumerate(opt.param_groups):
            ids = {id(p) for p in group["params"]}
            sae = next((s for s in list(_SAES) if id(s.W_dec) in ids), None)
            if sae is not None:
                found.append((i, weakref.ref(sae)))
        _OWNED[opt] = (len(opt.param_groups), found)
    return found


def _before_step(opt: Optimizer, args: Any, kwargs: Any) -> None:
    for i, ref in _owned(opt):
        sae, group = ref(), opt.param_groups[i]
        if sae is None or "eps" not in group:
            continue
        if sae.cfg.adam_eps is not None:
            group["eps"] = sae.cfg.adam_eps
        if "fused" in group and not any(p in opt.state for p in group["params"]):
            group["fused"] = bool(sae.cfg.fused_adam)  # only before the group's first step


def _after_step(opt: Optimizer, args: Any, kwargs: Any) -> None:
    for _, ref in _owned(opt):
        sae = ref()
        if sae is not None:
            sae.normalize_decoder_()


@torch.no_grad()
def first_step(sae: Any, u: torch.Tensor) -> None:
    """The paper's initialisation that needs data, run on the first training batch ``u``
    (already in the SAE's input space): b_pre <- geometric median, decoder rows unit-norm."""
    if sae.b_pre_pending:
        n = sae.cfg.geometric_median_sample
        sae.b_dec.data.copy_(geometric_median(u[:n]).to(sae.b_dec))
        sae.b_pre_pending = False
    sae.normalize_decoder_()
    sae.first_step_pending = False
