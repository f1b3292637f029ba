"""Activation store: one LM forward per batch feeds every hook; unit-norm vectors + labels.

Paper: the first 64 tokens of each document go through the LM, the BOS position is dropped,
each remaining residual vector is L2-normalised, and training reads them from a shuffling
buffer (sizes per LM in PAPER.md). ``ActivationStore`` is the iterator SAELens's
``MultiSAETrainer`` consumes (a dict hook -> batch per step).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from sae_bilingual.data.corpus import Windows
from sae_bilingual.data.labels import Labels
from sae_bilingual.data.shuffle_buffer import Chunk, ShuffleBuffer
from sae_bilingual.errors import DataError
from sae_bilingual.io import atomic_dir, atomic_save_safetensors, atomic_write_json
from sae_bilingual.layers import stop_at_layer_for
from sae_bilingual.residuals import residuals_at
from sae_bilingual.sae.kernels import unit_norm

log = logging.getLogger(__name__)

__all__ = ["ActivationStore", "Labels", "cache_key", "check_token_ids", "collect_activations", "iter_activations",
           "lm_chunks", "shard_chunks", "write_activation_cache"]


def _check_finite(hook: str, acts: torch.Tensor, doc: torch.Tensor, pos: torch.Tensor) -> None:
    bad = ~torch.isfinite(acts).all(dim=-1)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise DataError(
            f"non-finite activation (NaN/Inf) at hook {hook}, document {int(doc[i])}, position "
            f"{int(pos[i])} ({int(bad.sum())} vectors in this batch). The checkpoint may be "
            "broken or the dtype too narrow: load the model in float32 and check its weights")


def check_token_ids(windows: Windows, d_vocab: int | None) -> None:
    """Refuse token ids the model has no embedding for (tokenizer larger than the model).

    Why: an out-of-range id makes the embedding lookup fail deep inside the LM with an
    index error (or, on GPU, a device assert) that does not say which tokenizer is wrong.
    """
    if d_vocab is None or len(windows) == 0:
        return
    T = windows.tokens.shape[1]
    real = torch.arange(T)[None, :] < windows.lengths[:, None]
    ids = windows.tokens[real]
    if ids.numel() == 0:
        return
    hi, lo = int(ids.max()), int(ids.min())
    if hi >= int(d_vocab) or lo < 0:
        bad = int(((ids >= int(d_vocab)) | (ids < 0)).sum())
        raise DataError(
            f"token id {hi if hi >= int(d_vocab) else lo} is outside the model's vocabulary "
            f"(d_vocab={d_vocab}; {bad} tokens affected): the tokenizer does not belong to this "
            "model. Tokenize with the model family's own tokenizer (or one whose ids are < d_vocab)")


def iter_activations(model: Any, windows: Windows, hooks: Sequence[str], *, batch_size: int = 32,
                     device: str | torch.device | None = None, dtype: torch.dtype = torch.float32,
                     out_device: str | torch.device = "cpu") -> Iterator[tuple[dict[str, torch.Tensor], Labels]]:
    """Unit-norm residual vectors at ``hooks``, one LM batch of windows at a time.

    Yields ({hook: FloatTensor[m, d] on ``out_device``}, Labels) per forward of ``batch_size``
    windows (every non-BOS, non-pad position, in window then position order), the forward
    stopped after the deepest hook. Why a generator: the evaluation streams these batches
    straight into the SAEs' codes, so no more than one batch of activations ever exists.
    """
    hooks = list(hooks)
    if not hooks:
        raise DataError("no hooks requested; pass e.g. ['blocks.1.hook_resid_post']")
    stop = stop_at_layer_for(hooks)
    n_layers = getattr(getattr(model, "cfg", None), "n_layers", None)
    if n_layers is not None and stop > n_layers:
        raise DataError(f"hooks {hooks} need {stop} blocks but the model has {n_layers}")
    device = device or getattr(getattr(model, "cfg", None), "device", None) or "cpu"
    check_token_ids(windows, getattr(getattr(model, "cfg", None), "d_vocab", None))
    T = windows.tokens.shape[1]
    pos_row = torch.arange(T)
    for s in range(0, len(windows), batch_size):
        w = windows.subset(slice(s, s + batch_size))
        L = int(w.lengths.max())
        toks = w.tokens[:, :L]
        mask = (pos_row[None, :L] < w.lengths[:, None])
        mask[:, 0] = False  # drop BOS
        cache = residuals_at(model, toks.to(device), hooks)
        rows, cols = mask.nonzero(as_tuple=True)
        lab = Labels(lang=w.lang[rows], token_id=toks[rows, cols], doc_id=w.doc_id[rows],
                     position=cols.clone())
        out: dict[str, torch.Tensor] = {}
        for h in hooks:
            act = cache.pop(h)
            a = act[rows.to(act.device), cols.to(act.device)].to(out_device, torch.float32)  # a copy: safe to edit
            _check_finite(h, a, lab.doc_id, lab.position)
            unit_norm(a, inplace=True)  # the SAE's input space (why the SAE normalises again: unit_norm)
            out[h] = a.to(dtype)
        yield out, lab


def collect_activations(model: Any, windows: Windows, hooks: Sequence[str], *, batch_size: int = 32,
                        device: str | torch.device | None = None,
                        dtype: torch.dtype = torch.float32,
                        out_device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], Labels]:
    """Every batch of :func:`iter_activations` concatenated: ({hook: FloatTensor[M, d]}, Labels).

    For the store's LM chunks and small sets; the study's evaluation streams instead
    (``study.evaluate``), since a whole evaluation set of a large model does not fit in RAM.
    """
    hooks = list(hooks)
    outs: dict[str, list[torch.Tensor]] = {h: [] for h in hooks}
    labs: list[Labels] = []
    for acts, lab in iter_activations(model, windows, hooks, batch_size=batch_size, device=device,
                                      dtype=dtype, out_device=out_device):
        for h in hooks:
            outs[h].append(acts[h])
        labs.append(lab)
    acts = {h: (v[0] if len(v) == 1 else torch.cat(v)) if v else torch.zeros(0, 0) for h, v in outs.items()}
    return acts, Labels.cat(labs)


def cache_key(**parts: Any) -> str:
    """Stable short hash of (checkpoint, hooks, corpus, budget, ...) for the activation cache."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def lm_chunks(model: Any, windows: Windows, hooks: Sequence[str], *, lm_batch_size: int, generator: torch.Generator,
              shuffle: bool = True, device: str | torch.device | None = None,
              dtype: torch.dtype = torch.float32) -> Iterator[Chunk | None]:
    """Endless LM batches of (acts, labels) over the windows, in a new seeded order each
    epoch; None ends an epoch."""
    while True:
        n = len(windows)
        perm = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for s in range(0, n, lm_batch_size):
            yield collect_activations(model, windows.subset(perm[s:s + lm_batch_size]), hooks,
                                      batch_size=lm_batch_size, device=device, dtype=dtype)
        yield None


