"""The paper's TopK SAE as a registered SAELens architecture ("paper_topk").

E(x) = TopK(W_enc (u - b_pre)),  x_hat = W_dec E(x) + b_pre,  u = x / ||x||  (paper, §TopK SAE)

* No encoder bias and no ReLU after the TopK (the paper's equations). The authors' released
  weights have both; ``encoder_bias=True`` / ``relu_before_topk=True`` reproduce them
  (see :mod:`sae_bilingual.sae.convert`).
* The per-token L2 normalisation is the SAE's input handling (``normalize_activations=
  "unit_norm"``): ``encode`` divides by the norm and stashes it, ``decode`` multiplies it
  back, so a spliced SAE returns residual-scale reconstructions. ``encode_normalized`` /
  ``decode_normalized`` / ``encode_topk`` work in the unit-norm space directly.
* ``b_pre`` is stored as SAELens's ``b_dec`` (``apply_b_dec_to_input=True``).
* Configs: :mod:`sae_bilingual.sae.topk_config`; tensor maths (the sparse kernels):
  :mod:`sae_bilingual.sae.kernels`; files: :mod:`sae_bilingual.sae.files`.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, cast

import torch
from sae_lens.registry import (
    SAE_CLASS_REGISTRY,
    SAE_TRAINING_CLASS_REGISTRY,
    register_sae_class,
    register_sae_training_class,
)
from sae_lens.saes.sae import (
    SAE,
    SAEMetadata,
    TrainingSAE,
    TrainStepInput,
    TrainStepOutput,
)
from torch import nn
from transformer_lens.hook_points import HookPoint

from sae_bilingual import __version__
from sae_bilingual.defaults import PAPER_K
from sae_bilingual.errors import ConfigError
from sae_bilingual.layers import LayerError, layer_for_hook
from sae_bilingual.sae.auxk import auxk_loss
from sae_bilingual.sae.kernels import (
    EPS,
    dense_reference_loss,
    geometric_median,
    pre_activation,
    sparse_decode_train,
    topk_encode_sparse,
    unit_norm,
)
from sae_bilingual.sae.topk_config import ARCHITECTURE, PaperTopKSAEConfig, PaperTopKTrainingSAEConfig
from sae_bilingual.sae.training_choices import first_step, register_training_sae

log = logging.getLogger(__name__)

class _PaperTopKMixin:
    """Methods shared by the inference and training classes.

    The annotations name what SAELens's ``SAE`` base provides (declared only, so the base's
    own definitions are the ones used).
    """

    cfg: Any
    dtype: torch.dtype
    device: torch.device
    W_enc: nn.Parameter
    W_dec: nn.Parameter
    b_dec: nn.Parameter
    b_enc: nn.Parameter
    d_head: int | None
    hook_sae_acts_pre: HookPoint
    hook_sae_acts_post: HookPoint
    hook_sae_recons: HookPoint
    process_sae_in: Callable[[torch.Tensor], torch.Tensor]
    reshape_fn_out: Callable[[torch.Tensor, int | None], torch.Tensor]
    run_time_activation_norm_fn_in: Callable[[torch.Tensor], torch.Tensor]
    run_time_activation_norm_fn_out: Callable[[torch.Tensor], torch.Tensor]
    _x_norm: torch.Tensor  # the last input norms (unit_norm), set by the input normaliser

    def initialize_weights(self) -> None:
        d_in, d_sae = self.cfg.d_in, self.cfg.d_sae
        w_dec = torch.empty(d_sae, d_in, dtype=self.dtype, device=self.device)
        nn.init.kaiming_uniform_(w_dec)
        if str(self.device) != "meta":
            w_dec /= w_dec.norm(dim=-1, keepdim=True).clamp_min(EPS)
        self.W_dec = nn.Parameter(w_dec)  # rows unit-norm
        self.W_enc = nn.Parameter(w_dec.T.clone().contiguous())  # W_enc = W_dec^T (paper)
        self.b_dec = nn.Parameter(torch.zeros(d_in, dtype=self.dtype, device=self.device))
        if self.cfg.encoder_bias:
            self.b_enc = nn.Parameter(torch.zeros(d_sae, dtype=self.dtype, device=self.device))

    def get_activation_fn(self) -> Callable[[torch.Tensor], torch.Tensor]:
        return nn.Identity()

    def _setup_activation_normalization(self) -> None:
        if self.cfg.normalize_activations != "unit_norm":
            SAE._setup_activation_normalization(cast(SAE, self))
            return

        def norm_in(x: torch.Tensor) -> torch.Tensor:
            n = x.norm(dim=-1, keepdim=True)
            self._x_norm = n  # kept (not deleted) so an error-term recompute can decode again
            return x / n.clamp_min(EPS)

        def norm_out(x: torch.Tensor) -> torch.Tensor:
            n = getattr(self, "_x_norm", None)
            if n is None or n.shape[:-1] != x.shape[:-1]:
                raise ValueError(
                    "decode() restores the per-token norm stashed by encode() on the same "
                    "tokens; call encode() first, or use decode_normalized() for unit-norm space"
                )
            return x * n

        self.run_time_activation_norm_fn_in = norm_in
        self.run_time_activation_norm_fn_out = norm_out

    def _b_enc(self) -> torch.Tensor | None:
        return self.b_enc if self.cfg.encoder_bias else None

    # -- unit-norm space -------------------------------------------------------------
    def _pre(self, x_unit: torch.Tensor) -> torch.Tensor:
        return pre_activation(x_unit.to(self.W_enc.dtype) - self.b_dec, self.W_enc, self._b_enc(),
                              self.cfg.relu_before_topk)

    def encode_topk(self, x_unit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(idx int64 [..,K], val [..,K]) of the top-K latents, sorted by value (descending)."""
        vals, idx = torch.topk(self._pre(x_unit), self.cfg.k, dim=-1, sorted=True)
        return idx, vals

    def encode_normalized(self, x_unit: torch.Tensor) -> torch.Tensor:
        """Dense code [.., d_sae] (zeros outside the top-K) of already unit-norm input."""
        pre = self._pre(x_unit)
        vals, idx = torch.topk(pre, self.cfg.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter_(-1, idx, vals)

    def decode_normalized(self, z: torch.Tensor, add_bias: bool = True) -> torch.Tensor:
        """Unit-norm-space reconstruction W_dec z (+ b_pre)."""
        out = z.to(self.W_dec.dtype) @ self.W_dec
        return out + self.b_dec if add_bias else out

    # -- SAELens semantics (residual scale in, residual scale out) -------------------
    def _encode_impl(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sae_in = self.process_sae_in(x)  # normalised, minus b_dec
        pre = pre_activation(sae_in, self.W_enc, self._b_enc(), self.cfg.relu_before_topk)
        pre = self.hook_sae_acts_pre(pre)
        vals, idx = torch.topk(pre, self.cfg.k, dim=-1, sorted=False)
        z = torch.zeros_like(pre).scatter_(-1, idx, vals)
        return self.hook_sae_acts_post(z), pre

    def decode(self, feature_acts: torch.Tensor) -> torch.Tensor:
        out = feature_acts.to(self.W_dec.dtype) @ self.W_dec + self.b_dec
        out = self.hook_sae_recons(out)
        out = self.run_time_activation_norm_fn_out(out)
        return self.reshape_fn_out(out, self.d_head)

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Rescale decoder rows to unit norm (paper: decoder columns kept unit-norm)."""
        self.W_dec.data /= self.W_dec.data.norm(dim=-1, keepdim=True).clamp_min(EPS)

    def fold_W_dec_norm(self) -> None:
        raise NotImplementedError(
            "folding decoder norms changes the TopK selection of a paper_topk SAE; its decoder "
            "rows are kept unit-norm already"
        )


class PaperTopKSAE(_PaperTopKMixin, SAE[PaperTopKSAEConfig]):
    """Inference class of the paper's TopK SAE (architecture "paper_topk")."""

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Residual-scale x -> dense TopK code (x is L2-normalised first, norm stashed)."""
        return self._encode_impl(x)[0]


class PaperTopKTrainingSAE(_PaperTopKMixin, TrainingSAE[PaperTopKTrainingSAEConfig]):
    """Training class; ``training_forward_pass`` is the fast sparse step (cfg.fast).

    The paper's b_pre init, Adam eps and unit-norm decoder hold under any trainer (training_choices.py).
    ``loss_history`` keeps every training step's loss (detached scalars, no sync per step):
    how fast an SAE converges is what a warm start changes (see train.convergence).
    """

    def __init__(self, cfg: PaperTopKTrainingSAEConfig, use_error_term: bool = False):
        super().__init__(cfg, use_error_term)
        self.loss_history: list[torch.Tensor] = []
        self.first_step_pending = True
        self.b_pre_pending = cfg.geometric_median_sample is not None
        register_training_sae(self)

    @torch.no_grad()
    def init_from(self, sae: SAE) -> None:
        """Start from another paper_topk SAE's weights (warm start): same shapes required."""
        mine, theirs = self.state_dict(), sae.state_dict()
        bad = {k: (tuple(v.shape), tuple(theirs[k].shape) if k in theirs else None)
               for k, v in mine.items() if k not in theirs or theirs[k].shape != v.shape}
        if bad:
            raise ConfigError(f"cannot warm-start from an SAE of other shapes {bad} (name: (ours, theirs)); "
                              "warm starts need the same d_in, d_sae and architecture")
        for k, v in mine.items():
            v.copy_(theirs[k].to(v))
        self.b_pre_pending = False

    def initialize_weights(self) -> None:
        _PaperTopKMixin.initialize_weights(self)
        if self.cfg.decoder_init_norm is not None and str(self.device) != "meta":
            with torch.no_grad():
                self.W_dec.data *= self.cfg.decoder_init_norm
                self.W_enc.data = self.W_dec.data.T.clone().contiguous()

    def encode_with_hidden_pre(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._encode_impl(x)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self._encode_impl(x)[0]

    def get_coefficients(self) -> dict[str, float]:
        return {}

    def calculate_aux_loss(self, step_input: TrainStepInput, feature_acts: torch.Tensor,
                           hidden_pre: torch.Tensor, sae_out: torch.Tensor) -> dict[str, torch.Tensor]:
        return {}  # the auxiliary-K loss (off in the paper) is added in training_forward_pass

    @torch.no_grad()
    def init_b_pre(self, sample: torch.Tensor) -> None:
        """b_pre <- geometric median of a (unit-normalised) data sample (paper)."""
        self.b_dec.data.copy_(geometric_median(unit_norm(sample.to(self.b_dec.dtype))).to(self.b_dec))
        self.b_pre_pending = False

    def unit_input(self, x: torch.Tensor) -> torch.Tensor:
        """The training input in the SAE's space: cast, then L2-normalised when unit_norm.

        Applied even to the store's already unit-norm vectors: see :func:`kernels.unit_norm`.
        """
        x = x.to(self.dtype)
        if self.cfg.normalize_activations == "unit_norm":
            x = unit_norm(x)
        return x

    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        """One training step's forward: unit-norm input, loss = mean_b ||u - u_hat||^2.

        The first call initialises b_pre from the batch (training_choices.first_step); decoder
        rows are re-normalised after every optimiser step by the optimiser hook.
        """
        u = self.unit_input(step_input.sae_in)
        if self.first_step_pending:
            first_step(self, u)
        feature_acts: torch.Tensor
        if not self.cfg.fast:
            loss, feature_acts, pre, recon = dense_reference_loss(
                u, self.b_dec, self.W_enc, self.W_dec, self.cfg.k, self._b_enc(), self.cfg.relu_before_topk)
        else:
            vals, idx = topk_encode_sparse(u, self.b_dec, self.W_enc, self._b_enc(), self.cfg.k,
                                           self.cfg.relu_before_topk)
            recon = sparse_decode_train(idx, vals, self.W_dec) + self.b_dec
            loss = (recon - u).pow(2).sum(-1).mean()
            B = idx.shape[0]
            rows = torch.arange(B, device=idx.device).repeat_interleave(self.cfg.k)
            feature_acts = torch.sparse_coo_tensor(
                torch.stack([rows, idx.reshape(-1)]), vals.detach().reshape(-1),
                (B, self.cfg.d_sae), is_coalesced=False, check_invariants=False)
            pre = vals.detach()  # (B, K): the dense (B, n) pre-activations are not kept
        losses = {"mse_loss": loss.detach()}
        if self.cfg.aux_k_coefficient > 0 and step_input.dead_neuron_mask is not None:
            aux = auxk_loss(u - self.b_dec, u - recon, self.W_enc, self.W_dec, step_input.dead_neuron_mask,
                            self.cfg.aux_k or self.cfg.d_in // 2)
            losses["auxiliary_reconstruction_loss"] = aux.detach()
            loss = loss + self.cfg.aux_k_coefficient * aux
        self.loss_history.append(losses["mse_loss"])
        return TrainStepOutput(sae_in=u, sae_out=recon, feature_acts=feature_acts,
                               hidden_pre=pre, loss=loss, losses=losses)

    def process_state_dict_for_saving_inference(self, state_dict: dict[str, Any]) -> None:
        super().process_state_dict_for_saving_inference(state_dict)
        state_dict["W_dec"] = state_dict["W_dec"] / state_dict["W_dec"].norm(dim=-1, keepdim=True).clamp_min(EPS)


def register() -> None:
    """Register "paper_topk" with SAELens (idempotent; runs at import)."""
    if ARCHITECTURE not in SAE_CLASS_REGISTRY:
        register_sae_class(ARCHITECTURE, PaperTopKSAE, PaperTopKSAEConfig)
    if ARCHITECTURE not in SAE_TRAINING_CLASS_REGISTRY:
        register_sae_training_class(ARCHITECTURE, PaperTopKTrainingSAE, PaperTopKTrainingSAEConfig)


register()


def make_metadata(*, hook_name: str, model_name: str | None = None, **provenance: Any) -> SAEMetadata:
    """SAEMetadata with our provenance keys (checkpoint_iteration, tokens, paper_layer, corpus, seed...)."""
    try:
        layer: int | None = layer_for_hook(hook_name)
    except LayerError:
        layer = None
    md = dict(hook_name=hook_name, model_name=model_name, paper_layer=layer,
              normalization="unit_norm (per-token L2; BOS dropped)",
              sae_bilingual_version=__version__, prepend_bos=True)
    md.update(provenance)
    return SAEMetadata(**md)


def new_paper_sae(d_in: int, *, k: int = PAPER_K, d_sae: int | None = None, expansion: int = 16,
                  metadata: SAEMetadata | None = None, training: bool = False,
                  device: str = "cpu", dtype: str = "float32", **kw: Any) -> PaperTopKSAE | PaperTopKTrainingSAE:
    """Fresh paper TopK SAE (defaults K=32, d_sae = 16 * d_in)."""
    d_sae = d_sae or expansion * d_in
    if training:
        return PaperTopKTrainingSAE(PaperTopKTrainingSAEConfig(
            d_in=d_in, d_sae=d_sae, k=k, device=device, dtype=dtype, metadata=metadata or SAEMetadata(), **kw))
    return PaperTopKSAE(PaperTopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k, device=device, dtype=dtype,
                                           metadata=metadata or SAEMetadata(), **kw))


def to_inference(sae: PaperTopKTrainingSAE) -> PaperTopKSAE:
    """Inference copy of a training SAE (decoder rows unit-norm)."""
    d = sae.cfg.get_inference_sae_cfg_dict()
    cfg = PaperTopKSAEConfig.from_dict(d)
    out = PaperTopKSAE(cfg)
    sd = {k: v.detach().clone() for k, v in sae.state_dict().items()}
    sae.process_state_dict_for_saving_inference(sd)
    out.load_state_dict(sd)
    return out
