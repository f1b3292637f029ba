"""The activation store as it was before the in-place refill (issue 20), for benchmarks only.

``ConcatRefillStore`` serves the same kind of stream as ``sae_bilingual.data.store.ActivationStore``
but refills the way the old one did: it keeps the unserved remainder, appends the new LM
chunks, ``torch.cat``s them into a new buffer and takes a permuted copy of it. Kept so that
``bench_store_memory.py --impl before`` measures the old peak beside the new one in one run;
nothing in the package imports it.
"""

from __future__ import annotations

import torch

from sae_bilingual.data.store import ActivationStore, Labels, collect_activations


class ConcatRefillStore(ActivationStore):
    """ActivationStore with the pre-issue-20 refill: cat(old, new chunks), then a permuted copy."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._buf = None
        self._lab = Labels.empty()
        del self._used, self._seq, self._order  # the in-place store's slot bookkeeping
        self._fill = 0

    def _chunks(self):
        T = self.windows.tokens.shape[1]
        while True:
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
            yield None  # the buffer counts the epoch

    def _size(self) -> int:
        return 0 if self._buf is None else int(self._lab.lang.shape[0])

    def _refill(self) -> None:
        parts_a = {h: [] if self._buf is None else [self._buf[h]] for h in self.hooks}
        parts_l = [self._lab]
        size = self._size()
        end_of_epoch = False
        while size < self.buffer_vectors:
            self._fill = size
            chunk = self._next_chunk()
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
            if size + self.windows.tokens.shape[1] - 1 > self.buffer_vectors:
                break
        self._buf = {h: torch.cat(v) for h, v in parts_a.items()}
        self._lab = Labels.cat(parts_l)
        if self.shuffle:
            perm = torch.randperm(len(self._lab), generator=self.gen)
            self._buf = {h: a[perm] for h, a in self._buf.items()}
            self._lab = self._lab.index(perm)
        n = len(self._lab)
        self._ready = n if end_of_epoch else max(min(n, self.batch_size), n // 2)

    def _take(self, n: int):
        out = {h: a[:n] for h, a in self._buf.items()}
        lab = self._lab.index(slice(0, n))
        self._buf = {h: a[n:] for h, a in self._buf.items()}
        self._lab = self._lab.index(slice(n, None))
        self._ready -= n
        return out, lab
