"""The recipe's ``sae:`` section: the paper's TopK SAE and its training, and its own checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

from sae_bilingual.config_checks import at_least, check_k, finite_positive, positive
from sae_bilingual.defaults import ADAM_EPS, DEFAULT_LR_GRID, GEOMETRIC_MEDIAN_SAMPLE, PAPER_K
from sae_bilingual.errors import ConfigError


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


    def validate(self) -> SAESpec:
        """Raise ConfigError naming the ``sae.`` field that is out of range."""
        positive(self.k, "sae.k")
        positive(self.expansion, "sae.expansion")
        if self.d_sae is not None:
            positive(self.d_sae, "sae.d_sae")
            check_k(self.k, self.d_sae, k_name="sae.k", n_from=f"sae.d_sae = {self.d_sae}", fix="raise sae.d_sae")
        if isinstance(self.lr, str):
            if self.lr != "grid":
                raise ConfigError(f"sae.lr must be a number or 'grid', got {self.lr!r}")
        else:
            finite_positive(self.lr, "sae.lr", "0.001")
        if self.lr == "grid" and not self.lr_grid:
            raise ConfigError("sae.lr_grid is empty but sae.lr is 'grid'; list learning rates, e.g. "
                              "lr_grid: [0.0005, 0.001, 0.002], or set sae.lr to a number")
        for i, lr in enumerate(self.lr_grid):
            finite_positive(lr, f"sae.lr_grid[{i}]", "0.001")
        positive(self.batch_size, "sae.batch_size")
        at_least(self.warmup_steps, 0, "sae.warmup_steps", "500")
        finite_positive(self.adam_eps, "sae.adam_eps", "6.25e-10")
        positive(self.geometric_median_sample, "sae.geometric_median_sample")
        positive(self.dead_feature_window, "sae.dead_feature_window")
        if not self.aux_k_coefficient >= 0:  # also refuses NaN
            raise ConfigError(f"sae.aux_k_coefficient must be >= 0 (0 = the paper), got {self.aux_k_coefficient}")
        return self
