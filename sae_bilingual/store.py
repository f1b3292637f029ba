"""Activation store: one LM forward per batch feeds every hook; unit-norm vectors + labels.

Paper: the first 64 tokens of each document go through the LM, the BOS position is dropped,
each remaining residual vector is L2-normalised, and training reads them from a shuffling
buffer (sizes per LM in PAPER.md). ``ActivationStore`` is the iterator SAELens's
``MultiSAETrainer`` (dict per step) or ``SAETrainer`` (tensor per step) consumes.
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

from sae_bilingual.corpus import Windows
from sae_bilingual.errors import DataError
from sae_bilingual.layers import stop_at_layer_for

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


@torch.no_grad()
def collect_activations(model: Any, windows: Windows, hooks: Sequence[str], *, batch_size: int = 32,
                        device: str | torch.device | None = None,
                        dtype: torch.dtype = torch.float32,
                        out_device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], Labels]:
    """Unit-norm residual vectors at ``hooks`` for every non-BOS, non-pad position.

    One forward per batch of windows, stopped after the deepest hook; returns
    ({hook: FloatTensor[M, d]}, Labels) with rows in window order, then position order.
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
    outs: dict[str, list[torch.Tensor]] = {h: [] for h in hooks}
    labs: list[Labels] = []
    pos_row = torch.arange(T)
    for s in range(0, len(windows), batch_size):
        w = windows.subset(slice(s, s + batch_size))
        L = int(w.lengths.max())
        toks = w.tokens[:, :L]
        mask = (pos_row[None, :L] < w.lengths[:, None])
        mask[:, 0] = False  # drop BOS
        cache: dict[str, torch.Tensor] = {}

        def save(act: torch.Tensor, hook: Any) -> None:
            cache[hook.name] = act.detach()

        model.run_with_hooks(toks.to(device), return_type=None, stop_at_layer=stop,
                             fwd_hooks=[(h, save) for h in hooks])
        rows, cols = mask.nonzero(as_tuple=True)
        lab = Labels(lang=w.lang[rows], token_id=toks[rows, cols], doc_id=w.doc_id[rows],
                     position=cols.clone())
        for h in hooks:
            if h not in cache:
                raise DataError(f"hook {h} did not fire; is it a residual hook of this model?")
            a = cache[h].to(out_device)[rows, cols].to(torch.float32)
            _check_finite(h, a, lab.doc_id, lab.position)
            a = a / a.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            outs[h].append(a.to(dtype))
        labs.append(lab)
    acts = {h: torch.cat(v) if v else torch.zeros(0, 0) for h, v in outs.items()}
    return acts, Labels.cat(labs)


def cache_key(**parts: Any) -> str:
    """Stable short hash of (checkpoint, hooks, corpus, budget, ...) for the activation cache."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


class ActivationStore:
    """Shuffling, memory-bounded iterator over unit-norm activations of several hooks.

    Each ``next()`` gives ``{hook: Tensor[batch_size, d]}`` (or, with ``with_labels=True``,
    ``(dict, Labels)``). The buffer holds at most ``buffer_vectors`` vectors per hook: the LM
    runs on chunks of windows to top it up, the buffer is permuted with a seeded generator,
    and the first half is served before the next top-up. Passes over the windows repeat
    (new permutation per epoch) so the iterator never ends; ``epoch`` counts passes.

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
        self._buf: dict[str, torch.Tensor] | None = None
        self._lab = Labels.empty()
        self._ready = 0
        self._fill = 0  # vectors in the buffer while it is being topped up
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
        from sae_bilingual.io import atomic_dir, atomic_save_safetensors, atomic_write_json

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

    def _source_iter(self) -> Iterator[tuple[dict[str, torch.Tensor], Labels]]:
        """Endless chunks of (acts, labels), from the cache shards or the LM."""
        T = self.windows.tokens.shape[1]
        while True:
            if self.shard_dir is not None:
                from safetensors.torch import load_file

                names = json.loads((self.shard_dir / "index.json").read_text())["shards"]
                order = torch.randperm(len(names), generator=self.gen) if self.shuffle else range(len(names))
                for i in order:
                    d = load_file(str(self.shard_dir / names[int(i)]))
                    yield {h: d[f"act.{h}"] for h in self.hooks}, Labels.from_dict(d)
            else:
                n = len(self.windows)
                perm = torch.randperm(n, generator=self.gen) if self.shuffle else torch.arange(n)
                s = 0
                while s < n:
                    room = self.buffer_vectors - self._fill
                    rows = min(self.lm_batch_size, max(1, room // (T - 1)))
                    w = self.windows.subset(perm[s:s + rows])
                    s += rows
                    yield collect_activations(self.model, w, self.hooks, batch_size=self.lm_batch_size,
                                              device=self.device, dtype=self.dtype)
            self.epoch += 1
            yield None  # type: ignore[misc]  # epoch boundary marker

    def _shard_rows(self) -> int:
        # a shard holds at most a quarter of the buffer, so a top-up never overshoots it
        return max(1, self.buffer_vectors // (4 * (self.windows.tokens.shape[1] - 1)))

    def _size(self) -> int:
        return 0 if self._buf is None else int(self._lab.lang.shape[0])

    def _refill(self) -> None:
        parts_a: dict[str, list[torch.Tensor]] = {h: [] if self._buf is None else [self._buf[h]] for h in self.hooks}
        parts_l = [self._lab]
        size = self._size()
        end_of_epoch = False
        while size < self.buffer_vectors:
            self._fill = size
            chunk = next(self._source)
            if chunk is None:
                end_of_epoch = True
                if size > 0:
                    break
                continue
            acts, lab = chunk
            for h in self.hooks:
                parts_a[h].append(acts[h])
            parts_l.append(lab)
            size += len(lab)
            T1 = self.windows.tokens.shape[1] - 1
            chunk_max = T1 if self.shard_dir is None else self._shard_rows() * T1
            if size + chunk_max > self.buffer_vectors:
                break
        self._buf = {h: torch.cat(v) for h, v in parts_a.items()}
        self._lab = Labels.cat(parts_l)
        if self.shuffle:
            perm = torch.randperm(len(self._lab), generator=self.gen)
            self._buf = {h: a[perm] for h, a in self._buf.items()}
            self._lab = self._lab.index(perm)
        n = len(self._lab)
        self._ready = n if end_of_epoch else max(min(n, self.batch_size), n // 2)

    def _take(self, n: int) -> tuple[dict[str, torch.Tensor], Labels]:
        assert self._buf is not None
        out = {h: a[:n] for h, a in self._buf.items()}
        lab = self._lab.index(slice(0, n))
        self._buf = {h: a[n:] for h, a in self._buf.items()}
        self._lab = self._lab.index(slice(n, None))
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

    def single(self, hook: str) -> Iterator[torch.Tensor]:
        """Tensor iterator for one hook (SAELens ``SAETrainer`` data provider)."""
        if hook not in self.hooks:
            raise DataError(f"hook {hook} is not in this store; stored hooks: {self.hooks}")
        while True:
            yield self.next_with_labels()[0][hook]
