"""One LM pass over the evaluation windows feeds every SAE of a layer group: codes + metrics.

Why streaming: at the paper's scale one layer's evaluation vectors are 10M x 3,072 x 4 B =
123 GB, and a unit has 28 layers. Here each LM batch's residuals are encoded on the SAEs'
device right away, every SAE's top-K codes are appended to a spool on disk
(:class:`~sae_bilingual.analysis.codes.CodesSpool`) and its reconstruction metrics are
accumulated exactly (:class:`~sae_bilingual.sae.metrics.ReconstructionStats`); nothing larger
than one LM batch (plus one encode batch) of activations per hook ever exists.

The vectors are encoded in batches of ``encode_batch`` rows counted over the whole evaluation
set (the LM batches are re-cut), so the codes and sums are bit for bit those of encoding the
concatenated vectors in ``encode_batch`` chunks: a matrix product's rows can change in their
last bits with the number of rows in a call, and the tables must not depend on the LM batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from sae_bilingual.analysis.codes import Codes, CodesSpool
from sae_bilingual.data import store
from sae_bilingual.data.corpus import Windows
from sae_bilingual.data.store import Labels
from sae_bilingual.sae.metrics import ReconstructionStats, encode_decode

EVAL_ENCODE_BATCH = 8192
"""Vectors per encode call of the evaluation (the row count of each encoder product)."""


@dataclass
class StreamedEval:
    """What one streamed evaluation pass leaves: labels, per-hook metrics and code spools."""

    labels: Labels
    """Labels of every evaluation vector, in window then position order."""
    metrics: dict[str, dict[str, float]]
    """hook -> :meth:`ReconstructionStats.result`."""
    spools: dict[str, CodesSpool] = field(default_factory=dict)
    """hook -> its codes on disk (empty when the pass kept no codes)."""

    def codes(self, hook: str, languages: tuple[str, ...], metadata: dict[str, str] | None = None) -> Codes:
        """The codes of ``hook``'s SAE, read back into memory (one layer at a time)."""
        return self.spools[hook].read(self.labels, languages, metadata)


class _Encoder:
    """One SAE's side of the pass: re-cut batches -> encode -> spool + stats."""

    def __init__(self, sae: Any, spool: CodesSpool | None, encode_batch: int):
        self.sae, self.spool, self.encode_batch = sae, spool, encode_batch
        self.stats = ReconstructionStats(sae.cfg.d_sae)
        self.pending: list[torch.Tensor] = []
        self.n_pending = 0

    def add(self, x: torch.Tensor, final: bool = False) -> None:
        if x.shape[0]:
            self.pending.append(x)
            self.n_pending += int(x.shape[0])
        while self.n_pending >= self.encode_batch or (final and self.n_pending):
            rows = torch.cat(self.pending) if len(self.pending) > 1 else self.pending[0]
            take = min(self.encode_batch, self.n_pending)
            self._encode(rows[:take])
            self.pending = [rows[take:]] if take < self.n_pending else []
            self.n_pending -= take

    @torch.no_grad()
    def _encode(self, x: torch.Tensor) -> None:
        u = x.to(self.sae.W_enc.device, self.sae.W_enc.dtype)
        idx, val, rec = encode_decode(self.sae, u)
        self.stats.update(u, rec, idx, val)
        if self.spool is not None:
            self.spool.append(idx.to(torch.int32).cpu(), val.float().cpu())


def stream_eval(model: Any, saes: Mapping[str, Any], windows: Windows, *, spool_dir: str | Path | None = None,
                lm_batch_size: int = 32, device: str | torch.device | None = None,
                encode_batch: int = EVAL_ENCODE_BATCH, progress: bool = False) -> StreamedEval:
    """Encode every evaluation vector at each hook of ``saes`` ({hook: SAE}) in one LM pass.

    ``spool_dir``: codes go to ``spool_dir/<hook>/`` (None: metrics only, e.g. the LR grid).
    The residuals are moved straight to each SAE's device.
    """
    hooks = list(saes)
    enc = {h: _Encoder(saes[h], CodesSpool(Path(spool_dir) / h, saes[h].cfg.k) if spool_dir else None,
                       int(encode_batch)) for h in hooks}
    out_device = next(iter(saes.values())).W_enc.device
    labels: list[Labels] = []
    batches = store.iter_activations(model, windows, hooks, batch_size=lm_batch_size, device=device,
                                     out_device=out_device)
    n_batches = -(-len(windows) // max(1, lm_batch_size))
    for acts, lab in tqdm(batches, total=n_batches, desc="eval encode", disable=not progress, leave=False):
        labels.append(lab)
        for h in hooks:
            enc[h].add(acts.pop(h))
    for e in enc.values():
        e.add(torch.zeros(0), final=True)
        if e.spool is not None:
            e.spool.close()
    return StreamedEval(Labels.cat(labels), {h: e.stats.result() for h, e in enc.items()},
                        {h: e.spool for h, e in enc.items() if e.spool is not None})
