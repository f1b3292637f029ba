"""The TopK SAE's tensor maths, free of SAELens: one pre-activation, the training kernels.

* :func:`unit_norm` is the paper's per-token L2 normalisation, :func:`pre_activation` the
  encoder's ``(u - b_pre) @ W_enc (+ b_enc) (ReLU)``; every encode path (training kernel,
  dense reference, inference, SAELens's ``encode``) goes through them.
* Training uses a sparse decode (``F.embedding_bag``) and a custom autograd function whose
  encoder backward touches only the K selected latents per row; :func:`dense_reference_loss`
  is the plain version the tests compare it with.
* :func:`geometric_median` initialises ``b_pre`` (paper).
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")  # stable for S @ X

EPS = 1e-12
"""Floor of a vector norm before dividing by it (an all-zero vector stays zero)."""


def unit_norm(x: torch.Tensor, *, inplace: bool = False) -> torch.Tensor:
    """``x / ||x||`` per row (last dimension), the norm floored at :data:`EPS`.

    Two places apply it, on purpose. The activation store (``data.store``) hands out
    unit-norm vectors because everything downstream reads them in the SAE's unit space (codes,
    reconstruction metrics and ``encode_topk`` / ``encode_normalized`` take unit-norm input).
    The SAE's training input handling (``PaperTopKTrainingSAE.unit_input``) applies it again
    because the SAE is the paper's model whatever feeds it (an unnormalised stream, SAELens's
    own trainer). On the store's vectors the second pass changes only float rounding, but
    dropping either would change the trained weights' bits, so both stay.
    ``inplace`` divides ``x`` itself (the store's large buffers).
    """
    n = x.norm(dim=-1, keepdim=True).clamp_min(EPS)
    return x.div_(n) if inplace else x / n


def pre_activation(xc: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor | None = None,
                   relu: bool = False, out: torch.Tensor | None = None) -> torch.Tensor:
    """The encoder's pre-activations ``(u - b_pre) @ W_enc (+ b_enc) (ReLU)``, ``[..., n]``.

    Takes the centred input ``xc = u - b_pre``, which every caller has already: the training
    kernel keeps it for its backward and SAELens's ``process_sae_in`` returns it. ``b_enc``
    and ``relu`` exist for the authors' released weights only (the paper has neither).
    ``out`` (no autograd) receives the result in place: see :func:`_pre_buffer`.
    """
    if out is not None:
        pre = torch.matmul(xc, W_enc, out=out)
        if b_enc is not None:
            pre.add_(b_enc)
        return pre.relu_() if relu else pre
    pre = xc @ W_enc
    if b_enc is not None:
        pre = pre + b_enc
    if relu:
        pre = pre.relu()
    return pre


_PRE_BUFFER: list[torch.Tensor] = []
"""The one reused (B, n) pre-activation buffer of CPU training steps (see :func:`_pre_buffer`)."""


def _pre_buffer(xc: torch.Tensor, n: int, slot: list[torch.Tensor] = _PRE_BUFFER) -> torch.Tensor | None:
    """A reused CPU buffer for the training step's (B, n) pre-activations, else None.

    A fresh 134 MB (B=4096, n=8192) tensor is a new mmap each step, and first-touching its
    pages cost ~50 ms of a ~300 ms CPU step; the buffer is dead once top-K has read it, so
    every SAE of every step can share one. GPUs (caching allocator) and autocast keep
    fresh tensors. ``slot``: the list holding the buffer (the crosscoder keeps its own, so
    SAEs and a crosscoder of another width trained side by side do not reallocate it in turn).
    """
    if xc.device.type != "cpu" or torch.is_autocast_enabled("cpu"):
        return None
    shape = (xc.shape[0], n)
    if not slot or slot[0].shape != shape or slot[0].dtype != xc.dtype:
        slot[:] = [torch.empty(shape, dtype=xc.dtype)]
    return slot[0]


def release_step_workspace() -> None:
    """Drop the buffer of :func:`_pre_buffer`: it serves training only (the memory plan counts it
    in the train phase), so the evaluation and analysis after training do not hold it."""
    _PRE_BUFFER.clear()


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
    """S^T X for the (B, n) code S with ``vals`` at ``idx`` (zeros elsewhere) -> (n, d).

    Sparse path: S^T as CSR, its rows (latents) found by one sort of the B*K indices; CSR
    skips the COO path's coalesce; ``addmm(beta=0, out=)`` its zero-fill and result copy (together
    2.7x faster at B=4096 K=32 n=8192 d=512).
    """
    B, K = idx.shape
    if gemm_dtype is not None:
        G = torch.zeros(B, n, dtype=gemm_dtype, device=idx.device).scatter_(1, idx, vals.to(gemm_dtype))
        return (G.t() @ X.to(gemm_dtype)).to(X.dtype)
    flat = idx.reshape(-1)
    order = torch.argsort(flat, stable=True)  # rows ascending per latent: a fixed summation order
    crow = torch.zeros(n + 1, dtype=torch.int64, device=idx.device)
    torch.cumsum(torch.bincount(flat, minlength=n), 0, out=crow[1:])
    S_t = torch.sparse_csr_tensor(crow, order // K, vals.reshape(-1)[order].to(X.dtype), (n, B),
                                  check_invariants=False)
    out = X.new_empty(n, X.shape[1])  # beta=0 into ``out``: no zero-fill, no result copy
    return torch.addmm(out, S_t, X, beta=0, out=out)


class _TopKEncode(torch.autograd.Function):
    """(u, b_pre, W_enc[, b_enc]) -> (vals [B,K], idx [B,K]); backward touches only the K picks.

    Forward: pre = :func:`pre_activation` (B, n); top-K per row; (ReLU of the picks).
    Backward: with g = dL/dvals (B, K) (masked by the ReLU when used) and c[j] = sum of g
    over the picks of latent j,
      dW_enc[:, j] = sum over (row, k) with idx = j of g[row, k] * xc[row]   (sparse (n,B)@(B,d))
      db_pre       = -W_enc @ c,   db_enc = c,
      du[row]      = sum_k g[row, k] * W_enc[:, idx[row, k]]   (only if u needs a gradient).
    """

    @staticmethod
    def forward(ctx: Any, u: torch.Tensor, b_pre: torch.Tensor, W_enc: torch.Tensor,
                b_enc: torch.Tensor | None, k: int, relu: bool) -> tuple[torch.Tensor, torch.Tensor]:
        xc = u - b_pre
        pre = pre_activation(xc, W_enc, b_enc, out=_pre_buffer(xc, W_enc.shape[1]))
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
    def backward(ctx: Any, g_vals: torch.Tensor, _g_idx: Any) -> tuple[torch.Tensor | None, ...]:
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
    vals, idx = _TopKEncode.apply(u, b_pre, W_enc, b_enc, k, relu)
    return vals, idx


class _AttachDecoderGrad(torch.autograd.Function):
    """Identity on ``recon`` whose backward also returns dW_dec = S^T go (S = the (B, n) code)."""

    @staticmethod
    def forward(ctx: Any, recon: torch.Tensor, idx: torch.Tensor, vals: torch.Tensor,
                W_dec: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(idx, vals)
        ctx.n = W_dec.shape[0]
        ctx.gemm_dtype = _gemm_dtype(recon)
        return recon.view_as(recon)

    @staticmethod
    def backward(ctx: Any, go: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        idx, vals = ctx.saved_tensors
        return go, None, None, _code_outer(idx, vals, go, ctx.n, ctx.gemm_dtype)


def sparse_decode_train(idx: torch.Tensor, vals: torch.Tensor, W_dec: torch.Tensor) -> torch.Tensor:
    """Training decode (B, K) codes -> (B, d) without b_pre, with a sparse backward.

    dvals come from embedding_bag's own per-sample-weights backward (W_dec detached), which
    never materialises the (B, K, d) gather W_dec[idx] (4x faster on CPU than a gather + bmm);
    dW_dec = S^T go comes from :func:`_code_outer` (sparse on CPU, dense GEMM on GPU autocast).
    """
    recon = F.embedding_bag(idx, W_dec.detach(), per_sample_weights=vals, mode="sum")
    out: torch.Tensor = _AttachDecoderGrad.apply(recon, idx, vals.detach(), W_dec)
    return out


class DenseForward(NamedTuple):
    loss: torch.Tensor   # mean squared error over the batch, in unit-norm space
    z: torch.Tensor      # [B, d_sae] codes, zero outside each row's top k
    pre: torch.Tensor    # [B, d_sae] pre-activations
    recon: torch.Tensor  # [B, d_in] reconstruction


def dense_reference_loss(u: torch.Tensor, b_pre: torch.Tensor, W_enc: torch.Tensor, W_dec: torch.Tensor,
                         k: int, b_enc: torch.Tensor | None = None, relu: bool = False) -> DenseForward:
    """Plain dense forward (autograd everywhere) on unit inputs ``u``: the sparse kernels' reference."""
    pre = pre_activation(u - b_pre, W_enc, b_enc, relu)
    vals, idx = torch.topk(pre, k, dim=-1, sorted=False)
    z = torch.zeros_like(pre).scatter(-1, idx, vals)
    recon = z @ W_dec + b_pre
    loss = (recon - u).pow(2).sum(-1).mean()
    return DenseForward(loss, z, pre, recon)


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
