"""GPU kernel variants for sae_bilingual/sae.py, measured by ``bench_sae_step.py --variants``.

Not package code: each variant subclasses the current autograd function in sae.py, replaces
only its backward, and is swapped in (module attribute) just around its own steps.

``dense_grads`` (recommendations 2-3 in README.md): on the GPU, the two cuSPARSE ``csrmm``
products (dW_enc, dW_dec) become dense bf16 GEMMs of a scattered (B, n) gradient, and the
decoder's dvals come from ``(go @ W_dec^T).gather(idx)`` instead of materialising W_dec[idx].
More FLOPs, but at tensor-core rate instead of ~0.4 TFLOP/s sparse.
"""

from __future__ import annotations

import contextlib

import torch

import sae_bilingual.sae as S

CDT = torch.bfloat16


class _TopKEncodeDense(S._TopKEncode):
    @staticmethod
    def backward(ctx, g_vals, _g_idx):  # type: ignore[override]
        xc, W_enc, idx, vals = ctx.saved_tensors
        g_vals = g_vals.to(W_enc.dtype)
        if ctx.relu:
            g_vals = g_vals * (vals > 0).to(g_vals.dtype)
        B, K = idx.shape
        d, n = W_enc.shape
        g_u = g_bpre = g_W = g_b = None
        flat_idx = idx.reshape(-1)
        if ctx.needs_input_grad[2]:
            G = torch.zeros(B, n, dtype=CDT, device=idx.device).scatter_(1, idx, g_vals.to(CDT))
            g_W = (xc.to(CDT).t() @ G).to(W_enc.dtype)  # (d, n)
            del G
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[3]:
            c = torch.zeros(n, dtype=g_vals.dtype, device=g_vals.device).index_add_(0, flat_idx, g_vals.reshape(-1))
            if ctx.needs_input_grad[1]:
                g_bpre = -(W_enc @ c)
            if ctx.has_b and ctx.needs_input_grad[3]:
                g_b = c
        if ctx.needs_input_grad[0]:
            g_u = torch.nn.functional.embedding_bag(idx, W_enc.t().contiguous(), per_sample_weights=g_vals,
                                                    mode="sum")
        return g_u, g_bpre, g_W, g_b, None, None


class _SparseDecodeDense(S._SparseDecode):
    @staticmethod
    def backward(ctx, go):  # type: ignore[override]
        idx, vals, W_dec = ctx.saved_tensors
        B, K = idx.shape
        n = W_dec.shape[0]
        g_vals = g_W = None
        go_c = go.to(CDT)
        if ctx.needs_input_grad[1]:
            g_vals = (go_c @ W_dec.to(CDT).t()).gather(1, idx).to(vals.dtype)  # (B, K)
        if ctx.needs_input_grad[2]:
            G = torch.zeros(B, n, dtype=CDT, device=idx.device).scatter_(1, idx, vals.to(CDT))
            g_W = (G.t() @ go_c).to(W_dec.dtype)  # (n, d)
        return None, g_vals, g_W


class _AttachDecoderGrad(torch.autograd.Function):
    """Identity on recon whose backward adds dW_dec = S^T go (S = the (B, n) code, sparse)."""

    @staticmethod
    def forward(ctx, recon, idx, vals, W_dec):  # type: ignore[override]
        ctx.save_for_backward(idx, vals)
        ctx.n = W_dec.shape[0]
        return recon.view_as(recon)

    @staticmethod
    def backward(ctx, go):  # type: ignore[override]
        idx, vals = ctx.saved_tensors
        B, K = idx.shape
        rows = torch.arange(B, device=idx.device).repeat_interleave(K)
        Sm = torch.sparse_coo_tensor(torch.stack([idx.reshape(-1), rows]), vals.reshape(-1).to(go.dtype),
                                     (ctx.n, B), check_invariants=False)
        return go, None, None, torch.sparse.mm(Sm, go)


def sparse_decode_train_ebag(idx: torch.Tensor, vals: torch.Tensor, W_dec: torch.Tensor) -> torch.Tensor:
    """CPU variant: dvals from embedding_bag's own per-sample-weights backward (no W_dec[idx]
    (B, K, d) gather); dW_dec from the same sparse product as now."""
    recon = torch.nn.functional.embedding_bag(idx, W_dec.detach(), per_sample_weights=vals, mode="sum")
    return _AttachDecoderGrad.apply(recon, idx, vals.detach(), W_dec)


VARIANTS = {"dense_grads": {"_TopKEncode": _TopKEncodeDense, "_SparseDecode": _SparseDecodeDense},
            "ebag_dvals": {"sparse_decode_train": sparse_decode_train_ebag}}


@contextlib.contextmanager
def use(name: str):
    """Swap the named variant's functions into sae_bilingual.sae for the duration."""
    saved = {k: getattr(S, k) for k in VARIANTS[name]}
    try:
        for k, v in VARIANTS[name].items():
            setattr(S, k, v)
        yield
    finally:
        for k, v in saved.items():
            setattr(S, k, v)
