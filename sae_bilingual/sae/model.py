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
* Training uses a sparse decode (``F.embedding_bag``) and a custom autograd function whose
  encoder backward touches only the K selected latents per row; :func:`dense_reference_loss`
  is the plain version the tests compare it with.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from sae_lens.registry import (
    SAE_CLASS_REGISTRY,
    SAE_TRAINING_CLASS_REGISTRY,
    register_sae_class,
    register_sae_training_class,
)
from sae_lens.saes.sae import (
    SAE,
    SAEConfig,
    SAEMetadata,
    TrainingSAE,
    TrainingSAEConfig,
    TrainStepInput,
    TrainStepOutput,
)
from torch import nn

from sae_bilingual.sae.auxk import auxk_loss
from sae_bilingual.errors import ConfigError, SAEFileError

log = logging.getLogger(__name__)

ARCHITECTURE = "paper_topk"
_NORM_MODES = ("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm",
               "covariance_whitening", "unit_norm")
_EPS = 1e-12


def _check_norm_mode(cfg: SAEConfig) -> None:
    if cfg.normalize_activations not in _NORM_MODES:
        raise ConfigError(
            f"normalize_activations={cfg.normalize_activations!r} is not supported by "
            f"{ARCHITECTURE}; choose one of {list(_NORM_MODES)} (the paper uses 'unit_norm')"
        )


def _check_k(cfg: Any) -> None:
    if not (1 <= cfg.k <= cfg.d_sae):
        raise ConfigError(f"k={cfg.k} must be between 1 and d_sae={cfg.d_sae}")


@dataclass
class PaperTopKSAEConfig(SAEConfig):
    """Inference config of the paper's TopK SAE.

    k: number of latents kept per token (paper: 32).
    encoder_bias: add a learned encoder bias ``b_enc`` (released weights only; paper: no).
    relu_before_topk: apply ReLU to the pre-activations before the TopK (released weights only).
    normalize_activations: "unit_norm" = the paper's per-token L2 normalisation.
    """

    k: int = 32
    encoder_bias: bool = False
    relu_before_topk: bool = False
    normalize_activations: str = "unit_norm"  # type: ignore[assignment]

    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE

    def __post_init__(self) -> None:
        _check_norm_mode(self)
        _check_k(self)


@dataclass(kw_only=True)
class PaperTopKTrainingSAEConfig(TrainingSAEConfig):
    """Training config of the paper's TopK SAE (same fields as inference + init).

    decoder_init_norm: decoder rows start at this norm (paper: unit-norm rows, W_enc = W_dec^T).
    fast: use the sparse-decode / sparse-backward training step (else the dense reference).
    aux_k_coefficient: weight of the auxiliary-K loss on dead latents (0 = the paper; see auxk.py).
    aux_k: latents per row in the auxiliary loss (None: d_in // 2, as SAELens).
    """

    k: int = 32
    encoder_bias: bool = False
    relu_before_topk: bool = False
    normalize_activations: str = "unit_norm"  # type: ignore[assignment]
    decoder_init_norm: float | None = 1.0
    fast: bool = True
    aux_k_coefficient: float = 0.0
    aux_k: int | None = None

    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE

    def __post_init__(self) -> None:
        _check_norm_mode(self)
        _check_k(self)
        self.add_training_info_to_metadata()


# --------------------------------------------------------------------------- kernels


def _gemm_dtype(x: torch.Tensor) -> torch.dtype | None:
    """bf16/fp16 when ``x`` is on a GPU under autocast, else None (keep the sparse kernels).

    On a GPU under autocast a dense half-precision GEMM of the scattered (B, n) code runs at
    tensor-core rate and beats cuSPARSE's csrmm ~1.4x on the whole step (benchmarks/README.md);
    on the CPU the sparse product wins.
    """
    if x.is_cuda and torch.is_autocast_enabled("cuda"):
        return torch.get_autocast_dtype("cuda")
    return None


def _code_outer(idx: torch.Tensor, vals: torch.Tensor, X: torch.Tensor, n: int,
                gemm_dtype: torch.dtype | None) -> torch.Tensor:
    """S^T X for the (B, n) code S with ``vals`` at ``idx`` (zeros elsewhere) -> (n, d)."""
    B, K = idx.shape
    if gemm_dtype is not None:
        G = torch.zeros(B, n, dtype=gemm_dtype, device=idx.device).scatter_(1, idx, vals.to(gemm_dtype))
        return (G.t() @ X.to(gemm_dtype)).to(X.dtype)
    rows = torch.arange(B, device=idx.device).repeat_interleave(K)
    S = torch.sparse_coo_tensor(torch.stack([idx.reshape(-1), rows]), vals.reshape(-1).to(X.dtype), (n, B),
                                check_invariants=False)
    return torch.sparse.mm(S, X)


