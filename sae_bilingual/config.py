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

from sae_bilingual.config_alignment import AlignmentSpec
from sae_bilingual.config_checks import check_k, check_recipe, parse_bytes
from sae_bilingual.config_crosscoder import CrosscoderSpec
from sae_bilingual.config_loading import from_dict, load_yaml, set_dotted, yaml_error_line
from sae_bilingual.defaults import (ADAM_EPS, DEFAULT_LR_GRID, DEFAULT_MAX_NEW_TOKENS, GEOMETRIC_MEDIAN_SAMPLE, PAPER_K,
                                     PAPER_LANGUAGES)
from sae_bilingual.errors import ConfigError


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
class DataSpec:
    """Where the labelled documents come from and how many tokens to use."""

    corpus: Literal["toy", "text", "hf"] = "toy"
    """'toy' (the world's corpus), 'text' (local files per language), 'hf' (a datasets corpus)."""
    paths: dict[str, str] = field(default_factory=dict)
    """For corpus 'text': language code -> .txt (one document a line) or .jsonl path."""
    eval_paths: dict[str, str] = field(default_factory=dict)
    """For corpus 'text': held-out files per language (default: split the train files)."""
    hf_name: str | None = None
    """For corpus 'hf': dataset name or local path."""
    hf_split: str = "train"
    hf_text_field: str = "text"
    hf_lang_field: str = "lang"
    languages: list[str] = field(default_factory=lambda: list(PAPER_LANGUAGES))
    """Language codes, in the order used for labels."""
    context: int = 64
    """Tokens per document window, BOS included (the paper: 64)."""
    train_tokens_per_lang: int = 50_000_000
    """Training vectors per language (the paper: 50M)."""
    eval_tokens_per_lang: int = 5_000_000
    """Evaluation vectors per language (the paper: 5M)."""
    buffer_vectors: int = 1_000_000
    """Shuffle-buffer size in vectors per layer (the paper: 0.5M-10M by model size)."""
    lm_batch_size: int = 32
    """Documents per LM forward when collecting activations."""
    buffer_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """dtype of the shuffle buffers' vectors. bfloat16 halves the host RAM of the buffers (the
    paper's 3.7B: 7.4 -> 3.7 GB per layer); each vector is rounded once to 8 mantissa bits after
    its unit normalisation, and the SAE casts its batch back to float32 and normalises it again
    before the step, so the SAE still trains on (rounded) unit vectors in float32."""
    logits_budget_mb: float = 256.0
    """Most MB of float32 logits formed at once (CE metrics, perplexity compute losses in chunks)."""
    activation_cache: bool = True
    """Keep training activations as safetensors shards under <output_dir>/cache so further
    SAE runs on the same (checkpoint, layers) -- the LR grid, a rerun -- skip the LM. Costs
    n_vectors x d_model x 4 bytes per layer (turn off at full scale)."""


@dataclass
class SAESpec:
    """The paper's TopK SAE and its training: the recipe's `sae:` section and the config
    :func:`sae_bilingual.sae.train.train_saes` takes (with the run's own facts: vectors, seed,
    device). A killed unit is redone from the start, which is deterministic."""

    k: int = PAPER_K
    """Latents kept per token (the paper: 32); 1 <= k < n."""
    expansion: int = 16
    """n = expansion * d_model unless `d_sae` is given (the paper: 32,768 / 2,048 = 16)."""
    d_sae: int | None = None
    """Number of latents n (None: expansion * d_model)."""
    lr: Union[float, str] = "grid"
    """A float, or 'grid' to choose from `lr_grid` on the final checkpoint's middle layer."""
    lr_grid: list[float] = field(default_factory=lambda: list(DEFAULT_LR_GRID))
    batch_size: int = 32_768
    """Vectors per optimiser step (the paper: 32,768; a study clamps it to its training vectors)."""
    warmup_steps: int = 500
    """Linear LR warm-up (the paper: 500); clamped to a tenth of a short run."""
    adam_eps: float = ADAM_EPS
    """Adam epsilon of the original code."""
    fused_adam: bool = True
    """torch's fused Adam kernel; false: SAELens's per-tensor Adam (same update up to rounding)."""
    fast: bool = True
    """The sparse training step; false: the dense reference (same maths, for tests)."""
    geometric_median_sample: int = GEOMETRIC_MEDIAN_SAMPLE
    """Vectors of the first batch whose geometric median initialises b_pre (the paper)."""
    aux_k_coefficient: float = 0.0
    """Weight of the auxiliary-K loss that trains latents dead for `dead_feature_window` steps
    on the reconstruction error (Gao et al. 2024). A DEVIATION from the paper (which has no
    auxiliary loss), off by default; the summary and report flag it when on."""
    dead_feature_window: int = 1000
    """Steps without firing after which a latent counts as dead for the auxiliary-K loss."""
    warm_start: bool = False
    """Initialise each checkpoint's SAE from the trained SAE of the same layer at the previous
    analysed checkpoint (the first checkpoint starts cold). Units then run in checkpoint order,
    so it needs executor: local."""

    def n_latents(self, d_model: int) -> int:
        """n: ``d_sae``, else ``expansion * d_model``."""
        return self.d_sae or self.expansion * int(d_model)


