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
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from sae_bilingual.data.corpus import Windows
from sae_bilingual.errors import DataError
from sae_bilingual.io import atomic_dir, atomic_save_safetensors, atomic_write_json
from sae_bilingual.layers import stop_at_layer_for
from sae_bilingual.residuals import residuals_at
from sae_bilingual.sae.kernels import unit_norm

log = logging.getLogger(__name__)


@dataclass
class Labels:
    """Per-vector labels, aligned with the activation rows.

    lang: LongTensor[M] index into the windows' languages.
    token_id: LongTensor[M] the token at that position.
    doc_id: LongTensor[M] document id.
    position: LongTensor[M] position in the window (1..T-1; BOS = 0 is never present).
    """

    lang: torch.Tensor
    token_id: torch.Tensor
    doc_id: torch.Tensor
    position: torch.Tensor

    def __len__(self) -> int:
        return int(self.lang.shape[0])

    def index(self, idx: torch.Tensor | slice) -> Labels:
        """Rows ``idx`` (a permutation, mask or slice) of every label."""
        return Labels(*(getattr(self, f.name)[idx] for f in fields(self)))

    @staticmethod
    def cat(parts: Sequence[Labels]) -> Labels:
        """Concatenate label sets."""
        if not parts:
            return Labels.empty()
        return Labels(*(torch.cat([getattr(p, f.name) for p in parts]) for f in fields(Labels)))

    @staticmethod
    def empty() -> Labels:
        z = torch.zeros(0, dtype=torch.long)
        return Labels(z, z.clone(), z.clone(), z.clone())

    def to_dict(self) -> dict[str, torch.Tensor]:
        return {f"label_{f.name}": getattr(self, f.name) for f in fields(self)}

    @staticmethod
    def from_dict(d: Mapping[str, torch.Tensor]) -> Labels:
        return Labels(*(d[f"label_{f.name}"] for f in fields(Labels)))


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