class _TopKEncode(torch.autograd.Function):
    """(u, b_pre, W_enc[, b_enc]) -> (vals [B,K], idx [B,K]); backward touches only the K picks.

    Forward: pre = (u - b_pre) @ W_enc (+ b_enc) (B, n); (ReLU); top-K per row.
    Backward: with g = dL/dvals (B, K) (masked by the ReLU when used) and c[j] = sum of g
    over the picks of latent j,
      dW_enc[:, j] = sum over (row, k) with idx = j of g[row, k] * xc[row]   (sparse (n,B)@(B,d))
      db_pre       = -W_enc @ c,   db_enc = c,
      du[row]      = sum_k g[row, k] * W_enc[:, idx[row, k]]   (only if u needs a gradient).
    """

    @staticmethod
    def forward(ctx, u, b_pre, W_enc, b_enc, k: int, relu: bool):  # type: ignore[override]
        xc = u - b_pre
        pre = xc @ W_enc  # (B, n)
        if b_enc is not None:
            pre += b_enc
        vals, idx = torch.topk(pre, k, dim=-1, sorted=False)
        # under autocast pre/vals are bf16: hand back vals in the parameter dtype so the sparse
        # decode and this backward's sparse products see one dtype (else they raise)
        vals = vals.to(W_enc.dtype)
        if relu:
            vals = vals.clamp_min(0.0)
        ctx.save_for_backward(xc, W_enc, idx, vals)
        ctx.gemm_dtype = _gemm_dtype(u)
        ctx.relu = relu
        ctx.has_b = b_enc is not None
        ctx.mark_non_differentiable(idx)
        return vals, idx

    @staticmethod
    def backward(ctx, g_vals, _g_idx):  # type: ignore[override]
        xc, W_enc, idx, vals = ctx.saved_tensors
        g_vals = g_vals.to(W_enc.dtype)
        if ctx.relu:
            g_vals = g_vals * (vals > 0).to(g_vals.dtype)
        n = W_enc.shape[1]
        g_u = g_bpre = g_W = g_b = None
        flat_idx = idx.reshape(-1)
        if ctx.needs_input_grad[2]:
            g_W = _code_outer(idx, g_vals, xc, n, ctx.gemm_dtype).t()  # (d, n)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[3]:
            c = torch.zeros(n, dtype=g_vals.dtype, device=g_vals.device).index_add_(0, flat_idx, g_vals.reshape(-1))
            if ctx.needs_input_grad[1]:
                g_bpre = -(W_enc @ c)
            if ctx.has_b and ctx.needs_input_grad[3]:
                g_b = c
        if ctx.needs_input_grad[0]:
            g_u = F.embedding_bag(idx, W_enc.t().contiguous(), per_sample_weights=g_vals, mode="sum")
        return g_u, g_bpre, g_W, g_b, None, None