def shard_chunks(shard_dir: Path, hooks: Sequence[str], *, generator: torch.Generator,
                 shuffle: bool = True) -> Iterator[Chunk | None]:
    """Endless cache shards of (acts, labels), in a new seeded order each epoch; None ends an epoch."""
    names = json.loads((shard_dir / "index.json").read_text())["shards"]
    while True:
        order = torch.randperm(len(names), generator=generator) if shuffle else range(len(names))
        for i in order:
            d = load_file(str(shard_dir / names[int(i)]))
            yield {h: d[f"act.{h}"] for h in hooks}, Labels.from_dict(d)
        yield None


def write_activation_cache(model: Any, windows: Windows, hooks: Sequence[str], shard_dir: Path, *,
                           rows_per_shard: int, lm_batch_size: int, cache_id: Mapping[str, Any],
                           device: str | torch.device | None = None, dtype: torch.dtype = torch.float32) -> None:
    """One LM pass over the windows, written as safetensors shards of ``rows_per_shard`` windows
    plus ``index.json`` (the folder appears whole or not at all)."""
    with atomic_dir(shard_dir) as tmp:
        shards = []
        for i, s in enumerate(range(0, len(windows), rows_per_shard)):
            acts, lab = collect_activations(model, windows.subset(slice(s, s + rows_per_shard)), hooks,
                                            batch_size=lm_batch_size, device=device, dtype=dtype)
            name = f"shard_{i:05d}.safetensors"
            atomic_save_safetensors({f"act.{h}": a for h, a in acts.items()} | lab.to_dict(), tmp / name)
            shards.append(name)
        atomic_write_json(tmp / "index.json", {"shards": shards, "hooks": list(hooks), "cache_id": dict(cache_id)})
    log.info("wrote activation cache %s (%d shards)", shard_dir, len(shards))