@dataclass
class EmbeddingModelSpec:
    """A model named only for its input embedding matrix (semantic clusters)."""

    family: str = "llm-jp-3-3.7b"
    """A model family name, as in `models[].family`."""
    source: str | None = None
    """HF repo id, a local HF dir, or a local root of iter_NNNNNNN dirs (None: the family's Hub repo)."""
    revision: str | None = None
    """Hub revision when `source` is a repo id."""
    checkpoint: Union[int, str] = "final"
    """'final' or an iteration."""


@dataclass
class AnalysisSpec:
    """Feature labelling (PAPER.md, 'Feature analysis')."""

    act_threshold: float = 0.7
    """Keep activations strictly above this fraction of the feature's max."""
    lang_threshold: float = 0.9
    """A feature is language-specific when p(lang|i) exceeds this."""
    language_rule: Literal["document", "script"] = "document"
    cluster_threshold: float = 0.1
    """Cosine similarity above which two of a feature's tokens share a semantic cluster (the paper: 0.1)."""
    cluster_threshold_scaling: bool = False
    """Scale the threshold by sqrt(3072 / d_embedding): the same number of standard deviations
    of random-vector cosine as 0.1 is in the paper's 3,072-d embeddings."""
    cluster_method: Literal["connected_components", "ground_truth"] = "connected_components"
    """How semantic clusters are formed: components of the cosine graph (the paper), or the toy
    world's ground-truth concepts."""
    cluster_scope: Literal["feature", "global"] = "feature"
    """'feature': feature i's clusters C_i are formed over its own active tokens only (the
    paper); 'global': one clustering of every evaluation token shared by all features, which
    chains unrelated tokens through tokens the feature never fired on (earlier versions; kept
    for comparison, not the paper's)."""
    embedding_source: Literal["self", "final", "model"] = "final"
    """Input embeddings for semantic clusters: the analysed checkpoint, the final checkpoint of
    the same model, or `embedding_model` (the paper: the 3.7B model's, for every size)."""
    embedding_model: EmbeddingModelSpec | None = None
    """The model whose input embeddings cluster tokens when embedding_source is 'model'. It must
    share the analysed models' tokenizer (LLM-jp-3 sizes all do)."""
    span_rule: Literal["topk", "threshold"] = "topk"
    ce_docs_per_lang: int = 64
    """Evaluation documents per language for the CE-loss-recovered metric (three LM forwards
    per SAE: clean, spliced, zero-ablated); the other metrics use the whole eval set."""
    n_browser_features: int = 40
    n_examples: int = 8
    alignment: AlignmentSpec = field(default_factory=AlignmentSpec)  # translation alignment (config_alignment.py)


