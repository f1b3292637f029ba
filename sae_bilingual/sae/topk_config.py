"""The configs of the paper's TopK SAE ("paper_topk"): inference and training fields.

Why its own module: the configs are what a ``cfg.json`` holds and what recipes build;
they need neither torch nor the SAE's maths (:mod:`sae_bilingual.sae.model`).
"""

from __future__ import annotations

from dataclasses import dataclass

from sae_lens.saes.sae import SAEConfig, TrainingSAEConfig

from sae_bilingual.config_checks import check_k, check_norm_mode
from sae_bilingual.defaults import ADAM_EPS, GEOMETRIC_MEDIAN_SAMPLE, PAPER_K

ARCHITECTURE = "paper_topk"
_NORM_MODES = ("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm",
               "covariance_whitening", "unit_norm")


@dataclass
class PaperTopKSAEConfig(SAEConfig):
    """Inference config of the paper's TopK SAE.

    k: number of latents kept per token (paper: 32).
    encoder_bias: add a learned encoder bias ``b_enc`` (released weights only; paper: no).
    relu_before_topk: apply ReLU to the pre-activations before the TopK (released weights only).
    normalize_activations: "unit_norm" = the paper's per-token L2 normalisation.
    """

    k: int = PAPER_K
    encoder_bias: bool = False
    relu_before_topk: bool = False
    normalize_activations: str = "unit_norm"

    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE

    def __post_init__(self) -> None:
        check_norm_mode(self.normalize_activations, _NORM_MODES, ARCHITECTURE, "the paper uses 'unit_norm'")
        check_k(self.k, self.d_sae)


@dataclass(kw_only=True)
class PaperTopKTrainingSAEConfig(TrainingSAEConfig):
    """Training config of the paper's TopK SAE (same fields as inference + training choices).

    The defaults are the paper's training, under any trainer (see training_choices.py).
    decoder_init_norm: decoder rows start at this norm (paper: unit-norm rows, W_enc = W_dec^T).
    fast: use the sparse-decode / sparse-backward training step (else the dense reference).
    aux_k_coefficient: weight of the auxiliary-K loss on dead latents (0 = the paper; see auxk.py).
    aux_k: latents per row in the auxiliary loss (None: d_in // 2, as SAELens).
    adam_eps: eps of the optimiser stepping this SAE (None: leave the optimiser's own).
    fused_adam: torch's fused Adam kernel (same update up to float rounding).
    geometric_median_sample: b_pre <- geometric median of this many first-batch vectors (None: zeros).
    """

    k: int = PAPER_K
    encoder_bias: bool = False
    relu_before_topk: bool = False
    normalize_activations: str = "unit_norm"
    decoder_init_norm: float | None = 1.0
    fast: bool = True
    aux_k_coefficient: float = 0.0
    aux_k: int | None = None
    adam_eps: float | None = ADAM_EPS
    fused_adam: bool = True
    geometric_median_sample: int | None = GEOMETRIC_MEDIAN_SAMPLE

    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE

    def __post_init__(self) -> None:
        check_norm_mode(self.normalize_activations, _NORM_MODES, ARCHITECTURE, "the paper uses 'unit_norm'")
        check_k(self.k, self.d_sae)
        self.add_training_info_to_metadata()
