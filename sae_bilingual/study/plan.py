"""What a recipe will run: its work units (model, checkpoint, layers), the LR-grid unit,
checked before anything is trained (names, layer ranges, the intervention layer, preflight)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sae_bilingual.config import ModelSpec, Recipe
from sae_bilingual.errors import ConfigError
from sae_bilingual.hub import check_hub_access
from sae_bilingual.layers import hook_for_layer, parse_layers
from sae_bilingual.models.catalogue import Checkpoint, CheckpointCatalogue
from sae_bilingual.study.context import StudyContext
from sae_bilingual.study.dryrun import describe_plan
from sae_bilingual.study.preflight import check_model_names, preflight
from sae_bilingual.study.unit import Unit


@dataclass
class Plan:
    """What a recipe will run: units, the LR-grid unit and sizes for --dry-run."""

    units: list[Unit]
    lm_tokens_per_unit: int
    lr_grid: Unit | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def n_saes(self) -> int:
        return sum(len(u.layers) for u in self.units)

    def describe(self, recipe: Recipe) -> str:
        """Human-readable plan for ``--dry-run`` (units, SAEs, LM tokens; dryrun.py)."""
        return describe_plan(self, recipe)


def select_checkpoints(spec: ModelSpec, catalogue: CheckpointCatalogue) -> list[Checkpoint]:
    """Checkpoints named by a ModelSpec: 'all', 'final', 'log-spaced N', iterations, tokens."""
    if spec.checkpoint_tokens:
        return _unique([catalogue.select(tokens=t) for t in spec.checkpoint_tokens])
    ck = spec.checkpoints
    if isinstance(ck, str):
        s = ck.strip().lower()
        if s == "all":
            return list(catalogue.checkpoints)
        if s == "final":
            return [catalogue.final]
        if s.startswith("log-spaced"):
            try:
                n = int(s.split()[-1])
            except ValueError:
                raise ConfigError(f"models[].checkpoints: {ck!r}: write 'log-spaced N' with an integer N") from None
            return list(catalogue.log_spaced(n))
        if s.isdigit():
            return [catalogue.select(iteration=int(s))]
        raise ConfigError(
            f"models[].checkpoints: cannot read {ck!r}; use 'all', 'final', 'log-spaced N', "
            "an iteration or a list of iterations"
        )
    its = [ck] if isinstance(ck, int) else list(ck)
    return _unique([catalogue.select(iteration=i) for i in its])


def _unique(cks: list[Checkpoint]) -> list[Checkpoint]:
    seen, out = set(), []
    for c in cks:
        if c.iteration not in seen:
            seen.add(c.iteration)
            out.append(c)
    return sorted(out, key=lambda c: c.iteration)


def plan_study(recipe: Recipe, ctx: StudyContext | None = None, run_preflight: bool = True) -> Plan:
    """Resolve checkpoints and layers for every model: fails fast on bad names or ranges
    (and, with ``run_preflight``, on inputs the study cannot use: preflight.py)."""
    ctx = ctx or StudyContext(recipe)
    check_hub_access(recipe)  # before any family or corpus reaches for the network
    units: list[Unit] = []
    lr_unit = None
    names = check_model_names(recipe, [ctx.family(i).name for i in range(len(recipe.models))])
    for i, spec in enumerate(recipe.models):
        fam = ctx.family(i)
        name = names[i]
        layers = parse_layers(spec.layers, fam.n_layers)
        catalogue = fam.catalogue()
        for ck in select_checkpoints(spec, catalogue):
            units.append(Unit(i, name, ck.iteration, ck.tokens, layers))
        if recipe.sae.lr == "grid" and lr_unit is None:
            final = catalogue.final
            lr_unit = Unit(i, name, final.iteration, final.tokens, [fam.n_layers // 2])
    n_langs = len(recipe.data.languages)
    lm_tokens = (recipe.data.train_tokens_per_lang + recipe.data.eval_tokens_per_lang) * n_langs
    plan = Plan(units, lm_tokens, lr_unit)
    if recipe.intervention.enabled:
        plan.notes.append(_check_intervention(recipe, ctx, units))
    if run_preflight:
        preflight(recipe, plan, ctx)
    return plan


def _check_intervention(recipe: Recipe, ctx: StudyContext, units: list[Unit]) -> str:
    """The intervention layer is one layer the study analyses at the final checkpoint, and
    the mid checkpoint exists; returns the plan's note."""
    iv = recipe.intervention
    spec = recipe.models[iv.model]
    fam = ctx.family(iv.model)
    layer = parse_layers(iv.layer, fam.n_layers)
    if len(layer) != 1:
        raise ConfigError(f"intervention.layer: name one layer, got {iv.layer!r}")
    analysed: dict[tuple[int, int], Any] = {(u.model_index, u.iteration): u.layers for u in units}
    final = fam.catalogue().final
    if layer[0] not in analysed.get((iv.model, final.iteration), []):
        raise ConfigError(
            f"intervention.layer {layer[0]}: the study must analyse that layer at the final "
            f"checkpoint (iteration {final.iteration}) of {spec.family}; add it to models[{iv.model}].layers"
        )
    if iv.mid_checkpoint is not None:
        fam.catalogue().select(iteration=iv.mid_checkpoint)  # raises naming the choices
    return f"intervention at layer {layer[0]} ({hook_for_layer(layer[0])})"
