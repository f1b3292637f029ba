"""A BatchTopK acausal crosscoder over C checkpoints, as SAELens architecture "paper_crosscoder".

One dictionary shared by the C checkpoints of one layer (issue 27): a row is the same token's
residual at every checkpoint, x = [u_1, ..., u_C] of width C*d, each u_c L2-normalised as the
paper does for its SAEs.

    pre = ReLU((x - b_dec) @ W_enc + b_enc)                  one shared encoder  [B, n]
    z   = BatchTopK_m(pre) (training) | pre * (pre > threshold) (inference)
    x_hat_c = z @ W_dec[:, c] + b_dec[c]                     one decoder per checkpoint

* Shapes: ``W_enc`` [C*d, n], ``b_enc`` [n], ``W_dec`` [n, C*d] (:attr:`W_dec_per_checkpoint`
  views it as [n, C, d]), ``b_dec`` [C*d], buffer ``threshold`` (scalar).
* **Decoder norms**: each latent's decoder row is unit-norm over ALL checkpoints together
  (renormalised after every optimiser step and once more when saved), so the per-checkpoint
  norms :meth:`decoder_norms` [n, C] satisfy sum_c norm_c^2 = 1 and are directly comparable
  across latents; :meth:`decoder_shares` gives norm_c / sum_c' norm_c' (rows sum to 1). The
  activation z_i is then the L2 norm of latent i's whole contribution to the reconstruction,
  so BatchTopK ranks latents by how much of the row they explain (a shared latent is not
  penalised for being spread over C checkpoints).
* **BatchTopK** (training): keep the m = round(k * B) largest ReLU'd pre-activations of the
  batch (rows differ in how many they get; mean k). **Inference**: z = pre where pre >
  ``threshold``; the threshold is the exponential moving average (rate ``topk_threshold_lr``,
  SAELens's BatchTopK rule) of each training batch's smallest kept positive activation,
  started at the first batch's value (not at 0); ``train_crosscoder`` then replaces it by the
  plain mean over the run's last steps, which removes the EMA's lag behind a short run.
* Input handling ``normalize_activations="unit_norm"`` L2-normalises each checkpoint's slice
  (idempotent on the aligned store's rows); the crosscoder works in that unit space: ``decode``
  returns the unit-space reconstruction (a crosscoder is not spliced back into one model).
* Codes for the analysis: :meth:`encode_sparse` -> (values, indices) [B, cap], the row's
  ``cap`` largest active latents sorted by value; slots beyond a row's active latents hold
  value 0 (not active). :meth:`encode_topk` is the same as (idx, val), the analysis' interface.
* The configs are :mod:`sae_bilingual.sae.crosscoder_config`, the kernels
  :mod:`sae_bilingual.sae.batchtopk_kernels`; training wiring, evaluation and
  files :mod:`sae_bilingual.sae.crosscoder_train`.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from sae_lens.registry import (
    SAE_CLASS_REGISTRY,
    SAE_TRAINING_CLASS_REGISTRY,
    register_sae_class,
    register_sae_training_class,
)
from sae_lens.saes.sae import SAE, TrainingSAE, TrainStepInput, TrainStepOutput
from torch import nn
from transformer_lens.hook_points import HookPoint

from sae_bilingual.sae.batchtopk_kernels import (
    batch_topk_encode,
    dense_batchtopk_reference,
    row_offsets,
    sparse_decode_flat,
)
from sae_bilingual.sae.kernels import EPS, geometric_median, pre_activation, unit_norm
from sae_bilingual.sae.crosscoder_config import ARCHITECTURE, PaperCrosscoderConfig, PaperCrosscoderTrainingConfig
from sae_bilingual.sae.training_choices import register_training_sae

SELECT_FLOOR = 0.9
"""The training selection ranks only pre-activations above this x the previous batch's m-th
value (exact whatever the floor: batchtopk_kernels.batch_topk_select)."""
CAP_FACTOR = 4
"""Default per-row cap of :meth:`encode_sparse`: ceil(4 k) latents (BatchTopK rows vary around k)."""


class _CrosscoderMixin:
    """Methods shared by the inference and training classes (SAELens's base provides the rest)."""

    cfg: Any
    dtype: torch.dtype
    device: torch.device
    W_enc: nn.Parameter
    W_dec: nn.Parameter
    b_dec: nn.Parameter
    b_enc: nn.Parameter
    threshold: torch.Tensor
    d_head: int | None
    hook_sae_acts_pre: HookPoint
    hook_sae_acts_post: HookPoint
    hook_sae_recons: HookPoint
    process_sae_in: Callable[[torch.Tensor], torch.Tensor]
    reshape_fn_out: Callable[[torch.Tensor, int | None], torch.Tensor]
    register_buffer: Callable[..., None]

    def initialize_weights(self) -> None:
        d_in, n = self.cfg.d_in, self.cfg.d_sae
        w_dec = torch.empty(n, d_in, dtype=self.dtype, device=self.device)
        nn.init.kaiming_uniform_(w_dec)
        if str(self.device) != "meta":
            w_dec /= w_dec.norm(dim=-1, keepdim=True).clamp_min(EPS)
        self.W_dec = nn.Parameter(w_dec)  # rows unit-norm over all checkpoints together
        self.W_enc = nn.Parameter(w_dec.T.clone().contiguous())
        self.b_dec = nn.Parameter(torch.zeros(d_in, dtype=self.dtype, device=self.device))
        self.b_enc = nn.Parameter(torch.zeros(n, dtype=self.dtype, device=self.device))
        self.register_buffer("threshold", torch.zeros((), dtype=self.dtype, device=self.device))

    def get_activation_fn(self) -> Callable[[torch.Tensor], torch.Tensor]:
        return nn.Identity()

    def _setup_activation_normalization(self) -> None:
        self.run_time_activation_norm_fn_in = self.unit_input if self.cfg.normalize_activations == "unit_norm" \
            else (lambda x: x)
        self.run_time_activation_norm_fn_out = lambda x: x  # the crosscoder lives in unit space

    def unit_input(self, x: torch.Tensor) -> torch.Tensor:
        """Each checkpoint's d-slice of ``x`` [..., C*d] L2-normalised (the paper's norm, per slice)."""
        x = x.to(self.dtype)
        if self.cfg.normalize_activations != "unit_norm":
            return x
        C, d = self.cfg.n_checkpoints, self.cfg.d_model
        return unit_norm(x.reshape(*x.shape[:-1], C, d)).reshape(x.shape)

    # -- per-checkpoint views ---------------------------------------------------------------
    @property
    def W_dec_per_checkpoint(self) -> torch.Tensor:
        """``W_dec`` viewed as [n, C, d]: latent i's decoder for checkpoint c is [i, c]."""
        return self.W_dec.view(self.cfg.d_sae, self.cfg.n_checkpoints, self.cfg.d_model)

    @torch.no_grad()
    def decoder_norms(self) -> torch.Tensor:
        """[n, C] norm of each latent's decoder at each checkpoint (squares sum to 1 per latent)."""
        return self.W_dec_per_checkpoint.float().norm(dim=-1)

    @torch.no_grad()
    def decoder_shares(self) -> torch.Tensor:
        """[n, C] norm_c / sum_c' norm_c': each checkpoint's share of the latent's decoder norm."""
        norms = self.decoder_norms()
        return norms / norms.sum(-1, keepdim=True).clamp_min(EPS)

    # -- encode / decode (unit space) -------------------------------------------------------
    def _pre(self, x: torch.Tensor) -> torch.Tensor:
        """ReLU'd pre-activations [.., n] of rows x (each slice normalised first when unit_norm)."""
        xc = self.unit_input(x).to(self.W_enc.dtype) - self.b_dec
        return pre_activation(xc, self.W_enc, self.b_enc, relu=True)

    def _threshold_rule(self, pre: torch.Tensor) -> torch.Tensor:
        return pre * (pre > self.threshold.to(pre.dtype))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Rows [B, C*d] -> dense activations [B, n] by the inference rule (pre > threshold)."""
        pre = self.hook_sae_acts_pre(pre_activation(self.process_sae_in(x), self.W_enc, self.b_enc, relu=True))
        return self.hook_sae_acts_post(self._threshold_rule(pre))

    def decode(self, feature_acts: torch.Tensor) -> torch.Tensor:
        """Activations [B, n] -> unit-space reconstruction [B, C*d] (b_dec included)."""
        out = self.hook_sae_recons(feature_acts.to(self.W_dec.dtype) @ self.W_dec + self.b_dec)
        return self.reshape_fn_out(out, self.d_head)

    def default_cap(self) -> int:
        """Per-row cap of :meth:`encode_sparse`: ceil(CAP_FACTOR * k), at most d_sae."""
        return min(self.cfg.d_sae, math.ceil(CAP_FACTOR * self.cfg.k))

    @torch.no_grad()
    def encode_sparse(self, x: torch.Tensor, cap: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(values [B, cap], indices int64 [B, cap]) of each row's largest active latents, by
        value descending; slots past a row's active latents hold value 0 (not active). A row
        with more than ``cap`` active latents keeps its ``cap`` largest (check ``values[:, -1] > 0``)."""
        pre = self._threshold_rule(self._pre(x))
        vals, idx = torch.topk(pre, min(cap or self.default_cap(), self.cfg.d_sae), dim=-1, sorted=True)
        return vals, idx

    def encode_topk(self, x_unit: torch.Tensor, cap: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(idx, val) of :meth:`encode_sparse`: the analysis' code interface (analysis/codes.py)."""
        vals, idx = self.encode_sparse(x_unit, cap)
        return idx, vals

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(unit-space reconstruction [B, C*d], active latents per row [B], the active latents'
        ids [sum of counts], row by row) by the inference rule, with no cap: a sparse decode of
        every active latent (no dense [B, n] @ W_dec)."""
        pre = self._threshold_rule(self._pre(x))
        rows, cols = pre.nonzero(as_tuple=True)
        counts = torch.bincount(rows, minlength=pre.shape[0])
        rec = F.embedding_bag(cols, self.W_dec, row_offsets(rows, pre.shape[0]), per_sample_weights=pre[rows, cols],
                              mode="sum")
        return rec + self.b_dec, counts, cols

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Rescale each latent's decoder row to unit norm over all checkpoints together."""
        self.W_dec.data /= self.W_dec.data.norm(dim=-1, keepdim=True).clamp_min(EPS)

    def fold_W_dec_norm(self) -> None:
        raise NotImplementedError("a paper_crosscoder's decoder rows are unit-norm already; folding other "
                                  "norms would change the BatchTopK ranking and the meaning of its threshold")


class PaperCrosscoder(_CrosscoderMixin, SAE[PaperCrosscoderConfig]):
    """Inference class of the BatchTopK crosscoder (architecture "paper_crosscoder")."""


class PaperCrosscoderTraining(_CrosscoderMixin, TrainingSAE[PaperCrosscoderTrainingConfig]):
    """Training class: ``training_forward_pass`` is the BatchTopK step (sparse kernels when cfg.fast).

    The paper's choices where they apply: b_dec[c] <- geometric median of each checkpoint's
    slice of the first batch, Adam eps / fused Adam and the decoder renormalisation after every
    optimiser step (through training_choices' optimiser hooks). ``loss_history`` keeps each step's loss.
    """

    def __init__(self, cfg: PaperCrosscoderTrainingConfig, use_error_term: bool = False):
        super().__init__(cfg, use_error_term)
        self.loss_history: list[torch.Tensor] = []
        self.first_step_pending = True
        self.b_pre_pending = cfg.geometric_median_sample is not None
        self.threshold_pending = True  # the first batch sets the threshold (no EMA bias from 0)
        self.select_tau: float | None = None
        self.kept_min_history: list[float] = []  # each step's smallest kept activation (threshold calibration)
        register_training_sae(self)
        self.register_load_state_dict_post_hook(_loaded)

    def initialize_weights(self) -> None:
        _CrosscoderMixin.initialize_weights(self)
        if self.cfg.decoder_init_norm is not None and str(self.device) != "meta":
            with torch.no_grad():
                self.W_dec.data *= self.cfg.decoder_init_norm
                self.W_enc.data = self.W_dec.data.T.clone().contiguous()

    def encode_with_hidden_pre(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pre = pre_activation(self.process_sae_in(x), self.W_enc, self.b_enc, relu=True)
        return self._threshold_rule(pre), pre

    def get_coefficients(self) -> dict[str, float]:
        return {}

    def calculate_aux_loss(self, step_input: TrainStepInput, feature_acts: torch.Tensor,
                           hidden_pre: torch.Tensor, sae_out: torch.Tensor) -> dict[str, torch.Tensor]:
        return {}

    def batch_size_m(self, B: int) -> int:
        """Activations kept over a batch of B rows: round(k * B), at least 1."""
        return max(1, int(round(self.cfg.k * B)))

    @torch.no_grad()
    def first_step(self, u: torch.Tensor) -> None:
        """The data-dependent initialisation on the first batch ``u`` (unit space): b_dec[c] <-
        geometric median of slice c (the paper's b_pre, per checkpoint); decoder rows unit-norm."""
        if self.b_pre_pending:
            C, d = self.cfg.n_checkpoints, self.cfg.d_model
            v = u[: self.cfg.geometric_median_sample].reshape(-1, C, d)
            med = torch.stack([geometric_median(v[:, c]) for c in range(C)])  # C is small
            self.b_dec.data.copy_(med.reshape(-1).to(self.b_dec))
            self.b_pre_pending = False
        self.normalize_decoder_()
        self.first_step_pending = False

    @torch.no_grad()
    def update_threshold(self, kept_min: float) -> None:
        """EMA of the smallest kept positive activation (SAELens BatchTopK), first value as start."""
        if kept_min <= 0:
            return
        if self.threshold_pending:
            self.threshold.fill_(kept_min)
            self.threshold_pending = False
        else:
            lr = self.cfg.topk_threshold_lr
            self.threshold.mul_(1 - lr).add_(lr * kept_min)

    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        """One BatchTopK step: loss = mean over rows of ||x - x_hat||^2 (sum over the C slices)."""
        u = self.unit_input(step_input.sae_in)
        if self.first_step_pending:
            self.first_step(u)
        B, n = u.shape[0], self.cfg.d_sae
        m = self.batch_size_m(B)
        if self.cfg.fast:
            code = batch_topk_encode(u, self.b_dec, self.W_enc, self.b_enc, m, self.select_tau)
            recon = sparse_decode_flat(code, self.W_dec) + self.b_dec
            loss = (recon - u).pow(2).sum(-1).mean()
            vals = code.vals.detach()
            feature_acts = torch.sparse_coo_tensor(torch.stack([code.rows, code.cols]), vals, (B, n),
                                                   is_coalesced=True, check_invariants=False)
        else:
            loss, feature_acts, recon = dense_batchtopk_reference(u, self.b_dec, self.W_enc, self.b_enc,
                                                                  self.W_dec, m)
            vals = feature_acts.detach()[feature_acts.detach() > 0]
        pos = vals[vals > 0]  # the smallest kept positive activation (zeros are kept when < m are positive)
        kept_min = float(pos.min()) if pos.numel() else 0.0
        self.select_tau = SELECT_FLOOR * kept_min if kept_min > 0 else None
        self.update_threshold(kept_min)
        self.kept_min_history.append(kept_min)
        losses = {"mse_loss": loss.detach()}
        self.loss_history.append(losses["mse_loss"])
        return TrainStepOutput(sae_in=u, sae_out=recon, feature_acts=feature_acts, hidden_pre=vals, loss=loss,
                               losses=losses, metrics={"topk_threshold": self.threshold})

    def process_state_dict_for_saving_inference(self, state_dict: dict[str, Any]) -> None:
        super().process_state_dict_for_saving_inference(state_dict)
        w = state_dict["W_dec"]
        state_dict["W_dec"] = w / w.norm(dim=-1, keepdim=True).clamp_min(EPS)  # final renormalisation


def _loaded(module: Any, incompatible_keys: Any) -> None:  # module: the PaperCrosscoderTraining
    module.threshold_pending = False  # loaded weights keep their threshold (resume)


def to_inference(cc: PaperCrosscoderTraining) -> PaperCrosscoder:
    """Inference copy of a training crosscoder (decoder rows renormalised, threshold kept)."""
    out = PaperCrosscoder(PaperCrosscoderConfig.from_dict(cc.cfg.get_inference_sae_cfg_dict()))
    sd = {k: v.detach().clone() for k, v in cc.state_dict().items()}
    cc.process_state_dict_for_saving_inference(sd)
    out.load_state_dict(sd)
    return out


def register() -> None:
    """Register "paper_crosscoder" with SAELens (idempotent; runs at import)."""
    if ARCHITECTURE not in SAE_CLASS_REGISTRY:
        register_sae_class(ARCHITECTURE, PaperCrosscoder, PaperCrosscoderConfig)
    if ARCHITECTURE not in SAE_TRAINING_CLASS_REGISTRY:
        register_sae_training_class(ARCHITECTURE, PaperCrosscoderTraining, PaperCrosscoderTrainingConfig)


register()
