"""The configs of the BatchTopK crosscoder ("paper_crosscoder"): inference and training fields.

Why its own module: the configs are what a ``cfg.json`` holds and what the study builds from
a recipe; they need neither torch nor the crosscoder's maths (:mod:`sae_bilingual.sae.crosscoder`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sae_lens.saes.sae import SAEConfig, TrainingSAEConfig

from sae_bilingual.config_checks import check_norm_mode
from sae_bilingual.defaults import ADAM_EPS, GEOMETRIC_MEDIAN_SAMPLE
from sae_bilingual.errors import ConfigError

ARCHITECTURE = "paper_crosscoder"
_NORM_MODES = ("none", "unit_norm")


def _check(cfg: Any) -> None:
    """The crosscoder config's own checks (SAELens's base check does not know 'unit_norm')."""
    check_norm_mode(cfg.normalize_activations, _NORM_MODES, ARCHITECTURE, "per-checkpoint unit norm: 'unit_norm'")
    C = cfg.n_checkpoints
    if isinstance(C, bool) or not isinstance(C, int) or C < 1:
        raise ConfigError(f"n_checkpoints = {C!r} must be a positive integer")
    if cfg.d_model is None:
        if cfg.d_in % C:
            raise ConfigError(f"d_in = {cfg.d_in} is not a multiple of n_checkpoints = {C}; d_in must be C * d_model")
        cfg.d_model = cfg.d_in // C
    if cfg.d_in != C * cfg.d_model:
        raise ConfigError(f"d_in = {cfg.d_in} must equal n_checkpoints x d_model = {C} x {cfg.d_model}")
    k = cfg.k
    if isinstance(k, bool) or not isinstance(k, (int, float)) or not 0 < k < cfg.d_sae:
        raise ConfigError(f"k = {k!r} (mean active latents per row) must be > 0 and < d_sae = {cfg.d_sae}")


@dataclass
class PaperCrosscoderConfig(SAEConfig):
    """Inference config of the BatchTopK crosscoder (d_in = n_checkpoints * d_model).

    d_model: width d of one checkpoint's residual (None: d_in // n_checkpoints).
    n_checkpoints: C, the checkpoints concatenated in each row (their iterations go in metadata).
    k: mean active latents per row (BatchTopK keeps k * B per batch of B rows).
    normalize_activations: "unit_norm" = each checkpoint's slice L2-normalised (the paper's norm).
    """

    d_model: int | None = None
    n_checkpoints: int = 2
    k: float = 32
    normalize_activations: str = "unit_norm"  # type: ignore[assignment]

    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE

    def __post_init__(self) -> None:
        _check(self)


@dataclass(kw_only=True)
class PaperCrosscoderTrainingConfig(TrainingSAEConfig):
    """Training config: the inference fields plus the training choices (the SAE's, where they apply).

    decoder_init_norm: decoder rows start at this total norm (W_enc = W_dec^T).
    topk_threshold_lr: EMA rate of the inference threshold (SAELens BatchTopK's default 0.01).
    fast: sparse training kernels (else the dense reference step).
    adam_eps, fused_adam: the optimiser's eps (original code 6.25e-10) and torch's fused Adam.
    geometric_median_sample: b_dec[c] <- geometric median of slice c of this many first-batch rows.
    """

    d_model: int | None = None
    n_checkpoints: int = 2
    k: float = 32
    normalize_activations: str = "unit_norm"  # type: ignore[assignment]
    decoder_init_norm: float | None = 1.0
    topk_threshold_lr: float = 0.01
    fast: bool = True
    adam_eps: float | None = ADAM_EPS
    fused_adam: bool = True
    geometric_median_sample: int | None = GEOMETRIC_MEDIAN_SAMPLE

    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE

    def __post_init__(self) -> None:
        _check(self)
        self.add_training_info_to_metadata()
