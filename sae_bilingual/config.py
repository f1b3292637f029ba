"""Recipe schema: YAML -> validated dataclasses.

Every field is typed; :func:`from_dict` (:mod:`sae_bilingual.config_loading`) checks names
and types recursively and raises a :class:`~sae_bilingual.errors.ConfigError` that names the
offending field by its dotted path (``sae.k``, ``models[0].layers``) and says what would be
valid. :meth:`Recipe.validate` and :mod:`sae_bilingual.config_checks` check what types cannot.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from sae_bilingual.config_analysis import AnalysisSpec, EmbeddingModelSpec
from sae_bilingual.config_checks import check_recipe, parse_bytes, positive
from sae_bilingual.config_crosscoder import CrosscoderSpec
from sae_bilingual.config_data import DataSpec
from sae_bilingual.config_intervention import InterventionSpec
from sae_bilingual.config_loading import from_dict, load_yaml, set_dotted, yaml_error_line
from sae_bilingual.config_sae import SAESpec
from sae_bilingual.errors import ConfigError

__all__ = ["AnalysisSpec", "CrosscoderSpec", "DataSpec", "EmbeddingModelSpec", "ExportSpec", "InterventionSpec",
           "ModelSpec", "Recipe", "SAESpec", "WorldSpec", "dump_recipe", "load_recipe", "recipe_to_dict"]


# --------------------------------------------------------------------------- schema


@dataclass
class ModelSpec:
    """One model family of the study and which of its checkpoints/layers to analyse."""

    name: str | None = None
    """Id of this model in outputs (units/<name>/...); default: the family's canonical name. Required when two entries would collide."""
    family: str = "toy"
    """'toy' (the embedded world), an LLM-jp size ('llm-jp-3-3.7b'), 'hf' (any checkpoints
    TransformerLens converts; needs `source`) or a built-in public family ('pythia-160m',
    'olmo-2-1b', 'croissantllm', ...; see docs/models.md)."""
    source: str | None = None
    """HF repo id, a local HF dir, or a local root of checkpoint dirs (iter_NNNNNNN, stepN, ...)
    (None: toy world / the family's Hub repo)."""
    tokenizer: str | None = None
    """Tokenizer dir, SentencePiece .model or Hub repo (None: next to the checkpoints, or
    <root>/tokenizer/)."""
    model_backend: Literal["hooked", "bridge"] = "hooked"
    """How checkpoints load: 'hooked' (an unprocessed HookedTransformer; needed by SAELens's
    runner and HookedSAETransformer) or 'bridge' (TransformerLens 3's TransformerBridge)."""
    tokenizer_vocab_reason: str | None = None
    """Why the tokenizer may hold far fewer tokens than the model's vocabulary (required then:
    preflight refuses a tokenizer under 90 % of vocab_size without a reason)."""
    tokens_per_step: int | None = None
    """Training tokens per optimizer step, for token counts when the checkpoints carry none
    (a catalogue.json in the root wins)."""
    revision: str | None = None
    """Hub revision when `source` is a repo id."""
    checkpoints: Union[str, int, list[int]] = "all"
    """'all', 'final', 'log-spaced N', an iteration, or a list of iterations."""
    checkpoint_tokens: list[int] | None = None
    """Alternative to `checkpoints`: pick the checkpoints nearest these token counts."""
    layers: Union[str, int, list[Union[int, str]]] = "all"
    """Paper layer numbering: 'all', 'all+emb', 'mid', an int, 'a-b', or a list."""


@dataclass
class WorldSpec:
    """Overrides for the toy world's config (see sae_bilingual.world.WorldConfig)."""

    preset: Literal["default", "tiny", "codeswitch", "disjoint"] = "default"
    """Starting point: 'default' (the study), 'tiny' (tests), or a control: 'codeswitch'
    (content words switch language: bilingual concepts certainly exist) or 'disjoint' (each
    language has its own concepts: none can be bilingual). See world.PRESETS."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """WorldConfig fields to change, e.g. {bilingual_share: 0.3, steps: 2000}."""


@dataclass
class ExportSpec:
    """Write the study's SAEs as a SAELens release folder at the end (see `sae-bilingual export`)."""

    enabled: bool = False
    release: str | None = None
    """Release name prefix (default: the recipe name); one release per model: <release>-<model>."""
    repo_id: str | None = None
    """Hub repo the folder will be uploaded to (written into pretrained_saes.yaml)."""
    path: str | None = None
    """Output folder (default: <output_dir>/release)."""