class ActivationStore:
    """Shuffling, memory-bounded iterator over unit-norm activations of several hooks.

    Each ``next()`` gives ``{hook: Tensor[batch_size, d]}`` (or, with ``with_labels=True``,
    ``(dict, Labels)``). The buffer is allocated once, ``buffer_vectors`` rows per hook (and
    one row of labels per vector), and refilled in place: the LM runs on chunks of windows
    whose vectors overwrite the slots already served, then the slots still unserved are put
    in a new seeded random order (a permutation of indices: no vector is copied), and the
    first half of that order is served before the next refill. Peak memory is therefore the
    buffer plus one LM chunk and one batch, not the buffer twice or more. Passes over the
    windows repeat (new permutation per epoch) so the iterator never ends; ``epoch`` counts
    passes, and the vectors of one pass are all served before any of the next.

    The random stream (window order, slot order) depends on the windows, the sizes and the
    seed only, never on ``hooks``: a hook's batches are the same whichever hooks share the
    store (a unit's layers may be trained in several groups, see memplan.py).

    With ``cache_dir`` the activations are written once as safetensors shards under
    ``cache_dir/<cache_key(**cache_id)>/`` and later stores with the same key read them
    instead of running the LM.
    """

    def __init__(self, model: Any, windows: Windows, hooks: Sequence[str], *, batch_size: int = 4096,
                 buffer_vectors: int = 1_000_000, lm_batch_size: int = 32, seed: int = 0,
                 device: str | torch.device | None = None, dtype: torch.dtype = torch.float32,
                 with_labels: bool = False, cache_dir: str | Path | None = None,
                 cache_id: Mapping[str, Any] | None = None, shuffle: bool = True):
        self.model, self.windows, self.hooks = model, windows, list(hooks)
        self.batch_size, self.lm_batch_size = int(batch_size), int(lm_batch_size)
        self.buffer_vectors = int(buffer_vectors)
        T = windows.tokens.shape[1]
        if self.buffer_vectors < max(self.batch_size, T - 1):
            raise DataError(f"buffer_vectors={buffer_vectors} must be at least batch_size "
                            f"({batch_size}) and one window ({T - 1} vectors)")
        if windows.n_vectors == 0:
            raise DataError("the windows hold no non-BOS tokens")
        self.device, self.dtype, self.with_labels, self.shuffle = device, dtype, with_labels, shuffle
        self.gen = torch.Generator().manual_seed(seed)
        self.epoch = 0
        self.n_served = 0
        C = self.buffer_vectors
        self._buf: dict[str, torch.Tensor] | None = None  # [C, d] per hook, allocated at the first chunk
        self._lab = Labels(*(torch.zeros(C, dtype=torch.long) for _ in fields(Labels)))
        self._used = torch.zeros(C, dtype=torch.bool)  # slot holds a vector not served yet
        self._seq = torch.zeros(C, dtype=torch.long)  # arrival number (serving order without shuffle)
        self._n_in = 0  # vectors written so far
        self._order = torch.zeros(0, dtype=torch.long)  # slots in serving order
        self._pos = 0  # next entry of _order to serve
        self._ready = 0  # entries of _order servable before the next refill
        self._pending: tuple[dict[str, torch.Tensor], Labels] | None = None  # rest of a chunk that did not fit
        self._source = self._source_iter()
        self.shard_dir: Path | None = None
        if cache_dir is not None:
            key = cache_key(**{**dict(cache_id or {}), "hooks": self.hooks, "n_vectors": windows.n_vectors})
            self.shard_dir = Path(cache_dir) / key
            if not (self.shard_dir / "index.json").exists():
                self._write_cache(cache_id or {})
            else:
                log.info("activation cache hit: %s (LM skipped)", self.shard_dir)

    # -- sources -------------------------------------------------------------------------
    def _write_cache(self, cache_id: Mapping[str, Any]) -> None:
        assert self.shard_dir is not None
        rows = self._shard_rows()
        with atomic_dir(self.shard_dir) as tmp:
            shards = []
            for i, s in enumerate(range(0, len(self.windows), rows)):
                acts, lab = collect_activations(self.model, self.windows.subset(slice(s, s + rows)),
                                                self.hooks, batch_size=self.lm_batch_size,
                                                device=self.device, dtype=self.dtype)
                t = {f"act.{h}": a for h, a in acts.items()} | lab.to_dict()
                name = f"shard_{i:05d}.safetensors"
                atomic_save_safetensors(t, tmp / name)
                shards.append(name)
            atomic_write_json(tmp / "index.json", {"shards": shards, "hooks": self.hooks,
                                                   "cache_id": dict(cache_id)})
        log.info("wrote activation cache %s (%d shards)", self.shard_dir, len(shards))

    def _source_iter(self) -> Iterator[tuple[dict[str, torch.Tensor], Labels] | None]:
        """Endless chunks of (acts, labels), from the cache shards or the LM; None ends an epoch."""
        while True:
            if self.shard_dir is not None:
                names = json.loads((self.shard_dir / "index.json").read_text())["shards"]
                order = torch.randperm(len(names), generator=self.gen) if self.shuffle else range(len(names))
                for i in order:
                    d = load_file(str(self.shard_dir / names[int(i)]))
                    yield {h: d[f"act.{h}"] for h in self.hooks}, Labels.from_dict(d)
            else:
                n = len(self.windows)
                perm = torch.randperm(n, generator=self.gen) if self.shuffle else torch.arange(n)
                for s in range(0, n, self.lm_batch_size):
                    w = self.windows.subset(perm[s:s + self.lm_batch_size])
                    yield collect_activations(self.model, w, self.hooks, batch_size=self.lm_batch_size,
                                              device=self.device, dtype=self.dtype)
            self.epoch += 1
            yield None  # epoch boundary marker

    def _shard_rows(self) -> int:
        # a shard holds at most an eighth of the buffer: reading one costs little beyond the buffer
        return max(1, self.buffer_vectors // (8 * (self.windows.tokens.shape[1] - 1)))

    def _size(self) -> int:
        """Vectors in the buffer not served yet."""
        return int(self._order.shape[0]) - self._pos

    def _write(self, slots: torch.Tensor, acts: Mapping[str, torch.Tensor], lab: Labels) -> None:
        """Copy the first ``len(slots)`` vectors of a chunk into those slots of the buffer."""
        m = int(slots.shape[0])
        if self._buf is None:
            C = self.buffer_vectors
            self._buf = {h: torch.empty(C, acts[h].shape[1], dtype=acts[h].dtype) for h in self.hooks}
        for h in self.hooks:
            self._buf[h].index_copy_(0, slots, acts[h][:m])
        for f in fields(Labels):
            getattr(self._lab, f.name).index_copy_(0, slots, getattr(lab, f.name)[:m])
        self._used[slots] = True
        self._seq[slots] = torch.arange(self._n_in, self._n_in + m)
        self._n_in += m

    def _refill(self) -> None:
        """Overwrite the served slots with new vectors, then reorder the unserved ones."""
        self._used[self._order[:self._pos]] = False
        free = (~self._used).nonzero().flatten()
        w = 0
        end_of_epoch = False
        while w < free.shape[0]:
            chunk, self._pending = (self._pending, None) if self._pending is not None else (next(self._source), None)
            if chunk is None:
                end_of_epoch = True
                if w > 0 or bool(self._used.any()):
                    break
                continue
            acts, lab = chunk
            m = min(len(lab), int(free.shape[0]) - w)
            self._write(free[w:w + m], acts, lab)
            if m < len(lab):  # keep the rest for the next refill (views: no copy)
                self._pending = ({h: acts[h][m:] for h in self.hooks}, lab.index(slice(m, None)))
            w += m
        live = self._used.nonzero().flatten()
        if self.shuffle:
            self._order = live[torch.randperm(live.shape[0], generator=self.gen)]
        else:
            self._order = live[torch.argsort(self._seq[live])]
        self._pos = 0
        n = int(live.shape[0])
        self._ready = n if end_of_epoch else max(min(n, self.batch_size), n // 2)

    def _take(self, n: int) -> tuple[dict[str, torch.Tensor], Labels]:
        """The next ``n`` vectors in serving order (copies: their slots are refilled later)."""
        assert self._buf is not None
        slots = self._order[self._pos:self._pos + n]
        out = {h: a.index_select(0, slots) for h, a in self._buf.items()}
        lab = self._lab.index(slots)
        self._pos += n
        self._ready -= n
        return out, lab

    def next_with_labels(self) -> tuple[dict[str, torch.Tensor], Labels]:
        """Next batch and its labels."""
        got_a: list[dict[str, torch.Tensor]] = []
        got_l: list[Labels] = []
        need = self.batch_size
        while need > 0:
            if self._ready <= 0:
                self._refill()
            a, lab = self._take(min(need, self._ready))
            got_a.append(a)
            got_l.append(lab)
            need -= len(lab)
        self.n_served += self.batch_size
        if len(got_a) == 1:
            return got_a[0], got_l[0]
        return {h: torch.cat([g[h] for g in got_a]) for h in self.hooks}, Labels.cat(got_l)

    def __iter__(self) -> ActivationStore:
        return self

    def __next__(self) -> Any:
        a, lab = self.next_with_labels()
        return (a, lab) if self.with_labels else a