class ActivationStore(ShuffleBuffer):
    """Shuffling, memory-bounded iterator over unit-norm activations of several hooks.

    Each ``next()`` gives ``{hook: Tensor[batch_size, d]}`` (or, with ``with_labels=True``,
    ``(dict, Labels)``). A :class:`~sae_bilingual.data.shuffle_buffer.ShuffleBuffer` fed by the
    LM (:func:`lm_chunks`: one forward per LM batch feeds every hook) or by cache shards.
    Passes over the windows repeat (new permutation per epoch) so the iterator never ends.

    The random stream (window order, slot order) depends on the windows, the sizes and the
    seed only, never on ``hooks``: a hook's batches are the same whichever hooks share the
    store (a unit's layers may be trained in several groups, see memplan.py).

    With ``cache_dir`` the activations are written once as safetensors shards under
    ``cache_dir/<cache_key(**cache_id)>/`` (at the first batch, not in the constructor) and
    later stores with the same key read them instead of running the LM.
    """

    def __init__(self, model: Any, windows: Windows, hooks: Sequence[str], *, batch_size: int = 4096,
                 buffer_vectors: int = 1_000_000, lm_batch_size: int = 32, seed: int = 0,
                 device: str | torch.device | None = None, dtype: torch.dtype = torch.float32,
                 with_labels: bool = False, cache_dir: str | Path | None = None,
                 cache_id: Mapping[str, Any] | None = None, shuffle: bool = True):
        T = windows.tokens.shape[1]
        if int(buffer_vectors) < max(int(batch_size), T - 1):
            raise DataError(f"buffer_vectors={buffer_vectors} must be at least batch_size "
                            f"({batch_size}) and one window ({T - 1} vectors)")
        if windows.n_vectors == 0:
            raise DataError("the windows hold no non-BOS tokens")
        self.model, self.windows = model, windows
        self.lm_batch_size, self.device, self.dtype, self.with_labels = int(lm_batch_size), device, dtype, with_labels
        self.shard_dir: Path | None = None
        self._cache_id = dict(cache_id or {})
        if cache_dir is not None:
            key = cache_key(**{**self._cache_id, "hooks": list(hooks), "n_vectors": windows.n_vectors})
            self.shard_dir = Path(cache_dir) / key
        super().__init__(self._chunks(), hooks, batch_size=batch_size, buffer_vectors=buffer_vectors,
                         generator=torch.Generator().manual_seed(seed), shuffle=shuffle)

    def _chunks(self) -> Iterator[Chunk | None]:
        """The chunk source, chosen at the first batch: cache shards (written first when
        missing) or the LM."""
        if self.shard_dir is None:
            yield from lm_chunks(self.model, self.windows, self.hooks, lm_batch_size=self.lm_batch_size,
                                 generator=self.gen, shuffle=self.shuffle, device=self.device, dtype=self.dtype)
            return
        if (self.shard_dir / "index.json").exists():
            log.info("activation cache hit: %s (LM skipped)", self.shard_dir)
        else:
            # a shard holds at most an eighth of the buffer: reading one costs little beyond the buffer
            rows = max(1, self.buffer_vectors // (8 * (self.windows.tokens.shape[1] - 1)))
            write_activation_cache(self.model, self.windows, self.hooks, self.shard_dir, rows_per_shard=rows,
                                   lm_batch_size=self.lm_batch_size, cache_id=self._cache_id, device=self.device,
                                   dtype=self.dtype)
        yield from shard_chunks(self.shard_dir, self.hooks, generator=self.gen, shuffle=self.shuffle)

    def __iter__(self) -> ActivationStore:
        return self

    def __next__(self) -> Any:
        a, lab = self.next_with_labels()
        return (a, lab) if self.with_labels else a