@dataclass
class Recipe:
    """A whole study: models x checkpoints x layers, data, SAE, analysis, intervention."""

    name: str = "study"
    output_dir: str = "runs/study"
    seed: int = 0
    device: str = "cpu"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    executor: Literal["local", "ray", "submitit"] = "local"
    models: list[ModelSpec] = field(default_factory=lambda: [ModelSpec()])
    world: WorldSpec = field(default_factory=WorldSpec)
    data: DataSpec = field(default_factory=DataSpec)
    sae: SAESpec = field(default_factory=SAESpec)
    analysis: AnalysisSpec = field(default_factory=AnalysisSpec)
    intervention: InterventionSpec = field(default_factory=InterventionSpec)
    export: ExportSpec = field(default_factory=ExportSpec)
    crosscoder: CrosscoderSpec = field(default_factory=CrosscoderSpec)
    controls: list[Literal["codeswitch", "disjoint"]] = field(default_factory=list)
    """Toy studies only: also run the study on these control worlds (under
    <output_dir>/controls/<name>) and show their numbers beside the study's in the report."""
    max_memory: Union[int, str, None] = None
    """Memory a unit may use on `device` (bytes, or '80GB', '40GiB'); None: the device's free
    memory when the unit starts. A unit whose layers do not fit together is trained in several
    LM passes of fewer layers, with identical results (memplan.py; `--dry-run` shows the plan)."""
    max_host_memory: Union[int, str, None] = None
    """Host RAM a unit may use (bytes, or '128GB'); None: the RAM available when the unit starts.
    The shuffle buffers (one per layer of a pass), the evaluation labels and the analysis of one
    layer live there; the plan groups layers so that both this and `max_memory` hold."""
    wandb: bool = False
    expected_gpu_hours: float | None = None
    """Documentation only: what the recipe costs at full scale."""

    def validate(self) -> Recipe:
        """Each section checks itself; then what ties sections together and the root's fields."""
        self.data.validate()
        self.sae.validate()
        self.analysis.validate()
        self.intervention.validate(self.data.languages)
        if self.sae.warm_start and self.executor != "local":
            raise ConfigError(
                f"sae.warm_start chains each checkpoint's SAEs to the previous checkpoint's, so the "
                f"units of a model must run in order: use executor: local, not {self.executor!r}"
            )
        for name in ("max_memory", "max_host_memory"):
            if getattr(self, name) is not None:
                parse_bytes(getattr(self, name), name)  # raises naming the field and the forms
        if self.controls and self.data.corpus != "toy":
            raise ConfigError("controls: control worlds exist only for the toy world (data.corpus: toy)")
        if not self.models:
            raise ConfigError("models is empty: name at least one, e.g. [{family: toy}]")
        for i, m in enumerate(self.models):
            if m.tokens_per_step is not None:
                positive(m.tokens_per_step, f"models[{i}].tokens_per_step")
        if self.intervention.enabled and not 0 <= self.intervention.model < len(self.models):
            raise ConfigError(
                f"intervention.model = {self.intervention.model} is not an index into models "
                f"(0..{len(self.models) - 1})"
            )
        check_recipe(self)  # seed, paths, crosscoder, device, model ids
        return self


# --------------------------------------------------------------------------- loading


def load_recipe(path: str | Path, overrides: dict[str, Any] | None = None) -> Recipe:
    """Read a YAML recipe with the safe loader and validate it into a :class:`Recipe`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe {path} does not exist; see recipes/ for examples")
    try:
        data = load_yaml(path.read_text(encoding="utf-8"), str(path)) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"recipe {path}: {yaml_error_line(e)}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {path} must be a mapping of fields, got {type(data).__name__}")
    for dotted, value in (overrides or {}).items():
        set_dotted(data, dotted, value)
    for section, name in _REMOVED_FIELDS:
        if isinstance(data.get(section), dict) and name in data[section]:
            raise ConfigError(f"{section}.{name}: {_REMOVED_FIELDS[section, name]}; delete the line from {path}")
    return from_dict(Recipe, data).validate()


_REMOVED_FIELDS = {
    ("sae", "checkpoint_every"): "removed (it wrote SAELens checkpoints that nothing resumed from: "
                                 "a killed unit is redone from the start)",
}
"""Fields older recipes (and the recipe.yaml of older output dirs) may still name."""


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    """Plain dict of a recipe (round-trips through :func:`from_dict`)."""
    return dataclasses.asdict(recipe)


def dump_recipe(recipe: Recipe) -> str:
    """YAML text of a resolved recipe."""
    return yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False, allow_unicode=True)