def topk_encode_sparse(u: torch.Tensor, b_pre: torch.Tensor, W_enc: torch.Tensor,
                       b_enc: torch.Tensor | None, k: int,
                       relu: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-K (vals, idx) of ``(u - b_pre) @ W_enc (+ b_enc)`` with a K-sparse backward."""
    return _TopKEncode.apply(u, b_pre, W_enc, b_enc, k, relu)


class _AttachDecoderGrad(torch.autograd.Function):
    """Identity on ``recon`` whose backward also returns dW_dec = S^T go (S = the (B, n) code)."""

    @staticmethod
    def forward(ctx, recon, idx, vals, W_dec):  # type: ignore[override]
        ctx.save_for_backward(idx, vals)
        ctx.n = W_dec.shape[0]
        ctx.gemm_dtype = _gemm_dtype(recon)
        return recon.view_as(recon)

    @staticmethod
    def backward(ctx, go):  # type: ignore[override]
        idx, vals = ctx.saved_tensors
        return go, None, None, _code_outer(idx, vals, go, ctx.n, ctx.gemm_dtype)


def sparse_decode_train(idx: torch.Tensor, vals: torch.Tensor, W_dec: torch.Tensor) -> torch.Tensor:
    """Training decode (B, K) codes -> (B, d) without b_pre, with a sparse backward.

    dvals come from embedding_bag's own per-sample-weights backward (W_dec detached), which
    never materialises the (B, K, d) gather W_dec[idx] (4x faster on CPU than a gather + bmm);
    dW_dec = S^T go comes from :func:`_code_outer` (sparse on CPU, dense GEMM on GPU autocast).
    """
    recon = F.embedding_bag(idx, W_dec.detach(), per_sample_weights=vals, mode="sum")
    return _AttachDecoderGrad.apply(recon, idx, vals.detach(), W_dec)


def sparse_decode(idx: torch.Tensor, vals: torch.Tensor, W_dec: torch.Tensor) -> torch.Tensor:
    """sum_k vals[:, k] * W_dec[idx[:, k]] without materialising the (B, n) code."""
    shape = idx.shape
    out = F.embedding_bag(idx.reshape(-1, shape[-1]), W_dec,
                          per_sample_weights=vals.reshape(-1, shape[-1]).to(W_dec.dtype), mode="sum")
    return out.reshape(*shape[:-1], W_dec.shape[1])


def geometric_median(x: torch.Tensor, *, max_iter: int = 200, tol: float = 1e-7,
                     eps: float = 1e-8) -> torch.Tensor:
    """Weiszfeld's algorithm for argmin_m sum_i ||x_i - m||; initialises b_pre (paper)."""
    x = x.detach().to(torch.float64).reshape(-1, x.shape[-1])
    if x.shape[0] == 0:
        raise ValueError("geometric_median needs at least one vector")
    m = x.mean(0)
    for _ in range(max_iter):
        dist = (x - m).norm(dim=-1).clamp_min(eps)
        w = 1.0 / dist
        m_new = (w[:, None] * x).sum(0) / w.sum()
        if (m_new - m).norm() <= tol * max(1.0, m.norm().item()):
            m = m_new
            break
        m = m_new
    return m


# --------------------------------------------------------------------------- shared body


class _PaperTopKMixin:
    """Methods shared by the inference and training classes."""

    cfg: Any
    W_enc: nn.Parameter
    W_dec: nn.Parameter
    b_dec: nn.Parameter

    def initialize_weights(self) -> None:  # type: ignore[override]
        d_in, d_sae = self.cfg.d_in, self.cfg.d_sae
        w_dec = torch.empty(d_sae, d_in, dtype=self.dtype, device=self.device)  # type: ignore[attr-defined]
        nn.init.kaiming_uniform_(w_dec)
        if str(self.device) != "meta":  # type: ignore[attr-defined]
            w_dec /= w_dec.norm(dim=-1, keepdim=True).clamp_min(_EPS)
        self.W_dec = nn.Parameter(w_dec)  # rows unit-norm
        self.W_enc = nn.Parameter(w_dec.T.clone().contiguous())  # W_enc = W_dec^T (paper)
        self.b_dec = nn.Parameter(torch.zeros(d_in, dtype=self.dtype, device=self.device))  # type: ignore[attr-defined]
        if self.cfg.encoder_bias:
            self.b_enc = nn.Parameter(torch.zeros(d_sae, dtype=self.dtype, device=self.device))  # type: ignore[attr-defined]

    def get_activation_fn(self) -> Callable[[torch.Tensor], torch.Tensor]:  # type: ignore[override]
        return nn.Identity()

    def _setup_activation_normalization(self) -> None:  # type: ignore[override]
        if self.cfg.normalize_activations != "unit_norm":
            SAE._setup_activation_normalization(self)  # type: ignore[arg-type]
            return

        def norm_in(x: torch.Tensor) -> torch.Tensor:
            n = x.norm(dim=-1, keepdim=True)
            self._x_norm = n  # kept (not deleted) so an error-term recompute can decode again
            return x / n.clamp_min(_EPS)

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

    # -- unit-norm space -------------------------------------------------------------
    def _pre(self, x_unit: torch.Tensor) -> torch.Tensor:
        pre = (x_unit.to(self.W_enc.dtype) - self.b_dec) @ self.W_enc
        if self.cfg.encoder_bias:
            pre = pre + self.b_enc
        if self.cfg.relu_before_topk:
            pre = pre.relu()
        return pre

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
        sae_in = self.process_sae_in(x)  # type: ignore[attr-defined]  # normalised, minus b_dec
        pre = sae_in @ self.W_enc
        if self.cfg.encoder_bias:
            pre = pre + self.b_enc
        if self.cfg.relu_before_topk:
            pre = pre.relu()
        pre = self.hook_sae_acts_pre(pre)  # type: ignore[attr-defined]
        vals, idx = torch.topk(pre, self.cfg.k, dim=-1, sorted=False)
        z = torch.zeros_like(pre).scatter_(-1, idx, vals)
        return self.hook_sae_acts_post(z), pre  # type: ignore[attr-defined]

    def decode(self, feature_acts: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = feature_acts.to(self.W_dec.dtype) @ self.W_dec + self.b_dec
        out = self.hook_sae_recons(out)  # type: ignore[attr-defined]
        out = self.run_time_activation_norm_fn_out(out)
        return self.reshape_fn_out(out, self.d_head)  # type: ignore[attr-defined]

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Rescale decoder rows to unit norm (paper: decoder columns kept unit-norm)."""
        self.W_dec.data /= self.W_dec.data.norm(dim=-1, keepdim=True).clamp_min(_EPS)

    def fold_W_dec_norm(self) -> None:  # type: ignore[override]
        raise NotImplementedError(
            "folding decoder norms changes the TopK selection of a paper_topk SAE; its decoder "
            "rows are kept unit-norm already"
        )


class PaperTopKSAE(_PaperTopKMixin, SAE[PaperTopKSAEConfig]):
    """Inference class of the paper's TopK SAE (architecture "paper_topk")."""

    b_enc: nn.Parameter

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Residual-scale x -> dense TopK code (x is L2-normalised first, norm stashed)."""
        return self._encode_impl(x)[0]


class PaperTopKTrainingSAE(_PaperTopKMixin, TrainingSAE[PaperTopKTrainingSAEConfig]):
    """Training class; ``training_forward_pass`` is the fast sparse step (cfg.fast).

    ``loss_history`` keeps every training step's loss (detached scalars, no sync per step):
    how fast an SAE converges is what a warm start changes (see train.convergence).
    """

    b_enc: nn.Parameter

    def __init__(self, cfg: PaperTopKTrainingSAEConfig, use_error_term: bool = False):
        super().__init__(cfg, use_error_term)
        self.loss_history: list[torch.Tensor] = []

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

    def initialize_weights(self) -> None:  # type: ignore[override]
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

    def calculate_aux_loss(self, step_input, feature_acts, hidden_pre, sae_out):  # type: ignore[override]
        return {}  # the paper has no auxiliary loss

    @torch.no_grad()
    def init_b_pre(self, sample: torch.Tensor) -> None:
        """b_pre <- geometric median of a (unit-normalised) data sample (paper)."""
        u = sample / sample.norm(dim=-1, keepdim=True).clamp_min(_EPS)
        self.b_dec.data.copy_(geometric_median(u).to(self.b_dec))

    def unit_input(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.dtype)
        if self.cfg.normalize_activations == "unit_norm":
            x = x / x.norm(dim=-1, keepdim=True).clamp_min(_EPS)
        return x

    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        """One training step's forward: unit-norm input, loss = mean_b ||u - u_hat||^2.

        Decoder rows are re-normalised first, so under any SAELens trainer they are unit-norm
        after every optimiser step as seen by the next forward (and at save, see train.py).
        """
        self.normalize_decoder_()
        u = self.unit_input(step_input.sae_in)
        if not self.cfg.fast:
            loss, z, pre, recon = dense_reference_loss(self, u)
            feature_acts = z
        else:
            b_enc = self.b_enc if self.cfg.encoder_bias else None
            vals, idx = topk_encode_sparse(u, self.b_dec, self.W_enc, b_enc, self.cfg.k, self.cfg.relu_before_topk)
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
        state_dict["W_dec"] = state_dict["W_dec"] / state_dict["W_dec"].norm(dim=-1, keepdim=True).clamp_min(_EPS)


def dense_reference_loss(sae: _PaperTopKMixin, u: torch.Tensor):
    """Plain dense forward (autograd everywhere): (loss, z, pre, recon) on unit inputs u."""
    pre = (u - sae.b_dec) @ sae.W_enc
    if sae.cfg.encoder_bias:
        pre = pre + sae.b_enc
    if sae.cfg.relu_before_topk:
        pre = pre.relu()
    vals, idx = torch.topk(pre, sae.cfg.k, dim=-1, sorted=False)
    z = torch.zeros_like(pre).scatter(-1, idx, vals)
    recon = z @ sae.W_dec + sae.b_dec
    loss = (recon - u).pow(2).sum(-1).mean()
    return loss, z, pre, recon


# --------------------------------------------------------------------------- helpers


def register() -> None:
    """Register "paper_topk" with SAELens (idempotent; runs at import)."""
    if ARCHITECTURE not in SAE_CLASS_REGISTRY:
        register_sae_class(ARCHITECTURE, PaperTopKSAE, PaperTopKSAEConfig)
    if ARCHITECTURE not in SAE_TRAINING_CLASS_REGISTRY:
        register_sae_training_class(ARCHITECTURE, PaperTopKTrainingSAE, PaperTopKTrainingSAEConfig)


register()


def make_metadata(*, hook_name: str, model_name: str | None = None, **provenance: Any) -> SAEMetadata:
    """SAEMetadata with our provenance keys (checkpoint_iteration, tokens, paper_layer, corpus, seed...)."""
    from sae_bilingual import __version__
    from sae_bilingual.layers import LayerError, layer_for_hook

    try:
        layer = layer_for_hook(hook_name)
    except LayerError:
        layer = None
    md = dict(hook_name=hook_name, model_name=model_name, paper_layer=layer,
              normalization="unit_norm (per-token L2; BOS dropped)",
              sae_bilingual_version=__version__, prepend_bos=True)
    md.update(provenance)
    return SAEMetadata(**md)


def new_paper_sae(d_in: int, *, k: int = 32, d_sae: int | None = None, expansion: int = 16,
                  metadata: SAEMetadata | None = None, training: bool = False,
                  device: str = "cpu", dtype: str = "float32", **kw: Any):
    """Fresh paper TopK SAE (defaults K=32, d_sae = 16 * d_in)."""
    d_sae = d_sae or expansion * d_in
    cls_cfg = PaperTopKTrainingSAEConfig if training else PaperTopKSAEConfig
    cfg = cls_cfg(d_in=d_in, d_sae=d_sae, k=k, device=device, dtype=dtype,
                  metadata=metadata or SAEMetadata(), **kw)
    return (PaperTopKTrainingSAE if training else PaperTopKSAE)(cfg)


def to_inference(sae: PaperTopKTrainingSAE) -> PaperTopKSAE:
    """Inference copy of a training SAE (decoder rows unit-norm)."""
    d = sae.cfg.get_inference_sae_cfg_dict()
    cfg = PaperTopKSAEConfig.from_dict(d)
    out = PaperTopKSAE(cfg)
    sd = {k: v.detach().clone() for k, v in sae.state_dict().items()}
    sae.process_state_dict_for_saving_inference(sd)
    out.load_state_dict(sd)
    return out


def save_sae(sae: SAE, path: str | Path) -> Path:
    """Save an SAE atomically in SAELens's layout (cfg.json + sae_weights.safetensors)."""
    from sae_bilingual.io import atomic_dir

    if isinstance(sae, PaperTopKTrainingSAE):
        sae = to_inference(sae)
    with atomic_dir(path) as tmp:
        sae.save_model(tmp)
    return Path(path)


_REQUIRED_CFG = ("architecture", "d_in", "d_sae")
_FIX = "retrain this SAE (rerun the study: unfinished layers are redone) or re-download it"


def load_sae(path: str | Path, device: str = "cpu", dtype: str | None = None) -> SAE:
    """``SAE.load_from_disk`` with errors that name the bad file and the fix.

    Why: SAELens reports a truncated weights file or a cfg.json without ``d_sae`` as a
    bare safetensors/TypeError; a study resumed after a crash should say which file is bad.
    """
    import json

    p = Path(path)
    for f in ("cfg.json", "sae_weights.safetensors"):
        if not (p / f).exists():
            raise SAEFileError(f"{p} has no {f}: not an SAE directory (expected cfg.json + "
                               f"sae_weights.safetensors, as written by save_sae / SAELens); {_FIX}")
    cfg_path = p / "cfg.json"
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SAEFileError(f"{cfg_path} is not valid JSON ({e}); {_FIX}") from e
    if not isinstance(cfg, dict):
        raise SAEFileError(f"{cfg_path} must hold a JSON object, got {type(cfg).__name__}; {_FIX}")
    missing = [k for k in _REQUIRED_CFG if k not in cfg]
    if cfg.get("architecture") == ARCHITECTURE and "k" not in cfg:
        missing.append("k")
    if missing:
        raise SAEFileError(f"{cfg_path} lacks the field(s) {missing}; {_FIX}")
    weights = p / "sae_weights.safetensors"
    try:
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as f:
            names = set(f.keys())
    except Exception as e:  # safetensors raises its own (non-OSError) types on bad headers
        raise SAEFileError(f"{weights} is corrupt or truncated ({e}); {_FIX}") from e
    try:
        sae = SAE.load_from_disk(p, device=device, dtype=dtype)
    except SAEFileError:
        raise
    except ConfigError as e:
        raise SAEFileError(f"{cfg_path}: {e}; {_FIX}") from e
    except Exception as e:  # noqa: BLE001  shapes / dtypes / data region that do not fit cfg.json
        raise SAEFileError(
            f"cannot load the SAE in {p} ({type(e).__name__}: {e}); tensors in {weights.name}: "
            f"{sorted(names)}. The weights do not fit cfg.json or the file is damaged; {_FIX}"
        ) from e
    for name, t in sae.state_dict().items():
        bad = int((~torch.isfinite(t)).sum()) if t.is_floating_point() else 0
        if bad:  # a diverged training run: every code and reconstruction would be NaN
            raise SAEFileError(f"{weights}: tensor {name} holds {bad} NaN/inf values of {t.numel()}; the SAE "
                               f"is unusable (training diverged?); {_FIX}")
    return sae


@torch.no_grad()
def encode_codes(sae: SAE, x: torch.Tensor, *, normalized: bool = True,
                 batch_size: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-K (idx int32 [M,K], val float32 [M,K]) of vectors x (unit-norm if ``normalized``)."""
    idxs, vals = [], []
    for s in range(0, x.shape[0], batch_size):
        xb = x[s:s + batch_size].to(sae.W_enc.device)
        if not normalized:
            xb = xb / xb.norm(dim=-1, keepdim=True).clamp_min(_EPS)
        i, v = sae.encode_topk(xb)  # type: ignore[attr-defined]
        idxs.append(i.to(torch.int32).cpu())
        vals.append(v.float().cpu())
    k = sae.cfg.k  # type: ignore[attr-defined]
    if not idxs:
        return torch.zeros(0, k, dtype=torch.int32), torch.zeros(0, k)
    return torch.cat(idxs), torch.cat(vals)


@torch.no_grad()
def export_stock_topk(sae: PaperTopKSAE, path: str | Path) -> Path:
    """Write ``sae`` as a stock SAELens "topk" SAE that loads without this package.

    Stock topk with normalize_activations="constant_norm_rescale" computes, for residual x,
      s = sqrt(d)/||x||;  pre = (s x - b_dec') @ W_enc' + b_enc';  z' = ReLU(TopK(pre));
      x_hat = (z' @ W_dec' + b_dec') / s.
    With b_dec' = sqrt(d) b_pre, W_enc' = W_enc / sqrt(d), b_enc' = 0, W_dec' = sqrt(d) W_dec:
      pre = (u - b_pre) @ W_enc = the paper's pre-activation exactly, so the codes are equal,
      and x_hat = ||x|| (z W_dec + b_pre), the paper's reconstruction at residual scale.
    Difference: stock TopK applies ReLU to the selected values, so a token whose selected
    pre-activation is negative gets 0 there (the paper keeps the negative value). On inputs
    whose top-K pre-activations are all positive both agree exactly.
    """
    from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig

    from sae_bilingual.io import atomic_dir

    if sae.cfg.normalize_activations != "unit_norm":
        raise ConfigError("export_stock_topk needs a unit_norm paper_topk SAE")
    d = sae.cfg.d_in
    r = math.sqrt(d)
    md = SAEMetadata(**{**sae.cfg.metadata.to_dict(), "exported_from": ARCHITECTURE})
    cfg = TopKSAEConfig(d_in=d, d_sae=sae.cfg.d_sae, k=sae.cfg.k, dtype=sae.cfg.dtype,
                        device="cpu", normalize_activations="constant_norm_rescale",
                        apply_b_dec_to_input=True, rescale_acts_by_decoder_norm=False, metadata=md)
    stock = TopKSAE(cfg)
    b_enc = sae.b_enc.detach() if sae.cfg.encoder_bias else torch.zeros(sae.cfg.d_sae)
    stock.load_state_dict({
        "W_enc": sae.W_enc.detach().cpu() / r,
        "W_dec": sae.W_dec.detach().cpu() * r,
        "b_dec": sae.b_dec.detach().cpu() * r,
        "b_enc": b_enc.cpu().to(sae.W_enc.dtype),
    })
    with atomic_dir(path) as tmp:
        stock.save_model(tmp)
    return Path(path)