@dataclass
class InterventionSpec:
    """Inject final-model features into a mid checkpoint (Tables 1 and 4)."""

    enabled: bool = False
    model: int = 0
    """Index into `models` of the model to intervene on."""
    mid_checkpoint: int | None = None
    """Iteration of the mid-training checkpoint (None: the middle of the analysed ones)."""
    layer: Union[int, str] = "mid"
    alphas: list[float] = field(default_factory=lambda: [0.1])
    ms: list[int] = field(default_factory=lambda: [5000])
    """Features per mask at the paper's n = 32,768; scaled to the SAE's n when `scale_m`."""
    scale_m: bool = True
    draws: int = 5
    conditions: list[str] = field(default_factory=lambda: ["none", "en", "ja", "mixed"])
    scale: Literal["residual", "unit"] = "residual"
    """'residual': the SAE encodes X_full / ||X_full|| and the decoded vector is multiplied back
    by ||X_full|| before alpha (the SAE saw unit-norm vectors); 'unit': the literal unit-space sum."""
    add_bias: bool = True
    """The decoder D includes b_pre: D(z) = W_dec z + b_pre, the paper's decoder (true). False
    drops b_pre (then an empty mask is an exact no-op); the report names the variant."""
    eval_docs_per_lang: int = 200
    translation_pairs: int = 50
    """Parallel test pairs translated per direction (after the few-shot examples)."""
    pairs_paths: dict[str, str] = field(default_factory=dict)
    """Line-aligned parallel files per language for translation, e.g. the shared
    small_parallel_enja test.{en,ja} (default for the toy world: its own held-out pairs)."""
    unspace_languages: list[str] = field(default_factory=lambda: ["ja"])
    """Languages whose word-separating spaces are removed from `pairs_paths` text."""
    few_shot: int = 3
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    stack: int = 16
    """Conditions x draws evaluated together in one batched pass (more memory, same results)."""
    comet_python: str | None = None
    comet_model: str | None = None


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
        """Cross-field checks that types alone cannot express."""
        _positive(self.sae.k, "sae.k")
        _positive(self.sae.expansion, "sae.expansion")
        if self.sae.d_sae is not None:
            _positive(self.sae.d_sae, "sae.d_sae")
            check_k(self.sae.k, self.sae.d_sae, k_name="sae.k", n_from=f"sae.d_sae = {self.sae.d_sae}",
                    fix="raise sae.d_sae")
        if isinstance(self.sae.lr, str) and self.sae.lr != "grid":
            raise ConfigError(f"sae.lr must be a number or 'grid', got {self.sae.lr!r}")
        if isinstance(self.sae.lr, float) and self.sae.lr <= 0:
            raise ConfigError(f"sae.lr must be > 0, got {self.sae.lr}")
        _positive(self.sae.batch_size, "sae.batch_size")
        _positive(self.sae.geometric_median_sample, "sae.geometric_median_sample")
        _positive(self.sae.dead_feature_window, "sae.dead_feature_window")
        if not self.sae.aux_k_coefficient >= 0:  # also refuses NaN
            raise ConfigError(f"sae.aux_k_coefficient must be >= 0 (0 = the paper), got {self.sae.aux_k_coefficient}")
        if self.sae.warm_start and self.executor != "local":
            raise ConfigError(
                f"sae.warm_start chains each checkpoint's SAEs to the previous checkpoint's, so the "
                f"units of a model must run in order: use executor: local, not {self.executor!r}"
            )
        for name in ("max_memory", "max_host_memory"):
            if getattr(self, name) is not None:
                parse_bytes(getattr(self, name), name)  # raises naming the field and the forms
        if not 0 < self.analysis.act_threshold < 1:
            raise ConfigError("analysis.act_threshold must lie in (0, 1) (the paper: 0.7)")
        a = self.analysis
        if (a.embedding_source == "model") != (a.embedding_model is not None):
            raise ConfigError(
                "analysis.embedding_model names the model whose embeddings cluster tokens and is used "
                "exactly when analysis.embedding_source is 'model': set both, or neither "
                f"(now embedding_source={a.embedding_source!r}, embedding_model={a.embedding_model!r})"
            )
        if not 0.5 <= self.analysis.lang_threshold < 1:
            raise ConfigError("analysis.lang_threshold must lie in [0.5, 1) (the paper: 0.9)")
        if self.data.context < 2:
            raise ConfigError("data.context must be >= 2 (BOS plus at least one token)")
        if len(set(self.data.languages)) < 2:
            raise ConfigError(
                f"data.languages = {self.data.languages}: a bilingual study needs at least two "
                "distinct language codes, e.g. [en, ja]"
            )
        for name in ("train_tokens_per_lang", "eval_tokens_per_lang", "buffer_vectors", "lm_batch_size", "logits_budget_mb"):
            _positive(getattr(self.data, name), f"data.{name}")
        if self.controls and self.data.corpus != "toy":
            raise ConfigError("controls: control worlds exist only for the toy world (data.corpus: toy)")
        _positive(self.intervention.stack, "intervention.stack")
        if not self.models:
            raise ConfigError("models is empty: name at least one, e.g. [{family: toy}]")
        for i, m in enumerate(self.models):
            if m.tokens_per_step is not None:
                _positive(m.tokens_per_step, f"models[{i}].tokens_per_step")
        if self.intervention.enabled and not 0 <= self.intervention.model < len(self.models):
            raise ConfigError(
                f"intervention.model = {self.intervention.model} is not an index into models "
                f"(0..{len(self.models) - 1})"
            )
        check_recipe(self)  # counts, finite numbers, device, conditions, model ids
        return self


def _positive(value: int, name: str) -> None:
    if value <= 0:
        raise ConfigError(f"{name} must be positive, got {value}")


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
