"""Aligned rows for a crosscoder: one layer of C checkpoints over the SAME windows.

Row r of the store is one token (one non-BOS position of one window) seen by every
checkpoint: ``rows[r, c*d:(c+1)*d]`` is checkpoint c's unit-norm residual at that token,
exactly the vector the ordinary store (:func:`sae_bilingual.data.store.iter_activations`)
gives for checkpoint c (same windows, same order, BOS and padding dropped, each slice
L2-normalised on its own). The checkpoints are loaded one at a time: checkpoint c's forward
fills slice c of one host buffer [M, C*d], then that model is freed, so only C x d numbers
per row are ever held (never C models, never per-checkpoint copies of the buffer).
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from sae_bilingual.data.corpus import Windows
from sae_bilingual.data.store import Labels, iter_activations
from sae_bilingual.errors import DataError

log = logging.getLogger(__name__)

__all__ = ["AlignedRows", "aligned_from_slices", "collect_aligned", "collect_aligned_sets", "windows_for_tokens"]


@dataclass
class AlignedRows:
    """``rows`` FloatTensor[M, C*d] (slice c = checkpoint c, unit-norm) and their labels."""

    rows: torch.Tensor
    labels: Labels
    n_checkpoints: int

    @property
    def d_model(self) -> int:
        """Width d of one checkpoint's slice."""
        return int(self.rows.shape[1]) // self.n_checkpoints

    def slice(self, c: int) -> torch.Tensor:
        """Checkpoint c's vectors [M, d] (a view)."""
        d = self.d_model
        return self.rows[:, c * d:(c + 1) * d]

    def batches(self, batch_size: int, seed: int = 0) -> Iterator[torch.Tensor]:
        """Endless shuffled batches [batch_size, C*d]; every row is served once per pass
        (a new seeded permutation per pass; the last short batch of a pass is topped up from
        the next pass so every batch has ``batch_size`` rows)."""
        gen = torch.Generator().manual_seed(seed)
        M = int(self.rows.shape[0])
        if M == 0:
            raise DataError("the aligned store holds no rows")
        order = torch.zeros(0, dtype=torch.long)
        while True:
            while order.shape[0] < batch_size:
                order = torch.cat([order, torch.randperm(M, generator=gen)])
            yield self.rows.index_select(0, order[:batch_size])
            order = order[batch_size:]


def windows_for_tokens(windows: Windows, tokens: int | None) -> Windows:
    """The first windows of each language whose vectors reach ``tokens / n_languages`` (all
    windows when ``tokens`` is None or more than they hold), in their original order.

    Why per language: the crosscoder trains on fewer rows than the SAEs when asked, and the
    budget stays balanced between languages as the study's is."""
    if tokens is None or tokens >= windows.n_vectors:
        return windows
    per = tokens / len(windows.languages)
    n = (windows.lengths - 1).clamp_min(0)
    keep = torch.zeros(len(windows), dtype=torch.bool)
    for i in range(len(windows.languages)):  # a loop over languages, not tokens
        idx = (windows.lang == i).nonzero().flatten()
        before = torch.cumsum(n[idx], 0) - n[idx]  # vectors of this language before each window
        keep[idx[before < per]] = True
    return windows.subset(keep.nonzero().flatten())


def collect_aligned(load: Callable[[int], Any], n_checkpoints: int, windows: Windows, hook: str, *,
                    lm_batch_size: int = 32, device: str | torch.device | None = None,
                    dtype: torch.dtype = torch.float32) -> AlignedRows:
    """Aligned rows of ``hook`` for checkpoints 0..C-1, loading each with ``load(c)`` in turn
    (:func:`collect_aligned_sets` with one set of windows)."""
    return collect_aligned_sets(load, n_checkpoints, [windows], hook, lm_batch_size=lm_batch_size,
                                device=device, dtype=dtype)[0]


def collect_aligned_sets(load: Callable[[int], Any], n_checkpoints: int, window_sets: Sequence[Windows], hook: str,
                         *, lm_batch_size: int = 32, device: str | torch.device | None = None,
                         dtype: torch.dtype = torch.float32) -> list[AlignedRows]:
    """Aligned rows of ``hook`` over each set of windows (e.g. train and eval), every checkpoint
    loaded ONCE for all sets: ``load(c)`` for c = 0..C-1 in turn, each model dropped (and the
    cyclic collector and CUDA cache emptied) before the next is loaded.

    The labels come from checkpoint 0's pass; every later pass must see the same tokens, else
    the windows were not the same and a DataError says so.
    """
    C = int(n_checkpoints)
    if C < 1:
        raise DataError(f"a crosscoder needs >= 1 checkpoint, got {C}")
    bufs: list[torch.Tensor | None] = [None] * len(window_sets)
    labels: list[Labels | None] = [None] * len(window_sets)
    for c in range(C):
        model = load(c)
        for j, windows in enumerate(window_sets):
            M = windows.n_vectors
            off = 0
            labs: list[Labels] = []
            for acts, lab in iter_activations(model, windows, [hook], batch_size=lm_batch_size, device=device):
                a = acts[hook]
                buf = bufs[j]
                if buf is None:
                    buf = bufs[j] = torch.empty(M, C * int(a.shape[1]), dtype=dtype)
                    log.info("aligned store: %d rows x %d checkpoints x d=%d (%.1f MB)", M, C, a.shape[1],
                             buf.numel() * buf.element_size() / 1e6)
                d = buf.shape[1] // C
                if a.shape[1] != d:
                    raise DataError(f"checkpoint {c} has d_model {a.shape[1]} at {hook}, checkpoint 0 has {d}: "
                                    "a crosscoder's checkpoints must be one model's")
                m = int(a.shape[0])
                buf[off:off + m, c * d:(c + 1) * d] = a.to(dtype)
                off += m
                labs.append(lab)
            if off != M:
                raise DataError(f"checkpoint {c} gave {off} vectors at {hook}, the windows hold {M}")
            got, first = Labels.cat(labs), labels[j]
            if first is None:
                labels[j] = got
            elif not torch.equal(got.token_id, first.token_id):
                raise DataError(f"checkpoint {c} saw other tokens than checkpoint 0: the windows differ")
        del model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    out = []
    for b, l in zip(bufs, labels):
        if b is None or l is None:
            raise DataError(f"a window set gave no vectors at {hook}; give the crosscoder windows with tokens")
        out.append(AlignedRows(b, l, C))
    return out


def aligned_from_slices(slices: Sequence[torch.Tensor], labels: Labels) -> AlignedRows:
    """Aligned rows from per-checkpoint vectors already in memory ([M, d] each, same rows).

    For tests and for callers that hold the activations already; unit-norm is not reapplied."""
    if not slices or any(s.shape != slices[0].shape for s in slices):
        raise DataError("aligned_from_slices needs >= 1 slice, all [M, d] of one shape")
    return AlignedRows(torch.cat(list(slices), dim=1), labels, len(slices))
